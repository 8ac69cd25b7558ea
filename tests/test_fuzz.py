"""Property-based fuzzing (Hypothesis): whatever a pending list, a provider or an inbox holds, every
valid task gets its own result, every other entry is failed or left alone, and nothing raises.

The case counts are fixed (max_examples) so that the suite's size is known: README "Tests"."""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

import msgspec
import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from actors.pipeline import Pipeline
from actors.directory import StageDirectory
from actors.stage import PipelineContext, Stage
from actors.supervisor import ChildSpec, Supervisor
from aitp.config import ChildPolicy, Settings
from aitp.contract import PendingSplitter, Task, Unusable, is_object_id, scan_entries
from aitp.sandbox import SandboxServer
from aitp.errors import VectorContractError
from aitp.sandbox.seed import embedding_task, object_id
from aitp.tasks import HANDLERS, TaskRejected
from aitp.vectors.float32_text import shortest_float32
from aitp.vectors.jobs import VectorJob, with_bodies
from aitp.timers import Scheduler
from aitp.vectors.work import process_job
from aitp.vectors.checks import mock_vector
from conftest import expected_unit, settings_for, wait_until

HANDLER = HANDLERS["text_embedding"](Settings())
# The same cases on every run (derandomize): CI stays repeatable; widen max_examples locally to search.
FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- pending lists ---
texts = st.text(min_size=1, max_size=80).filter(str.strip)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
junk_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


@st.composite
def hostile_entries(draw, number: int) -> bytes:
    """One entry that is not a valid task: the JSON bytes as a hostile API could list them."""
    task_id = object_id(10_000 + number)
    kind = draw(st.sampled_from(["junk", "bad id", "bad text", "deep", "utf8", "no model", "huge", "not object"]))
    if kind == "junk":
        return json.dumps(draw(junk_values)).encode()
    if kind == "bad id":
        return json.dumps({**embedding_task(task_id, "x"), "_id": draw(junk_values)}).encode()
    if kind == "bad text":
        task = embedding_task(task_id, "x")
        task["content"]["text"] = draw(junk_values.filter(lambda v: not isinstance(v, str)))
        return json.dumps(task).encode()
    if kind == "deep":
        depth = draw(st.integers(20_000, 30_000))      # past what any decoder reads (msgspec: about 1,000)
        return (b'{"_id":"%s","type":"text_embedding","content":{"text":"d","model":"m"},"x":%s%s}'
                % (task_id.encode(), b"[" * depth, b"]" * depth))
    if kind == "utf8":
        return (b'{"_id":"%s","type":"text_embedding","content":{"text":"a%sb","model":"m"}}'
                % (task_id.encode(), draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"]))))
    if kind == "no model":
        return json.dumps({**embedding_task(task_id, "x"), "content": {"text": "x"}}).encode()
    if kind == "huge":
        return json.dumps(embedding_task(task_id, "h" * 1_000_001)).encode()
    return json.dumps([task_id, "text_embedding"]).encode()


@st.composite
def pending_lists(draw) -> tuple[bytes, list[dict]]:
    """(the body, the valid tasks in it in order): valid tasks shuffled among hostile entries."""
    valid = [embedding_task(object_id(i), text) for i, text in enumerate(draw(st.lists(texts, max_size=25)))]
    hostile = [draw(hostile_entries(i)) for i in range(draw(st.integers(0, 8)))]
    entries = [json.dumps(task).encode() for task in valid] + hostile
    order = draw(st.permutations(range(len(entries))))
    body = b"[" + b",".join(entries[i] for i in order) + b"]"
    return body, [valid[i] for i in order if i < len(valid)]


@settings(parent=FUZZ, max_examples=300)
@given(pending_lists(), st.integers(1, 5_000), st.integers(256, 8_192))
def test_every_valid_task_of_any_pending_list_is_read_and_nothing_raises(listed, piece, segment):
    body, valid = listed
    splitter = PendingSplitter(segment_bytes=segment)
    for start in range(0, len(body), piece):
        splitter.feed(body[start:start + piece])
    entries = list(splitter.finish())
    jobs, decided = {}, 0
    for entry in entries:
        assert isinstance(entry, (Task, Unusable))
        if isinstance(entry, Unusable):
            continue
        try:
            jobs[entry.id] = HANDLER.parse(entry.id, entry.raw)
        except TaskRejected as exc:
            assert str(exc)                       # failed with a reason a person can read
            decided += 1
    for task in valid:                            # each valid task read as it is, whatever surrounds it
        assert jobs[task["_id"]].text == task["content"]["text"]
    assert len(jobs) + decided + sum(isinstance(e, Unusable) for e in entries) == len(entries)


@settings(parent=FUZZ, max_examples=10)
@given(pending_lists())
def test_a_running_pipeline_takes_every_valid_task_of_any_pending_list_and_never_stops(listed):
    body, valid = listed
    server = SandboxServer(valid)
    for number, raw in enumerate(_hostile_parts(body, valid)):
        server.add_raw_entry(_key_of(raw, number), raw)
    server.start()
    with tempfile.TemporaryDirectory() as data:
        settings = settings_for(server, Path(data))
        pipeline = Pipeline(settings)
        try:
            assert pipeline.start()
            hostile_ids = {key for key in server.store.raw if is_object_id(key)}
            # Settled: every valid task succeeded; each hostile one failed or was left pending.
            wait_until(lambda: all(server.state_of(t["_id"]) == "succeeded" for t in valid)
                       and not server.counts().get("in_progress"), message="every valid task to succeed")
            assert pipeline.fatal_reason is None and not pipeline.stop_requested.is_set()
            for task in valid:
                assert np.array_equal(np.asarray(server.result(task["_id"]), dtype=np.float32),
                                      expected_unit(mock_vector("nomic-embed-text", task["content"]["text"], 768)))
            assert {server.state_of(key) for key in hostile_ids} <= {"failed", "pending"}
        finally:
            pipeline.shutdown()
            server.stop()


def _hostile_parts(body: bytes, valid: list[dict]) -> list[bytes]:
    """The entries of `body` that are not one of the valid tasks, as raw bytes."""
    wanted = {json.dumps(task).encode() for task in valid}
    return [bytes(raw) for raw in scan_entries(body) if bytes(raw) not in wanted]


def _key_of(raw: bytes, number: int) -> str:
    """The sandbox's key for a raw entry: its own id where that is usable (so a PATCH to it lands)."""
    try:
        task_id = msgspec.json.decode(raw).get("_id")
    except (msgspec.DecodeError, AttributeError, RecursionError):
        task_id = None
    return task_id if is_object_id(task_id) else f"raw-{number}"


# --- provider answers ---
@st.composite
def ollama_answers(draw) -> tuple[bytes, int, int]:
    """(an /api/embed answer, inputs, dimension): valid, or valid then mutated byte-wise."""
    count, dimension = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    rows = draw(st.lists(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=dimension,
                                  max_size=dimension), min_size=count, max_size=count))
    matrix = np.asarray(rows, dtype=np.float64)
    if draw(st.booleans()) and np.all(np.abs(matrix).max(axis=1) > 0):
        matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)    # as /api/embed writes them
    body = bytearray(msgspec.json.encode({"model": "m", "embeddings": shortest_float32(matrix).tolist()}))
    for _ in range(draw(st.integers(0, 3))):
        if body:
            at = draw(st.integers(0, len(body) - 1))
            body[at:at + 1] = draw(st.sampled_from([b"", b"]", b"[", b",", b"e", b"-", b"9", b'"', b"\xff", b"NaN"]))
    return bytes(body), count, dimension


@settings(parent=FUZZ, max_examples=500)
@given(ollama_answers(), st.booleans())
def test_any_provider_answer_gives_checked_unit_vectors_or_a_contract_error(answer, pinned):
    body, count, dimension = answer
    job = VectorJob("ollama", body, "m", [object_id(i) for i in range(count)], dimension if pinned else None, 100_000)
    try:
        result = with_bodies(process_job(job, rows_by_place=True), body)
    except VectorContractError:
        return                                    # the whole batch refused, with a reason
    assert len(result.results) == count
    for vector in result.results:
        if vector.body is None:
            assert vector.error
            continue
        values = np.asarray(msgspec.json.decode(vector.body)["result"], dtype=np.float64)
        assert np.all(np.isfinite(values)) and abs(np.linalg.norm(values) - 1) < 1e-5


@settings(parent=FUZZ, max_examples=500)
@given(st.binary(max_size=300), st.sampled_from(["ollama", "openai", "mock"]))
def test_random_bytes_from_any_provider_are_a_contract_error_never_a_crash(payload, decoder):
    job = VectorJob(decoder, payload, "m", [object_id(0)], None, 100_000)
    try:
        process_job(job)
    except VectorContractError:
        pass


# --- inboxes handed over at restart ---
class Numbered:
    """A message; `fail`: the first stage to handle it raises (its successor then handles it)."""

    def __init__(self, number: int, fail: bool) -> None:
        self.number, self.fail = number, fail


class Hold:
    """Keeps the stage busy until the test opens the gate, so that the rest piles up in its inbox."""


class Counting(Stage):
    name = "counting"
    gate = threading.Event()
    handled: list[int] = []
    failed: set[int] = set()

    def receive(self, message) -> None:
        if isinstance(message, Hold):
            assert Counting.gate.wait(30)
        elif message.fail and message.number not in Counting.failed:
            Counting.failed.add(message.number)
            raise RuntimeError(f"injected fault on message {message.number}")
        else:
            Counting.handled.append(message.number)


@settings(parent=FUZZ, max_examples=40)
@given(st.lists(st.booleans(), min_size=1, max_size=12))
def test_any_inbox_handed_over_at_restarts_is_delivered_whole_and_in_order(fails):
    Counting.gate, Counting.handled, Counting.failed = threading.Event(), [], set()
    scheduler, directory = Scheduler(), StageDirectory()
    ctx = PipelineContext(settings=Settings(), directory=directory, scheduler=scheduler)
    policy = ChildPolicy(intensity=100, backoff_seconds=0.001, backoff_max_seconds=0.01)
    supervisor = Supervisor.start(directory, [ChildSpec("counting", lambda work: Counting.start(ctx, work), policy)],
                                  {}, on_fatal=lambda reason: None, schedule=scheduler.call_later)
    ctx.supervisor = supervisor
    try:
        wait_until(lambda: directory.ref("counting") is not None, message="the stage to start")
        directory.tell("counting", Hold())
        for number, fail in enumerate(fails):
            directory.tell("counting", Numbered(number, fail))
        Counting.gate.set()
        wait_until(lambda: len(Counting.handled) == len(fails), message="every message handled")
        assert Counting.handled == list(range(len(fails)))
    finally:
        supervisor.proxy().stop_children().get(timeout=30)
        supervisor.stop()
        scheduler.stop()
