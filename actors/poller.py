"""Poller: fetches the pending list, takes what the window has credit for, and never spins.

A shell over plain objects (aitp/intake/, aitp/coordination/lease_keeper.py): Admission says
whether a take may happen now and how large, PendingCursor which list to take from and where,
TaskReader what each entry becomes, FlowWindow how many tasks may be in flight, LeaseKeeper
(with REDIS_URL) which of them are this service's. The Poller sends what they answer.
"""

from __future__ import annotations

import itertools
import logging
import time

import msgspec

from aitp.coordination.lease_keeper import Adoption, LeaseKeeper
from aitp.errors import ContractError, TaskApiError
from aitp.intake import Admission, FlowWindow, HeldList, PendingCursor, TaskReader
from aitp.intake.admission import COORDINATION, CREDIT, PROVIDERS, RATE_LIMIT, TOKEN
from actors.messages import (ListFetched, ResultsAdopted, SlowStartChanged, TasksClaimed, TasksComputed,
                             TasksRejected, TasksSettled, TasksTaken, TokenArrived)
from actors.stage import PipelineContext, Stage

log = logging.getLogger("aitp.poller")

# Names each Poller instance's chain of LeaseTick timers: a counter, as id() of a Poller that was
# freed may be handed to the one restarted after it, whose chain would then take the old ticks.
_LEASE_CHAINS = itertools.count(1)


class PollDue(msgspec.Struct, frozen=True):
    """The Poller's timer: time to take (or fetch) again."""


class LeaseTick(msgspec.Struct, frozen=True):
    """The Poller's timer, every third of a lease: renew the leases held, take over run-out ones.
    `chain` names the instance that scheduled it: after a restart, the dead instance's tick reaches
    the new one, which drops it rather than run two chains of ticks."""

    chain: int = 0


class Poller(Stage):
    name = "poller"

    def __init__(self, ctx: PipelineContext, orphans: list | None = None) -> None:
        super().__init__(ctx, orphans)
        settings = self.settings
        processing, polling = settings.processing, settings.polling
        # Tasks in flight at most: grows with the API's distance (aitp/intake/window.py).
        self.window = FlowWindow(processing.min_in_flight, processing.max_in_flight, time.monotonic())
        self.cursor = PendingCursor(ctx.handlers, polling.list_reuse_seconds, self.inherited)
        self.reader = TaskReader(ctx.handlers, ctx.router, ctx.chat_router)
        lease_seconds = settings.coordination.lease_seconds
        self.keeper = LeaseKeeper(ctx.leases, ctx.handlers, lease_seconds) if ctx.leases is not None else None
        self.admission = Admission(credentials=ctx.task_api.credentials, needs_token=settings.uses_oauth2,
                                   leases=ctx.leases, router=ctx.router, rate_limits=ctx.rate_limits,
                                   interval_seconds=polling.interval_seconds, coordination_seconds=lease_seconds / 3)
        self.poll_scheduled = False
        self.waiting_for_credit = False
        self.waiting_for_token = False
        self.failures_in_a_row = 0
        self.stopped = False
        self.lease_chain = next(_LEASE_CHAINS)   # this instance's LeaseTick timers

    def setup(self) -> None:
        self.tell("reporter", SlowStartChanged(True))    # a new window starts again
        self.start_pool(1)         # the thread fetching pending lists
        self._schedule(0)
        if self.keeper is not None:
            self.later(self.keeper.tick_seconds, LeaseTick(self.lease_chain))

    @property
    def credit(self) -> int:
        return self.window.size - len(self.cursor.in_flight)

    def _schedule(self, delay: float) -> None:
        if not self.poll_scheduled and not self.stopped:
            self.poll_scheduled = True
            self.later(delay, PollDue())

    def receive(self, message) -> None:
        if isinstance(message, PollDue):
            self.poll_scheduled = False
            self._poll()
        elif isinstance(message, TasksSettled):
            self.window.settled(self.cursor.settle(message.task_ids))
            self._resized()
            if self.keeper is not None:
                self.keeper.finish(message.task_ids, final=not message.released)
        elif isinstance(message, TasksComputed):
            if not self.window.starting:     # a Reporter restarted after the start ended
                self.tell("reporter", SlowStartChanged(False))
            self.window.computed(message.count, time.monotonic())
            self._resized()
        elif isinstance(message, LeaseTick):
            if message.chain == self.lease_chain:
                self._keep_leases()
        elif isinstance(message, ListFetched):
            self._fetched(message)
        elif isinstance(message, TokenArrived) and self.waiting_for_token:
            self.waiting_for_token = False
            log.info("polling resumed: a token is held")
            self._schedule(0)

    def _resized(self) -> None:
        """Size the window again; take more when the credit it left is worth a take."""
        api = self.ctx.task_api
        starting = self.window.starting
        old = self.window.resize(time.monotonic(), api.round_trip_seconds)
        if starting and not self.window.starting:
            self.tell("reporter", SlowStartChanged(False))   # no more TasksComputed
        if old is not None:
            log.info("window resized", extra={"fields": {
                "window": self.window.size, "was": old, "settle_rate": round(self.window.settle_rate, 1),
                "start_pace": round(self.window.start_pace, 1),
                "round_trip_ms": round((api.round_trip_seconds or 0.0) * 1000, 1)}})
        if self.waiting_for_credit and self.credit >= self._refill_at():
            self.waiting_for_credit = False
            self._schedule(0)

    def _refill_at(self) -> int:
        """How much credit a take waits for: half the window when it needs a poll (which costs
        the whole list), an eighth while the last list can still be taken from (which costs nothing)."""
        share = 8 if self.cursor.fresh(time.monotonic()) is not None else 2
        return max(1, self.window.size // share)

    def _poll(self) -> None:
        if self.stopped:
            return
        verdict = self.admission.decide(self.credit, time.time())
        if not verdict.budget:
            self._wait(verdict.wait, verdict.reason)
            return
        held = self.cursor.fresh(time.monotonic())
        if held is None:
            self._fetch()          # its ListFetched brings the Poller back here with a list
            return
        self._take(held, verdict.budget)

    def _wait(self, delay: float | None, reason: str) -> None:
        if reason == TOKEN:
            # Polling without a token only earns a 403; the Authenticator says when one arrives.
            if not self.waiting_for_token:
                log.info("polling paused: no token")
            self.waiting_for_token = True
        elif reason == PROVIDERS:
            log.info("polling paused: no provider available", extra={"fields": {"resume_in_s": round(delay, 2)}})
        elif reason == RATE_LIMIT:
            log.info("rate limit reached: polling paused", extra={"fields": {"resume_in_s": round(delay, 2)}})
        elif reason == COORDINATION:
            self.cursor.drop_lists()       # polled again once Redis answers
        elif reason == CREDIT:
            self.waiting_for_credit = True
        if delay is not None:
            self._schedule(delay)

    def _take(self, held: HeldList, budget: int) -> None:
        first = not self.cursor.taken_total
        take = self.cursor.take(held, budget, self.window.size, self.reader, time.time())
        taken = take.taken
        if taken and self.keeper is not None:
            taken, theirs, answered = self.keeper.acquire(taken)
            self.cursor.give_up(theirs)
            if not answered:
                self.cursor.forget_held()   # polled again once Redis answers
        used_up = self.cursor.end_take(held, bool(taken or take.rejected))
        more_left = take.more_left or used_up
        if taken:
            if first:      # the first take: the settle rate counts from here
                self.window.start(time.monotonic())
            self.tell("rate_limiter", TasksTaken(taken))
        if take.rejected:
            for task_type in take.rejected_types:
                self.ctx.metrics.task_decided(task_type, "failed", 0.0)
            self.tell("reporter", TasksRejected(take.rejected))
        if self.cursor.should_prefetch(held, self.window.size, self.window.settle_rate, time.monotonic()):
            self._fetch()
        if not more_left:
            self._schedule(self.settings.polling.interval_seconds)
        elif self.credit >= self._refill_at():   # a full take: poll again as soon as credit returns
            self._schedule(0)
        else:
            self.waiting_for_credit = True

    def _keep_leases(self) -> None:
        assert self.keeper is not None
        self.later(self.keeper.tick_seconds, LeaseTick(self.lease_chain))
        adoption = self.keeper.keep(adopt=not self.stopped)
        if adoption is None:
            return
        if adoption.task_ids:
            self._adopt(adoption)
        if self.waiting_for_credit and not self.poll_scheduled:
            self._schedule(0)

    def _adopt(self, adoption: Adoption) -> None:
        self.cursor.in_flight.update(adoption.task_ids)
        if adoption.jobs:
            self.ctx.journal.record_claims(adoption.claims)
            self.tell("dispatcher", TasksClaimed(adoption.jobs))
        if adoption.entries:
            self.tell("reporter", ResultsAdopted(adoption.entries))

    # --- fetching the pending list, in the Poller's own thread so that takes go on meanwhile ---
    def _fetch(self) -> None:
        """Fetch the pending list in the background (one fetch at a time); ListFetched brings it."""
        begun = None if self.stopped else self.cursor.begin_fetch(self.window.size)
        if begun is None:
            return
        (poll_number, splitter), api, directory, name = begun, self.ctx.task_api, self.ctx.directory, self.name

        def fetch() -> None:
            started = time.monotonic()
            try:
                api.fetch_pending(splitter.feed)
                answer = ListFetched(poll_number, pending=splitter.finish(), fetched_at=time.monotonic(),
                                     seconds=time.monotonic() - started)
            except (TaskApiError, ContractError) as exc:
                answer = ListFetched(poll_number, error=exc)
            except Exception as exc:  # noqa: BLE001 - a bug here must not leave `fetching` set forever
                log.exception("fetching the pending list failed")
                answer = ListFetched(poll_number, error=TaskApiError(f"fetching the pending list failed: {exc!r}"))
            directory.tell(name, answer)

        assert self.pool is not None
        self.pool.submit(fetch)

    def _fetched(self, message: ListFetched) -> None:
        if message.error is not None:
            nothing_held = self.cursor.fetch_failed()
            if self.stopped:
                return
            self.failures_in_a_row += 1
            delay = self.ctx.backoff(self.failures_in_a_row, getattr(message.error, "retry_after", None))
            log.warning("poll failed", extra={"fields": {"error": str(message.error), "retry_in_s": round(delay, 2)}})
            if nothing_held:
                self._schedule(delay)
            return
        if self.stopped:
            self.cursor.fetch_failed()
            return
        self.failures_in_a_row = 0
        if self.cursor.fetched(message.pending, message.poll_number, message.fetched_at, message.seconds):
            self._schedule(0)

    # --- asked by the supervisor ---
    def stop_polling(self) -> None:
        self.stopped = True
        self.cursor.drop_lists()

    def status(self) -> dict:
        cursor, keeper = self.cursor, self.keeper
        return {"in_flight": len(cursor.in_flight), "window": self.window.size, "credit": self.credit,
                "start_pace": round(self.window.start_pace, 1),
                "polls": cursor.polls_begun, "prefetched": cursor.prefetched,
                "taken": cursor.taken_total, "left_alone": dict(cursor.left_alone),
                "leased_elsewhere": keeper.leased_elsewhere if keeper else 0,
                "adopted": keeper.adopted_total if keeper else 0}

    def orphans(self) -> list:
        return sorted(self.cursor.in_flight)
