"""ProviderWorkers: one provider call per batch on a few threads, vector work in the process pool.

Each provider has CONCURRENCY_LIMIT call slots. A batch follows the route the Dispatcher gave it
(in hybrid mode: Ollama, then the OpenAI endpoint with the same model; aitp/routing.py). What a
failed batch becomes (split, next provider, backoff, back to `pending`, failed) is decided by
aitp/failures.py; after a backoff the batch is routed afresh, around open breakers.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from concurrent.futures import Future

import msgspec

from aitp.breakers import Permit
from aitp.errors import DimensionMismatch, ProviderError
from aitp.failures import BACK_OFF, NEXT_PROVIDER, RELEASE, SPLIT, Attempt, breaker_counts, decide, is_garbage, \
    vector_failure
from aitp.routing import Router
from aitp.storage.journal import Journal
from aitp.storage.rate_limits import RateLimitBackend
from aitp.vectors.dimensions import DimensionPins
from aitp.vectors.jobs import VectorJob, VectorJobResult
from aitp.vectors.pool import VectorPool
from actors.dispatcher import new_batch_id
from actors.messages import (BatchEmbedded, CallFailed, CallFinished, EmbedBatch, ProviderHungry, Rejection,
                             TasksRejected, TasksReleased)
from actors.stage import PipelineContext, Stage

log = logging.getLogger("aitp.provider_workers")


class ProviderWorkers(Stage):
    name = "provider_workers"

    def __init__(self, ctx: PipelineContext, orphans: list | None = None,
                 pins: DimensionPins | None = None, *, router: Router, journal: Journal, vector_pool: VectorPool,
                 rate_limits: RateLimitBackend) -> None:
        super().__init__(ctx, orphans)
        self.limit = self.settings.processing.concurrency_limit
        self.router, self.journal, self.vector_pool, self.rate_limits = router, journal, vector_pool, rate_limits
        self.queue: deque[EmbedBatch] = deque()
        self.active: dict[str, str] = {}          # batch id -> provider it is with
        self.pins = pins or DimensionPins(self.settings.models.dimensions, journal)
        self.calls: Counter[str] = Counter()
        self.tokens: Counter[str] = Counter()     # "provider/model" -> tokens the provider reported
        self.said_hungry = False                  # told the Dispatcher a slot is free, and got nothing since

    def setup(self) -> None:
        self.start_pool(self.settings.workers.provider_threads * max(1, len(self.router.providers)))
        for batch in self.inherited:
            self._accept(batch)
        self._pump()

    def receive(self, message) -> None:
        if isinstance(message, EmbedBatch):
            self.said_hungry = False
            self._accept(message)
        elif isinstance(message, CallFinished):
            self.active.pop(message.batch_id, None)
            if message.tokens:
                self.tokens[f"{message.provider}/{message.model}"] += message.tokens
        elif isinstance(message, CallFailed):
            self.active.pop(message.batch.batch_id, None)
            self._handle_failure(message.batch, message.error)
        self._pump()

    def _accept(self, batch: EmbedBatch) -> None:
        if batch.route is None:   # back from a backoff: route it around the breakers as they are now
            batch = msgspec.structs.replace(batch, route=self.router.route(batch.model), step=0, failures=[])
        if batch.provider is None:
            wait = self.router.seconds_until_available(batch.model)
            self._handle_failure(batch, ProviderError(
                f"no provider can take model {batch.model!r} now (circuit breakers open for "
                f"{round(wait, 1)} s more)", provider="router", counts_as_outage=False, retry_after=wait))
            return
        self.queue.append(batch)

    def _pump(self) -> None:
        busy = Counter(self.active.values())
        # Once every slot is taken the rest of the queue waits as it is: a pass over all of it at
        # each message (a finished call, a batch) cost more than the calls it started.
        free = sum(max(0, self.limit - busy[name]) for name in self.router.providers)
        waiting: deque[EmbedBatch] = deque()
        while self.queue and free:
            batch = self.queue.popleft()
            if batch.route:
                batch = msgspec.structs.replace(batch, route=self.router.least_busy_host(batch.route, batch.step, busy))
            provider = batch.provider
            assert provider is not None
            if busy[provider] >= self.limit:
                waiting.append(batch)
                continue
            batch = self._drop_refused_inputs(batch, provider)
            if batch is None:
                continue
            busy[provider] += 1
            free -= 1
            self.active[batch.batch_id] = provider
            self.calls[provider] += 1
            assert self.pool is not None
            self.pool.submit(self._call, batch, provider)
        waiting.extend(self.queue)
        self.queue = waiting
        if not self.queue and not self.said_hungry:
            self.when_idle(self._say_hungry)     # a batch waiting in the inbox may take the slot first

    def _say_hungry(self) -> None:
        """A slot is free and nothing waits for one: the Dispatcher may send a partial batch now
        rather than let the slot idle (at worst, it waits out its linger)."""
        busy = Counter(self.active.values())
        if not self.queue and not self.said_hungry and any(busy[name] < self.limit for name in self.router.providers):
            self.said_hungry = True
            self.tell("dispatcher", ProviderHungry())

    def _drop_refused_inputs(self, batch: EmbedBatch, provider: str) -> EmbedBatch | None:
        """Inputs this provider will not take (too long for OpenAI) leave the batch as a batch of
        their own, which moves on along the route or fails; the rest goes ahead."""
        check = self.router.providers[provider].input_refusal
        refused = [(job, reason) for job in batch.jobs if (reason := check(job.text))]
        if not refused:
            return batch
        for job, reason in refused:
            alone = msgspec.structs.replace(batch, batch_id=new_batch_id(), jobs=[job])
            self._handle_failure(alone, ProviderError(reason, provider=provider, retryable=False,
                                                      counts_as_outage=False))
        refused_ids = {job.task_id for job, _ in refused}
        kept = [job for job in batch.jobs if job.task_id not in refused_ids]
        return msgspec.structs.replace(batch, jobs=kept) if kept else None

    # --- runs on a provider thread: no stage state touched here ---
    def _call(self, batch: EmbedBatch, name: str) -> None:
        ctx, directory = self.ctx, self.ctx.directory
        provider, breaker = self.router.providers[name], self.router.breakers[name]
        permit = breaker.begin()
        if permit is None:   # opened since the batch was routed
            # An outage (so the tasks go back to pending if it lasts), though this call cost nothing.
            directory.tell(self.name, CallFailed(batch, ProviderError(
                f"{name} circuit breaker is open", provider=name, counts_as_outage=True)))
            return
        log.debug("batch sent", extra={"fields": {"batch_id": batch.batch_id, "provider": name, "model": batch.model,
                                                   "task_ids": [job.task_id for job in batch.jobs]}})
        started = time.perf_counter()
        try:
            if self.rate_limits.refunds_units:     # its rate-limit units are spent now
                self.journal.mark_sent([job.task_id for job in batch.jobs])
            raw = provider.embed(batch.model, [job.text for job in batch.jobs])
        except Exception as exc:  # noqa: BLE001 - a provider bug must not lose the batch
            if not isinstance(exc, ProviderError):
                log.exception("provider raised unexpectedly", extra={"fields": {"batch_id": batch.batch_id}})
                exc = ProviderError(repr(exc), provider=name)
            breaker.end(permit, failed=breaker_counts(exc, len(batch.jobs)))
            ctx.metrics.provider_call(name, batch.model, str(exc.status or "error"), len(batch.jobs),
                                      time.perf_counter() - started)
            directory.tell(self.name, CallFailed(batch, exc))
            return
        ctx.metrics.provider_call(name, batch.model, "success", len(batch.jobs), time.perf_counter() - started,
                                  raw.tokens)
        directory.tell(self.name, CallFinished(batch.batch_id, name, batch.model, raw.tokens))
        job = VectorJob(decoder=raw.decoder, payload=raw.payload, model=batch.model,
                        task_ids=[job.task_id for job in batch.jobs], dimension=self.pins.expected(batch.model),
                        max_body_bytes=self.settings.api.max_body_bytes)
        # The breaker hears how the call went once its answer is checked: garbage is a failure too.
        try:
            future = self.vector_pool.submit(job)
        except Exception as exc:  # noqa: BLE001 - a closed pool (shutting down): the batch is retried
            breaker.end(permit, failed=False)
            directory.tell(self.name, CallFailed(batch, ProviderError(f"vector work refused: {exc!r}", provider=name,
                                                                      counts_as_outage=False)))
            return
        future.add_done_callback(lambda done: self._vectors_done(batch, name, permit, done))

    def _vectors_done(self, batch: EmbedBatch, name: str, permit: Permit, done: Future) -> None:
        error = done.exception()
        self.router.breakers[name].end(permit, failed=is_garbage(error))
        if error is None:
            result: VectorJobResult = done.result()
            self.ctx.metrics.vector_work.observe(result.seconds)   # measured in the worker, recorded here
            if self.pins.confirm(batch.model, result.dimension):
                self._decided(batch, result)
                self.ctx.directory.tell("reporter", BatchEmbedded(batch.batch_id, batch.model, result.results,
                                                                  paid=self.router.providers[name].paid))
                return
            error = DimensionMismatch(result.dimension, self.pins.expected(batch.model) or 0)
        self.ctx.directory.tell(self.name, CallFailed(batch, vector_failure(name, batch.model, error)))

    def _decided(self, batch: EmbedBatch, result: VectorJobResult) -> None:
        now, metrics = time.time(), self.ctx.metrics
        for job, vector in zip(batch.jobs, result.results):
            metrics.task_decided(job.task_type, "succeeded" if vector.body is not None else "failed",
                                 now - job.taken_at if job.taken_at else None)
        log.info("batch embedded", extra={"fields": {"batch_id": batch.batch_id, "model": batch.model,
                                                      "tasks": len(batch.jobs), "dimension": result.dimension}})

    # --- back on the actor thread ---
    def _handle_failure(self, batch: EmbedBatch, error: ProviderError) -> None:
        failures = [*batch.failures, f"{error.provider}: {error}"]
        fields = {"batch_id": batch.batch_id, "model": batch.model, "tasks": len(batch.jobs),
                  "attempt": batch.attempt, "provider": error.provider, "error": str(error)}
        left = len(batch.route) - batch.step - 1 if batch.route else 0
        action = decide(Attempt(len(batch.jobs), batch.attempt, left), error, self.settings.processing.max_retries)
        if action == SPLIT:
            middle = len(batch.jobs) // 2
            log.info("splitting batch after an input-specific failure", extra={"fields": fields})
            for half in (batch.jobs[middle:], batch.jobs[:middle]):
                self.queue.appendleft(msgspec.structs.replace(batch, batch_id=new_batch_id(), jobs=half))
        elif action == NEXT_PROVIDER:
            fields["next_provider"] = batch.route[batch.step + 1]
            log.warning("provider failed, trying the next one", extra={"fields": fields})
            self.queue.appendleft(msgspec.structs.replace(batch, step=batch.step + 1, failures=failures))
        elif action == BACK_OFF:
            delay = self.ctx.backoff(batch.attempt, error.retry_after)
            log.warning("provider call failed, retrying", extra={"fields": {**fields, "retry_in_s": round(delay, 2)}})
            self.later(delay, msgspec.structs.replace(batch, attempt=batch.attempt + 1, route=None, step=0,
                                                      failures=[]))
        else:
            self._give_up(batch, action == RELEASE, "; ".join(dict.fromkeys(failures)), fields)  # each word once

    def _give_up(self, batch: EmbedBatch, release: bool, reason: str, fields: dict) -> None:
        if release:
            log.warning("no provider could take the batch; its tasks go back to pending",
                        extra={"fields": {**fields, "reason": reason}})
            self.ctx.metrics.tasks_released.inc(len(batch.jobs))
            self.tell("reporter", TasksReleased([job.task_id for job in batch.jobs], reason, batch.batch_id))
            return
        log.error("provider call failed for good", extra={"fields": {**fields, "reason": reason}})
        now = time.time()
        for job in batch.jobs:
            self.ctx.metrics.task_decided(job.task_type, "failed", now - job.taken_at if job.taken_at else None)
        self.tell("reporter", TasksRejected([Rejection(job.task_id, reason, batch.batch_id) for job in batch.jobs]))

    def release_queued(self) -> list:
        """Shutting down: hand back the jobs of batches not yet sent to a provider."""
        jobs = [job for batch in self.queue for job in batch.jobs]
        self.queue.clear()
        return jobs

    def status(self) -> dict:
        return {"queued": len(self.queue), "active": len(self.active), "calls": dict(self.calls),
                "tokens": dict(self.tokens), "breakers": self.router.status()}

    def orphans(self) -> list:
        return list(self.queue)
