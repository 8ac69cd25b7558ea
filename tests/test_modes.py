"""PROCESSING_MODE end to end: openai, hybrid and their failures, against the sandbox and the stub
Ollama and OpenAI servers, with the whole pipeline in this process (or as `aitp run`)."""

import json
import threading

import numpy as np
import pytest

from actors.app import main as aitp_main
from actors.pipeline import Pipeline
from aitp.storage.journal import Journal
from aitp.sandbox.ollama_stub import POISON, stub_vector
from aitp.sandbox.openai_stub import STUB_KEY, Injected, openai_stub_vector
from aitp.sandbox.seed import embedding_task, generated_tasks, object_id
from conftest import drained, expected_unit, settings_for, wait_until

SMALL_DIMENSIONS = """
[models]
dimensions = { "nomic-embed-text" = 32, "text-embedding-3-small" = 64, "text-embedding-ada-002" = 48 }
"""
SECRET_KEY = "sk-live-never-in-a-log-5555"


def vector_of(server, task) -> np.ndarray:
    return np.asarray(server.result(task["_id"]), dtype=np.float32)


def openai_expected(model: str, text: str, native: int, shortened: int | None = None) -> np.ndarray:
    vector = openai_stub_vector(model, text, native)
    if shortened is not None:   # as the stub does it, in float32
        vector = vector[:shortened] / np.linalg.norm(vector[:shortened])
    return expected_unit(vector.astype(np.float64))   # the pipeline decodes to float64


def test_openai_mode_embeds_any_model_and_pins_unknown_dimensions(sandbox, openai_stub, run_pipeline, tmp_path):
    stub = openai_stub(models={"text-embedding-3-small": 128, "text-embedding-ada-002": 48, "my-embedder": 24})
    stub.fail_next.append(Injected(429, headers={"retry-after": "0.2"}))   # retried, not failed
    models = ("text-embedding-3-small", "text-embedding-ada-002", "my-embedder")
    tasks = generated_tasks(60, models=models)
    server = sandbox(tasks)
    settings = settings_for(server, tmp_path, SMALL_DIMENSIONS, OPENAI_API_KEY=STUB_KEY, OPENAI_BASE_URL=stub.url)
    pipeline = run_pipeline(settings)
    wait_until(lambda: drained(server), message="the queue to drain")
    assert server.counts() == {"succeeded": 60}
    for task in tasks:
        model, text = task["content"]["model"], task["content"]["text"]
        native = stub.models[model]
        want = openai_expected(model, text, native, 64 if model == "text-embedding-3-small" else None)
        assert np.array_equal(vector_of(server, task), want)
    for request in stub.requests[1:]:
        assert request["encoding_format"] == "base64" and len(request["inputs"]) <= 16
        assert request["dimensions"] == (64 if request["model"] == "text-embedding-3-small" else None)
    tokens = pipeline.stage("provider_workers").status().get(timeout=5)["tokens"]
    assert set(tokens) == {f"openai/{model}" for model in models}
    assert sum(tokens.values()) == sum(len(t["content"]["text"]) // 4 + 1 for t in tasks)

    # The unknown model was pinned by its first vector (test_config_show_lists_learned_dimensions shows it).
    assert Journal(settings.journal_path).pinned_dimensions()["my-embedder"] == 24
    # A model that changes its dimension afterwards fails its tasks rather than mixing two spaces.
    stub.models["my-embedder"] = 30
    late = [embedding_task(object_id(1000 + i), f"late {i}", "my-embedder") for i in range(3)]
    server.add_tasks(late)
    wait_until(lambda: drained(server), message="the late tasks to finish")
    for task in late:
        assert server.state_of(task["_id"]) == "failed"
        assert "dimension 30" in server.error_of(task["_id"]) and "pinned at 24" in server.error_of(task["_id"])


def test_config_show_lists_learned_dimensions(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    journal = Journal(data / "journal.sqlite3")
    journal.pin_dimension("my-embedder", 24)
    journal.close()
    monkeypatch.setenv("AITP_DATA_DIR", str(data))
    monkeypatch.chdir(tmp_path)
    assert aitp_main(["config", "show"]) == 0
    assert "my-embedder = 24" in capsys.readouterr().out
    assert aitp_main(["config", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["models.dimensions.my-embedder"] == {"value": 24, "source": "journal (first vector)", "env": None}


def hybrid_settings(server, tmp_path, ollama_url: str, openai_url: str, **env):
    return settings_for(server, tmp_path, SMALL_DIMENSIONS, PROCESSING_MODE="hybrid", OLLAMA_BASE_URL=ollama_url,
                        OPENAI_API_KEY=STUB_KEY, OPENAI_BASE_URL=openai_url, **env)


def test_hybrid_sends_supported_models_to_ollama_and_the_rest_to_openai(sandbox, ollama, openai_stub, run_pipeline,
                                                                       tmp_path):
    local = ollama(models={"nomic-embed-text": 32})
    remote = openai_stub(models={"text-embedding-3-small": 64, "nomic-embed-text": 32})
    tasks = generated_tasks(40, models=("nomic-embed-text", "text-embedding-3-small"))
    server = sandbox(tasks)
    run_pipeline(hybrid_settings(server, tmp_path, local.url, remote.url))
    wait_until(lambda: drained(server), message="the queue to drain")
    assert server.counts() == {"succeeded": 40}
    assert sum(local.batch_sizes) == 20
    assert remote.calls_of("nomic-embed-text") == []
    assert sum(len(r["inputs"]) for r in remote.calls_of("text-embedding-3-small")) == 20
    for task in tasks:
        model, text = task["content"]["model"], task["content"]["text"]
        want = (expected_unit(stub_vector(model, text, 32)) if model == "nomic-embed-text"
                else openai_expected(model, text, 64, 64))
        assert np.array_equal(vector_of(server, task), want)


@pytest.mark.parametrize("trouble", ["down", "slow", "answering 500"])
def test_hybrid_falls_back_to_openai_with_the_same_model(trouble, sandbox, ollama, openai_stub, run_pipeline,
                                                         tmp_path):
    remote = openai_stub(models={"nomic-embed-text": 32})
    env = {"CIRCUIT_BREAKER_THRESHOLD": "3"}
    if trouble == "down":
        gone = ollama(models={"nomic-embed-text": 32})
        gone.stop()
        local_url = gone.url
    else:
        local = ollama(models={"nomic-embed-text": 32}, call_cost=5.0 if trouble == "slow" else 0.0)
        local_url = local.url
        if trouble == "slow":
            env["OLLAMA_TIMEOUT"] = "0.3"
        else:
            local.fail_next.extend([500] * 10_000)
    tasks = generated_tasks(48)
    server = sandbox(tasks)
    pipeline = run_pipeline(hybrid_settings(server, tmp_path, local_url, remote.url, **env))
    wait_until(lambda: drained(server), message="the queue to drain")
    assert server.counts() == {"succeeded": 48}
    for task in tasks:   # OpenAI's vectors for the same model, never another model's
        assert np.array_equal(vector_of(server, task), openai_expected("nomic-embed-text", task["content"]["text"], 32))
    assert {r["model"] for r in remote.requests} == {"nomic-embed-text"}
    breakers = pipeline.stage("provider_workers").status().get(timeout=5)["breakers"]
    assert breakers["ollama"]["opened_total"] >= 1
    if trouble == "answering 500":
        # Once open, the breaker is routed around: Ollama is not called for every batch.
        assert len(local.batch_sizes) < 48


def test_one_nan_input_fails_alone_after_bisecting(sandbox, ollama, openai_stub, run_pipeline, tmp_path):
    local = ollama(models={"nomic-embed-text": 32})
    remote = openai_stub(models={"nomic-embed-text": 32})
    tasks = generated_tasks(16)
    guilty = tasks[5]
    guilty["content"]["text"] = f"poisoned {POISON}"
    server = sandbox(tasks)
    run_pipeline(hybrid_settings(server, tmp_path, local.url, remote.url, MAX_RETRIES="1"))
    wait_until(lambda: drained(server), message="the queue to drain")
    assert server.counts() == {"succeeded": 15, "failed": 1}
    assert server.state_of(guilty["_id"]) == "failed"
    reason = server.error_of(guilty["_id"])
    assert "ollama:" in reason and "openai:" in reason and "NaN" in reason
    for task in tasks:
        if task is not guilty:    # its batch-mates came from Ollama, after the split
            assert np.array_equal(vector_of(server, task),
                                  expected_unit(stub_vector("nomic-embed-text", task["content"]["text"], 32)))
    assert all(r["inputs"] == [guilty["content"]["text"]] for r in remote.requests)


def test_an_openai_400_naming_an_input_fails_only_that_task(sandbox, openai_stub, run_pipeline, tmp_path):
    stub = openai_stub(models={"text-embedding-ada-002": 48}, context_chars=300)
    tasks = generated_tasks(16, models=("text-embedding-ada-002",))
    guilty = tasks[9]
    guilty["content"]["text"] = "long " * 100
    server = sandbox(tasks)
    run_pipeline(settings_for(server, tmp_path, SMALL_DIMENSIONS, OPENAI_API_KEY=STUB_KEY, OPENAI_BASE_URL=stub.url))
    wait_until(lambda: drained(server), message="the queue to drain")
    assert server.counts() == {"succeeded": 15, "failed": 1}
    assert "maximum context length" in server.error_of(guilty["_id"])
    # A bisection: the guilty text is in one call per halving (16, 8, 4, 2, 1), and far fewer calls
    # are made than one per task.
    assert len([r for r in stub.requests if guilty["content"]["text"] in r["inputs"]]) <= 5
    assert len(stub.requests) < 16


def test_a_text_too_long_for_openai_fails_before_any_call(sandbox, openai_stub, run_pipeline, tmp_path):
    stub = openai_stub(models={"text-embedding-ada-002": 48})
    tasks = generated_tasks(8, models=("text-embedding-ada-002",))
    tasks[3]["content"]["text"] = "word " * 400
    server = sandbox(tasks)
    toml = SMALL_DIMENSIONS + "\n[openai]\nmax_input_tokens = 200\n"
    run_pipeline(settings_for(server, tmp_path, toml, OPENAI_API_KEY=STUB_KEY, OPENAI_BASE_URL=stub.url))
    wait_until(lambda: drained(server), message="the queue to drain")
    assert server.counts() == {"succeeded": 7, "failed": 1}
    assert "exceeds the OpenAI limit of 200 tokens" in server.error_of(tasks[3]["_id"])
    assert server.history(tasks[3]["_id"]) == ["pending", "failed"]      # never claimed
    assert all(tasks[3]["content"]["text"] not in r["inputs"] for r in stub.requests)


def test_batches_through_one_breaker_reach_the_provider_together(sandbox, openai_stub, run_pipeline, tmp_path):
    stub = openai_stub(models={"text-embedding-ada-002": 48})
    stub.gate.clear()
    server = sandbox(generated_tasks(32, models=("text-embedding-ada-002",)))
    run_pipeline(settings_for(server, tmp_path, SMALL_DIMENSIONS, OPENAI_API_KEY=STUB_KEY, OPENAI_BASE_URL=stub.url,
                              CONCURRENCY_LIMIT="2"))
    wait_until(lambda: stub.in_flight == 2, message="two calls inside the provider at once")
    stub.gate.set()
    wait_until(lambda: drained(server), message="the queue to drain")
    assert server.counts() == {"succeeded": 32} and stub.most_in_flight == 2


def test_a_refused_key_stops_startup_naming_its_source(service, sandbox, openai_stub):
    stub = openai_stub()
    server = sandbox(generated_tasks(3))
    process = service({"API_BASE_URL": server.url, "OPENAI_API_KEY": SECRET_KEY, "OPENAI_BASE_URL": stub.url})
    assert process.wait(60) == 2
    logs = process.logs()
    assert "openai.api_key" in logs and "environment OPENAI_API_KEY" in logs and "401" in logs
    assert SECRET_KEY not in logs and SECRET_KEY[-4:] not in logs
    assert server.counts() == {"pending": 3}


def test_a_key_revoked_mid_run_holds_the_tasks_until_it_works_again(service, sandbox, openai_stub):
    stub = openai_stub(models={"text-embedding-ada-002": 48}, api_key=SECRET_KEY)
    server = sandbox(generated_tasks(4, models=("text-embedding-ada-002",)))
    process = service({"API_BASE_URL": server.url, "OPENAI_API_KEY": SECRET_KEY, "OPENAI_BASE_URL": stub.url,
                       "MAX_RETRIES": "1", "RETRY_BACKOFF_FACTOR": "0.05",
                       "AITP_MODELS__DIMENSIONS": '{"text-embedding-ada-002": 48}',
                       "AITP_RESILIENCE__CIRCUIT_BREAKER_RESET_SECONDS": "0.5"})
    wait_until(lambda: server.counts() == {"succeeded": 4}, message="the first tasks")
    stub.api_key = "sk-rotated-key"
    late = [embedding_task(object_id(500 + i), f"after rotation {i}", "text-embedding-ada-002") for i in range(2)]
    server.add_tasks(late)
    wait_until(lambda: all("pending" in server.history(t["_id"])[1:] for t in late), timeout=60,
               message="the late tasks to go back to pending")
    assert "refused the API key" in process.logs() and "environment OPENAI_API_KEY" in process.logs()
    assert not server.counts().get("failed")
    stub.api_key = SECRET_KEY                        # the key works again: the held tasks go through
    wait_until(lambda: server.counts() == {"succeeded": 6}, timeout=60, message="the late tasks to succeed")
    process.signal(15)
    assert process.wait(60) == 0
    assert SECRET_KEY not in process.logs() and SECRET_KEY[-4:] not in process.logs()


def test_a_garbled_answer_is_retried_and_never_reported(sandbox, openai_stub, run_pipeline, tmp_path):
    stub = openai_stub(models={"text-embedding-ada-002": 48})
    stub.fail_next.extend([Injected(200, b'{"data": "garbage"'), Injected(200, b'{"object":"list","data":[]}')])
    tasks = generated_tasks(8, models=("text-embedding-ada-002",))
    server = sandbox(tasks)
    run_pipeline(settings_for(server, tmp_path, SMALL_DIMENSIONS, OPENAI_API_KEY=STUB_KEY, OPENAI_BASE_URL=stub.url))
    wait_until(lambda: drained(server), message="the queue to drain")
    assert server.counts() == {"succeeded": 8}
    assert all(server.history(t["_id"]) == ["pending", "in_progress", "succeeded"] for t in tasks)
    for task in tasks:
        assert np.array_equal(vector_of(server, task),
                              openai_expected("text-embedding-ada-002", task["content"]["text"], 48))


def test_while_no_provider_can_take_them_tasks_go_back_to_pending_then_succeed(
        sandbox, openai_stub, run_pipeline, tmp_path):
    stub = openai_stub(models={"text-embedding-ada-002": 48})
    stub.fail_next.extend([Injected(503)] * 10_000)
    tasks = generated_tasks(4, models=("text-embedding-ada-002",))
    server = sandbox(tasks)
    toml = SMALL_DIMENSIONS + "\n[resilience]\ncircuit_breaker_reset_seconds = 0.3\n"
    pipeline = run_pipeline(settings_for(server, tmp_path, toml, OPENAI_API_KEY=STUB_KEY, OPENAI_BASE_URL=stub.url,
                                         MAX_RETRIES="2", CIRCUIT_BREAKER_THRESHOLD="2"))
    wait_until(lambda: all("pending" in server.history(t["_id"])[1:] for t in tasks),
               message="the tasks to go back to pending")
    assert not server.counts().get("failed")       # a provider outage never fails a valid task
    breakers = pipeline.stage("provider_workers").status().get(timeout=5)["breakers"]
    assert breakers["openai"]["opened_total"] >= 1
    calls_while_down = len(stub.requests)
    assert calls_while_down <= 3 * 4                 # backoff and an open breaker: no tight loop
    stub.fail_next.clear()                           # the provider is back
    wait_until(lambda: server.counts() == {"succeeded": 4}, message="the tasks to succeed")
    for task in tasks:
        assert np.array_equal(vector_of(server, task),
                              openai_expected("text-embedding-ada-002", task["content"]["text"], 48))


def test_a_trickle_behind_a_busy_provider_fills_batches_instead_of_sending_each_part(sandbox, openai_stub,
                                                                                     run_pipeline, tmp_path):
    stub = openai_stub(models={"text-embedding-ada-002": 48})
    stub.gate.clear()                                  # the provider holds its first call
    model = ("text-embedding-ada-002",)
    server = sandbox(generated_tasks(8, models=model))
    run_pipeline(settings_for(server, tmp_path, SMALL_DIMENSIONS + "[batching]\nmax_items = 8\n",
                              OPENAI_API_KEY=STUB_KEY, OPENAI_BASE_URL=stub.url, CONCURRENCY_LIMIT="1"))
    wait_until(lambda: stub.in_flight == 1, message="the first batch inside the provider")
    start = 8
    for count in (3, 3, 2):                            # three trickles, each claimed before the next
        server.add_tasks(generated_tasks(count, models=model, start=start))
        start += count
        wait_until(lambda: server.counts().get("in_progress", 0) == start, message="the trickle claimed")
    stub.gate.set()
    wait_until(lambda: drained(server), message="the queue to drain")
    assert server.counts() == {"succeeded": 16}
    assert [len(r["inputs"]) for r in stub.requests] == [8, 8]   # not 8, 3, 3, 2


def test_a_partial_batch_is_not_held_for_ever_behind_a_stuck_provider(sandbox, openai_stub, run_pipeline, tmp_path):
    stub = openai_stub(models={"text-embedding-ada-002": 48})
    stub.gate.clear()
    server = sandbox(generated_tasks(11, models=("text-embedding-ada-002",)))
    pipeline = run_pipeline(settings_for(server, tmp_path, SMALL_DIMENSIONS + "[batching]\nmax_items = 8\n",
                                         OPENAI_API_KEY=STUB_KEY, OPENAI_BASE_URL=stub.url, CONCURRENCY_LIMIT="1"))
    wait_until(lambda: stub.in_flight == 1 and server.counts().get("in_progress") == 11, message="all claimed")
    # The provider never frees its slot, yet the 3 left over leave the Dispatcher after its longest hold.
    wait_until(lambda: pipeline.status()["stages"]["dispatcher"]["queued"] == 0, message="the partial batch sent")
    stub.gate.set()
    wait_until(lambda: drained(server), message="the queue to drain")
    assert [len(r["inputs"]) for r in stub.requests] == [8, 3]


def test_a_paid_answer_that_comes_back_past_the_shutdown_deadline_is_journaled_not_paid_again(
        sandbox, openai_stub, tmp_path):
    stub = openai_stub(models={"text-embedding-3-small": 128})
    stub.gate.clear()                                 # calls wait at the gate: past the deadline
    tasks = generated_tasks(6, models=("text-embedding-3-small",))
    server = sandbox(tasks)
    settings = settings_for(server, tmp_path, SMALL_DIMENSIONS + "[shutdown]\ndeadline_seconds = 0.05\n",
                            OPENAI_API_KEY=STUB_KEY, OPENAI_BASE_URL=stub.url)
    pipeline = Pipeline(settings)
    assert pipeline.start()
    wait_until(lambda: stub.in_flight > 0, message="a call in flight")
    stopping = threading.Thread(target=pipeline.shutdown)
    stopping.start()
    wait_until(lambda: pipeline.ctx.directory.closed, message="the deadline to pass and the stages to stop")
    stub.gate.set()                                   # the answer comes back now, after the deadline
    stopping.join(60)
    assert not stopping.is_alive()
    in_the_call = {text for request in stub.requests for text in request["inputs"]}
    journal = Journal(settings.journal_path)
    kept = {entry.task_id for entry in journal.outbox()}
    journal.close()
    assert kept and all(server.state_of(task_id) == "in_progress" for task_id in kept)   # not released
    calls_before = len(stub.requests)

    second = Pipeline(settings)                       # the next start sends them without a new call
    assert second.start()
    try:
        wait_until(lambda: drained(server), message="the queue to drain")
    finally:
        second.shutdown()
    assert server.counts() == {"succeeded": 6}
    again = {text for request in stub.requests[calls_before:] for text in request["inputs"]}
    assert not again & {task["content"]["text"] for task in tasks if task["_id"] in kept}
    assert in_the_call
