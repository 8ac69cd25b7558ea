"""LlmWorkers: runs the LLM task types, each task on its own (a chat call and its Wikidata look-ups),
at most `workers.llm_concurrency` at once, so that a slow chat call never holds up an embedding batch.

A task ends in one of three ways: its result goes to the Reporter (journaled there first when a paid
provider made it); it fails for its own sake (malformed content, an answer that failed the schema
twice, a result over the API's limit); or, when no provider or Wikidata could answer, it is tried
again after a backoff and, past `MAX_RETRIES`, put back to `pending`. An outage never succeeds with
an empty answer.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque

import msgspec

from aitp.errors import ProviderError
from aitp.failures import BACK_OFF, RELEASE, Attempt, decide
from aitp.routing import ChatRouter
from aitp.storage.journal import Journal
from aitp.storage.rate_limits import RateLimitBackend
from aitp.tasks import ChatJob, LlmHandler, TaskHandler, TaskRejected
from aitp.tasks.answers import AnswerBook
from aitp.transport.wikidata import NoWikidata, WikidataClient
from aitp.vectors.jobs import TaskVector
from actors.messages import (BatchEmbedded, ChatTaskDone, Rejection, RunChatTasks, TasksRejected,
                             TasksReleased)
from actors.stage import PipelineContext, Stage

log = logging.getLogger("aitp.llm_workers")


class ChatRetryDue(msgspec.Struct, frozen=True):
    """LlmWorkers' timer: run this task again after an outage's backoff."""

    job: ChatJob
    attempt: int

    def carried(self) -> list[str]:
        return [self.job.task_id]


class LlmWorkers(Stage):
    name = "llm_workers"

    def __init__(self, ctx: PipelineContext, orphans: list | None = None, *, handlers: dict[str, TaskHandler],
                 chat_router: ChatRouter | None, journal: Journal, rate_limits: RateLimitBackend,
                 answers: AnswerBook, wikidata: WikidataClient | None = None) -> None:
        super().__init__(ctx, orphans)
        self.answers = answers      # chat answers kept until their results exist (aitp/tasks/answers.py)
        self.handlers, self.chat_router, self.wikidata = handlers, chat_router, wikidata
        self.journal, self.rate_limits = journal, rate_limits
        self.queue: deque[tuple[ChatJob, int]] = deque()   # (job, attempt) waiting for a slot
        self.running: set[str] = set()
        self.waiting: dict[str, ChatJob] = {}     # task id -> job whose retry timer runs (ChatRetryDue)
        self.finished = 0

    def setup(self) -> None:
        self.start_pool(self.settings.workers.llm_concurrency)
        self.queue.extend((job, 1) for job in self.inherited)   # not started by a previous instance
        self._pump()

    def receive(self, message) -> None:
        if isinstance(message, RunChatTasks):
            self.queue.extend((job, 1) for job in message.jobs)
        elif isinstance(message, ChatRetryDue):
            if self.waiting.pop(message.job.task_id, None) is not None:   # else released meanwhile (a stop)
                self.queue.append((message.job, message.attempt))
        elif isinstance(message, ChatTaskDone):
            self.running.discard(message.task_id)
            self.finished += 1
            if message.retry_in is not None:
                self.waiting[message.task_id] = message.job
                self.later(message.retry_in, ChatRetryDue(message.job, message.attempt))
        self._pump()

    def _pump(self) -> None:
        assert self.pool is not None
        while self.queue and len(self.running) < self.pool_size:
            job, attempt = self.queue.popleft()
            self.running.add(job.task_id)
            self.pool.submit(self._run, job, attempt)

    # --- on a pool thread: no stage state touched here ---
    def _run(self, job: ChatJob, attempt: int) -> None:
        handler = self.handlers[job.task_type]
        assert isinstance(handler, LlmHandler)
        retry_in = None
        try:
            result = handler.run(job, self._chat_for(job), self._wikidata_for(job, handler), self.answers)
        except TaskRejected as exc:
            self._failed(job, str(exc))
        except ProviderError as exc:
            retry_in = self._provider_failed(job, attempt, exc)
        except Exception as exc:  # noqa: BLE001 - a handler's bug fails its task, not the stage
            log.exception("LLM task handler failed", extra={"fields": {"task_id": job.task_id}})
            self._failed(job, f"internal error: {exc!r}"[:300])
        else:
            self.answers.done(job.task_id)
            self.ctx.metrics.task_decided(job.task_type, "succeeded",
                                          time.time() - job.taken_at if job.taken_at else None)
            self.tell("reporter", BatchEmbedded(uuid.uuid4().hex[:12], job.model,
                                                [TaskVector(job.task_id, result.body)], paid=result.paid))
        finally:
            self.tell(self.name, ChatTaskDone(job.task_id, retry_in, job if retry_in is not None else None,
                                              attempt + 1))

    def _wikidata_for(self, job: ChatJob, handler: LlmHandler):
        """Wikidata, or NoWikidata for a task held for it past wikidata.hold_seconds (when_down =
        "unenriched", and a type that means something without it) while it is still down."""
        config = self.settings.wikidata
        late = not job.enrich or (config.when_down == "unenriched" and handler.reportable_without_wikidata
                                  and job.taken_at and time.time() - job.taken_at >= config.hold_seconds)
        if self.wikidata is None or not late or self.wikidata.available():
            return self.wikidata
        return NoWikidata()

    def _chat_for(self, job: ChatJob):
        """The chat call for `job`'s handler: each call is counted (and its tokens) when it is
        paid for, whatever fails after it; its rate-limit unit is spent then, not refunded."""
        def chat(model: str, system: str, user: str, schema_name: str, schema: dict):
            if self.rate_limits.refunds_units:
                self.journal.mark_sent([job.task_id])
            started = time.perf_counter()
            reply, provider, paid = self.chat_router.chat(model, system, user, schema_name, schema)
            self.ctx.metrics.provider_call(provider, job.model, "success", 1, time.perf_counter() - started,
                                           reply.tokens, job.task_type)
            return reply, provider, paid
        return chat

    def _provider_failed(self, job: ChatJob, attempt: int, error: ProviderError) -> float | None:
        """The chat model or Wikidata failed: what happens next is aitp/failures.py's decision, as
        for an embedding batch (the chat router has tried every provider of the route already).
        The seconds until it is tried again, when it is to be."""
        action = decide(Attempt(1, attempt), error, self.settings.processing.max_retries)
        if action == RELEASE and error.provider == "wikidata" and self.settings.coordination.redis_url \
                and self.answers.holds(job.task_id):
            # Several services: released, the task could go to one that would pay for it again (the
            # answer is in this one's journal). Alone, it goes back to pending and, taken again, uses it.
            action = BACK_OFF
        if action == BACK_OFF:
            delay = self.ctx.backoff(attempt, error.retry_after)
            # The first retry is a warning, the next ones debug: a dependency down says so once
            # (aitp/observability/dependencies.py), not once per task per retry.
            (log.warning if attempt == 1 else log.debug)("LLM task retried after an outage", extra={"fields": {
                "task_id": job.task_id, "type": job.task_type, "error": str(error)[:300], "attempt": attempt,
                "retry_in_s": round(delay, 2)}})
            return delay
        if action == RELEASE:
            log.warning("no provider could run the LLM task; it goes back to pending",
                        extra={"fields": {"task_id": job.task_id, "error": str(error)[:300]}})
            self.ctx.metrics.tasks_released.inc()
            self.tell("reporter", TasksReleased([job.task_id], str(error)[:300]))
        else:
            self._failed(job, f"{error.provider}: {error}")
        return None

    def _failed(self, job: ChatJob, reason: str) -> None:
        self.answers.done(job.task_id)
        self.ctx.metrics.task_decided(job.task_type, "failed", time.time() - job.taken_at if job.taken_at else None)
        self.tell("reporter", TasksRejected([Rejection(job.task_id, reason)]))

    # --- asked by the pipeline and the supervisor ---
    def release_queued(self) -> list[ChatJob]:
        """At a stop: what no thread runs now, those waiting out a backoff included."""
        jobs = [job for job, _ in self.queue] + list(self.waiting.values())
        self.queue.clear()
        self.waiting.clear()
        return jobs

    def orphans(self) -> list:
        return [job for job, _ in self.queue] + list(self.waiting.values())

    def status(self) -> dict:
        return {"queued": len(self.queue), "active": len(self.running), "waiting": len(self.waiting),
                "finished": self.finished}
