"""PendingCursor: the pending lists the Poller takes from, and the tasks it holds in flight.

The server lists every pending task each time (38 MB at 100,000), so polling again for each share
would make draining a backlog quadratic in its size: a list is kept for a few seconds and the next
takes continue where the last stopped. Entries are screened as the list arrives (a usable id, a
type some handler takes, not in flight now); what is left alone is noted once and dropped, so it
never uses up what a list may keep. Where fetches are slow, the next list is fetched ahead of need.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Container, NamedTuple

import msgspec

from aitp.contract import PendingList, PendingSplitter, Task, Unusable, read_entry
from aitp.errors import ContractError, TaskApiError
from aitp.intake.reader import Rejection, TakenTask, TaskReader
from aitp.tasks import CHAT_TYPES

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
PREFETCH_WORTH_SECONDS = 0.05


@dataclass
class HeldList:
    """A pending list kept for a few seconds: the next takes continue from `cursor` without a poll."""

    pending: PendingList
    poll_number: int
    fetched_at: float
    cursor: int = 0
    taken_from: bool = False     # a list just fetched is taken from once, however old it got meanwhile


class Take(NamedTuple):
    taken: list[TakenTask]
    rejected: list[Rejection]
    rejected_types: list[str]    # the type of each rejected task, in the same order (metric labels)
    more_left: bool              # stopped for want of budget or credit, with entries left


class PendingCursor:
    def __init__(self, handlers: Container[str], reuse_seconds: float, in_flight: list | None = None) -> None:
        self.handlers, self.reuse_seconds = handlers, reuse_seconds
        # In flight: taken and not yet settled. Orphans (what a previous instance or the last run
        # had in flight) start here.
        self.in_flight: set[str] = set(in_flight or ())
        self.chat_in_flight: set[str] = set()     # the LLM tasks among them (taken by this instance)
        self.screen_out: frozenset[str] = frozenset()   # types the fetch under way leaves out (begin_fetch)
        self.settled_at: dict[str, int] = {}      # id -> number of the last poll begun before it settled
        self._pruned_before = 0                   # settled_at holds nothing older than this poll
        self.polls_begun = 0
        self.held: HeldList | None = None         # the last pending list, while more is taken from it
        self.next_list: HeldList | None = None    # fetched while `held` was still being taken from
        self.fetching = False                     # a fetch of the pending list is under way
        self.fetch_seconds = 0.0                  # how long the last one took
        self.prefetched = 0                       # lists fetched ahead of need and then taken from
        self.taken_total = 0
        self.left_alone: Counter[str] = Counter()  # by reason (contract.UNUSABLE_ID, ...), once per task
        self._seen_left_alone: set[str] = set()

    # --- fetching ---
    def begin_fetch(self, capacity: int,
                    held_types: frozenset[str] = frozenset()) -> tuple[int, PendingSplitter] | None:
        """A fetch may start (one at a time): its poll number and the splitter that screens it. Types
        that cannot be taken now (`held_types`: what they need is down; LLM tasks, once they hold
        their share of the window) are screened out as the list arrives, so that they use up none
        of what a list may keep and the tasks behind them are seen."""
        if self.fetching:
            return None
        full = len(self.chat_in_flight) >= max(1, capacity // 2)
        self.screen_out = held_types | CHAT_TYPES if full else held_types
        self.fetching = True
        self.polls_begun += 1
        return self.polls_begun, PendingSplitter(self.screen, max_entries=KEEP_PER_CREDIT * capacity,
                                                 max_bytes=_KEEP_BYTES)

    def fetched(self, pending: PendingList, poll_number: int, fetched_at: float, seconds: float) -> bool:
        """A list arrived. True when it is the one to take from now (nothing else was held)."""
        self.fetching = False
        self.fetch_seconds = seconds
        fetched = HeldList(pending, poll_number, fetched_at)
        if self.held is None:
            self.held = fetched
            return True
        self.next_list = fetched      # taken from once the current list is used up or too old
        return False

    def fetch_failed(self) -> bool:
        """A fetch failed. True when there is nothing to take from meanwhile (back off)."""
        self.fetching = False
        return self.held is None

    def forget_held(self) -> None:
        """Forget the list being taken from (the one fetched ahead, if any, is next)."""
        self.held = None

    def drop_lists(self) -> None:
        """Forget the lists held: the next take polls again."""
        self.held = self.next_list = None

    def refill_at(self, window: int, now: float) -> int:
        """How much credit a take waits for: half the window when it needs a poll (which costs
        the whole list), an eighth while the last list can still be taken from (which costs nothing)."""
        return max(1, window // (8 if self.fresh(now) is not None else 2))

    def status(self) -> dict:
        return {"polls": self.polls_begun, "llm_in_flight": len(self.chat_in_flight), "prefetched": self.prefetched,
                "taken": self.taken_total,
                "left_alone": dict(self.left_alone)}

    def fresh(self, now: float) -> HeldList | None:
        """The last list, while it is young enough to take more from instead of polling again (or
        the next one, fetched meanwhile, once the last is used up or too old)."""
        held = self.held
        if held is not None and held.taken_from and (now - held.fetched_at >= self.reuse_seconds
                                                     or held.cursor >= len(held.pending)):
            held = self.held = None
        if held is None and self.next_list is not None:
            held = self.held = self.next_list
            self.next_list = None
            self.prefetched += 1
        return held

    def should_prefetch(self, held: HeldList, capacity: int, settle_rate: float, now: float) -> bool:
        """Fetch the next list while this one is still being taken from, when a fetch is slow enough
        to leave the provider waiting (at 100 ms from the API, some 0.15 s without a take): shortly
        before a list that could not hold every pending task runs out, or before it is too old.
        Each fetch costs the whole list, so a near API, whose fetches are quick, never prefetches."""
        if self.fetching or self.next_list is not None or self.held is not held \
                or self.fetch_seconds < PREFETCH_WORTH_SECONDS:
            return False
        left = len(held.pending) - held.cursor
        lead = 3 * self.fetch_seconds
        return (held.pending.truncated and left <= max(capacity, settle_rate * lead)) \
            or now - held.fetched_at >= self.reuse_seconds - lead

    # --- taking ---
    def take(self, held: HeldList, budget: int, capacity: int, reader: TaskReader, now: float) -> Take:
        """Take up to `budget` tasks (and no more than leaves `capacity` in flight) from where the
        last take from this list stopped; the malformed ones come back as rejections."""
        taken, rejected, rejected_types = [], [], []
        pending, in_flight = held.pending, self.in_flight
        chat_share = max(1, capacity // 2)     # LLM tasks hold at most half the window
        reader.new_take()
        debug = log.isEnabledFor(logging.DEBUG)   # a line per task: its fields only built when shown
        stopped = False
        while held.cursor < len(pending):
            if len(taken) >= budget or len(in_flight) >= capacity:
                stopped = True
                break
            task = pending.read(held.cursor)
            held.cursor += 1
            # Taken or settled since the list arrived (a list is reused for a few seconds).
            if task.id in in_flight or self.settled_at.get(task.id, -1) >= held.poll_number:
                continue
            if task.type in CHAT_TYPES and len(self.chat_in_flight) >= chat_share:
                continue          # left pending: the embeddings behind it keep their share
            in_flight.add(task.id)
            outcome = reader.read(task, now)
            if outcome is None:   # what it needs is down: left pending
                in_flight.discard(task.id)
                continue
            if isinstance(outcome, Rejection):
                rejected.append(outcome)
                rejected_types.append(task.type)
                continue
            if task.type in CHAT_TYPES:
                self.chat_in_flight.add(task.id)
            taken.append(outcome)
            if debug:
                log.debug("task taken", extra={"fields": {"task_id": task.id, "model": outcome.job.model}})
        self.taken_total += len(taken)
        held.taken_from = True
        return Take(taken, rejected, rejected_types, stopped)

    def end_take(self, held: HeldList, gave: bool) -> bool:
        """After a take (and its leases): forget settled ids no later list can name, and drop a list
        used up. True when that list could not hold every pending task (poll again at once), unless
        the take gave nothing at all (then polling at once could only spin)."""
        self._prune_settled(held)
        if held.cursor < len(held.pending):
            return False
        self.held = None
        return held.pending.truncated and gave

    def _prune_settled(self, held: HeldList) -> None:
        if held.poll_number > self._pruned_before:
            # Settled before this list's poll began: no list taken from from now on can name them
            # as pending. Once per list, not per take (the dict holds a list's life of tasks).
            self.settled_at = {k: v for k, v in self.settled_at.items() if v >= held.poll_number}
            self._pruned_before = held.poll_number

    def settle(self, task_ids: list[str]) -> int:
        """These tasks left the pipeline; how many of them were in flight."""
        count = 0
        for task_id in task_ids:
            if task_id in self.in_flight:
                self.in_flight.discard(task_id)
                self.chat_in_flight.discard(task_id)
                count += 1
                # A poll already under way may still list it as pending: ignore it there.
                self.settled_at[task_id] = self.polls_begun
        return count

    def give_up(self, task_ids: list[str]) -> None:
        """Taken, then left to another service (its lease): not in flight here, not taken again
        from this list."""
        for task_id in task_ids:
            self.in_flight.discard(task_id)
            self.chat_in_flight.discard(task_id)
            self.settled_at[task_id] = self.polls_begun
        self.taken_total -= len(task_ids)

    # --- screening an arriving list (on the fetching thread) ---
    def screen(self, raw: msgspec.Raw) -> Task | None:
        """Which entries of an arriving list are worth keeping: a usable id, a type some handler
        takes, not in flight now. The others are noted (once each) and dropped."""
        try:
            entry = read_entry(raw)
        except Exception as exc:  # noqa: BLE001 - one entry, whatever it holds, never stops the poll
            entry = Unusable(UNREADABLE, f"unreadable entry: {exc!r}"[:200])
        if isinstance(entry, Unusable):
            self._note_unusable(entry)
            return None
        if entry.id in self.in_flight or entry.type in self.screen_out:
            return None
        if entry.type not in self.handlers:
            self._leave_alone(entry.id, entry.type)
            return None
        return entry

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


class Fetched(NamedTuple):
    """One fetch of the pending list: the list screened as it arrived, or why there is none."""

    pending: PendingList | None
    error: Exception | None
    fetched_at: float
    seconds: float


def fetch_list(fetch_pending, splitter: PendingSplitter) -> Fetched:
    """Fetch one pending list through `fetch_pending(feed)` (TaskApiClient.fetch_pending), screened
    by `splitter` (PendingCursor.begin_fetch). Never raises: a bug must not leave a fetch begun
    for ever, so it comes back as the error."""
    started = time.monotonic()
    try:
        fetch_pending(splitter.feed)
        pending = splitter.finish()
        return Fetched(pending, None, time.monotonic(), time.monotonic() - started)
    except (TaskApiError, ContractError) as exc:
        return Fetched(None, exc, 0.0, 0.0)
    except Exception as exc:  # noqa: BLE001
        log.exception("fetching the pending list failed")
        return Fetched(None, TaskApiError(f"fetching the pending list failed: {exc!r}"), 0.0, 0.0)
