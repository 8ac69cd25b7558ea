"""What every stage shares: the directory to reach the others, the context of shared objects, and
a base actor that hands its held work to the supervisor when it dies."""

from __future__ import annotations

import logging
import queue
import random
import sys
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import pykka

from aitp.config import Settings
from aitp.coordination.leases import LeaseBook
from aitp.storage.journal import Journal
from aitp.observability.metrics import Metrics
from aitp.storage.rate_limits import AdmitAll, RateLimitBackend
from aitp.routing import ChatRouter, Router
from aitp.transport.task_api import PatchResult, TaskApiClient
from aitp.transport.wikidata import WikidataClient
from aitp.tasks import TaskHandler
from aitp.timers import Scheduler, backoff_delay
from aitp.vectors.pool import VectorPool
from actors.messages import StageFailed
from actors.patch_sender import PatchSender

log = logging.getLogger("aitp.actors")


# The fewest PATCHes a pipelined chunk carries: a batch's results go as one chunk.
_PIPELINED_CHUNK = 16
# About how long one chunk should take on its connection. A fast API gets a take's claims in one
# or two chunks (each more chunk costs a hand-off, an answer message and thread wake-ups); a slow
# one gets them spread over the whole pool. A take is a few hundred ms of provider work, so claims
# that land within 50 ms keep well ahead of it.
_CHUNK_SECONDS = 0.05


def chunk_sizes(items: int, threads: int, pipelining: bool, patch_seconds: float | None) -> list[int]:
    """How many PATCHes each chunk carries: as few chunks as keep each within _CHUNK_SECONDS at
    the API's measured pace (all `threads` while that pace is unknown), at most one per thread."""
    if not items:
        return []
    smallest = _PIPELINED_CHUNK if pipelining else 1
    if patch_seconds:
        smallest = max(smallest, int(_CHUNK_SECONDS / patch_seconds))
    ways = max(1, min(threads, items // smallest))
    size, extra = divmod(items, ways)
    return [size + (index < extra) for index in range(ways)]


class StageDirectory:
    """Name -> current actor. A message for a stage that is down waits here and goes to the
    restarted stage, so a restart loses no message."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[str, pykka.ActorRef] = {}
        self._waiting: dict[str, list[Any]] = defaultdict(list)
        self.closed = False
        # Once closed (shutting down), a message for a stage that is gone goes here instead: the
        # pipeline journals late results rather than lose them.
        self.undeliverable: Callable[[str, Any], None] | None = None

    def tell(self, name: str, message: Any) -> None:
        with self._lock:
            ref = self._refs.get(name)
            if ref is not None:
                try:
                    ref.tell(message)
                    return
                except pykka.ActorDeadError:
                    pass
            if not self.closed:
                self._waiting[name].append(message)
                return
        if self.undeliverable is not None:
            self.undeliverable(name, message)

    def ref(self, name: str) -> pykka.ActorRef | None:
        with self._lock:
            return self._refs.get(name)

    def put(self, name: str, ref: pykka.ActorRef, first: list | tuple = ()) -> None:
        """Register a (re)started stage and hand it `first` (what its predecessor held unhandled,
        which is older), then what waited here for it, in order."""
        with self._lock:
            self._refs[name] = ref
            waiting, self._waiting[name] = [*first, *self._waiting[name]], []
            for index, message in enumerate(waiting):
                try:
                    ref.tell(message)
                except pykka.ActorDeadError:   # died at once (in on_start): keep the rest for the next one
                    self._waiting[name] = waiting[index:]
                    break

    def take_down(self, name: str, urn: str | None = None) -> pykka.ActorRef | None:
        """Unregister a stage that is about to be replaced (only the instance `urn`, when given):
        messages for it wait here meanwhile. Once this returns, no tell through the directory can
        still reach the old instance."""
        with self._lock:
            ref = self._refs.get(name)
            if ref is None or (urn is not None and ref.actor_urn != urn):
                return None
            return self._refs.pop(name)

    def waiting(self, name: str) -> int:
        with self._lock:
            return len(self._waiting[name])


@dataclass
class PipelineContext:
    """Objects that outlive any one stage instance (so a restart keeps connections and pools)."""

    settings: Settings
    directory: StageDirectory
    scheduler: Scheduler
    journal: Journal
    task_api: TaskApiClient
    router: Router
    vector_pool: VectorPool
    handlers: dict[str, TaskHandler]
    rate_limits: RateLimitBackend = field(default_factory=AdmitAll)
    metrics: Metrics = field(default_factory=Metrics)
    supervisor: pykka.ActorRef | None = None
    rng: random.Random = field(default_factory=random.Random)
    chat_router: ChatRouter | None = None      # the LLM task types' chat models
    wikidata: WikidataClient | None = None
    leases: LeaseBook | None = None            # several services on one API (aitp/coordination/leases.py)
    # Called with (stage, message) before a stage handles a told message: the seam through which
    # tests inject faults at a chosen moment, and where a tracer could watch the flow.
    before_message: Callable[[Stage, Any], None] | None = None

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        processing = self.settings.processing
        delay = backoff_delay(attempt, processing.retry_backoff_factor, processing.retry_backoff_max_seconds,
                              self.rng.random)
        return max(delay, retry_after or 0.0)


class Stage(pykka.ThreadingActor):
    """Base of every pipeline stage."""

    name: str = "stage"

    def __init__(self, ctx: PipelineContext, orphans: list | None = None) -> None:
        super().__init__()
        self.ctx = ctx
        self.settings = ctx.settings
        self.inherited = orphans or []
        self.pool: ThreadPoolExecutor | None = None   # for stages that make blocking calls
        self.pool_size = 0
        self.sender: PatchSender | None = None        # for stages that PATCH (patch_in_chunks)
        self.handing_over = False
        self.handling: Any = None     # the told message being handled: a failure hands it on

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
        assert self.pool is not None
        if self.sender is None:
            directory, name = self.ctx.directory, self.name
            self.sender = PatchSender(self.pool, self.pool_size, self.ctx.task_api,
                                      lambda message: directory.tell(name, message), name)
        sizes = chunk_sizes(len(items), self.pool_size, self.ctx.task_api.pipelining, self.ctx.task_api.patch_seconds)
        chunks, start = [], 0
        for size in sizes:
            chunks.append(items[start:start + size])
            start += size
        self.sender.send(chunks, patch_of, answer)

    def on_stop(self) -> None:
        # A graceful stop waits for the calls already made (a claim landing after its release
        # would strand the task) and cancels the queued ones; the journal keeps their work. A stage
        # handing over to a successor lets the queued calls run too: their answers go to it.
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
        hook = self.ctx.before_message
        if hook is not None:
            hook(self, message)
        self.receive(message)
        self.handling = None

    def receive(self, message: Any) -> None:
        """Handle one told message (override instead of on_receive)."""

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
        held, undelivered = self.orphans(), self._undelivered()
        self.handing_over = True
        self.stop()   # after this message; on_stop still waits for the calls in flight
        return held, undelivered

    def on_failure(self, exception_type, exception_value, traceback) -> None:
        log.error("stage failed", extra={"fields": {"stage": self.name, "error": repr(exception_value)[:500]}})
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
