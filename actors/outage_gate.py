"""The task API is down: park the PATCHes that failed and send one probe per backoff period.

Shared by the stages that PATCH tasks (the RateLimiter's claims, the Reporter's results), so that
an outage costs a request every few seconds rather than one retry per task, and so that nothing
is given up: the first answer from the API sends everything that waited.
"""

from __future__ import annotations

from typing import Callable, Hashable


class OutageGate:
    def __init__(self, backoff: Callable[[int, float | None], float]) -> None:
        self._backoff = backoff
        self.parked: dict[Hashable, None] = {}   # in the order they failed
        self.failures = 0                        # failed PATCHes in a row
        self.probe_scheduled = False

    @property
    def down(self) -> bool:
        return self.failures > 0

    def park(self, key: Hashable) -> None:
        self.parked[key] = None

    def failed(self, key: Hashable, retry_after: float | None) -> tuple[Hashable, float] | None:
        """`key` failed: park it. Returns (key to probe with, delay) when a probe must be scheduled."""
        self.failures += 1
        self.parked[key] = None
        if self.probe_scheduled:
            return None
        self.probe_scheduled = True
        return next(iter(self.parked)), self._backoff(self.failures, retry_after)

    def probing(self, key: Hashable) -> None:
        """The probe's time has come: it is sent now."""
        self.probe_scheduled = False
        self.parked.pop(key, None)

    def answered(self) -> list:
        """The API answered: everything parked goes out again."""
        self.failures = 0
        waiting, self.parked = list(self.parked), {}
        return waiting
