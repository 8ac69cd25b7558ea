"""SingleFlight: concurrent look-ups of one key share one call (the others wait for its answer)."""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

T = TypeVar("T")


class _Flight:
    __slots__ = ("done", "value", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value = None
        self.error: BaseException | None = None


class SingleFlight:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self.shared = 0          # look-ups answered by another's call

    def do(self, key: str, call: Callable[[], T]) -> T:
        """call() once for every caller asking for `key` meanwhile; its error is raised to each."""
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
            else:
                self.shared += 1
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            flight.value = call()
            return flight.value
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
