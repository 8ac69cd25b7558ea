"""Admission: whether the Poller may take tasks now, and how many.

A take waits for credit (room in the window), for a token (polling without one only earns a 403),
for Redis when leases are shared (a task taken could be another service's too), for some provider
whose breaker lets a call through (tasks taken now could only wait and use up retries), and for
room in the rate limits (sleeping until a full tier frees a unit rather than polling for tasks it
cannot admit). It never spins: each wait says how long, or which event ends it.
"""

from __future__ import annotations

from typing import NamedTuple

from aitp.errors import CoordinationError

# Why a take waits (log and status words).
CREDIT, TOKEN, COORDINATION, SHARED_LIMITS, PROVIDERS, RATE_LIMIT = (
    "credit", "token", "coordination", "shared limits", "providers", "rate limit")


class Verdict(NamedTuple):
    budget: int                  # tasks that may be taken now; 0: wait
    wait: float | None = None    # seconds until asking again; None: until an event (credit, a token)
    reason: str = ""             # why it waits


class Admission:
    def __init__(self, *, credentials, needs_token: bool, leases, router, rate_limits,
                 interval_seconds: float, coordination_seconds: float, chat_router=None) -> None:
        self.credentials, self.needs_token = credentials, needs_token
        self.leases, self.router, self.rate_limits = leases, router, rate_limits
        self.chat_router = chat_router
        self.interval_seconds = interval_seconds            # a full tier that names no moment: poll then
        self.coordination_seconds = coordination_seconds    # how often Redis is asked again

    def decide(self, credit: int, now: float) -> Verdict:
        """May a take happen at wall-clock time `now` with this much credit, and how large?"""
        if credit <= 0:
            return Verdict(0, None, CREDIT)
        if self.needs_token and self.credentials.current() is None:
            return Verdict(0, None, TOKEN)
        if self.leases is not None and not self.leases.available:
            return Verdict(0, self.coordination_seconds, COORDINATION)
        # Paused only when no kind of work has a provider: a task whose own providers are all
        # down is held back alone (TaskReader.waits).
        outage = self.router.seconds_until_available()
        if outage > 0 and self.chat_router is not None:
            outage = min(outage, self.chat_router.seconds_until_available())
        if outage > 0:
            return Verdict(0, outage, PROVIDERS)
        try:
            room = self.rate_limits.remaining()
            until = self.rate_limits.not_before() if room == 0 else None
        except CoordinationError:      # shared limits, and Redis does not answer: wait for it
            return Verdict(0, self.coordination_seconds, SHARED_LIMITS)
        if room == 0:
            return Verdict(0, max(0.05, until - now) if until else self.interval_seconds, RATE_LIMIT)
        return Verdict(credit if room is None else min(credit, room))
