"""One thread that runs callbacks later: the actors' polling intervals, lingers and backoffs."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable

log = logging.getLogger("aitp.timers")


class Scheduler:
    """`call_later(delay, fn)`; callbacks must be quick (they only tell an actor something)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="aitp-scheduler", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        with self._wake:
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay), next(self._order), callback))
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._wake.wait(timeout)
                if self._stopped:
                    return
                _, _, callback = heapq.heappop(self._heap)
            try:
                callback()
            except Exception:  # a timer must never die: log and go on
                log.exception("scheduled callback failed")

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=5)


def running_mean(mean: float | None, value: float, weight: float) -> float:
    """An exponentially weighted mean moved `weight` of the way to `value` (`value` itself first)."""
    return value if mean is None else mean + weight * (value - mean)


def backoff_delay(attempt: int, factor: float, cap: float, jitter: Callable[[], float]) -> float:
    """Exponential backoff with equal jitter: never zero (no tight loop), never above `cap`."""
    ceiling = min(cap, factor * (2 ** max(0, attempt - 1)))
    return ceiling / 2 + jitter() * ceiling / 2
