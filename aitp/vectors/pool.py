"""Worker processes for vector jobs, each on a pipe of its own, replaced when one dies.

Why not ProcessPoolExecutor: its workers share one result pipe. A batch's finished bodies take
about 150 kB, more than a pipe holds, so a worker killed while writing them leaves half a message
in the shared pipe, and the executor then waits for the rest forever, with every later job
(tests/test_faults.py caught it). Here each worker has its own pipe and a thread in the parent
that hands it one job at a time: a death is an end-of-file on that pipe alone, the worker is
started again, and the job is retried once.

Workers are plain `python -m aitp.vectors.worker FD` subprocesses on an inherited socket, not
multiprocessing processes: those need a resource-tracker process (15 MB) and re-import the
script that started the service in every worker.

With no workers (`workers.process_workers = 0`), a job runs in the thread that submits it. That
saves the hop to another process, about 22 us of CPU per task on the 2-core benchmark
(benchmarks/README.md), but the vector work then holds the service's GIL, and a batch that needs
normalising loads numpy into the service.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import socket
import subprocess
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import msgspec

from aitp.vectors.jobs import VectorJob, VectorJobResult, with_bodies
from aitp.vectors.worker import ERROR, JOB, PING, RESULT, STOP, Pipe, tagged

log = logging.getLogger("aitp.vector_pool")

_result_decoder = msgspec.msgpack.Decoder(VectorJobResult)
_STOP_SECONDS = 5.0


# What a worker process needs of the environment: where Python and its libraries are, the locale,
# and the numeric libraries' tuning. Nothing else: the client secret, the API key and tokens stay in
# the service process.
_WORKER_ENV_NAMES = frozenset({"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE", "PYTHONHOME",
                               "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "SYSTEMROOT"})
_WORKER_ENV_PREFIXES = ("OPENBLAS_", "OMP_", "MKL_", "NUMEXPR_", "GOTO_", "VECLIB_")


def worker_environment(environ) -> dict[str, str]:
    return {name: value for name, value in environ.items()
            if name in _WORKER_ENV_NAMES or name.startswith(_WORKER_ENV_PREFIXES)}


class WorkerDied(RuntimeError):
    """A vector worker process died (killed, or crashed) while it held this job."""


@dataclass
class _Queued:
    job: VectorJob
    future: Future
    attempts: int


class VectorPool:
    """`submit` returns a future; a job lost to a dead worker is retried once in its fresh
    replacement, so a crashed process costs a retry, never a task."""

    def __init__(self, workers: int, answer_timeout: float = 60.0) -> None:
        # A worker that has not answered a job (or a ping) within this many seconds is taken for
        # hung (a pathological input, a stopped process): killed and replaced, its job retried once.
        self.answer_timeout = answer_timeout
        # A fresh interpreter per worker (never a fork: the parent runs many threads), finding
        # this package where the parent found it.
        package_root = str(Path(__file__).resolve().parents[2])
        self._worker_env = {**worker_environment(os.environ), "PYTHONPATH": os.pathsep.join(
            [package_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
        self._queue: queue.SimpleQueue[_Queued | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self.restarts = 0
        self._workers = [_Worker(self, number) for number in range(workers)]
        for worker in self._workers:
            worker.thread.start()

    def warm_up(self) -> None:
        """Wait until every worker has started and imported what it needs."""
        for worker in self._workers:
            worker.ready.wait()

    def worker_pids(self) -> list[int]:
        return [pid for pid in (worker.pid for worker in self._workers) if pid]

    def submit(self, job: VectorJob, attempts: int = 2) -> Future[VectorJobResult]:
        future: Future[VectorJobResult] = Future()
        with self._lock:
            closed = self._closed
            if not closed and self._workers:
                self._queue.put(_Queued(job, future, attempts))
                return future
        if closed:   # shutting down: a late batch must not start anything
            future.set_exception(RuntimeError("vector pool is closed"))
        else:
            _run_here(job, future)
        return future

    def close(self, finish_queued: bool = False) -> None:
        """Fail the jobs not started yet (with `finish_queued`, run them: they may hold paid
        answers), let running ones finish, and stop the workers."""
        with self._lock:
            self._closed = True
            while not finish_queued:
                try:
                    queued = self._queue.get_nowait()
                except queue.Empty:
                    break
                if queued is not None and queued.future.set_running_or_notify_cancel():
                    queued.future.set_exception(RuntimeError("vector pool is closed"))
            for _ in self._workers:
                self._queue.put(None)
        for worker in self._workers:
            worker.thread.join()

    def _retry_or_fail(self, queued: _Queued, error: WorkerDied) -> None:
        with self._lock:
            self.restarts += 1
            if queued.attempts > 1 and not self._closed:
                log.warning("a vector worker process died; retrying its batch",
                            extra={"fields": {"tasks": len(queued.job.task_ids)}})
                self._queue.put(_Queued(queued.job, queued.future, queued.attempts - 1))
                return
        queued.future.set_exception(error)


class _Worker:
    """One worker process and the parent thread that feeds it, restarting the process when it dies."""

    def __init__(self, pool: VectorPool, number: int) -> None:
        self.pool = pool
        self.number = number
        self.ready = threading.Event()
        self.pid: int | None = None
        self._process: subprocess.Popen | None = None
        self._pipe: Pipe | None = None
        self.thread = threading.Thread(target=self._run, name=f"aitp-vector-feeder-{number}", daemon=True)

    def _run(self) -> None:
        try:
            self._start_process()
            self.ready.set()
            while (queued := self.pool._queue.get()) is not None:
                # A retried job's future is already running; a fresh one may have been cancelled.
                if not queued.future.running() and not queued.future.set_running_or_notify_cancel():
                    continue
                try:
                    kind, value = self._exchange(queued.job)
                except WorkerDied as died:
                    self.pool._retry_or_fail(queued, died)
                    self._start_process()
                    continue
                if kind == RESULT:
                    queued.future.set_result(with_bodies(value, queued.job.payload))
                else:
                    queued.future.set_exception(value)
        except Exception:   # cannot start a worker process (out of memory, file descriptors, ...)
            log.exception("a vector worker feeder stopped; the other workers take its jobs",
                          extra={"fields": {"worker": self.number}})
        finally:
            self.ready.set()
            self._stop_process()

    def _exchange(self, job: VectorJob | None) -> tuple[bytes, object]:
        """Send a job (None: a ping) and wait for its answer: (RESULT, result), (ERROR, exception)
        or (PING, None)."""
        try:
            self._pipe.send(Pipe.message(PING) if job is None else tagged(JOB, job))
            answer = self._pipe.receive()
        except TimeoutError:
            raise WorkerDied(f"vector worker {self.pid} gave no answer within {self.pool.answer_timeout:g} s "
                             "and was replaced") from None
        except (EOFError, OSError):
            raise WorkerDied(f"vector worker {self.pid} died: end of its pipe") from None
        kind, body = bytes(answer[:1]), answer[1:]
        try:
            if kind == RESULT:
                return kind, _result_decoder.decode(body)
            if kind == ERROR:
                return kind, pickle.loads(body)
        except Exception as exc:  # noqa: BLE001 - an unreadable answer fails its job, not the feeder
            return ERROR, RuntimeError(f"unreadable answer from vector worker {self.pid}: {exc!r}")
        return kind, None

    def _start_process(self) -> None:
        self._stop_process()
        parent_end, child_end = socket.socketpair()
        try:
            process = subprocess.Popen([sys.executable, "-m", "aitp.vectors.worker", str(child_end.fileno())],
                                       pass_fds=(child_end.fileno(),), env=self.pool._worker_env)
        finally:
            child_end.close()      # so that the worker's death is an end-of-file here
        parent_end.settimeout(self.pool.answer_timeout)
        self._process, self._pipe, self.pid = process, Pipe(parent_end), process.pid
        try:
            self._exchange(None)
        except WorkerDied:
            log.error("a vector worker process died at startup", extra={"fields": {"pid": process.pid}})

    def _stop_process(self) -> None:
        process, pipe = self._process, self._pipe
        self._process = self._pipe = self.pid = None
        if process is None:
            return
        try:
            pipe.send(Pipe.message(STOP))
        except OSError:
            pass
        try:
            process.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:      # hung or stopped: SIGKILL ends even a stopped process
            process.kill()
            process.wait(_STOP_SECONDS)
        pipe.close()


def _run_here(job: VectorJob, future: Future) -> None:
    """No workers: the job runs in the calling thread, its future done when this returns."""
    from aitp.vectors.work import process_job
    future.set_running_or_notify_cancel()
    try:
        result = process_job(job)
    except Exception as exc:  # noqa: BLE001 - as from a worker: every error goes to the future
        future.set_exception(exc)
    else:
        future.set_result(result)
