import msgspec
import pytest

from aitp.config import Settings, load_config
from aitp.contract import PendingSplitter, Task, Unusable, decode_pending, is_object_id, read_entry, state_body
from aitp.errors import ContractError
from aitp.sandbox.seed import embedding_task, hostile_tasks, object_id
from aitp.tasks import HANDLERS, TaskRejected


@pytest.mark.parametrize("value, ok", [
    ("68b89107952364b0aad89c1d", True), ("68B89107952364B0AAD89C1D", False), ("68b89107952364b0aad89c1", False),
    ("68b89107952364b0aad89c1dA", False), ("../../etc/passwd", False), ("68b89107952364b0aad89c%2F", False),
    ("68b89107952364b0aad89c1d\n", False), (12, False), (None, False)])
def test_only_object_ids_are_usable(value, ok):
    assert is_object_id(value) is ok


def test_each_task_is_decoded_on_its_own():
    good = embedding_task(object_id(1), "hello")
    body = msgspec.json.encode([good, 7, "text", {"_id": {"$oid": "x"}}, {"type": "text_embedding"},
                                embedding_task("../x", "t"), {"_id": object_id(2), "type": 5}])
    entries = list(decode_pending(body))
    tasks = [entry for entry in entries if isinstance(entry, Task)]
    assert [t.id for t in tasks] == [object_id(1), object_id(2)]
    assert tasks[1].type == "5"          # a non-string type is never handled
    assert sum(isinstance(entry, Unusable) for entry in entries) == 5
    assert msgspec.json.decode(tasks[0].raw)["content"]["text"] == "hello"


@pytest.mark.parametrize("body", [b"", b"{}", b"<html>502</html>", b"[1,"])
def test_a_pending_list_that_is_not_an_array_is_a_contract_error(body):
    with pytest.raises(ContractError):
        decode_pending(body)


def test_text_embedding_handler_accepts_good_tasks_and_ignores_extra_fields():
    handler = HANDLERS["text_embedding"](Settings())
    raw = msgspec.json.encode(embedding_task(object_id(1), "héllo 🚀", "mxbai-embed-large", extra={"x": 1}))
    job = handler.parse(object_id(1), raw)
    assert (job.task_id, job.text, job.model) == (object_id(1), "héllo 🚀", "mxbai-embed-large")


def test_every_malformed_sample_is_rejected_with_a_reason():
    handler = HANDLERS["text_embedding"](Settings())
    malformed = [t for t in hostile_tasks(0) if t.get("type") == "text_embedding" and is_object_id(t["_id"])]
    assert len(malformed) == 6
    reasons = []
    for task in malformed:
        with pytest.raises(TaskRejected) as caught:
            handler.parse(task["_id"], msgspec.json.encode(task))
        reasons.append(str(caught.value))
    assert any("content.text is empty" in r for r in reasons)
    assert any("1000001 characters" in r for r in reasons)
    assert any("content.model is empty" in r for r in reasons)
    assert any("$.content.text" in r for r in reasons)


def test_text_limit_comes_from_the_settings():
    settings = load_config(environ={}, dotenv_dir="/x").settings
    processing = msgspec.structs.replace(settings.processing, max_text_chars=5)
    settings = msgspec.structs.replace(settings, processing=processing)
    with pytest.raises(TaskRejected, match="limit of 5"):
        HANDLERS["text_embedding"](settings).parse(object_id(1),
                                                   msgspec.json.encode(embedding_task(object_id(1), "123456")))


def test_state_bodies_are_compact_and_checked():
    assert state_body("in_progress") == b'{"state":"in_progress"}'
    assert msgspec.json.decode(state_body("failed", "why")) == {"state": "failed", "error": "why"}
    with pytest.raises(ContractError):
        state_body("done")


def _tricky_list() -> list:
    """Entries whose text or extra fields hold what looks like a boundary between two entries."""
    entries = []
    for i in range(300):
        text = [f"plain {i}", 'x"},{"_id":"' + object_id(900) + '"', "} , {", "\\},{\\", "🚀 },{ é"][i % 5]
        extra = {"nested": [{"a": i}, {"b": [{}, {}]}]} if i % 7 == 0 else {}
        entries.append(embedding_task(object_id(i), text, extra=extra))
    return entries


@pytest.mark.parametrize("piece", [1, 97, 4096, 10**7])
@pytest.mark.parametrize("indent", [None, 2])
def test_a_list_split_as_it_arrives_keeps_every_entry_whatever_the_pieces(piece, indent):
    import json
    entries = _tricky_list()
    body = json.dumps(entries, indent=indent, ensure_ascii=False).encode()
    splitter = PendingSplitter(segment_bytes=3000)     # many cuts, several candidates in strings
    for start in range(0, len(body), piece):
        splitter.feed(memoryview(body)[start:start + piece])
    pending = splitter.finish()
    assert not pending.truncated
    assert [msgspec.json.decode(task.raw) for task in pending] == entries


def test_a_lone_surrogate_in_one_segment_spoils_only_its_text():
    entries = [embedding_task(object_id(i), f"text {i}") for i in range(100)]
    body = msgspec.json.encode(entries).replace(b'"text 50"', b'"text \\ud800 50"')
    splitter = PendingSplitter(segment_bytes=2000)
    for start in range(0, len(body), 500):
        splitter.feed(body[start:start + 500])
    tasks = list(splitter.finish())
    assert len(tasks) == 100
    assert msgspec.json.decode(tasks[50].raw)["content"]["text"] == "text \ufffd 50"


@pytest.mark.parametrize("count, truncated", [(9, False), (10, False), (11, True), (500, True)])
def test_the_splitter_keeps_at_most_max_entries_and_says_when_there_were_more(count, truncated):
    splitter = PendingSplitter(max_entries=10)
    splitter.feed(msgspec.json.encode([embedding_task(object_id(i), "t") for i in range(count)]))
    pending = splitter.finish()
    assert [task.id for task in pending] == [object_id(i) for i in range(min(count, 10))]
    assert pending.truncated is truncated


def test_entries_dropped_by_keep_do_not_use_up_the_limit():
    entries = [embedding_task(object_id(i), "t", type="other" if i < 50 else "text_embedding") for i in range(70)]
    kept = PendingSplitter(lambda raw: (t := read_entry(raw)).type == "text_embedding" and t or None, max_entries=10)
    kept.feed(msgspec.json.encode(entries))
    pending = kept.finish()
    assert [task.id for task in pending] == [object_id(i) for i in range(50, 60)] and pending.truncated


def test_memory_stays_bounded_however_long_the_list(monkeypatch):
    import tracemalloc
    body = msgspec.json.encode([embedding_task(object_id(i), "some text " * 30) for i in range(40_000)])
    assert len(body) > 20 * 2**20
    splitter = PendingSplitter(max_entries=1000)
    tracemalloc.start()
    try:
        for start in range(0, len(body), 256 * 1024):
            splitter.feed(memoryview(body)[start:start + 256 * 1024])
        pending = splitter.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(pending) == 1000 and pending.truncated
    assert peak < 6 * 2**20, f"peak {peak / 2**20:.1f} MB while splitting a {len(body) / 2**20:.0f} MB list"


@pytest.mark.parametrize("segment, entries", [
    (b'[1,"a",Infinity,{"b":[2]}]', [b"1", b'"a"', b"Infinity", b'{"b":[2]}']),    # judged one by one
    (b'[{"a":"x"},{"b":"y}]', None),         # cut inside a string ("y},{..."): never a real boundary
    (b'[{"b":"q\\"}]', None),                # the same with an escaped quote before the cut
    (b'[{"a":[1,{"c":2}]', None),            # cut inside a nested value
    (b'[1,2,]', None), (b'{"a":1}', None), (b'[1] [2]', None), (b"<html>", None),
    (b"[]", []),
])
def test_the_structural_split_finds_real_entries_only(segment, entries):
    from aitp.contract import scan_entries
    found = scan_entries(segment)
    assert (None if found is None else [bytes(raw) for raw in found]) == entries


def test_an_entry_that_is_not_json_is_left_alone_and_the_rest_read():
    body = b'[' + msgspec.json.encode(embedding_task(object_id(1), "a")) + b',Infinity,' \
        + msgspec.json.encode(embedding_task(object_id(2), "b")) + b']'
    entries = list(decode_pending(body))
    assert [entry.id for entry in entries if isinstance(entry, Task)] == [object_id(1), object_id(2)]
    assert [entry.reason for entry in entries if isinstance(entry, Unusable)] == ["not an object"]
