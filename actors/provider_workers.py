"""ProviderWorkers: one provider call per batch on a few threads, vector work in the process pool.

At most CONCURRENCY_LIMIT calls are in flight. A failure that one input can cause splits the batch
in halves so that only the guilty task fails; other failures are retried with backoff.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future

from aitp.dimensions import DimensionPins
from aitp.errors import ProviderError
from aitp.vectors import VectorJob, VectorJobResult
from actors.dispatcher import new_batch_id
from actors.messages import BatchEmbedded, CallFailed, CallFinished, EmbedBatch, Rejection, TasksRejected
from actors.stage import PipelineContext, Stage

log = logging.getLogger("aitp.provider_workers")


class ProviderWorkers(Stage):
    name = "provider_workers"

    def __init__(self, ctx: PipelineContext, orphans: list | None = None,
                 pins: DimensionPins | None = None) -> None:
        super().__init__(ctx, orphans)
        self.limit = self.settings.processing.concurrency_limit
        self.queue: deque[EmbedBatch] = deque()
        self.active: set[str] = set()
        self.pins = pins or DimensionPins(self.settings.models.dimensions, ctx.journal, ctx.provider)
        self.calls = 0

    def setup(self) -> None:
        self.start_pool(self.settings.workers.provider_threads)
        self.queue.extend(self.inherited)
        self._pump()

    def on_receive(self, message) -> None:
        if isinstance(message, EmbedBatch):
            self.queue.append(message)
        elif isinstance(message, CallFinished):
            self.active.discard(message.batch_id)
        elif isinstance(message, CallFailed):
            self.active.discard(message.batch.batch_id)
            self._handle_failure(message.batch, message.error)
        self._pump()

    def _pump(self) -> None:
        while self.queue and len(self.active) < self.limit:
            batch = self.queue.popleft()
            self.active.add(batch.batch_id)
            self.calls += 1
            assert self.pool is not None
            self.pool.submit(self._call, batch)

    # --- runs on a provider thread: no stage state touched here ---
    def _call(self, batch: EmbedBatch) -> None:
        ctx, directory = self.ctx, self.ctx.directory
        try:
            raw = ctx.provider.embed(batch.model, [job.text for job in batch.jobs])
        except ProviderError as exc:
            directory.tell(self.name, CallFailed(batch, exc))
            return
        except Exception as exc:  # noqa: BLE001 - a provider bug must not lose the batch
            log.exception("provider raised unexpectedly", extra={"fields": {"batch_id": batch.batch_id}})
            directory.tell(self.name, CallFailed(batch, ProviderError(repr(exc), provider=ctx.provider.name)))
            return
        directory.tell(self.name, CallFinished(batch.batch_id))
        job = VectorJob(decoder=raw.decoder, payload=raw.payload, model=batch.model,
                        task_ids=[job.task_id for job in batch.jobs], dimension=self.pins.expected(batch.model),
                        max_body_bytes=self.settings.api.max_body_bytes)
        ctx.vector_pool.submit(job).add_done_callback(lambda done: self._vectors_done(batch, done))

    def _vectors_done(self, batch: EmbedBatch, done: Future) -> None:
        error = done.exception()
        if error is None:
            result: VectorJobResult = done.result()
            if self.pins.confirm(batch.model, result.dimension):
                self.ctx.directory.tell("reporter", BatchEmbedded(batch.batch_id, batch.model, result.results))
                return
            error = f"dimension {result.dimension} differs from the pinned {self.pins.expected(batch.model)}"
        reason = f"{self.ctx.provider.name} response broke the vector contract: {error}"
        self.ctx.directory.tell(self.name, CallFailed(batch, ProviderError(reason, provider=self.ctx.provider.name)))

    # --- back on the actor thread ---
    def _handle_failure(self, batch: EmbedBatch, error: ProviderError) -> None:
        fields = {"batch_id": batch.batch_id, "model": batch.model, "tasks": len(batch.jobs),
                  "attempt": batch.attempt, "error": str(error)}
        if error.input_specific and len(batch.jobs) > 1:
            middle = len(batch.jobs) // 2
            log.info("splitting batch after an input-specific failure", extra={"fields": fields})
            for half in (batch.jobs[middle:], batch.jobs[:middle]):
                self.queue.appendleft(EmbedBatch(new_batch_id(), batch.model, half, batch.attempt))
            return
        if error.retryable and batch.attempt <= self.settings.processing.max_retries:
            delay = self.ctx.backoff(batch.attempt)
            log.warning("provider call failed, retrying", extra={"fields": {**fields, "retry_in_s": round(delay, 2)}})
            self.later(delay, EmbedBatch(batch.batch_id, batch.model, batch.jobs, batch.attempt + 1))
            return
        log.error("provider call failed for good", extra={"fields": fields})
        self.tell("reporter", TasksRejected([Rejection(job.task_id, str(error), batch.batch_id)
                                             for job in batch.jobs]))

    def status(self) -> dict:
        return {"queued": len(self.queue), "active": len(self.active), "calls": self.calls}

    def orphans(self) -> list:
        return list(self.queue)
