"""A pool of worker processes for vector jobs that replaces itself when a worker dies."""

from __future__ import annotations

import logging
import multiprocessing
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from aitp.vectors import VectorJob, VectorJobResult, process_job

log = logging.getLogger("aitp.vector_pool")


class VectorPool:
    """`submit` returns a future; a job lost to a dead worker is resubmitted to a fresh pool once
    per death, so a crashed process costs a retry, never a task."""

    def __init__(self, workers: int) -> None:
        # spawn, not fork: the parent runs many threads, and forking those is unsafe.
        self._context = multiprocessing.get_context("spawn")
        self._workers = workers
        self._lock = threading.Lock()
        self._pool = self._new_pool()
        self._closed = False
        self.restarts = 0

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self._workers, mp_context=self._context)

    def warm_up(self) -> None:
        """Start every worker now (imports included) so the first batch does not pay for it."""
        futures = [self._pool.submit(int, 0) for _ in range(self._workers)]
        for future in futures:
            future.result()

    def worker_pids(self) -> list[int]:
        return list(getattr(self._pool, "_processes", {}) or {})

    def submit(self, job: VectorJob, attempts: int = 2) -> Future[VectorJobResult]:
        outer: Future[VectorJobResult] = Future()
        self._submit_into(outer, job, attempts)
        return outer

    def _submit_into(self, outer: Future, job: VectorJob, attempts: int) -> None:
        with self._lock:
            if self._closed:   # shutting down: a late batch must not start a fresh pool
                outer.set_exception(RuntimeError("vector pool is closed"))
                return
            pool = self._pool
            try:
                inner = pool.submit(process_job, job)
            except (BrokenProcessPool, RuntimeError):
                pool = self._replace(pool)
                inner = pool.submit(process_job, job)

        def relay(done: Future) -> None:
            error = done.exception()
            if isinstance(error, BrokenProcessPool) and attempts > 1:
                log.warning("a vector worker process died; retrying its batch in a fresh pool",
                            extra={"fields": {"tasks": len(job.task_ids)}})
                with self._lock:
                    self._replace(pool)
                self._submit_into(outer, job, attempts - 1)
            elif error is not None:
                outer.set_exception(error)
            else:
                outer.set_result(done.result())

        inner.add_done_callback(relay)

    def _replace(self, broken: ProcessPoolExecutor) -> ProcessPoolExecutor:
        """Swap in a new pool unless another thread already did (called with the lock held)."""
        if self._pool is broken:
            self.restarts += 1
            broken.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
        return self._pool

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool = self._pool
        pool.shutdown(wait=True, cancel_futures=True)
