"""How the stages split their PATCHes into chunks, one chunk per connection and thread, and how
chunks that wait for a thread are sent together."""

import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import msgspec
import pytest

from aitp.config import Settings
from aitp.timers import Scheduler
from aitp.transport.task_api import PatchOutcome, PatchResult
from actors.directory import StageDirectory
from actors.held_tells import HeldTells
from actors.stage import PipelineContext, Stage
from actors.patch_sender import MAX_GROUP, PatchSender
from aitp.transport.chunking import chunk_sizes
from conftest import wait_until


@pytest.mark.parametrize("items, pace, sizes", [
    (256, None, [32] * 8),               # pace unknown yet: every thread
    (256, 0.003, [32] * 8),              # 3 ms a PATCH: a chunk of 16 takes the 50 ms
    (256, 0.0006, [86, 85, 85]),         # chunks of at least 83
    (256, 0.0002, [256]),                # a fast API: one chunk, one thread woken
    (15, None, [15]),                    # a batch's results: one chunk
    (40, 0.5, [20, 20]),                 # never fewer than 16 a chunk while pipelining
    (0, None, []),
])
def test_chunks_take_about_50_ms_each_at_the_measured_pace(items, pace, sizes):
    assert chunk_sizes(items, 8, True, pace) == sizes


def test_without_pipelining_a_slow_api_gets_every_thread():
    assert chunk_sizes(20, 8, False, 0.05) == [3, 3, 3, 3, 2, 2, 2, 2]
    assert chunk_sizes(20, 8, False, 0.0001) == [20]


@pytest.mark.parametrize("items", [1, 17, 255, 1000])
@pytest.mark.parametrize("pace", [None, 0.00001, 0.0003, 0.01])
def test_chunks_cover_every_item_once_and_never_outnumber_the_threads(items, pace):
    sizes = chunk_sizes(items, 8, True, pace)
    assert sum(sizes) == items and 1 <= len(sizes) <= 8 and min(sizes) > 0


class _GatedApi:
    """A task API whose PATCH groups wait at a gate: what the sender does while they are on the wire."""

    def __init__(self, fail_first: bool = False, answered_early: int = 0) -> None:
        self.groups: list[list[str]] = []
        self.gate = threading.Event()
        self.in_call = threading.Semaphore(0)
        self.fail_first = fail_first
        self.answered_early = answered_early     # of the first group, answered before the gate opens

    def patch_in_order(self, patches, early=None):
        self.groups.append([task_id for task_id, _, _ in patches])
        if self.answered_early and len(self.groups) == 1:
            early(self.answered_early, [PatchResult(PatchOutcome.DONE, 200)] * self.answered_early)
        self.in_call.release()
        assert self.gate.wait(10)
        if self.fail_first and len(self.groups) == 1:
            raise RuntimeError("client bug")
        return [PatchResult(PatchOutcome.DONE, 200)] * len(patches)


def _sender(api, threads: int):
    pool = ThreadPoolExecutor(threads)
    answers: queue.SimpleQueue = queue.SimpleQueue()
    return PatchSender(pool, threads, api, answers.put, "test"), pool, answers


def _patch(task_id):
    return task_id, b"{}", True


def _one_thread_on_the_wire(items, answer=lambda pairs: pairs):
    """A sender with one thread, which is on the wire (held at the gate) with a chunk of `items`."""
    api = _GatedApi()
    sender, pool, answers = _sender(api, threads=1)
    sender.send([items], _patch, answer)
    assert api.in_call.acquire(timeout=10)
    return api, sender, pool, answers


@pytest.mark.timeout(20)
def test_chunks_that_wait_for_a_thread_go_out_as_one_group_and_are_answered_chunk_by_chunk():
    api, sender, pool, answers = _one_thread_on_the_wire(["a1", "a2"], lambda pairs: ("first", pairs))
    sender.send([["b1"]], _patch, lambda pairs: ("second", pairs))
    sender.send([["c1", "c2"]], _patch, lambda pairs: ("third", pairs))
    api.gate.set()
    got = [answers.get(timeout=10) for _ in range(3)]
    pool.shutdown(wait=True)
    assert api.groups == [["a1", "a2"], ["b1", "c1", "c2"]]     # b and c waited, then went together
    assert [label for label, _ in got] == ["first", "second", "third"]
    assert [[item for item, _ in pairs] for _, pairs in got] == [["a1", "a2"], ["b1"], ["c1", "c2"]]
    assert all(result.outcome is PatchOutcome.DONE for _, pairs in got for _, result in pairs)


@pytest.mark.timeout(20)
def test_a_group_never_exceeds_the_largest_size():
    api, sender, pool, answers = _one_thread_on_the_wire(["first"])
    waiting = [[f"t{n}-{i}" for i in range(100)] for n in range(4)]    # 400 items queued
    sender.send(waiting, _patch, lambda pairs: pairs)
    api.gate.set()
    for _ in range(5):
        answers.get(timeout=10)
    pool.shutdown(wait=True)
    assert [len(group) for group in api.groups] == [1, 200, 200]
    assert max(len(group) for group in api.groups) <= MAX_GROUP


@pytest.mark.timeout(20)
def test_queued_chunks_spread_over_every_thread_that_is_free():
    api = _GatedApi()
    sender, pool, answers = _sender(api, threads=4)
    sender.send([[f"{n}-{i}" for i in range(16)] for n in range(4)], _patch, lambda pairs: pairs)
    for _ in range(4):                              # four groups on the wire at once, one per thread
        assert api.in_call.acquire(timeout=10)
    api.gate.set()
    for _ in range(4):
        answers.get(timeout=10)
    pool.shutdown(wait=True)
    assert sorted(len(group) for group in api.groups) == [16, 16, 16, 16]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("fails", [False, True], ids=["answered", "client-error"])
def test_answers_told_early_reach_their_chunks_before_the_group_ends_and_only_once(fails):
    api = _GatedApi(fail_first=fails, answered_early=3)
    sender, pool, answers = _sender(api, threads=1)
    sender.send([["a1", "a2"], ["b1", "b2", "b3"]], _patch, lambda pairs: [item for item, _ in pairs])
    assert api.in_call.acquire(timeout=10)           # the group is on the wire, its gate shut
    early = [answers.get(timeout=10), answers.get(timeout=10)]
    assert early == [["a1", "a2"], ["b1"]] and answers.empty()     # each chunk's answered part, in order
    api.gate.set()
    assert answers.get(timeout=10) == ["b2", "b3"]   # the rest, once (a client error retries only it)
    pool.shutdown(wait=True)
    assert answers.empty()


@pytest.mark.timeout(20)
def test_a_client_error_answers_every_item_of_the_group_with_a_retry():
    api = _GatedApi(fail_first=True)
    sender, pool, answers = _sender(api, threads=1)
    api.gate.set()
    sender.send([["a1", "a2"]], _patch, lambda pairs: pairs)
    pairs = answers.get(timeout=10)
    pool.shutdown(wait=True)
    assert [item for item, _ in pairs] == ["a1", "a2"]
    assert all(result.outcome is PatchOutcome.RETRY and "client bug" in result.detail for _, result in pairs)


@pytest.mark.timeout(20)
def test_a_stop_drops_what_waits_and_answers_what_is_on_the_wire():
    api, sender, pool, answers = _one_thread_on_the_wire(["sent"])
    sender.send([["queued"]], _patch, lambda pairs: pairs)
    sender.drop_queued()
    api.gate.set()
    pool.shutdown(wait=True)
    assert api.groups == [["sent"]]
    assert [item for item, _ in answers.get(timeout=10)] == ["sent"]
    assert answers.empty()


def test_held_tells_join_by_receiver_and_kind_in_the_order_first_held():
    held = HeldTells(at_most=10)
    assert not held.hold("dispatcher", list, [1], repeat_safe=False)
    assert not held.hold("poller", tuple, ["a"], repeat_safe=True)
    assert not held.hold("dispatcher", list, [2, 3], repeat_safe=False)
    assert held.take() == [("dispatcher", [1, 2, 3]), ("poller", ("a",))]
    assert held.take() == []
    assert held.hold("poller", tuple, list(range(10)), repeat_safe=True)     # full: to go out now


def test_a_failing_message_leaves_to_its_replay_only_what_is_not_safe_to_tell_twice():
    held = HeldTells()
    held.begin()
    held.hold("dispatcher", list, ["claimed before"], repeat_safe=False)
    held.end()
    held.begin()
    held.hold("dispatcher", list, ["claimed by the failing message"], repeat_safe=False)
    held.hold("dispatcher", tuple, ["a kind the failing message began"], repeat_safe=False)
    held.hold("poller", tuple, ["settled by the failing message"], repeat_safe=True)
    held.failed()
    assert held.take() == [("dispatcher", ["claimed before"]), ("poller", ("settled by the failing message",))]


def test_a_failure_between_messages_drops_nothing():
    held = HeldTells()
    held.begin()
    held.hold("dispatcher", list, [1], repeat_safe=False)
    held.end()
    held.failed()          # idle work failed after the message was handled
    assert held.take() == [("dispatcher", [1])]


class Gate(msgspec.Struct, frozen=True):
    """Holds the coalescing stage until the test has filled its inbox."""


class Item(msgspec.Struct, frozen=True):
    number: int
    fail: bool = False
    fail_when_idle: bool = False


class Joined(msgspec.Struct, frozen=True):
    numbers: list


class Coalescing(Stage):
    """Tells the sink, through tell_soon, each number it is given."""

    name = "coalescing"
    gate = threading.Event()
    failed = threading.Event()       # set once on_failure has done all it does

    def receive(self, message) -> None:
        if isinstance(message, Gate):
            assert Coalescing.gate.wait(10)
        elif isinstance(message, Item):
            self.tell_soon("sink", Joined, [message.number])
            if message.fail_when_idle:
                self.when_idle(self.fail_now)
            if message.fail:
                raise RuntimeError("injected fault after a tell_soon")

    def fail_now(self) -> None:
        raise RuntimeError("injected fault in idle work")

    def status(self) -> dict:
        return {}

    def on_failure(self, *exc_info) -> None:
        super().on_failure(*exc_info)
        Coalescing.failed.set()


class Sink(Stage):
    name = "sink"
    told: list = []

    def receive(self, message) -> None:
        Sink.told.append(message)


@pytest.fixture
def coalescing():
    Coalescing.gate, Coalescing.failed, Sink.told = threading.Event(), threading.Event(), []
    scheduler, directory = Scheduler(), StageDirectory()
    ctx = PipelineContext(settings=Settings(), directory=directory, scheduler=scheduler)
    refs = [Sink.start(ctx), Coalescing.start(ctx)]
    directory.put("sink", refs[0])
    directory.put("coalescing", refs[1])
    yield directory
    for ref in refs:
        ref.stop()
    scheduler.stop()


def test_what_waiting_messages_tell_soon_goes_out_as_one_message_once_the_inbox_is_empty(coalescing):
    coalescing.tell("coalescing", Gate())
    for number in range(5):
        coalescing.tell("coalescing", Item(number))
    Coalescing.gate.set()
    wait_until(lambda: Sink.told, message="the sink to be told")
    assert Sink.told == [Joined([0, 1, 2, 3, 4])]
    coalescing.tell("coalescing", Item(5))       # alone in the inbox: told at once, by itself
    wait_until(lambda: len(Sink.told) == 2, message="the second message")
    assert Sink.told[1] == Joined([5])


def test_a_lone_failing_message_tells_nothing_its_replay_would_tell_again(coalescing):
    coalescing.tell("coalescing", Item(0, fail=True))
    assert Coalescing.failed.wait(10)
    coalescing.tell("sink", Item(99))     # after anything the failure told: the sink handles in order
    wait_until(lambda: Sink.told, message="the sink to be told")
    assert Sink.told == [Item(99)]


def test_idle_work_that_fails_behind_an_ask_fails_the_stage_and_keeps_what_was_held(coalescing):
    coalescing.tell("coalescing", Gate())
    coalescing.tell("coalescing", Item(0))
    coalescing.tell("coalescing", Item(1, fail_when_idle=True))
    answer = coalescing.ref("coalescing").proxy().status()    # the last envelope: an ask
    Coalescing.gate.set()
    assert answer.get(timeout=10) == {}
    wait_until(lambda: not coalescing.ref("coalescing").is_alive(), message="the stage to stop")
    wait_until(lambda: Sink.told, message="the sink to be told")
    assert Joined([0, 1]) in Sink.told


def test_what_tell_soon_holds_is_told_when_the_stage_fails(coalescing):
    """A failure must not lose what earlier messages put off: their tells go out before the stage
    goes. The failing message's own are not (the next instance handles it again)."""
    coalescing.tell("coalescing", Gate())
    coalescing.tell("coalescing", Item(0))
    coalescing.tell("coalescing", Item(1, fail=True))
    coalescing.tell("coalescing", Item(2))
    Coalescing.gate.set()
    wait_until(lambda: Sink.told, message="the sink to be told")
    assert Sink.told[0] == Joined([0])
