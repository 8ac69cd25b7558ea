"""`aitp run` as a real subprocess against the sandbox and the Ollama stub, with real signals."""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest

from aitp.contract import is_object_id
from aitp.storage.journal import Journal
from aitp.sandbox.ollama_stub import stub_vector
from aitp.sandbox.seed import generated_tasks, hostile_tasks
from aitp.vectors.checks import checked_unit_vectors
from conftest import wait_until

pytestmark = pytest.mark.e2e

SECRET = "e2e-client-secret-value"


def handled(task) -> bool:
    return task.get("type") == "text_embedding" and is_object_id(task.get("_id"))


def test_500_tasks_end_in_their_right_states_then_sigterm_exits_0(sandbox, ollama, service, tmp_path):
    good = generated_tasks(500)
    bad = hostile_tasks(1000)
    server = sandbox(good + bad, client_id="aitp", client_secret=SECRET, token_lifetime=3600)
    stub = ollama(models={"nomic-embed-text": 768}, installed=[])
    process = service({"API_BASE_URL": server.url, "OAUTH2_TOKEN_URL": server.token_url,
                       "OAUTH2_CLIENT_ID": "aitp", "OAUTH2_CLIENT_SECRET": SECRET,
                       "PROCESSING_MODE": "ollama", "OLLAMA_BASE_URL": stub.url})
    left_alone = [t for t in bad if not handled(t)]
    wait_until(lambda: server.counts().get("pending") == len(left_alone) and not server.counts().get("in_progress"),
               timeout=90, message="500 tasks to be reported")
    assert server.counts() == {"succeeded": 500, "failed": 6, "pending": len(left_alone)}
    assert stub.pulls == ["nomic-embed-text"]                       # pulled at startup
    for task in good:
        raw = stub_vector("nomic-embed-text", task["content"]["text"], 768)
        expected = checked_unit_vectors(raw[None, :], 1, 768)[0]
        assert np.array_equal(np.asarray(server.result(task["_id"]), dtype=np.float32), expected)
        assert server.history(task["_id"]) == ["pending", "in_progress", "succeeded"]
    for task in left_alone:
        assert server.history(str(task["_id"])) == ["pending"]
    assert max(stub.batch_sizes) <= 16

    process.signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    logs = process.logs()
    assert SECRET not in logs
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    failed = [line for line in lines if line["event"] == "task failed"]
    assert len(failed) == 6 and all(line["task_id"] and line["reason"] for line in failed)
    assert any(line["event"] == "task left alone" and line.get("type") == "summarizing" for line in lines)
    assert Journal(tmp_path / "data" / "journal.sqlite3").counts() == {"claims": 0, "outbox": 0}


def test_sigterm_mid_run_releases_every_claim_and_exits_0(sandbox, ollama, service, tmp_path):
    server = sandbox(generated_tasks(300))
    stub = ollama(models={"nomic-embed-text": 768}, call_cost=0.05, input_cost=0.002)   # a slow GPU
    process = service({"API_BASE_URL": server.url, "PROCESSING_MODE": "ollama", "OLLAMA_BASE_URL": stub.url,
                       "OLLAMA_TIMEOUT": "2", "AITP_SHUTDOWN__DEADLINE_SECONDS": "1"})
    wait_until(lambda: server.counts().get("succeeded", 0) >= 20, timeout=60, message="work to be under way")
    stub.gate.clear()                     # the GPU stalls: a call is held, whatever the machine's pace
    wait_until(lambda: stub.waiting_at_gate, message="a call held in flight")
    process.signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    stub.gate.set()
    counts = server.counts()
    assert not counts.get("in_progress"), counts                       # nothing left claimed
    assert counts.get("succeeded", 0) + counts.get("pending", 0) == 300
    assert counts.get("pending", 0) > 0                                # it really stopped mid-run
    assert Journal(tmp_path / "data" / "journal.sqlite3").counts() == {"claims": 0, "outbox": 0}


def test_kill_9_then_restart_finishes_every_task(sandbox, ollama, service, tmp_path):
    server = sandbox(generated_tasks(200))
    stub = ollama(models={"nomic-embed-text": 768}, call_cost=0.02, input_cost=0.002)
    env = {"API_BASE_URL": server.url, "PROCESSING_MODE": "ollama", "OLLAMA_BASE_URL": stub.url}
    first = service(env)
    wait_until(lambda: server.counts().get("succeeded", 0) > 10, timeout=60, message="work under way")
    stub.gate.clear()                     # a call held in flight: its tasks stay claimed at the kill
    wait_until(lambda: stub.waiting_at_gate, message="a call held in flight")
    first.signal(signal.SIGKILL)
    first.wait(timeout=10)
    stranded = server.counts().get("in_progress", 0)
    stub.gate.set()
    second = service(env)
    wait_until(lambda: server.counts() == {"succeeded": 200}, timeout=90, message="every task to succeed")
    second.signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0
    assert stranded > 0                                   # only the journal could finish these
    assert "resuming the last run" in second.logs()


def test_demo_command_drains_and_exits_0(tmp_path):
    result = subprocess.run([sys.executable, "-m", "actors", "demo", "--tasks", "120"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "summary: 216 succeeded, 6 failed, 5 left pending" in result.stdout     # 120 + 4 x 24 LLM tasks
    for task_type in ("text_embedding", "identifying_data", "defining_topics", "defining_impact_area",
                      "defining_severity"):
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(task_type + " "))
        succeeded = int(line.split()[1])
        assert succeeded == (120 if task_type == "text_embedding" else 24), line
        assert task_type == "text_embedding" or line.endswith(" 0 pending"), line   # 3 unusable ids stay
    assert "tasks/s" in result.stdout


def test_a_second_signal_stops_at_once_and_the_journal_covers_it(sandbox, ollama, service, tmp_path):
    server = sandbox(generated_tasks(200))
    stub = ollama(models={"nomic-embed-text": 768}, call_cost=0.2)
    env = {"API_BASE_URL": server.url, "PROCESSING_MODE": "ollama", "OLLAMA_BASE_URL": stub.url}
    first = service(env)
    wait_until(lambda: server.counts().get("in_progress", 0) > 0, timeout=60, message="claimed work")
    first.signal(signal.SIGTERM)
    wait_until(lambda: '"event":"stopping"' in first.logs(), timeout=10, message="the first signal to be seen")
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 128 + signal.SIGTERM
    second = service(env)
    wait_until(lambda: server.counts() == {"succeeded": 200}, timeout=90, message="every task to succeed")
    second.signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0
