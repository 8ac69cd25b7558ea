"""What an entry of the pending list becomes when it is taken: a job to compute, or a rejection
(the task is malformed, or no provider of this mode will take it), so that one bad task never
stops the others."""

from __future__ import annotations

import logging
from collections import OrderedDict

import msgspec

from aitp.contract import Task
from aitp.tasks import CHAT_TYPES, ChatJob, EmbeddingJob, TaskHandler, TaskRejected

log = logging.getLogger("aitp.poller")

_HELD_AT_MOST = 100_000      # tasks whose first hold for Wikidata is remembered


class TakenTask(msgspec.Struct, frozen=True):
    """A task the poller took: its job and the exact JSON the journal keeps for a resume."""

    job: EmbeddingJob | ChatJob
    raw: bytes


class Rejection(msgspec.Struct, frozen=True):
    task_id: str
    reason: str
    batch_id: str = ""


class TaskReader:
    """Parses a task with its type's handler and asks the routers whether anything can compute it,
    now or at all."""

    def __init__(self, handlers: dict[str, TaskHandler], router, chat_router, wikidata=None,
                 unenriched_after: float | None = None) -> None:
        self.handlers, self.router, self.chat_router, self.wikidata = handlers, router, chat_router, wikidata
        # wikidata.when_down = "unenriched": an LLM task held this long for Wikidata goes without it.
        self.unenriched_after = unenriched_after
        self._held_since: OrderedDict[str, float] = OrderedDict()      # task id -> first held back for Wikidata
        self._down: dict[tuple[bool, str], bool] = {}    # (chat?, model) -> its providers are down, this take
        self.held_back = 0                                # tasks left pending while what they need was down
        self.retry_in: float | None = None

    def new_take(self) -> None:
        """Breakers are read once a take per model (not once a task)."""
        self._down.clear()
        self.retry_in: float | None = None     # the soonest a task held back in this take can go

    def read(self, task: Task, now: float) -> TakenTask | Rejection | None:
        """The task as a job stamped `taken_at=now`, why it is reported `failed`, or None when what it
        needs is down now (every provider of its model, or Wikidata for an LLM task): it is left
        pending, so that it holds no credit the others could use. Entries were screened on arrival
        (`PendingCursor.screen`): their type has a handler."""
        try:
            job = self.handlers[task.type].parse(task.id, task.raw)
            refusal = self.chat_router.refusal(job.model) if isinstance(job, ChatJob) \
                else self.router.refusal(job.model, job.text)
            if refusal:
                raise TaskRejected(refusal)
            if self.waits(job):
                if not self._goes_unenriched(job, now):
                    self.held_back += 1
                    return None
                job = msgspec.structs.replace(job, enrich=False)
            elif self._held_since:
                self._held_since.pop(task.id, None)    # taken as it is: a later hold waits in full
            return TakenTask(job=msgspec.structs.replace(job, taken_at=now), raw=task.raw)
        except TaskRejected as exc:
            return Rejection(task.id, str(exc))
        except Exception as exc:  # noqa: BLE001 - a handler's bug fails its task, not the Poller
            log.exception("handler failed on a task", extra={"fields": {"task_id": task.id}})
            return Rejection(task.id, f"could not read the task: {exc!r}"[:300])

    def types_held(self) -> frozenset[str]:
        """The task types none of which can be taken now: the LLM types while every chat provider is
        down, or Wikidata is and they are held for it (not when they may go without it)."""
        if self.chat_router is not None and self.chat_router.seconds_until_available() > 0:
            return CHAT_TYPES
        if self.wikidata is not None and self.unenriched_after is None and not self.wikidata.available():
            return CHAT_TYPES
        return frozenset()

    def _goes_unenriched(self, job: EmbeddingJob | ChatJob, now: float) -> bool:
        """Held for Wikidata alone past `unenriched_after`, and its type means something without it."""
        if self.unenriched_after is None or not isinstance(job, ChatJob) or \
                not getattr(self.handlers[job.task_type], "reportable_without_wikidata", False) or \
                self.chat_router.seconds_until_available(job.model) > 0:
            return False
        since = self._held_since.setdefault(job.task_id, now)
        while len(self._held_since) > _HELD_AT_MOST:
            self._held_since.popitem(last=False)
        if now - since < self.unenriched_after:
            return False
        del self._held_since[job.task_id]
        return True

    def waits(self, job: EmbeddingJob | ChatJob) -> bool:
        """Is what `job` needs down now (a bulkhead: issue 28)?"""
        chat = isinstance(job, ChatJob)
        key = (chat, job.model)
        down = self._down.get(key)
        if down is None:
            router = self.chat_router if chat else self.router
            wait = router.seconds_until_available(job.model)
            if chat and self.wikidata is not None:
                wait = max(wait, self.wikidata.seconds_until_available())
            down = self._down[key] = wait > 0
            if down:
                self.retry_in = wait if self.retry_in is None else min(self.retry_in, wait)
        return down
