"""Dispatcher: groups claimed jobs by model into batches (item cap, text and token budgets, short
linger) and routes each batch to the providers whose breakers are not open.

A partial batch goes out only when a provider would otherwise idle (ProviderWorkers says so) or
after a short linger while it does: behind a busy provider it waits to fill, since every call has a
fixed cost (at 2 ms per input and 10 ms per call, batches averaging 12 instead of 15 cost 7 % of
the throughput). `_MAX_HOLD_SECONDS` bounds the wait whatever the messages say."""

from __future__ import annotations

import logging
import time
import uuid

from aitp.tasks import ChatJob, EmbeddingJob
from aitp.tokens import estimate_tokens
import msgspec

from aitp.routing import Router
from actors.messages import EmbedBatch, ProviderHungry, RunChatTasks, TasksClaimed
from actors.stage import PipelineContext, Stage

log = logging.getLogger("aitp.dispatcher")


_MAX_HOLD_SECONDS = 1.0


class LingerOver(msgspec.Struct, frozen=True):
    """The Dispatcher's timer: the linger is over; send partial batches if a provider would idle."""


def new_batch_id() -> str:
    return uuid.uuid4().hex[:12]


class Dispatcher(Stage):
    name = "dispatcher"

    def __init__(self, ctx: PipelineContext, orphans: list | None = None, *, router: Router) -> None:
        super().__init__(ctx, orphans)
        self.router = router
        batching = self.settings.batching
        self.max_items, self.max_chars = batching.max_items, batching.max_text_chars
        self.linger = batching.linger_ms / 1000
        self.queues: dict[str, list[EmbeddingJob]] = {}
        self.flush_scheduled = False
        self.provider_hungry = True    # until a batch goes out; then ProviderWorkers says when
        self.held_since: float | None = None     # when the oldest queued job arrived
        self.batches_sent = 0
        self.limits: dict[str, tuple[int, int | None]] = {}   # model -> (items, tokens) per call

    def setup(self) -> None:
        if self.inherited:   # jobs a previous instance (or the last run) held
            self._enqueue(self.inherited)

    def receive(self, message) -> None:
        if isinstance(message, TasksClaimed):
            self._enqueue(message.jobs)
        elif isinstance(message, LingerOver):
            self.flush_scheduled = False
            held_too_long = self.held_since is not None and time.monotonic() - self.held_since >= _MAX_HOLD_SECONDS
            if self.provider_hungry or held_too_long:
                self._flush()
            elif self.queues:
                self.flush_scheduled = True
                self.later(_MAX_HOLD_SECONDS, LingerOver())
        elif isinstance(message, ProviderHungry):
            self.provider_hungry = True
            self._flush()

    def _flush(self) -> None:
        for model in list(self.queues):
            self._cut(model, flush=True)

    def _enqueue(self, jobs: list) -> None:
        chat = [job for job in jobs if isinstance(job, ChatJob)]
        if chat:      # LLM tasks are not batched: each runs on its own in LlmWorkers
            self.tell("llm_workers", RunChatTasks(chat))
            jobs = [job for job in jobs if not isinstance(job, ChatJob)]
            if not jobs:
                return
        if not self.queues:
            self.held_since = time.monotonic()
        for job in jobs:
            self.queues.setdefault(job.model, []).append(job)
        for model in list(self.queues):
            self._cut(model, flush=False)
        if self.queues and not self.flush_scheduled:
            # A short linger lets a trickle of claims fill a batch instead of costing a call each.
            self.flush_scheduled = True
            self.later(self.linger, LingerOver())

    def _limits(self, model: str) -> tuple[int, int | None]:
        if model not in self.limits:
            provider_items, provider_tokens = self.router.batch_limits(model)
            self.limits[model] = (min(self.max_items, provider_items or self.max_items), provider_tokens)
        return self.limits[model]

    def _cut(self, model: str, *, flush: bool) -> None:
        """Send full batches of `model`; with `flush`, the partial rest too."""
        queue = self.queues[model]
        max_items, max_tokens = self._limits(model)
        while queue:
            size, chars, tokens, full = 0, 0, 0, False
            while size < len(queue) and size < max_items:
                chars += len(queue[size].text)
                if max_tokens:
                    tokens += estimate_tokens(queue[size].text)
                if size and (chars > self.max_chars or (max_tokens and tokens > max_tokens)):
                    full = True
                    break
                size += 1
            full = full or size == max_items
            if not full and not flush:
                break   # not full yet: wait for the linger
            batch, queue[:size] = queue[:size], []
            self.batches_sent += 1
            self.provider_hungry = False
            # Routed now, around open breakers; ProviderWorkers re-routes it after a backoff.
            self.tell("provider_workers", EmbedBatch(new_batch_id(), model, batch,
                                                     route=self.router.route(model)))
        if not queue:
            del self.queues[model]
            if not self.queues:
                self.held_since = None

    def release_queued(self) -> list[EmbeddingJob]:
        """Shutting down: hand back every job not yet sent to a provider."""
        jobs = [job for queue in self.queues.values() for job in queue]
        self.queues.clear()
        return jobs

    def status(self) -> dict:
        return {"queued": sum(len(q) for q in self.queues.values()), "batches_sent": self.batches_sent}

    def orphans(self) -> list:
        return [job for queue in self.queues.values() for job in queue]
