"""A circuit breaker per provider: pybreaker's state machine, without holding its lock during a call.

`pybreaker.CircuitBreaker.call` keeps the breaker's lock for the whole protected call, so two
batches through one breaker would run one after the other. Here a call is split in two short
steps: `begin()` asks whether a call may start now, and `end()` feeds its outcome through
pybreaker's own state machine with a function that returns at once. The provider call itself runs
between the two, outside any lock, so concurrent batches stay concurrent.

While half-open, one trial call at a time is let through; the others are routed elsewhere or wait.
`begin()` hands out a Permit saying whether its call is that trial: only the trial's end decides
whether the breaker closes, and only it lets the next trial through. A call that began while the
breaker was closed and ends after it opened speaks of a past state and is not replayed.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pybreaker


class Permit:
    """Leave to make one call through a breaker; give it back to `end` exactly once."""

    __slots__ = ("trial",)

    def __init__(self, trial: bool) -> None:
        self.trial = trial


_ORDINARY = Permit(trial=False)


class _Failed(Exception):
    """The outcome of a failed call, replayed through pybreaker."""


def _raise_failed() -> None:
    raise _Failed()


class ProviderBreaker:
    def __init__(self, name: str, threshold: int, reset_seconds: float,
                 storage: pybreaker.CircuitBreakerStorage | None = None) -> None:
        self.name = name
        # The state storage is pybreaker's public seam: memory by default, shared by other backends.
        self.storage = storage or pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        self.reset_seconds = reset_seconds
        self._breaker = pybreaker.CircuitBreaker(fail_max=threshold, reset_timeout=reset_seconds, name=name,
                                                 state_storage=self.storage)
        self._lock = threading.Lock()
        self._trial_in_flight = False
        self.opened_total = 0

    @property
    def state(self) -> str:
        """'closed', 'open' or 'half-open' (pybreaker's names)."""
        return self._breaker.current_state

    def seconds_until_trial(self) -> float:
        """0 when a call may be tried now, else how long until the open breaker lets a trial through."""
        with self._lock:
            return self._wait_locked()

    def _wait_locked(self) -> float:
        state = self._breaker.current_state
        if state == pybreaker.STATE_CLOSED:
            return 0.0
        if state == pybreaker.STATE_HALF_OPEN:
            return 0.0 if not self._trial_in_flight else self._breaker.reset_timeout
        opened_at = self.storage.opened_at
        if opened_at is None:
            return 0.0
        elapsed = (datetime.now(UTC) - opened_at).total_seconds()
        return max(0.0, self._breaker.reset_timeout - elapsed)

    def available(self) -> bool:
        return self.seconds_until_trial() == 0.0

    def begin(self) -> Permit | None:
        """A Permit when a call may start now (the caller must then call `end` with it exactly
        once), None when the breaker lets no call through now."""
        with self._lock:
            if self._wait_locked() > 0:
                return None
            state = self._breaker.current_state
            if state == pybreaker.STATE_OPEN:
                self._breaker.half_open()
                state = pybreaker.STATE_HALF_OPEN
            if state == pybreaker.STATE_HALF_OPEN:
                self._trial_in_flight = True
                return Permit(trial=True)
            return _ORDINARY

    def end(self, permit: Permit, *, failed: bool) -> None:
        """Record how a call that `begin` let through ended."""
        with self._lock:
            if permit.trial:
                self._trial_in_flight = False
            elif self._breaker.current_state != pybreaker.STATE_CLOSED:
                return        # began before the breaker opened: the trial, not this call, decides
            was_open = self._breaker.current_state == pybreaker.STATE_OPEN
            try:
                # Replay the outcome through pybreaker's state machine: it counts, opens and closes.
                self._breaker.call(_raise_failed if failed else _succeed)
            except (_Failed, pybreaker.CircuitBreakerError):
                pass
            if not was_open and self._breaker.current_state == pybreaker.STATE_OPEN:
                self.opened_total += 1

    def status(self) -> dict:
        return {"state": self.state, "failures": self._breaker.fail_counter, "opened_total": self.opened_total,
                "retry_in_s": round(self.seconds_until_trial(), 2)}


def _succeed() -> None:
    return None
