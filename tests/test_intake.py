"""The Poller's decisions as plain objects (aitp/intake/, aitp/coordination/lease_keeper.py): built
directly, with stand-ins for the routers, limits and leases; no actor, thread or socket."""

from __future__ import annotations

import hashlib
import json

import pytest

from aitp.config import Settings
from aitp.coordination.lease_keeper import LeaseKeeper
from aitp.coordination.leases import Adopted
from aitp.errors import CoordinationError, TaskApiError
from aitp.intake import Admission, PendingCursor, Rejection, TakenTask, TaskReader, fetch_list
from aitp.intake.admission import COORDINATION, CREDIT, PROVIDERS, RATE_LIMIT, SHARED_LIMITS, TOKEN
from aitp.intake.cursor import NO_HANDLER, PREFETCH_WORTH_SECONDS
from aitp.storage.journal import OutboxEntry
from aitp.tasks import HANDLERS

pytestmark = pytest.mark.timeout(30)


def oid(name: str) -> str:
    """A usable task id (a MongoDB ObjectId's 24 hex digits) named after `name`."""
    return hashlib.sha1(name.encode()).hexdigest()[:24]


def ids(*names: str) -> list[str]:
    return [oid(name) for name in names]


def task_json(name: str, text: str = "some text", model: str = "m", kind: str = "text_embedding") -> bytes:
    return json.dumps({"_id": oid(name), "type": kind, "content": {"text": text, "model": model}}).encode()


def handlers():
    return {name: handler(Settings()) for name, handler in HANDLERS.items()}


def listed(cursor: PendingCursor, entries: list[bytes], capacity: int = 100):
    """A pending list as the Poller's fetch would deliver it, screened by `cursor`."""
    poll_number, splitter = cursor.begin_fetch(capacity)
    splitter.feed(b"[" + b",".join(entries) + b"]")
    return splitter.finish(), poll_number


class Router:
    def __init__(self, refuse: str | None = None, outage: float = 0.0) -> None:
        self.refuse, self.outage = refuse, outage

    def refusal(self, model, text=None):
        return self.refuse

    def seconds_until_available(self, model=None):
        return self.outage


class Limits:
    def __init__(self, room=None, until=None, fail=False) -> None:
        self.room, self.until, self.fail = room, until, fail

    def remaining(self):
        if self.fail:
            raise CoordinationError("Redis does not answer")
        return self.room

    def not_before(self):
        return self.until


class Credentials:
    def __init__(self, token=None) -> None:
        self.token = token

    def current(self):
        return self.token


class Leases:
    def __init__(self, available=True, theirs=(), adopted=(), fail=False) -> None:
        self.available, self.theirs, self.adopted, self.fail = available, set(theirs), list(adopted), fail
        self.finished = []

    def acquire(self, tasks):
        if self.fail:
            raise CoordinationError("Redis does not answer")
        return {task_id for task_id, _ in tasks if task_id not in self.theirs}

    def renew(self):
        if self.fail:
            raise CoordinationError("Redis does not answer")
        return []

    def take_over(self):
        adopted, self.adopted = self.adopted, []
        return adopted

    def finish(self, task_ids, final):
        self.finished.append((list(task_ids), final))


def admission(**overrides) -> Admission:
    parts = dict(credentials=Credentials("token"), needs_token=True, leases=None, router=Router(),
                 rate_limits=Limits(), interval_seconds=5.0, coordination_seconds=10.0)
    return Admission(**{**parts, **overrides})


@pytest.mark.parametrize("overrides, credit, expected", [
    ({}, 50, (50, None, "")),
    ({}, 0, (0, None, CREDIT)),
    ({"credentials": Credentials(None)}, 50, (0, None, TOKEN)),
    ({"credentials": Credentials(None), "needs_token": False}, 50, (50, None, "")),
    ({"leases": Leases(available=False)}, 50, (0, 10.0, COORDINATION)),
    ({"router": Router(outage=3.5)}, 50, (0, 3.5, PROVIDERS)),
    ({"router": Router(outage=3.5), "chat_router": Router(outage=1.0)}, 50, (0, 1.0, PROVIDERS)),
    ({"router": Router(outage=3.5), "chat_router": Router()}, 50, (50, None, "")),   # LLM tasks go on
    ({"rate_limits": Limits(room=7)}, 50, (7, None, "")),
    ({"rate_limits": Limits(room=0, until=1_000.25)}, 50, (0, 0.25, RATE_LIMIT)),
    ({"rate_limits": Limits(room=0, until=1_000.01)}, 50, (0, 0.05, RATE_LIMIT)),     # never a spin
    ({"rate_limits": Limits(room=0)}, 50, (0, 5.0, RATE_LIMIT)),                     # no moment named
    ({"rate_limits": Limits(fail=True)}, 50, (0, 10.0, SHARED_LIMITS)),
])
def test_admission_says_how_many_may_be_taken_or_how_long_to_wait(overrides, credit, expected):
    assert tuple(admission(**overrides).decide(credit, now=1_000.0)) == expected


def test_a_take_stops_at_its_budget_and_the_next_continues_from_there():
    cursor = PendingCursor(handlers(), reuse_seconds=5.0)
    pending, poll = listed(cursor, [task_json(f"t{i}") for i in range(10)])
    assert cursor.fetched(pending, poll, fetched_at=0.0, seconds=0.01)
    reader = TaskReader(handlers(), Router(), Router())
    held = cursor.fresh(now=0.1)
    first = cursor.take(held, budget=4, capacity=100, reader=reader, now=123.0)
    assert [t.job.task_id for t in first.taken] == ids("t0", "t1", "t2", "t3") and first.more_left
    assert all(t.job.taken_at == 123.0 for t in first.taken)
    assert not cursor.end_take(held, True)          # entries left: the list is kept
    second = cursor.take(cursor.fresh(now=0.2), budget=100, capacity=7, reader=reader, now=124.0)
    assert [t.job.task_id for t in second.taken] == ids("t4", "t5", "t6") and second.more_left   # capacity
    assert cursor.in_flight == set(ids(*(f"t{i}" for i in range(7)))) and cursor.taken_total == 7


def test_a_task_settled_while_its_list_is_reused_is_not_taken_again():
    cursor = PendingCursor(handlers(), reuse_seconds=5.0)
    reader = TaskReader(handlers(), Router(), Router())
    pending, poll = listed(cursor, [task_json("a"), task_json("b")])
    cursor.fetched(pending, poll, 0.0, 0.01)
    held = cursor.fresh(0.0)
    cursor.take(held, 1, 100, reader, 0.0)
    assert cursor.settle(ids("a", "unknown")) == 1
    # A second list fetched before "a" settled still names it as pending.
    cursor.forget_held()
    stale, stale_poll = pending, poll
    cursor.fetched(stale, stale_poll, 0.0, 0.01)
    take = cursor.take(cursor.fresh(0.0), 10, 100, reader, 0.0)
    assert [t.job.task_id for t in take.taken] == ids("b")


def test_a_used_up_list_that_could_not_hold_everything_asks_for_a_poll_at_once():
    cursor = PendingCursor(handlers(), reuse_seconds=5.0)
    reader = TaskReader(handlers(), Router(), Router())
    poll, splitter = cursor.begin_fetch(capacity=1)        # keeps 8 entries per unit of capacity
    splitter.feed(b"[" + b",".join(task_json(f"t{i}") for i in range(20)) + b"]")
    pending = splitter.finish()
    assert pending.truncated and len(pending) == 8
    cursor.fetched(pending, poll, 0.0, 0.01)
    held = cursor.fresh(0.0)
    take = cursor.take(held, 100, 100, reader, 0.0)
    assert len(take.taken) == 8 and not take.more_left
    assert cursor.end_take(held, gave=True) and cursor.held is None
    # A truncated list that gave nothing (every entry another service's) must not make it spin.
    poll, splitter = cursor.begin_fetch(capacity=1)
    splitter.feed(b"[" + b",".join(task_json(f"u{i}") for i in range(20)) + b"]")
    cursor.fetched(splitter.finish(), poll, 0.0, 0.01)
    assert not cursor.end_take(cursor.fresh(0.0), gave=False)


def test_a_list_is_reused_until_it_is_old_then_the_one_fetched_ahead_takes_its_place():
    cursor = PendingCursor(handlers(), reuse_seconds=5.0)
    reader = TaskReader(handlers(), Router(), Router())
    first, poll = listed(cursor, [task_json("a"), task_json("b")])
    assert cursor.fetched(first, poll, fetched_at=0.0, seconds=0.2)
    held = cursor.fresh(0.0)
    cursor.take(held, 1, 100, reader, 0.0)
    assert cursor.fresh(4.9) is held
    # A slow fetch: the next list is fetched ahead before this one is too old (3 fetch times before).
    assert not cursor.should_prefetch(held, 100, 0.0, now=4.0)
    assert cursor.should_prefetch(held, 100, 0.0, now=4.5)
    second, poll = listed(cursor, [task_json("c")])
    assert not cursor.fetched(second, poll, fetched_at=4.5, seconds=0.2)   # the held list goes on
    assert cursor.fresh(5.0).pending is second and cursor.prefetched == 1


def test_a_near_api_never_fetches_ahead():
    cursor = PendingCursor(handlers(), reuse_seconds=5.0)
    pending, poll = listed(cursor, [task_json("a")])
    cursor.fetched(pending, poll, 0.0, seconds=PREFETCH_WORTH_SECONDS / 2)
    assert not cursor.should_prefetch(cursor.fresh(0.0), 100, 0.0, now=4.99)


class Wikidata:
    def __init__(self, up: bool) -> None:
        self.up = up

    def available(self) -> bool:
        return self.up

    def seconds_until_available(self) -> float:
        return 0.0 if self.up else 7.0


def llm_json(name: str) -> bytes:
    return task_json(name, model="o3", kind="defining_topics")


@pytest.mark.parametrize("embed_down, chat_down, wikidata_up, taken", [
    (False, False, True, {"e1", "e2", "l1", "l2"}),
    (True, False, True, {"l1", "l2"}),          # the embedding endpoint is down: the LLM tasks go on
    (False, True, True, {"e1", "e2"}),          # the chat endpoint is down: the embeddings go on
    (False, False, False, {"e1", "e2"}),        # Wikidata is down: so are the LLM tasks, not the others
])
def test_a_task_whose_dependency_is_down_is_left_pending_and_holds_no_credit(embed_down, chat_down, wikidata_up,
                                                                           taken):
    """Issue 28's bulkhead: tasks waiting on Wikidata filled the window and the embeddings starved."""
    cursor = PendingCursor(handlers(), reuse_seconds=5.0)
    reader = TaskReader(handlers(), Router(outage=5.0 if embed_down else 0.0),
                        Router(outage=5.0 if chat_down else 0.0), Wikidata(wikidata_up))
    pending, poll = listed(cursor, [task_json("e1"), llm_json("l1"), task_json("e2"), llm_json("l2")])
    cursor.fetched(pending, poll, fetched_at=0.0, seconds=0.01)
    take = cursor.take(cursor.fresh(0.0), 10, 100, reader, 0.0)
    assert {task.job.task_id for task in take.taken} == set(ids(*taken))
    assert cursor.in_flight == set(ids(*taken))
    assert reader.held_back == 4 - len(taken)
    assert reader.retry_in == (None if len(taken) == 4 else 5.0 if embed_down or chat_down else 7.0)


def test_with_unenriched_an_llm_task_held_for_wikidata_past_the_bounded_wait_goes_without_it():
    cursor = PendingCursor(handlers(), reuse_seconds=0.0)
    reader = TaskReader(handlers(), Router(), Router(), Wikidata(False), unenriched_after=60.0)
    entries = [llm_json("topics"), task_json("people", model="o3", kind="identifying_data")]

    def take(now: float):
        pending, poll = listed(cursor, entries)
        cursor.fetched(pending, poll, fetched_at=now, seconds=0.01)
        return cursor.take(cursor.fresh(now), 10, 100, reader, now).taken

    assert take(0.0) == [] and take(59.0) == []                   # held while the wait lasts
    taken = take(60.0)
    assert [(t.job.task_id, t.job.enrich) for t in taken] == [(oid("topics"), False)]   # not identifying_data
    assert reader.held_back == 5


def listed_holding(cursor: PendingCursor, reader: TaskReader, entries: list[bytes], capacity: int):
    poll_number, splitter = cursor.begin_fetch(capacity, reader.types_held())
    splitter.feed(b"[" + b",".join(entries) + b"]")
    return splitter.finish(), poll_number


@pytest.mark.parametrize("wikidata_up", [False, True], ids=["wikidata-down", "share-full"])
def test_llm_tasks_that_cannot_be_taken_use_up_none_of_what_a_list_keeps(wikidata_up):
    """A review found that 40 LLM tasks held back ahead of 5 embeddings (a window of 4: a list keeps
    32 entries) hid the embeddings for good: every poll kept only LLM tasks."""
    cursor = PendingCursor(handlers(), reuse_seconds=5.0)
    reader = TaskReader(handlers(), Router(), Router(), Wikidata(wikidata_up))
    cursor.in_flight.update(ids("busy1", "busy2"))
    if wikidata_up:                                               # LLM tasks, the share of a window of 4
        cursor.chat_in_flight.update(ids("busy1", "busy2"))
    entries = [llm_json(f"l{number}") for number in range(40)] + [task_json(f"e{number}") for number in range(5)]
    pending, poll = listed_holding(cursor, reader, entries, capacity=4)
    cursor.fetched(pending, poll, fetched_at=0.0, seconds=0.01)
    take = cursor.take(cursor.fresh(0.0), 10, 4, reader, 0.0)
    assert [task.job.task_id for task in take.taken] == ids("e0", "e1")        # the credit left: 2


def test_llm_tasks_hold_at_most_half_the_window():
    cursor = PendingCursor(handlers(), reuse_seconds=5.0)
    reader = TaskReader(handlers(), Router(), Router(), Wikidata(True))
    names = [f"l{number}" for number in range(6)]
    pending, poll = listed(cursor, [llm_json(name) for name in names] + [task_json("e")])
    cursor.fetched(pending, poll, fetched_at=0.0, seconds=0.01)
    take = cursor.take(cursor.fresh(0.0), 10, 4, reader, 0.0)
    assert [task.job.task_id for task in take.taken] == ids("l0", "l1", "e")
    cursor.settle(ids("l0"))
    pending, poll = listed(cursor, [llm_json(name) for name in names])
    cursor.fetched(pending, poll, fetched_at=1.0, seconds=0.01)
    again = cursor.take(cursor.fresh(1.0), 10, 4, reader, 1.0)
    assert [task.job.task_id for task in again.taken] == ids("l0")      # one place came free


def test_a_take_waits_for_an_eighth_of_the_window_while_a_list_is_held_and_half_when_it_needs_a_poll():
    cursor = PendingCursor(handlers(), reuse_seconds=5.0)
    assert cursor.refill_at(256, now=0.0) == 128
    pending, poll = listed(cursor, [task_json("a"), task_json("b")])
    cursor.fetched(pending, poll, fetched_at=0.0, seconds=0.01)
    assert cursor.refill_at(256, now=1.0) == 32
    assert cursor.refill_at(4, now=1.0) == 1


class FetchingApi:
    def __init__(self, body: bytes = b"", error: Exception | None = None) -> None:
        self.body, self.error = body, error

    def fetch_pending(self, feed) -> None:
        if self.error is not None:
            raise self.error
        feed(self.body)


def test_a_fetch_brings_the_screened_list_or_the_error_and_never_raises():
    cursor = PendingCursor(handlers(), reuse_seconds=5.0)
    poll, splitter = cursor.begin_fetch(100)
    fetched = fetch_list(FetchingApi(b"[" + task_json("a") + b"," + task_json("b", kind="translating") + b"]")
                         .fetch_pending, splitter)
    assert fetched.error is None and len(fetched.pending) == 1 and fetched.fetched_at > 0
    assert cursor.left_alone == {NO_HANDLER: 1}
    assert cursor.fetched(fetched.pending, poll, fetched.fetched_at, fetched.seconds)
    for error in (TaskApiError("503"), KeyError("a bug")):
        _, splitter = cursor.begin_fetch(100)
        fetched = fetch_list(FetchingApi(error=error).fetch_pending, splitter)
        assert fetched.pending is None and isinstance(fetched.error, TaskApiError)
        cursor.fetch_failed()


def test_screening_leaves_alone_unknown_types_and_unusable_ids_once_each():
    cursor = PendingCursor(handlers(), reuse_seconds=5.0, in_flight=ids("busy"))
    entries = [task_json("x", kind="summarizing"), task_json("x", kind="summarizing"),
               b'{"_id": "../etc", "type": "text_embedding"}', task_json("busy"), task_json("ok")]
    pending, _ = listed(cursor, entries)
    assert [task.id for task in pending] == ids("ok")
    assert cursor.left_alone[NO_HANDLER] == 1 and sum(cursor.left_alone.values()) == 2


def test_the_reader_rejects_a_malformed_task_and_one_no_provider_takes():
    reader = TaskReader(handlers(), Router(refuse="no provider serves model 'm'"), Router())
    cursor = PendingCursor(handlers(), reuse_seconds=5.0)
    pending, _ = listed(cursor, [task_json("bad", text=" "), task_json("refused")])
    outcomes = [reader.read(task, 0.0) for task in pending]
    assert outcomes == [Rejection(oid("bad"), "content.text is empty"),
                        Rejection(oid("refused"), "no provider serves model 'm'")]


def test_a_handler_bug_fails_its_task_only():
    class Broken:
        def parse(self, task_id, raw):
            raise ZeroDivisionError("oops")

    cursor = PendingCursor({"text_embedding": Broken()}, reuse_seconds=5.0)
    pending, poll = listed(cursor, [task_json("a")])
    cursor.fetched(pending, poll, 0.0, 0.01)
    take = cursor.take(cursor.fresh(0.0), 10, 10, TaskReader({"text_embedding": Broken()}, Router(), Router()), 0.0)
    assert take.taken == [] and take.rejected_types == ["text_embedding"]
    assert take.rejected[0].task_id == oid("a") and "ZeroDivisionError" in take.rejected[0].reason


def taken(name: str) -> TakenTask:
    job = handlers()["text_embedding"].parse(oid(name), task_json(name))
    return TakenTask(job=job, raw=task_json(name))


def test_the_lease_keeper_keeps_only_the_tasks_leased_here():
    keeper = LeaseKeeper(Leases(theirs={oid("b")}), handlers(), lease_seconds=30)
    ours, theirs, answered = keeper.acquire([taken("a"), taken("b")])
    assert [t.job.task_id for t in ours] == ids("a") and theirs == ids("b") and answered
    assert keeper.leased_elsewhere == 1 and keeper.tick_seconds == 10
    ours, theirs, answered = LeaseKeeper(Leases(fail=True), handlers(), 30).acquire([taken("a")])
    assert ours == [] and theirs == ids("a") and not answered      # Redis away: nothing is taken


def test_the_lease_keeper_resumes_adopted_tasks_or_sends_their_paid_results():
    vector = b'{"state":"succeeded","result":[0.6,0.8]}'
    adopted = [Adopted("paid", "dead", task_json("paid"), vector, "succeeded"),
               Adopted("todo", "dead", task_json("todo"), None, ""),
               Adopted("broken", "dead", b"{not json", None, "")]
    keeper = LeaseKeeper(Leases(adopted=adopted), handlers(), lease_seconds=30, dimensions={"m": 2})
    adoption = keeper.keep(adopt=True)
    assert adoption.task_ids == ["paid", "todo", "broken"] and keeper.adopted_total == 3
    assert [job.task_id for job in adoption.jobs] == ["todo"]
    assert [(claim.task_id, claim.task_json) for claim in adoption.claims] == [("todo", task_json("todo"))]
    assert adoption.entries[0] == OutboxEntry("paid", vector, "succeeded")
    assert adoption.entries[1].task_id == "broken" and adoption.entries[1].state == "failed"


@pytest.mark.parametrize("body, state", [
    (b'{"state":"succeeded","result":[0.6,0.8,0.0]}', "succeeded"),     # not the model's dimension
    (b'{"state":"succeeded","result":[1e999,0.0]}', "succeeded"),       # not finite
    (b'{"state":"succeeded","result":"x"}', "succeeded"),
    (b'{"state":"failed","result":null}', "succeeded"),                 # not the state written beside it
    (b"{garbage", "succeeded"),
])
def test_a_shared_result_that_fails_its_checks_is_computed_again_not_reported(body, state):
    """Issue 29: Redis is trusted with paid results, so one read back is checked as a fresh one is."""
    keeper = LeaseKeeper(Leases(adopted=[Adopted("paid", "dead", task_json("paid"), body, state)]), handlers(),
                         lease_seconds=30, dimensions={"m": 2})
    adoption = keeper.keep(adopt=True)
    assert adoption.entries == [] and [job.task_id for job in adoption.jobs] == ["paid"]
    assert LeaseKeeper(Leases(fail=True), handlers(), 30).keep(adopt=True) is None


def test_a_stopping_service_renews_but_takes_nothing_over():
    leases = Leases(adopted=[Adopted("todo", "dead", task_json("todo"), None, "")])
    adoption = LeaseKeeper(leases, handlers(), 30).keep(adopt=False)
    assert adoption.task_ids == [] and len(leases.adopted) == 1
