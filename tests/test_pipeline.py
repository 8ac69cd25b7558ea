"""The whole pipeline in this process, against the sandbox, with the mock provider or the Ollama stub."""

import collections
import logging
import os
import threading

import msgspec
import numpy as np
import pytest
import requests

from actors.pipeline import Pipeline
from aitp.intake.cursor import KEEP_PER_CREDIT
from aitp.contract import is_object_id
from aitp.storage.journal import Claim, Journal, OutboxEntry
from aitp.sandbox.ollama_stub import POISON, stub_vector
from aitp.sandbox.seed import demo_tasks, embedding_task, generated_tasks, object_id
from aitp.vectors.checks import mock_vector

from conftest import dispatcher_fails_on_its_first_claimed_tasks, drained, expected_unit, settings_for, wait_until

# Measured 5.6 to 5.9 on a quiet machine, 6.4 to 6.5 with a core kept busy; 7.5 to 7.6 either way before
# issue 27 (actors/messages.py).
MESSAGES_PER_BATCH = 7.0


def test_demo_queue_drains_with_the_mock(sandbox, run_pipeline, tmp_path):
    queue = demo_tasks(100)
    server = sandbox(queue)
    run_pipeline(settings_for(server, tmp_path))
    left_alone = [t for t in queue if t.get("type") != "text_embedding" or not is_object_id(t["_id"])]
    wait_until(lambda: drained(server, len(left_alone)), message="the queue to drain")
    counts = server.counts()
    assert counts == {"succeeded": 100, "failed": 6, "pending": 5}
    for task in queue:
        if (task.get("type") == "text_embedding" and is_object_id(task["_id"])
                and server.state_of(task["_id"]) == "succeeded"):
            assert np.array_equal(np.asarray(server.result(task["_id"]), dtype=np.float32),
                                  expected_unit(mock_vector("nomic-embed-text", task["content"]["text"], 768)))
    for task in left_alone:
        assert server.history(str(task["_id"])) == ["pending"]      # never touched


@pytest.mark.parametrize("process_workers", [1, 0], ids=["in-a-worker", "in-the-service"])
@pytest.mark.parametrize("provider_normalises", [True, False], ids=["unit-from-ollama", "raw-from-ollama"])
def test_ollama_vectors_arrive_normalised_and_batched(sandbox, ollama, run_pipeline, tmp_path, provider_normalises,
                                                      process_workers):
    stub = ollama(models={"nomic-embed-text": 32}, normalised=provider_normalises)
    tasks = generated_tasks(100)
    server = sandbox(tasks)
    settings = settings_for(server, tmp_path, PROCESSING_MODE="ollama", OLLAMA_BASE_URL=stub.url,
                            AITP_WORKERS__PROCESS_WORKERS=str(process_workers))
    settings = msgspec.structs.replace(settings, models=msgspec.structs.replace(settings.models, dimensions={}))
    pipeline = run_pipeline(settings)
    wait_until(lambda: drained(server), message="the queue to drain")
    assert server.counts() == {"succeeded": 100}
    for task in tasks:
        got = np.asarray(server.result(task["_id"]), dtype=np.float32)
        assert np.array_equal(got, expected_unit(stub_vector("nomic-embed-text", task["content"]["text"], 32)))
    assert max(stub.batch_sizes) <= 16 and len(stub.batch_sizes) < 100
    assert pipeline.parts.journal.pinned_dimensions() == {"nomic-embed-text": 32}
    assert len(pipeline.parts.vector_pool.worker_pids()) == process_workers


def test_a_poisoned_input_fails_alone(sandbox, ollama, run_pipeline, tmp_path):
    stub = ollama(models={"nomic-embed-text": 768})
    tasks = generated_tasks(15) + [embedding_task(object_id(500), f"poison {POISON}")]
    server = sandbox(tasks)
    run_pipeline(settings_for(server, tmp_path, PROCESSING_MODE="ollama", OLLAMA_BASE_URL=stub.url))
    wait_until(lambda: drained(server), message="the queue to drain")
    assert server.counts() == {"succeeded": 15, "failed": 1}
    assert server.state_of(object_id(500)) == "failed"


def test_unsupported_model_for_ollama_fails_before_claiming(sandbox, ollama, run_pipeline, tmp_path):
    stub = ollama(models={"nomic-embed-text": 768})
    server = sandbox([embedding_task(object_id(1), "t", "text-embedding-3-small"), embedding_task(object_id(2), "u")])
    run_pipeline(settings_for(server, tmp_path, PROCESSING_MODE="ollama", OLLAMA_BASE_URL=stub.url))
    wait_until(lambda: drained(server), message="the queue to drain")
    assert server.history(object_id(1)) == ["pending", "failed"]
    assert server.history(object_id(2)) == ["pending", "in_progress", "succeeded"]


def test_claiming_off_reports_straight_from_pending(sandbox, run_pipeline, tmp_path):
    server = sandbox(generated_tasks(40))
    settings = settings_for(server, tmp_path, "[api]\nclaim_tasks = false\n")
    run_pipeline(settings)
    wait_until(lambda: drained(server), message="the queue to drain")
    assert all(server.history(object_id(i)) == ["pending", "succeeded"] for i in range(40))


def test_credit_bounds_what_is_taken(sandbox, run_pipeline, tmp_path, ollama):
    stub = ollama(models={"nomic-embed-text": 768}, call_cost=0.05)
    server = sandbox(generated_tasks(60))
    settings = settings_for(server, tmp_path, "[processing]\nmax_in_flight = 10\n",
                            PROCESSING_MODE="ollama", OLLAMA_BASE_URL=stub.url)
    pipeline = run_pipeline(settings)
    peaks = []

    def bounded_and_drained():
        in_progress = server.counts().get("in_progress", 0)
        peaks.append(max(in_progress, pipeline.in_flight()))
        return drained(server)

    wait_until(bounded_and_drained, message="the queue to drain")
    assert server.counts() == {"succeeded": 60}
    assert 0 < max(peaks) <= 10


def test_a_full_take_polls_again_without_waiting_the_interval(sandbox, run_pipeline, tmp_path):
    server = sandbox(generated_tasks(50))
    settings = settings_for(server, tmp_path, "[processing]\nmax_in_flight = 10\n", POLLING_INTERVAL_SECONDS="600")
    pipeline = run_pipeline(settings)
    # Five credit-sized takes (from one list, or polls); waiting the interval after any of them
    # would take ten minutes.
    wait_until(lambda: drained(server), timeout=60, message="the queue to drain without interval waits")
    assert server.counts() == {"succeeded": 50}
    assert pipeline.status()["stages"]["poller"]["taken"] == 50


def test_a_stage_that_raises_is_restarted_and_nothing_is_lost(sandbox, run_pipeline, tmp_path):
    fault = dispatcher_fails_on_its_first_claimed_tasks()
    server = sandbox(generated_tasks(80))
    pipeline = run_pipeline(settings_for(server, tmp_path), before_message=fault)
    wait_until(lambda: drained(server), message="the queue to drain")
    assert fault.failures and server.counts() == {"succeeded": 80}
    assert pipeline.status()["restarts"]["dispatcher"] == 1
    assert pipeline.fatal_reason is None
    # The restart shows in /health and /metrics.
    monitor = f"http://127.0.0.1:{pipeline.monitor.port}"
    health = requests.get(f"{monitor}/health", timeout=10).json()
    assert health["stages"]["dispatcher"] == {"state": "running", "restarts": 1}
    assert health["stages"]["poller"]["restarts"] == 0 and health["status"] == "ok"
    assert 'aitp_actor_restarts_total{stage="dispatcher"} 1.0' in requests.get(f"{monitor}/metrics", timeout=10).text


def test_a_stage_failing_past_its_intensity_stops_the_service(sandbox, tmp_path):
    def always_fail(stage, message):     # every time the Dispatcher holds jobs (each restart inherits them)
        if stage.name == "dispatcher" and any(stage.queues.values()):
            raise RuntimeError("injected permanent fault")

    server = sandbox(generated_tasks(5))
    settings = settings_for(server, tmp_path, "[supervision.dispatcher]\nintensity = 2\nperiod_seconds = 60.0\n")
    pipeline = Pipeline(settings, before_message=always_fail)
    assert pipeline.start()
    try:
        assert pipeline.stop_requested.wait(30)
        assert "stage dispatcher failed more than 2 times" in pipeline.fatal_reason
        assert "injected permanent fault" in pipeline.fatal_reason
    finally:
        pipeline.shutdown()
    # Graceful even so: every claim went back to pending.
    assert server.counts() == {"pending": 5}
    assert Journal(settings.journal_path).counts() == {"claims": 0, "outbox": 0}


def test_the_last_run_is_resumed_from_the_journal(sandbox, run_pipeline, tmp_path):
    tasks = generated_tasks(4)
    server = sandbox(tasks)
    settings = settings_for(server, tmp_path)
    # A run that died after claiming task 0 and computing task 1 (its PATCH never made it).
    for task_id in (object_id(0), object_id(1)):
        server.store.set_state(task_id, "in_progress", None)
    journal = Journal(settings.journal_path)
    journal.record_claims([Claim(object_id(0), msgspec.json.encode(tasks[0]))])
    journal.add_results([OutboxEntry(object_id(1), b'{"state":"succeeded","result":[0.6,0.8]}', "succeeded")])
    journal.close()

    run_pipeline(settings)
    wait_until(lambda: drained(server), message="the queue to drain")
    assert server.counts() == {"succeeded": 4}
    assert server.result(object_id(1)) == [0.6, 0.8]            # sent from the outbox, not recomputed
    assert server.history(object_id(0)) == ["pending", "in_progress", "succeeded"]   # resumed, not re-claimed


def test_claims_that_can_no_longer_be_resumed_are_answered_not_stranded(sandbox, run_pipeline, tmp_path):
    malformed = embedding_task(object_id(0), "")
    unknown_type = dict(embedding_task(object_id(1), "text"), type="retired_type")
    unreadable = embedding_task(object_id(2), "text")
    server = sandbox([malformed, unknown_type, unreadable])
    settings = settings_for(server, tmp_path)
    journal = Journal(settings.journal_path)
    for task, task_json in ((malformed, msgspec.json.encode(malformed)), (unknown_type, msgspec.json.encode(
            unknown_type)), (unreadable, b'{"_id": truncated')):
        server.store.set_state(task["_id"], "in_progress", None)
        journal.record_claims([Claim(task["_id"], task_json)])
    journal.close()

    run_pipeline(settings)
    wait_until(lambda: server.counts().get("in_progress", 0) == 0, message="every claim answered")
    assert server.state_of(malformed["_id"]) == "failed" and "empty" in server.error_of(malformed["_id"])
    assert server.state_of(unreadable["_id"]) == "failed" and "unreadable claim" in server.error_of(unreadable["_id"])
    assert server.state_of(unknown_type["_id"]) == "pending"      # for a worker that takes its type


@pytest.mark.parametrize("reuse_seconds", ["60", "0"])
def test_a_backlog_is_taken_from_one_list_while_it_is_fresh(sandbox, run_pipeline, tmp_path, reuse_seconds):
    server = sandbox(generated_tasks(480))
    toml = f"[processing]\nmax_in_flight = 32\n[polling]\nlist_reuse_seconds = {reuse_seconds}\n"
    # A long interval: the polls counted are those made for more credit, not the idle ones after.
    run_pipeline(settings_for(server, tmp_path, toml, POLLING_INTERVAL_SECONDS="60"))
    wait_until(lambda: drained(server), message="the queue to drain")
    assert server.counts() == {"succeeded": 480}
    polls = server.request_counts()["GET pending"]
    if reuse_seconds == "60":        # a list serves every take until what was kept of it is used up
        assert polls == -(-480 // (KEEP_PER_CREDIT * 32))
    else:                            # a poll for each take
        assert polls >= 480 // 32


def test_tasks_behind_a_long_run_of_unhandled_ones_are_still_reached(sandbox, run_pipeline, tmp_path):
    # More tasks of a type no handler takes than a poll keeps: they must not hide the others.
    unhandled = [dict(task, type="summarizing") for task in generated_tasks(300)]
    server = sandbox(unhandled + generated_tasks(40, start=300))
    run_pipeline(settings_for(server, tmp_path, "[processing]\nmax_in_flight = 4\n"))
    wait_until(lambda: drained(server, 300), message="the embedding tasks to drain")
    assert server.counts() == {"pending": 300, "succeeded": 40}
    assert all(server.history(task["_id"]) == ["pending"] for task in unhandled)


@pytest.mark.parametrize("pipelining", ["true", "false"])
def test_claims_and_reports_land_with_and_without_pipelining(sandbox, run_pipeline, tmp_path, pipelining):
    tasks = generated_tasks(200)
    server = sandbox(tasks)
    pipeline = run_pipeline(settings_for(server, tmp_path, f"[api]\npipelining = {pipelining}\n"))
    wait_until(lambda: drained(server), message="the queue to drain")
    assert server.counts() == {"succeeded": 200}
    assert all(server.history(t["_id"]) == ["pending", "in_progress", "succeeded"] for t in tasks)
    assert pipeline.parts.task_api.pipelining is (pipelining == "true")


def test_a_chunk_whose_client_call_raises_is_retried_not_stranded(sandbox, run_pipeline, tmp_path, monkeypatch):
    from aitp.transport.task_api import TaskApiClient
    real = TaskApiClient.patch_in_order
    raised = []

    def raises_once_on_results(self, patches, early=None):
        if not raised and any(is_success for _, _, is_success in patches):
            raised.append(len(patches))
            raise RuntimeError("a bug in the client")
        return real(self, patches, early)
    monkeypatch.setattr(TaskApiClient, "patch_in_order", raises_once_on_results)
    server = sandbox(generated_tasks(20))
    run_pipeline(settings_for(server, tmp_path))
    wait_until(lambda: drained(server), message="the queue to drain")
    assert raised and server.counts() == {"succeeded": 20}


def test_a_refused_failure_report_is_sent_again_bare_and_never_strands_its_task(sandbox, run_pipeline, tmp_path):
    malformed = [embedding_task(object_id(i), "") for i in range(3)]
    server = sandbox(malformed + generated_tasks(5, start=10))
    server.strict_bodies = True           # 400 for the `error` field a failure report carries
    pipeline = run_pipeline(settings_for(server, tmp_path))
    wait_until(lambda: drained(server), message="the queue to drain")
    assert server.counts() == {"succeeded": 5, "failed": 3}
    for task in malformed:
        assert server.history(task["_id"])[-1] == "failed"
    wait_until(lambda: pipeline.parts.journal.counts() == {"claims": 0, "outbox": 0}, message="a clean journal")


def test_health_answers_within_dockers_probe_time_while_stages_are_busy(sandbox, run_pipeline, tmp_path):
    class Stall:
        """Keeps the stage that handles it inside a long call, as an API stall does."""
    release = threading.Event()

    def hold(stage, message):
        if isinstance(message, Stall):
            release.wait(60)
    server = sandbox(generated_tasks(20))
    pipeline = run_pipeline(settings_for(server, tmp_path), before_message=hold)
    wait_until(lambda: drained(server), message="the queue to drain")
    stuck = ("poller", "dispatcher", "reporter")
    assert pipeline.status()["stages"]["poller"]["taken"] == 20          # a probe before the stall
    try:
        for name in stuck:               # asked one after another for 2 s each, they took 6 s
            pipeline.ctx.directory.tell(name, Stall())
        health = requests.get(f"http://127.0.0.1:{pipeline.monitor.port}/health", timeout=4)   # Docker's budget
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert {name: health.json()["stages"][name]["state"] for name in stuck} == dict.fromkeys(stuck, "busy")
        assert pipeline.status()["stages"]["poller"]["taken"] == 20      # its last answer, marked busy
    finally:
        release.set()
    server.add_tasks(generated_tasks(20, start=100))
    wait_until(lambda: drained(server), message="the rest to drain")


def test_far_from_the_api_the_window_opens_from_the_pace_of_the_first_results(sandbox, run_pipeline, tmp_path):
    # The Reporter tells the Poller of each batch computed (TasksComputed); through an 80 ms round
    # trip the network's share of the window matters, so it opens past its minimum.
    from aitp.sandbox.relay import DelayRelay

    server = sandbox(generated_tasks(400))
    relay = DelayRelay(int(server.url.rsplit(":", 1)[1]), 0.08)
    try:
        toml = "[processing]\nmin_in_flight = 32\nmax_in_flight = 512\n"
        pipeline = run_pipeline(settings_for(server, tmp_path, toml, API_BASE_URL=relay.url))
        wait_until(lambda: drained(server), timeout=120, message="the queue to drain")
        assert server.counts() == {"succeeded": 400}
        poller = pipeline.status()["stages"]["poller"]
        assert poller["start_pace"] > 0 and poller["window"] > 32
        assert pipeline.health()[1]["window"] > 32           # what an operator sees in /health
    finally:
        relay.stop()


def test_the_mock_provider_says_so_in_health_and_in_a_warning(sandbox, ollama, run_pipeline, tmp_path, caplog):
    server = sandbox(generated_tasks(3))
    with caplog.at_level(logging.WARNING, logger="aitp.pipeline"):
        mocked = run_pipeline(settings_for(server, tmp_path / "mock", PROCESSING_MODE="mock"))
    assert mocked.health()[1]["mock"] is True
    assert any("mock provider is in use" in record.getMessage() for record in caplog.records)
    stub = ollama(models={"nomic-embed-text": 768})
    real = run_pipeline(settings_for(server, tmp_path / "ollama", PROCESSING_MODE="ollama", OLLAMA_BASE_URL=stub.url,
                                     METRICS_PORT="0"))
    assert real.health()[1]["mock"] is False


def test_far_from_the_api_the_next_list_is_fetched_while_the_last_is_taken_from(sandbox, run_pipeline, tmp_path):
    # Fetches through an 80 ms round trip take longer than the 50 ms that makes prefetching worth
    # it; a list keeps 8 x 32 entries of the 600, so lists run out and the next must be ready.
    from aitp.sandbox.relay import DelayRelay

    server = sandbox(generated_tasks(600))
    relay = DelayRelay(int(server.url.rsplit(":", 1)[1]), 0.08)
    try:
        toml = "[processing]\nmin_in_flight = 32\nmax_in_flight = 32\n[polling]\nlist_reuse_seconds = 60\n"
        pipeline = run_pipeline(settings_for(server, tmp_path, toml, API_BASE_URL=relay.url,
                                             POLLING_INTERVAL_SECONDS="60"))
        wait_until(lambda: drained(server), timeout=120, message="the queue to drain")
        assert server.counts() == {"succeeded": 600}
        assert pipeline.status()["stages"]["poller"]["prefetched"] > 0
        assert relay.sent_down.value > 0            # it all went through the relay
    finally:
        relay.stop()


def test_messages_per_embedding_batch(sandbox, run_pipeline, tmp_path):
    """The messages one embedding batch of 15 causes from the poll to its PATCHes, as stated in
    actors/messages.py: counted by type over a drain, a stage's own timers included."""
    per_batch = 15
    server = sandbox(generated_tasks(int(os.environ.get("AITP_TEST_MESSAGES_TASKS", "3000"))))
    told: list[str] = []
    lock = threading.Lock()

    def count(stage, message) -> None:
        with lock:
            told.append(type(message).__name__)

    settings = settings_for(server, tmp_path, AITP_BATCHING__MAX_ITEMS=str(per_batch))
    pipeline = run_pipeline(settings, before_message=count)
    wait_until(lambda: drained(server), timeout=120, message="the queue to drain")
    wait_until(lambda: pipeline.in_flight() == 0, message="every task settled")
    with lock:
        counted = collections.Counter(told)
    batches = counted["EmbedBatch"]
    per = sum(counted.values()) / max(1, batches)
    logging.getLogger("test").warning("messages per batch of %d: %.2f over %d batches: %s", per_batch, per,
                                      batches, dict(counted))
    assert batches >= 20, "the drain must outlast the slow start"
    assert per <= MESSAGES_PER_BATCH
