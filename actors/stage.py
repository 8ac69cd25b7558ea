"""What every stage shares: the context (settings, the directory to reach the others, timers,
metrics), and a base actor that hands its held work to the supervisor when it dies."""

from __future__ import annotations

import logging
import queue
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import pykka

from aitp.config import Settings
from aitp.observability.metrics import Metrics
from aitp.transport.chunking import chunk_sizes
from aitp.transport.task_api import PatchResult, TaskApiClient
from aitp.timers import Scheduler, backoff_delay
from actors.directory import StageDirectory
from actors.held_tells import HeldTells
from actors.messages import StageFailed
from actors.patch_sender import PatchSender

log = logging.getLogger("aitp.actors")


@dataclass
class PipelineContext:
    """What every stage needs and outlives any one stage instance. What a stage uses beyond this
    (the journal, the task API, the router...) it gets in its constructor (actors/parts.py)."""

    settings: Settings
    directory: StageDirectory
    scheduler: Scheduler
    metrics: Metrics = field(default_factory=Metrics)
    supervisor: pykka.ActorRef | None = None
    rng: random.Random = field(default_factory=random.Random)
    # Called with (stage, message) before a stage handles a told message: the seam through which
    # tests inject faults at a chosen moment, and where a tracer could watch the flow.
    before_message: Callable[[Stage, Any], None] | None = None

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        processing = self.settings.processing
        delay = backoff_delay(attempt, processing.retry_backoff_factor, processing.retry_backoff_max_seconds,
                              self.rng.random)
        return max(delay, retry_after or 0.0)

    def probe_backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """The wait before asking again a dependency everything waits for (the task API, the token
        endpoint): capped at a few seconds, so its return is seen at once (a Retry-After it sends
        is still honoured)."""
        processing = self.settings.processing
        ceiling = min(processing.retry_backoff_max_seconds, self.settings.resilience.outage_backoff_max_seconds)
        delay = backoff_delay(attempt, processing.retry_backoff_factor, ceiling, self.rng.random)
        return max(delay, retry_after or 0.0)


class Stage(pykka.ThreadingActor):
    """Base of every pipeline stage."""

    name: str = "stage"

    def __init__(self, ctx: PipelineContext, orphans: list | None = None,
                 task_api: TaskApiClient | None = None) -> None:
        super().__init__()
        self.ctx = ctx
        self.settings = ctx.settings
        self.task_api = task_api                      # for stages that talk to the task API
        self.inherited = orphans or []
        self.pool: ThreadPoolExecutor | None = None   # for stages that make blocking calls
        self.pool_size = 0
        self.sender: PatchSender | None = None        # for stages that PATCH (patch_in_chunks)
        self.handing_over = False
        self.handling: Any = None     # the told message being handled: a failure hands it on
        self.idle_work: dict[str, Callable[[], None]] = {}   # when_idle: by name, in order
        self.held = HeldTells()                            # tell_soon

    @staticmethod
    def _create_actor_inbox() -> queue.SimpleQueue:
        # pykka's hook for the inbox, which pykka only puts to, gets from and asks if empty.
        # SimpleQueue is written in C: a message that wakes the actor costs about 10 us less CPU
        # than with queue.Queue's condition variable in Python, and a batch takes some ten messages.
        return queue.SimpleQueue()

    def start_pool(self, workers: int) -> ThreadPoolExecutor:
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix=f"aitp-{self.name}")
        self.pool_size = workers
        return self.pool

    def patch_in_chunks(self, items: list, patch_of: Callable[[Any], tuple[str, bytes, bool]],
                        answer: Callable[[list[tuple[Any, PatchResult]]], Any]) -> None:
        """PATCH `items` on the pool in chunks (chunk_sizes), each pipelined on one connection (or,
        where the API cannot take that, sent one by one, a chunk per thread), with one hand-off and
        one answer message per chunk, which cost more than a request on a fast API (benchmarks/README.md).
        Chunks that wait for a thread go out together (actors/patch_sender.py). A group stops at
        its first request without an answer (TaskApiClient.patch_in_order); each chunk's answer
        is told to this stage as `answer([(item, result), ...])`."""
        assert self.pool is not None and self.task_api is not None
        api = self.task_api
        if self.sender is None:
            directory, name = self.ctx.directory, self.name
            self.sender = PatchSender(self.pool, self.pool_size, api,
                                      lambda message: directory.tell(name, message), name)
        sizes = chunk_sizes(len(items), self.pool_size, api.pipelining, api.patch_seconds)
        chunks, start = [], 0
        for size in sizes:
            chunks.append(items[start:start + size])
            start += size
        self.sender.send(chunks, patch_of, answer)

    def on_stop(self) -> None:
        # A graceful stop waits for the calls already made (a claim landing after its release
        # would strand the task) and cancels the queued ones; the journal keeps their work. A stage
        # handing over to a successor lets the queued calls run too: their answers go to it.
        self.tell_held()
        if self.sender and not self.handing_over:
            self.sender.drop_queued()
        if self.pool:
            self.pool.shutdown(wait=True, cancel_futures=not self.handing_over)

    def on_start(self) -> None:
        # pykka calls no on_failure for an error in on_start; report it like any other failure.
        try:
            self.setup()
        except Exception:
            self.on_failure(*sys.exc_info())
            raise

    def setup(self) -> None:
        """A stage's start-up work, in its own thread (override instead of on_start)."""

    def on_receive(self, message: Any) -> None:
        self.handling = message
        self.held.begin()
        hook = self.ctx.before_message
        if hook is not None:
            hook(self, message)
        self.receive(message)
        self.held.end()
        self.handling = None

    def receive(self, message: Any) -> None:
        """Handle one told message (override instead of on_receive)."""

    def when_idle(self, work: Callable[[], None]) -> None:
        """Run `work` (a bound method: once per name until it ran) once the inbox is empty, after
        this message or after those already waiting: what several waiting messages cause goes out
        together, one send and one answer where each would have cost its own. Work put off here
        must be safe to lose with the instance: it does not run after a failure."""
        self.idle_work.setdefault(work.__name__, work)

    def tell_soon(self, stage: str, make: Callable[[list], Any], items: list, repeat_safe: bool = False) -> None:
        """Tell `stage` make(items) once the inbox is empty, joined with the items of every other
        tell_soon(stage, make) until then (actors/held_tells.py). Told before the instance goes,
        whatever the reason, so nothing held is lost; `repeat_safe` says whether a failing
        message's own items are told too (or left to its replay)."""
        if self.held.hold(stage, make, items, repeat_safe):
            self.tell_held()
        else:
            self.when_idle(self.tell_held)

    def tell_held(self) -> None:
        for stage, message in self.held.take():
            self.tell(stage, message)

    def _handle_receive(self, message: Any) -> Any:
        # pykka's dispatch of every envelope, told or asked (an ask may be the last one waiting):
        # after it, with the inbox empty, the work put off until then runs. Work that fails there
        # fails the stage as a told message would, even behind an ask (whose caller pykka would
        # hand the error to, leaving the stage running without the work done).
        answer = super()._handle_receive(message)
        try:
            while self.idle_work and self.actor_inbox.empty() and not self.actor_stopped.is_set():
                self.idle_work.pop(next(iter(self.idle_work)))()
        except Exception:
            self.idle_work.clear()
            self._handle_failure(*sys.exc_info())   # pykka's: log, stop, unregister
            self.on_failure(*sys.exc_info())
        return answer

    def tell(self, stage: str, message: Any) -> None:
        self.ctx.directory.tell(stage, message)

    def later(self, delay: float, message: Any, stage: str | None = None) -> None:
        """Deliver `message` to `stage` (default: this stage, whichever instance is current) after `delay`."""
        target = stage or self.name
        directory = self.ctx.directory
        self.ctx.scheduler.call_later(delay, lambda: directory.tell(target, message))

    def orphans(self) -> list:
        """Work this instance holds that would be lost with it; the next instance gets it back."""
        return []

    def hand_over(self) -> tuple[list, list]:
        """Asked by the supervisor (rest-for-one) after taking this stage out of the directory: give
        back the held work and the messages not yet handled, and stop."""
        self.tell_held()
        held, undelivered = self.orphans(), self._undelivered()
        self.handing_over = True
        self.stop()   # after this message; on_stop still waits for the calls in flight
        return held, undelivered

    def on_failure(self, exception_type, exception_value, traceback) -> None:
        log.error("stage failed", extra={"fields": {"stage": self.name, "error": repr(exception_value)[:500]}})
        self.held.failed()       # what the failing message added, its replay tells again
        try:
            self.tell_held()     # only tells, through the directory
        except Exception:  # noqa: BLE001
            log.exception("messages put off until idle could not be told")
        if self.ctx.supervisor is not None:
            # Out of the directory first: from now on messages for this stage wait there, so that
            # none lands in this inbox after it was emptied.
            self.ctx.directory.take_down(self.name, self.actor_urn)
            try:
                held = self.orphans()
            except Exception:  # noqa: BLE001 - a broken stage may not even list its work
                held = []
            failed_on, self.handling = self.handling, None
            undelivered = ([failed_on] if failed_on is not None else []) + self._undelivered()
            self.ctx.supervisor.tell(StageFailed(self.name, repr(exception_value)[:500], held, undelivered,
                                                 self.actor_urn, failed_on))
        if self.pool:   # queued calls still run; their answers go to the successor through the directory
            self.pool.shutdown(wait=False)

    def _undelivered(self) -> list:
        """Messages told to this instance and not yet handled, in order: pykka would drop them when
        the thread ends, so they go to the next instance instead. An ask among them (a /health
        scrape, say) is answered with an error at once; the tells behind it go on like the others."""
        told = []
        while not self.actor_inbox.empty():
            envelope = self.actor_inbox.get()
            if envelope.reply_to is None:
                told.append(envelope.message)
            else:
                error = pykka.ActorDeadError(f"stage {self.name} is being restarted")
                envelope.reply_to.set_exception((type(error), error, None))
        return told
