"""Poller: fetches the pending list, takes what the pipeline has credit for, and never spins."""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from dataclasses import dataclass

import msgspec

from aitp.contract import PendingList, PendingSplitter, Task, Unusable, read_entry
from aitp.errors import ContractError, CoordinationError, TaskApiError
from aitp.storage.journal import Claim, OutboxEntry
from aitp.tasks import ChatJob, TaskRejected
from actors.messages import (KeepLeases, ListFetched, Poll, Rejection, ResultsAdopted, TakenTask, TasksClaimed,
                             TasksComputed, TasksRejected, TasksSettled, TasksTaken, TokenArrived)
from actors.resume import resume
from actors.flow_window import FlowWindow
from actors.stage import PipelineContext, Stage

log = logging.getLogger("aitp.poller")

# Reasons to leave an entry alone besides those of aitp.contract (metric labels, so a fixed few).
NO_HANDLER, UNREADABLE = "no handler", "unreadable"

# How many left-alone ids to remember, so each is logged once without unbounded memory.
_SEEN_LIMIT = 100_000
# How much of one pending list to keep: a few shares of takes, so that memory does not grow with
# the backlog (the server lists all of it, 38 MB at 100,000 tasks). Reaching either limit makes the
# list "truncated": once it is used up, the next poll comes at once.
KEEP_PER_CREDIT = 8
_KEEP_BYTES = 16 * 1024 * 1024
# A fetch of the pending list this slow is overlapped with takes from the list before it.
_PREFETCH_WORTH_SECONDS = 0.05
# Names each Poller instance's chain of KeepLeases ticks: a counter, as id() of a Poller that was
# freed may be handed to the one restarted after it, whose chain would then take the old ticks.
_LEASE_CHAINS = itertools.count(1)


@dataclass
class _HeldList:
    """A pending list kept for a few seconds: the next takes continue from `cursor` without a poll.
    The server lists every pending task each time (38 MB at 100,000), so polling again for each
    share would make draining a backlog quadratic in its size."""

    pending: PendingList
    poll_number: int
    fetched_at: float
    cursor: int = 0
    taken_from: bool = False     # a list just fetched is taken from once, however old it got meanwhile


class Poller(Stage):
    name = "poller"

    def __init__(self, ctx: PipelineContext, orphans: list | None = None) -> None:
        super().__init__(ctx, orphans)
        processing = self.settings.processing
        # Tasks in flight at most: grows with the API's distance (actors/flow_window.py).
        self.window = FlowWindow(processing.min_in_flight, processing.max_in_flight, time.monotonic())
        # Orphans are the ids a previous instance (or the last run, via the journal) had in flight.
        self.in_flight: set[str] = set(self.inherited)
        self.settled_at: dict[str, int] = {}      # id -> number of the last poll begun before it settled
        self._pruned_before = 0                   # settled_at holds nothing older than this poll
        self.polls_begun = 0
        self.poll_scheduled = False
        self.waiting_for_credit = False
        self.waiting_for_token = False
        self.needs_token = self.settings.uses_oauth2
        self.failures_in_a_row = 0
        self.stopped = False
        self.left_alone: Counter[str] = Counter()  # by reason (contract.UNUSABLE_ID, ...), once per task
        self._seen_left_alone: set[str] = set()
        self.taken_total = 0
        self.held: _HeldList | None = None       # the last pending list, while more is taken from it
        self.next_list: _HeldList | None = None  # fetched while `held` was still being taken from
        self.fetching = False                    # a fetch of the pending list is under way
        self.fetch_seconds = 0.0                 # how long the last one took
        self.prefetched = 0                      # lists fetched ahead of need and then taken from
        self.leased_elsewhere = 0                # tasks another service held a lease for (Redis)
        self.adopted_total = 0                   # tasks taken over from services whose leases ran out
        self.lease_chain = next(_LEASE_CHAINS)   # this instance's KeepLeases ticks (see KeepLeases)

    def setup(self) -> None:
        self.ctx.window_starting = True     # a new window starts again (TasksComputed)
        self.start_pool(1)         # the thread fetching pending lists
        self._schedule(0)
        if self.ctx.leases is not None:
            self.later(self._lease_tick_seconds(), KeepLeases(self.lease_chain))

    def _lease_tick_seconds(self) -> float:
        return self.settings.coordination.lease_seconds / 3

    @property
    def capacity(self) -> int:
        return self.window.size

    @property
    def credit(self) -> int:
        return self.capacity - len(self.in_flight)

    def _schedule(self, delay: float) -> None:
        if not self.poll_scheduled and not self.stopped:
            self.poll_scheduled = True
            self.later(delay, Poll())

    def receive(self, message) -> None:
        if isinstance(message, Poll):
            self.poll_scheduled = False
            self._poll()
        elif isinstance(message, TasksSettled):
            self._settle(message.task_ids)
            if self.ctx.leases is not None:
                self.ctx.leases.finish(message.task_ids, final=not message.released)
        elif isinstance(message, TasksComputed):
            self.window.computed(message.count, time.monotonic())
            self._resized()
        elif isinstance(message, KeepLeases):
            if message.chain == self.lease_chain:
                self._keep_leases()
        elif isinstance(message, ListFetched):
            self._fetched(message)
        elif isinstance(message, TokenArrived) and self.waiting_for_token:
            self.waiting_for_token = False
            log.info("polling resumed: a token is held")
            self._schedule(0)

    def _settle(self, task_ids: list[str]) -> None:
        before = len(self.in_flight)
        for task_id in task_ids:
            if task_id in self.in_flight:
                self.in_flight.discard(task_id)
                # A poll already under way may still list it as pending: ignore it there.
                self.settled_at[task_id] = self.polls_begun
        self.window.settled(before - len(self.in_flight))
        self._resized()

    def _resized(self) -> None:
        """Size the window again; take more when the credit it left is worth a take."""
        self._resize()
        if self.waiting_for_credit and self.credit >= self._refill_at():
            self.waiting_for_credit = False
            self._schedule(0)

    def _refill_at(self) -> int:
        """How much credit a take waits for: half the window when it needs a poll (which costs
        the whole list), an eighth while the last list can still be taken from (which costs nothing)."""
        share = 8 if self._fresh_held_list() is not None else 2
        return max(1, self.capacity // share)

    def _resize(self) -> None:
        old = self.window.resize(time.monotonic(), self.ctx.task_api.round_trip_seconds)
        self.ctx.window_starting = self.window.starting
        if old is not None:
            log.info("window resized", extra={"fields": {
                "window": self.window.size, "was": old, "settle_rate": round(self.window.settle_rate, 1),
                "start_pace": round(self.window.start_pace, 1),
                "round_trip_ms": round((self.ctx.task_api.round_trip_seconds or 0.0) * 1000, 1)}})

    def _poll(self) -> None:
        if self.stopped:
            return
        if self.credit <= 0:
            self.waiting_for_credit = True
            return
        if self.needs_token and self.ctx.task_api.credentials.current() is None:
            # Polling without a token only earns a 403; the Authenticator says when one arrives.
            if not self.waiting_for_token:
                log.info("polling paused: no token")
            self.waiting_for_token = True
            return
        if self.ctx.leases is not None and not self.ctx.leases.available:
            # Without Redis a task taken could be another service's too: none is taken until it
            # answers again (the lease keeper finds out every third of a lease).
            self.held = self.next_list = None
            self._schedule(self._lease_tick_seconds())
            return
        outage = self.ctx.router.seconds_until_available()
        if outage > 0:
            # Every provider's breaker is open: tasks taken now could only wait and use up retries.
            log.info("polling paused: no provider available", extra={"fields": {"resume_in_s": round(outage, 2)}})
            self._schedule(outage)
            return
        try:
            room = self.ctx.rate_limits.remaining()
            until = self.ctx.rate_limits.not_before() if room == 0 else None
        except CoordinationError:      # shared limits, and Redis does not answer: wait for it
            self._schedule(self._lease_tick_seconds())
            return
        if room == 0:
            # A full tier: sleep until it frees a unit rather than poll for tasks it cannot admit.
            delay = max(0.05, until - time.time()) if until else self.settings.polling.interval_seconds
            log.info("rate limit reached: polling paused", extra={"fields": {"resume_in_s": round(delay, 2)}})
            self._schedule(delay)
            return
        budget = self.credit if room is None else min(self.credit, room)
        held = self._fresh_held_list()
        if held is None:
            self._fetch()          # its ListFetched brings the Poller back here with a list
            return
        taken, rejected, more_left = self._take(held, budget)
        held.taken_from = True
        if taken and self.ctx.leases is not None:
            taken = self._leased(taken)
        if held.poll_number > self._pruned_before:
            # Settled before this list's poll began: no list taken from from now on can name them
            # as pending. Once per list, not per take (the dict holds a list's life of tasks).
            self.settled_at = {k: v for k, v in self.settled_at.items() if v >= held.poll_number}
            self._pruned_before = held.poll_number
        if held.cursor >= len(held.pending):
            self.held = None
            # The server listed more than was kept: poll again at once, unless this list gave
            # nothing at all (then polling at once could only spin).
            more_left = more_left or (held.pending.truncated and bool(taken or rejected))
        if taken:
            if not self.taken_total - len(taken):      # the first take: the settle rate counts from here
                self.window.start(time.monotonic())
            self.tell("rate_limiter", TasksTaken(taken))
        if rejected:
            self.tell("reporter", TasksRejected(rejected))
        self._prefetch(held)
        if more_left:
            self.waiting_for_credit = True   # a full take: poll again as soon as credit returns
            if self.credit >= self._refill_at():
                self.waiting_for_credit = False
                self._schedule(0)
        else:
            self._schedule(self.settings.polling.interval_seconds)

    def _leased(self, taken: list[TakenTask]) -> list[TakenTask]:
        """The tasks this service got leases for; the others are another service's (or were settled
        by one lately) and are left to it. When Redis does not answer, none is taken."""
        try:
            got = self.ctx.leases.acquire([(task.job.task_id, bytes(task.raw)) for task in taken])
        except CoordinationError:
            got = set()
            self.held = None            # polled again once Redis answers
        theirs = [task.job.task_id for task in taken if task.job.task_id not in got]
        for task_id in theirs:
            self.in_flight.discard(task_id)
            self.settled_at[task_id] = self.polls_begun     # not taken again from this list
        self.taken_total -= len(theirs)
        self.leased_elsewhere += len(theirs)
        return [task for task in taken if task.job.task_id in got]

    def _keep_leases(self) -> None:
        """Every third of a lease: renew the leases held, send the finishes Redis missed, and take over
        the leases of services that died, resuming their tasks (or sending their paid results)."""
        leases = self.ctx.leases
        self.later(self._lease_tick_seconds(), KeepLeases(self.lease_chain))
        try:
            lost = leases.renew()
            adopted = leases.take_over() if not self.stopped else []
        except CoordinationError:
            return
        if lost:
            log.warning("leases taken over by another service while this one stalled; its results may "
                        "be reported twice", extra={"fields": {"tasks": len(lost)}})
        if adopted:
            self._adopt(adopted)
        if self.waiting_for_credit and not self.poll_scheduled:
            self._schedule(0)

    def _adopt(self, adopted: list) -> None:
        jobs, entries = [], []
        for task in adopted:
            self.in_flight.add(task.task_id)
            if task.result is not None:
                entries.append(OutboxEntry(task.task_id, task.result, task.state or "succeeded"))
                continue
            outcome = resume(self.ctx.handlers, task.task_id, task.task_json)
            if isinstance(outcome, OutboxEntry):
                entries.append(outcome)
            else:
                jobs.append(outcome)
        log.warning("tasks taken over from a service whose leases ran out", extra={"fields": {
            "tasks": len(adopted), "with_paid_results": sum(task.result is not None for task in adopted),
            "from": sorted({task.previous_owner for task in adopted})[:5]}})
        self.adopted_total += len(adopted)
        if jobs:
            json_of = {task.task_id: task.task_json for task in adopted}
            self.ctx.journal.record_claims([Claim(job.task_id, json_of[job.task_id], 0) for job in jobs])
            self.tell("dispatcher", TasksClaimed(jobs))
        if entries:
            self.tell("reporter", ResultsAdopted(entries))

    # --- fetching the pending list, in the Poller's own thread so that takes go on meanwhile ---
    def _fetch(self) -> None:
        """Fetch the pending list in the background (one fetch at a time); ListFetched brings it."""
        if self.fetching or self.stopped:
            return
        self.fetching = True
        self.polls_begun += 1
        poll_number, api, directory, name = self.polls_begun, self.ctx.task_api, self.ctx.directory, self.name
        splitter = PendingSplitter(self._screen, max_entries=KEEP_PER_CREDIT * self.capacity,
                                   max_bytes=_KEEP_BYTES)

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
        self.fetching = False
        if self.stopped:
            return
        if message.error is not None:
            self.failures_in_a_row += 1
            delay = self.ctx.backoff(self.failures_in_a_row, getattr(message.error, "retry_after", None))
            log.warning("poll failed", extra={"fields": {"error": str(message.error), "retry_in_s": round(delay, 2)}})
            if self.held is None:
                self._schedule(delay)
            return
        self.failures_in_a_row = 0
        self.fetch_seconds = message.seconds
        fetched = _HeldList(message.pending, message.poll_number, message.fetched_at)
        if self.held is None:
            self.held = fetched
            self._schedule(0)
        else:
            self.next_list = fetched      # taken from once the current list is used up or too old

    def _prefetch(self, held: _HeldList) -> None:
        """Fetch the next list while this one is still being taken from, when a fetch is slow enough
        to leave the provider waiting (at 100 ms from the API, some 0.15 s without a take): shortly
        before a list that could not hold every pending task runs out, or before it is too old.
        Each fetch costs the whole list, so a near API, whose fetches are quick, never prefetches."""
        if self.fetching or self.next_list is not None or self.held is not held \
                or self.fetch_seconds < _PREFETCH_WORTH_SECONDS:
            return
        left = len(held.pending) - held.cursor
        age = time.monotonic() - held.fetched_at
        lead = 3 * self.fetch_seconds
        if (held.pending.truncated and left <= max(self.capacity, self.window.settle_rate * lead)) \
                or age >= self.settings.polling.list_reuse_seconds - lead:
            self._fetch()

    def _screen(self, raw: msgspec.Raw) -> Task | None:
        """Which entries of an arriving list are worth keeping: a usable id, a type some handler
        takes, not in flight now. The others are noted (once each) and dropped, so they never
        use up what a list may keep."""
        try:
            entry = read_entry(raw)
        except Exception as exc:  # noqa: BLE001 - one entry, whatever it holds, never stops the poll
            entry = Unusable(UNREADABLE, f"unreadable entry: {exc!r}"[:200])
        if isinstance(entry, Unusable):
            self._note_unusable(entry)
            return None
        if entry.id in self.in_flight:
            return None
        if entry.type not in self.ctx.handlers:
            self._leave_alone(entry.id, entry.type)
            return None
        return entry

    def _fresh_held_list(self) -> _HeldList | None:
        """The last list, while it is young enough to take more from instead of polling again (or
        the next one, fetched meanwhile, once the last is used up or too old)."""
        reuse = self.settings.polling.list_reuse_seconds
        held = self.held
        if held is not None and held.taken_from and (time.monotonic() - held.fetched_at >= reuse
                                                     or held.cursor >= len(held.pending)):
            held = self.held = None
        if held is None and self.next_list is not None:
            held = self.held = self.next_list
            self.next_list = None
            self.prefetched += 1
        return held

    def _take(self, held: _HeldList, budget: int) -> tuple[list[TakenTask], list[Rejection], bool]:
        """Take up to `budget` tasks (credit, and rate-limit room) from where the last take from
        this list stopped (entries were screened as the list arrived); report the malformed ones.
        The third value says whether the take stopped for want of budget with entries left."""
        taken: list[TakenTask] = []
        rejected: list[Rejection] = []
        handlers = self.ctx.handlers
        now = time.time()
        pending = held.pending
        debug = log.isEnabledFor(logging.DEBUG)   # a line per task: its fields only built when shown
        while held.cursor < len(pending):
            if len(taken) >= budget or self.credit <= 0:
                self.taken_total += len(taken)
                return taken, rejected, True
            task = pending.read(held.cursor)
            held.cursor += 1
            # Taken or settled since the list arrived (a list is reused for a few seconds).
            if task.id in self.in_flight or self.settled_at.get(task.id, -1) >= held.poll_number:
                continue
            handler = handlers[task.type]
            self.in_flight.add(task.id)
            try:
                job = handler.parse(task.id, task.raw)
                refusal = self.ctx.chat_router.refusal(job.model) if isinstance(job, ChatJob) \
                    else self.ctx.router.refusal(job.model, job.text)
                if refusal:
                    raise TaskRejected(refusal)
                taken.append(TakenTask(job=msgspec.structs.replace(job, taken_at=now), raw=task.raw))
                if debug:
                    log.debug("task taken", extra={"fields": {"task_id": task.id, "model": job.model}})
            except TaskRejected as exc:
                rejected.append(Rejection(task.id, str(exc)))
                self.ctx.metrics.task_decided(task.type, "failed", 0.0)
            except Exception as exc:  # noqa: BLE001 - a handler's bug fails its task, not the Poller
                log.exception("handler failed on a task", extra={"fields": {"task_id": task.id}})
                rejected.append(Rejection(task.id, f"could not read the task: {exc!r}"[:300]))
                self.ctx.metrics.task_decided(task.type, "failed", 0.0)
        self.taken_total += len(taken)
        return taken, rejected, False

    def _leave_alone(self, task_id: str, kind: str) -> None:
        if task_id in self._seen_left_alone or len(self._seen_left_alone) >= _SEEN_LIMIT:
            return
        self._seen_left_alone.add(task_id)
        self.left_alone[NO_HANDLER] += 1
        log.info("task left alone", extra={"fields": {"task_id": task_id, "type": kind[:100], "reason": NO_HANDLER,
                                                       "why": "no handler for this type"}})

    def _note_unusable(self, entry: Unusable) -> None:
        if entry.description not in self._seen_left_alone and len(self._seen_left_alone) < _SEEN_LIMIT:
            self._seen_left_alone.add(entry.description)
            self.left_alone[entry.reason] += 1
            log.warning("task left alone", extra={"fields": {"reason": entry.reason, "why": entry.description}})

    # --- asked by the supervisor ---
    def stop_polling(self) -> None:
        self.stopped = True
        self.held = self.next_list = None

    def status(self) -> dict:
        return {"in_flight": len(self.in_flight), "window": self.window.size, "credit": self.credit,
                "start_pace": round(self.window.start_pace, 1),
                "polls": self.polls_begun, "prefetched": self.prefetched,
                "taken": self.taken_total, "left_alone": dict(self.left_alone),
                "leased_elsewhere": self.leased_elsewhere, "adopted": self.adopted_total}

    def orphans(self) -> list:
        return sorted(self.in_flight)
