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

from aitp.coordination.lease_keeper import Adoption
from aitp.coordination.leases import LeaseBook
from aitp.intake import HeldList, build_intake, fetch_list
from aitp.intake.admission import COORDINATION, CREDIT, PROVIDERS, RATE_LIMIT, TOKEN
from aitp.routing import ChatRouter, Router
from aitp.storage.journal import Journal
from aitp.storage.rate_limits import RateLimitBackend
from aitp.tasks import TaskHandler
from aitp.transport.task_api import TaskApiClient
from aitp.transport.wikidata import WikidataClient
from actors.messages import (ListFetched, ResultsAdopted, SlowStartChanged, TasksClaimed, TasksComputed,
                             TasksRejected, TasksSettled, TasksTaken, TokenArrived)
from actors.stage import PipelineContext, Stage

log = logging.getLogger("aitp.poller")

# Names each Poller instance's chain of LeaseTick timers: a counter, as id() of a Poller that was
# freed may be handed to the one restarted after it, whose chain would then take the old ticks.
_LEASE_CHAINS = itertools.count(1)

_PAUSED = {PROVIDERS: "polling paused: no provider available", RATE_LIMIT: "rate limit reached: polling paused"}


class PollDue(msgspec.Struct, frozen=True):
    """The Poller's timer: time to take (or fetch) again."""


class LeaseTick(msgspec.Struct, frozen=True):
    """The Poller's timer, every third of a lease: renew the leases held, take over run-out ones.
    `chain` names the instance that scheduled it: after a restart, the dead instance's tick reaches
    the new one, which drops it rather than run two chains of ticks."""

    chain: int = 0


class Poller(Stage):
    name = "poller"

    def __init__(self, ctx: PipelineContext, orphans: list | None = None, *, task_api: TaskApiClient,
                 journal: Journal, handlers: dict[str, TaskHandler], router: Router,
                 rate_limits: RateLimitBackend, chat_router: ChatRouter | None = None,
                 leases: LeaseBook | None = None, wikidata: WikidataClient | None = None) -> None:
        super().__init__(ctx, orphans, task_api)
        self.journal = journal
        self.window, self.cursor, self.reader, self.admission, self.keeper = build_intake(
            self.settings, handlers=handlers, router=router, chat_router=chat_router, rate_limits=rate_limits,
            credentials=task_api.credentials, leases=leases, wikidata=wikidata, in_flight=self.inherited,
            now=time.monotonic())
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
        api = self.task_api
        starting = self.window.starting
        old = self.window.resize(time.monotonic(), api.round_trip_seconds)
        if starting and not self.window.starting:
            self.tell("reporter", SlowStartChanged(False))   # no more TasksComputed
        if old is not None:
            round_trip_ms = round((api.round_trip_seconds or 0.0) * 1000, 1)
            log.info("window resized", extra={"fields": {**self.window.describe(), "was": old,
                                                          "round_trip_ms": round_trip_ms}})
        if self.waiting_for_credit and self._credit_enough():
            self.waiting_for_credit = False
            self._schedule(0)

    def _credit_enough(self) -> bool:
        return self.credit >= self.cursor.refill_at(self.window.size, time.monotonic())

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
        elif reason in _PAUSED:
            log.info(_PAUSED[reason], extra={"fields": {"resume_in_s": round(delay or 0.0, 2)}})
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
        if not more_left:     # tasks held back for a dependency are taken as soon as it may answer
            self._schedule(min(self.settings.polling.interval_seconds, self.reader.retry_in or float("inf")))
        elif self._credit_enough():   # a full take: poll again as soon as credit returns
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
            self.journal.record_claims(adoption.claims)
            self.tell("dispatcher", TasksClaimed(adoption.jobs))
        if adoption.entries:
            self.tell("reporter", ResultsAdopted(adoption.entries))

    # --- fetching the pending list, in the Poller's own thread so that takes go on meanwhile ---
    def _fetch(self) -> None:
        """Fetch the pending list in the background (one fetch at a time); ListFetched brings it."""
        begun = None if self.stopped else self.cursor.begin_fetch(self.window.size, self.reader.types_held())
        if begun is None:
            return
        (poll_number, splitter), api, directory, name = begun, self.task_api, self.ctx.directory, self.name

        def fetch() -> None:
            directory.tell(name, ListFetched(poll_number, *fetch_list(api.fetch_pending, splitter)))

        assert self.pool is not None
        self.pool.submit(fetch)

    def _fetched(self, message: ListFetched) -> None:
        if message.error is not None:
            nothing_held = self.cursor.fetch_failed()
            if self.stopped:
                return
            self.failures_in_a_row += 1
            delay = self.ctx.probe_backoff(self.failures_in_a_row, getattr(message.error, "retry_after", None))
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
        return {"in_flight": len(self.cursor.in_flight), "window": self.window.size, "credit": self.credit,
                "start_pace": round(self.window.start_pace, 1), "held_back": self.reader.held_back,
                **self.cursor.status(),
                **(self.keeper.status() if self.keeper else {"leased_elsewhere": 0, "adopted": 0})}

    def orphans(self) -> list:
        return sorted(self.cursor.in_flight)
