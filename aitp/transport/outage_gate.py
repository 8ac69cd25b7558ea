"""The task API is down: park the PATCHes that failed and send one probe per backoff period.

Shared by the stages that PATCH tasks (the RateLimiter's claims, the Reporter's results), so that
an outage costs a request every few seconds rather than one retry per task, and so that nothing
is given up: the first answer from the API sends everything that waited.
"""

from __future__ import annotations

from typing import Callable, Generic, Hashable, TypeVar

Item = TypeVar("Item")


class OutageGate(Generic[Item]):
    def __init__(self, backoff: Callable[[int, float | None], float]) -> None:
        self._backoff = backoff
        self.parked: dict[Hashable, Item] = {}   # key -> what to send again, in the order they failed
        self.failures = 0                        # failed probes in a row (the first failure counts as one)
        self.probe_scheduled = False
        self.probe_key: Hashable | None = None   # what the probe scheduled last is sent as

    @property
    def down(self) -> bool:
        return self.failures > 0

    def park(self, key: Hashable, item: Item) -> None:
        self.parked[key] = item

    def failed(self, key: Hashable, item: Item, retry_after: float | None) -> tuple[Item, float] | None:
        """`item` failed: park it. Returns (item to probe with, delay) when a probe must be scheduled.
        The backoff counts failed probes, not parked PATCHes: the 45 in flight when the API went
        down are one failure, not 45 (which made the next probe wait a minute)."""
        if not self.down or key == self.probe_key:
            self.failures += 1
        self.parked[key] = item
        if self.probe_scheduled:
            return None
        self.probe_scheduled = True
        self.probe_key, probe = next(iter(self.parked.items()))
        return probe, self._backoff(self.failures, retry_after)

    def probing(self, key: Hashable) -> None:
        """The probe's time has come: it is sent now."""
        self.probe_scheduled = False
        self.parked.pop(key, None)

    def answered(self, key: Hashable) -> list[Item]:
        """The API answered the PATCH of `key`: everything else parked goes out again."""
        self.failures, self.probe_key = 0, None
        self.parked.pop(key, None)
        waiting, self.parked = list(self.parked.values()), {}
        return waiting
