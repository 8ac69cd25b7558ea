import msgspec
import pytest

from aitp.config import Settings, load_config
from aitp.contract import Task, Unusable, decode_pending, is_object_id, state_body
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
    assert any("10001 characters" in r for r in reasons)
    assert any("content.model is empty" in r for r in reasons)
    assert any("$.content.text" in r for r in reasons)


def test_text_limit_comes_from_the_settings():
    settings = load_config(environ={}, dotenv_dir="/x").settings
    settings = msgspec.structs.replace(settings, processing=msgspec.structs.replace(settings.processing, max_text_chars=5))
    with pytest.raises(TaskRejected, match="limit of 5"):
        HANDLERS["text_embedding"](settings).parse(object_id(1), msgspec.json.encode(embedding_task(object_id(1), "123456")))


def test_state_bodies_are_compact_and_checked():
    assert state_body("in_progress") == b'{"state":"in_progress"}'
    assert msgspec.json.decode(state_body("failed", "why")) == {"state": "failed", "error": "why"}
    with pytest.raises(ContractError):
        state_body("done")


def test_entries_are_decoded_only_as_far_as_they_are_read(monkeypatch):
    import aitp.contract as contract
    decoded = []
    real_read = contract.read_entry
    monkeypatch.setattr(contract, "read_entry", lambda raw: decoded.append(raw) or real_read(raw))
    pending = decode_pending(msgspec.json.encode([embedding_task(object_id(i), "t") for i in range(1000)]))
    first_three = [entry.id for _, entry in zip(range(3), pending)]
    assert first_three == [object_id(0), object_id(1), object_id(2)]
    assert len(decoded) == 3 and len(pending) == 1000
