"""Fault injection: outages of every peer, hostile input, kill -9 of the service and of a process
worker, supervision strategies. Real processes and signals against the sandbox and the stubs; each
test checks the final state of every task. Runs are sized to keep the suite fast, not cases skipped."""

import json
import os
import random
import signal
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest
import requests

from aitp.storage.journal import Journal
from aitp.sandbox.ollama_stub import stub_vector
from aitp.sandbox.openai_stub import STUB_KEY, Injected
from aitp.sandbox.seed import embedding_task, generated_tasks, hostile_tasks, object_id
from conftest import (FailOnce, dispatcher_fails_on_its_first_claimed_tasks, drained, expected_unit, monitoring_port,
                      settings_for, wait_until)

OLLAMA = {"PROCESSING_MODE": "ollama", "SUPPORTED_MODELS": "nomic-embed-text"}


def ollama_env(server, stub, **extra) -> dict[str, str]:
    return {"API_BASE_URL": server.url, "OLLAMA_BASE_URL": stub.url, "RETRY_BACKOFF_FACTOR": "0.2", **OLLAMA,
            **extra}


def assert_all_succeeded_with_their_vectors(server, tasks) -> None:
    assert server.counts() == {"succeeded": len(tasks)}
    for task in tasks:
        assert_succeeded_with_its_vector(server, task)


def assert_succeeded_with_its_vector(server, task, text: str | None = None) -> None:
    """`text`: what the provider saw, where it differs from the task's (a lone surrogate replaced)."""
    assert server.state_of(task["_id"]) == "succeeded", task["_id"]
    want = expected_unit(stub_vector("nomic-embed-text", text or task["content"]["text"], 768))
    assert np.array_equal(np.asarray(server.result(task["_id"]), dtype=np.float32), want), task["_id"]


def requests_over(server, seconds: float, kind: str | None = None) -> int:
    """API requests the sandbox sees in the next `seconds` (a wait on a deadline, not a sleep in a loop)."""
    before = sum(v for k, v in server.request_counts().items() if kind is None or k == kind)
    deadline = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() >= deadline, timeout=seconds + 5, interval=0.1, message="the window")
    return sum(v for k, v in server.request_counts().items() if kind is None or k == kind) - before


# --- the task API down ---
@pytest.mark.parametrize("kind", ["503", "reset", "hang"])
def test_a_task_api_outage_loses_nothing_and_costs_few_requests(kind, sandbox, ollama, service, tmp_path):
    stub = ollama(models={"nomic-embed-text": 768}, call_cost=0.2)
    tasks = generated_tasks(48)
    server = sandbox(tasks[:32])
    # Backoff capped at 2 s, so that the test sees the recovery soon after the outage ends.
    process = service(ollama_env(server, stub, REQUEST_TIMEOUT="1", AITP_PROCESSING__RETRY_BACKOFF_MAX_SECONDS="2"))
    wait_until(lambda: server.counts().get("succeeded", 0) >= 8, timeout=60, message="work under way")
    server.start_outage(kind)
    server.add_tasks(tasks[32:])
    journal = Journal(tmp_path / "data" / "journal.sqlite3")
    # Results computed during the outage wait for the API, not lost. Once the service has seen
    # the outage (requests sent before then may still time out), count.
    wait_until(lambda: "results kept until the API takes them" in process.logs(), timeout=30,
               message="the outage noticed")
    # Ollama's vectors cost nothing to compute again: they wait in memory, their claims journaled.
    assert journal.counts()["outbox"] == 0 and journal.counts()["claims"] > 0
    seen = requests_over(server, 3.0)
    assert seen <= 20, f"{seen} requests in 3 s while the API was down"    # backoff, one probe at a time
    server.end_outage()
    wait_until(lambda: drained(server), timeout=90, message="everything after the outage")
    assert_all_succeeded_with_their_vectors(server, tasks)
    process.signal(signal.SIGTERM)
    assert process.wait(60) == 0
    assert journal.counts() == {"claims": 0, "outbox": 0}


def test_a_pending_list_that_is_not_json_is_skipped_until_it_is(sandbox, service, tmp_path):
    server = sandbox(generated_tasks(10))
    server.garbage_polls = 3
    process = service({"API_BASE_URL": server.url, "RETRY_BACKOFF_FACTOR": "0.1"})
    wait_until(lambda: server.counts() == {"succeeded": 10}, timeout=60, message="the tasks once the list is JSON")
    assert server.garbage_polls == 0 and "pending list is not a JSON array" in process.logs()
    process.signal(signal.SIGTERM)
    assert process.wait(60) == 0


# --- providers down, slow or talking garbage ---
@pytest.mark.parametrize("trouble", ["503", "garbage"])
def test_ollama_trouble_holds_tasks_until_it_is_back(trouble, sandbox, ollama, service, tmp_path):
    stub = ollama(models={"nomic-embed-text": 768})
    if trouble == "503":
        stub.fail_next.extend([503] * 100_000)
    else:
        stub.garbage_next = 100_000
    tasks = generated_tasks(20)
    server = sandbox(tasks)
    process = service(ollama_env(server, stub, MAX_RETRIES="2", CIRCUIT_BREAKER_THRESHOLD="3",
                                 AITP_RESILIENCE__CIRCUIT_BREAKER_RESET_SECONDS="1"))
    wait_until(lambda: any("pending" in server.history(t["_id"])[1:] for t in tasks), timeout=60,
               message="tasks released back to pending")
    assert not server.counts().get("failed")
    calls_before = len(stub.batch_sizes)
    deadline = time.monotonic() + 3
    wait_until(lambda: time.monotonic() >= deadline, interval=0.1, message="three seconds")
    assert len(stub.batch_sizes) - calls_before <= 12, "no tight loop against a broken provider"
    stub.fail_next.clear()
    stub.garbage_next = 0
    wait_until(lambda: server.counts() == {"succeeded": 20}, timeout=90, message="every task once Ollama is back")
    assert_all_succeeded_with_their_vectors(server, tasks)
    process.signal(signal.SIGTERM)
    assert process.wait(60) == 0


def test_openai_429_waits_as_long_as_retry_after_says(sandbox, openai_stub, service, tmp_path):
    stub = openai_stub(models={"text-embedding-ada-002": 8})
    stub.fail_next.extend([Injected(429, headers={"retry-after": "1.5"})] * 2)
    tasks = generated_tasks(6, models=("text-embedding-ada-002",))
    server = sandbox(tasks)
    process = service({"API_BASE_URL": server.url, "OPENAI_API_KEY": STUB_KEY, "OPENAI_BASE_URL": stub.url,
                       "AITP_MODELS__DIMENSIONS": '{"text-embedding-ada-002": 8}', "RETRY_BACKOFF_FACTOR": "0.05",
                       "MAX_RETRIES": "5"})
    wait_until(lambda: server.counts() == {"succeeded": 6}, timeout=60, message="the tasks after the 429s")
    # The first two answers were 429 with Retry-After 1.5 (to one batch twice, or to two batches at
    # once): each batch asked again no sooner than that.
    for refused in stub.requests[:2]:
        retry = next(r for r in stub.requests if r["at"] > refused["at"] and r["inputs"] == refused["inputs"])
        assert retry["at"] - refused["at"] >= 1.4
    process.signal(signal.SIGTERM)
    assert process.wait(60) == 0


# --- hostile and bad input ---
def test_hostile_input_is_reported_as_the_contract_says_and_blocks_nothing(sandbox, ollama, service, tmp_path):
    stub = ollama(models={"nomic-embed-text": 768})
    good = generated_tasks(20)
    unicode = [embedding_task(object_id(900 + i), text) for i, text in enumerate([
        "emoji 😀🎉👩‍👩‍👧", "עברית מימין לשמאל", "العربية", "lone surrogate \ud800 inside", "zero\u200bwidth",
        "combining e\u0301"])]
    huge = embedding_task(object_id(950), "x" * 10_000_000)
    vanishing, refused = good[0], good[1]
    hostile = hostile_tasks(500)
    server = sandbox(good + unicode + [huge] + hostile)
    server.duplicate_in_list = True
    server.reject_results_of.add(refused["_id"])
    server.remove_task(vanishing["_id"])            # listed once, gone when its result comes back
    server.add_tasks([vanishing])
    process = service(ollama_env(server, stub, POLLING_INTERVAL_SECONDS="0.3"))
    wait_until(lambda: server.state_of(vanishing["_id"]) == "in_progress", timeout=60, message="the claim")
    server.remove_task(vanishing["_id"])
    left_alone = 5
    wait_until(lambda: drained(server, left_alone=left_alone), timeout=90, message="the queue to drain")
    process.signal(signal.SIGTERM)
    assert process.wait(60) == 0

    for task in good[2:]:
        assert server.history(task["_id"]) == ["pending", "in_progress", "succeeded"]   # duplicates claimed once
    assert server.history(refused["_id"]) == ["pending", "in_progress", "succeeded"]    # 400 after it: not retried
    for task in unicode:
        assert server.state_of(task["_id"]) == "succeeded", task["content"]["text"]
    assert server.state_of(huge["_id"]) == "failed" and "10000000 characters" in server.error_of(huge["_id"])
    assert "lone surrogate \ufffd inside" in stub.embedded
    assert server.counts() == {"succeeded": 19 + len(unicode), "failed": 1 + 6, "pending": left_alone}
    logs = [json.loads(line) for line in process.logs().splitlines() if line.startswith("{")]
    assert any(line["event"] == "callback rejected the result; the task stays succeeded" for line in logs)
    assert any(line["event"] == "task disappeared before its result was reported" for line in logs)
    assert sum(line["event"] == "task left alone" for line in logs) == left_alone


def test_a_hostile_pending_list_stops_nothing_and_every_valid_task_gets_its_vector(sandbox, ollama, service):
    """Issue 18's list: one hostile entry of each kind next to 500 good tasks, and a proxy that
    answers the first polls with an HTML page."""
    stub = ollama(models={"nomic-embed-text": 768})
    article = embedding_task(object_id(700), ("Uma reportagem longa sobre a COP30 em Belém. " * 700)[:30_000])
    surrogate = embedding_task(object_id(701), "lone surrogate \ud800 escaped")
    good = generated_tasks(500) + [article, surrogate]
    server = sandbox(good)
    invalid_utf8 = object_id(801)
    failed_for_their_own_sake = {
        invalid_utf8: b'{"_id":"%s","type":"text_embedding","state":"pending",'
                      b'"content":{"text":"bad \xff\xfe bytes","model":"nomic-embed-text"}}' % invalid_utf8.encode(),
        object_id(802): b'{"_id":"%s","type":"text_embedding","state":"pending",'
                        b'"content":{"text":["an","array"],"model":"nomic-embed-text"}}' % object_id(802).encode(),
        object_id(803): msgspec.json.encode(embedding_task(object_id(803), "y" * 12_000_000)),
    }
    left_alone = {
        "deep": b'{"_id":"%s","type":"text_embedding","state":"pending","content":{"text":"deep","model":'
                b'"nomic-embed-text"},"callbackParams":%s%s}' % (object_id(804).encode(), b"[" * 20_000, b"]" * 20_000),
        "null": b"null", "string": b'"a string"', "number": b"42",
        "extended json id": b'{"_id":{"$oid":"%s"},"type":"text_embedding","state":"pending",'
                            b'"content":{"text":"x","model":"nomic-embed-text"}}' % object_id(805).encode(),
    }
    for key, raw in {**failed_for_their_own_sake, **left_alone}.items():
        server.add_raw_entry(key, raw)
    server.garbage_polls = 3        # a proxy's HTML error page, with 200
    process = service(ollama_env(server, stub, POLLING_INTERVAL_SECONDS="0.3"))
    wait_until(lambda: drained(server, left_alone=len(left_alone)), timeout=120, message="the queue to drain")
    assert process.proc.poll() is None, "the service must stay up"
    for task in good:     # what Ollama embeds: lone surrogates replaced, the article cut to its context
        seen = task["content"]["text"].replace("\ud800", "\ufffd")[:stub.context_chars]
        assert_succeeded_with_its_vector(server, task, seen)
    for task_id in failed_for_their_own_sake:
        assert server.state_of(task_id) == "failed", task_id
    assert "1000000" in str(server.error_of(object_id(803)))       # the memory guard names its limit
    assert "UTF-8" in str(server.error_of(invalid_utf8))
    port = wait_until(lambda: monitoring_port(process))
    # A scrape that finds the Poller busy for over a second (a loaded machine) shows none of its
    # counters yet: scraped again until it answers.
    def scraped():
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        return text if "aitp_tasks_left_alone_total{" in text else None
    metrics = wait_until(scraped, message="the Poller's counters")
    assert 'aitp_tasks_left_alone_total{reason="too deep"} 1.0' in metrics
    assert 'aitp_tasks_left_alone_total{reason="not an object"} 3.0' in metrics
    assert 'aitp_tasks_left_alone_total{reason="unusable id"} 1.0' in metrics
    process.signal(signal.SIGTERM)
    assert process.wait(60) == 0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_a_list_of_100000_tasks_keeps_memory_bounded(sandbox, service, tmp_path):
    server = sandbox(generated_tasks(100_000))
    process = service({"API_BASE_URL": server.url, "AITP_PROCESSING__MAX_IN_FLIGHT": "64",
                       "POLLING_INTERVAL_SECONDS": "0.2"})
    wait_until(lambda: server.counts().get("succeeded", 0) >= 300, timeout=120, message="work on the big list")
    wait_until(lambda: server.request_counts().get("GET pending", 0) >= 6, timeout=120, message="several polls")
    rss = _rss_mb(process.proc.pid)
    process.signal(signal.SIGTERM)
    assert process.wait(60) == 0
    assert rss < 400, f"{rss:.0f} MB resident with 100,000 tasks pending"   # about 30 MB of JSON per poll
    assert not server.counts().get("in_progress")


def test_paid_results_are_journaled_before_they_are_sent(sandbox, openai_stub, service, tmp_path):
    stub = openai_stub(models={"text-embedding-ada-002": 8})
    tasks = generated_tasks(6, models=("text-embedding-ada-002",))
    server = sandbox(tasks)
    env = {"API_BASE_URL": server.url, "OPENAI_API_KEY": STUB_KEY, "OPENAI_BASE_URL": stub.url,
           "AITP_MODELS__DIMENSIONS": '{"text-embedding-ada-002": 8}', "RETRY_BACKOFF_FACTOR": "0.05"}
    stub.gate.clear()          # the embeddings calls wait until the API is down
    process = service(env)
    wait_until(lambda: stub.in_flight, timeout=30, message="an embeddings call")
    server.start_outage("503")
    stub.gate.set()
    journal = Journal(tmp_path / "data" / "journal.sqlite3")
    wait_until(lambda: journal.counts()["outbox"] > 0, timeout=30, message="OpenAI's results in the outbox")
    process.signal(signal.SIGKILL)
    process.wait(10)
    server.end_outage()
    calls = len(stub.requests)
    restarted = service(env)
    wait_until(lambda: drained(server), timeout=60, message="the journaled results sent")
    restarted.signal(signal.SIGTERM)
    assert restarted.wait(60) == 0
    journaled_inputs = {i for r in stub.requests[:calls] for i in r["inputs"]}
    assert not journaled_inputs & {i for r in stub.requests[calls:] for i in r["inputs"]}   # never paid twice
    assert server.counts() == {"succeeded": 6}


def test_a_graceful_stop_keeps_unreported_results_for_the_next_start(sandbox, ollama, service, tmp_path):
    stub = ollama(models={"nomic-embed-text": 768}, call_cost=0.3)
    tasks = generated_tasks(30)
    server = sandbox(tasks)
    env = ollama_env(server, stub, REQUEST_TIMEOUT="1", AITP_SHUTDOWN__DEADLINE_SECONDS="1")
    process = service(env)
    wait_until(lambda: stub.batch_sizes, timeout=30, message="the first embed call")   # it takes 0.3 s
    server.start_outage("503")
    wait_until(lambda: "results kept until the API takes them" in process.logs(), timeout=30, message="results held")
    process.signal(signal.SIGTERM)
    assert process.wait(60) == 0
    journal = Journal(tmp_path / "data" / "journal.sqlite3")
    held = {entry.task_id for entry in journal.outbox()}
    journal.close()
    assert held, "the results the API did not take are journaled on the way out"
    server.end_outage()
    embedded_before = len(stub.embedded)
    text_of = {t["_id"]: t["content"]["text"] for t in tasks}
    again = service(env)
    wait_until(lambda: drained(server), timeout=60, message="every task after the restart")
    again.signal(signal.SIGTERM)
    assert again.wait(60) == 0
    assert_all_succeeded_with_their_vectors(server, tasks)
    assert not {text_of[task_id] for task_id in held} & set(stub.embedded[embedded_before:])


# --- kill -9 ---
@pytest.mark.parametrize("journal_unpaid", [True, False], ids=["journaled", "claims-only"])
def test_kill_9_at_random_moments_loses_nothing_and_never_embeds_a_journaled_result_again(
        sandbox, ollama, service, tmp_path, journal_unpaid):
    stub = ollama(models={"nomic-embed-text": 768}, call_cost=0.05, input_cost=0.003)
    tasks = generated_tasks(240)
    server = sandbox(tasks)
    env = ollama_env(server, stub, REQUEST_TIMEOUT="1",
                     AITP_STORAGE__JOURNAL_UNPAID_RESULTS=str(journal_unpaid).lower())
    journal_path = tmp_path / "data" / "journal.sqlite3"
    moments = random.Random(int(os.environ.get("AITP_FAULT_SEED", "11")))
    text_of = {t["_id"]: t["content"]["text"] for t in tasks}
    kills = []      # (how many texts the stub had embedded at the kill, texts journaled then)
    for run in range(3):
        process = service(env)
        target = server.counts().get("succeeded", 0) + moments.randint(5, 60)
        wait_until(lambda: server.counts().get("succeeded", 0) >= target, timeout=90,
                   message=f"run {run} to make progress")
        if run == 2:   # the last kill comes while the API hangs, so computed results wait for it
            server.start_outage("hang")
            # A report timed out in the outage: from then on nothing leaves the outbox (a PATCH that
            # arrived before the outage may still have been answered before this line, never after).
            wait_until(lambda: "results kept until the API takes them" in process.logs(), timeout=30,
                       message="results held")
            if journal_unpaid:
                wait_until(lambda: Journal(journal_path).counts()["outbox"] > 0, timeout=30, message="a full outbox")
        process.signal(signal.SIGKILL)
        process.wait(10)
        if run == 2 and not journal_unpaid:   # computed, not reported, and journaled nowhere
            lost_at_kill = len(stub.embedded)
            unreported = set(stub.embedded) - {text_of[t["_id"]] for t in tasks
                                               if server.state_of(t["_id"]) == "succeeded"}
        server.end_outage()
        journal = Journal(journal_path)
        journaled = {text_of[entry.task_id] for entry in journal.outbox()}
        journal.close()
        kills.append((len(stub.embedded), journaled))
    last = service(env)
    wait_until(lambda: server.counts() == {"succeeded": 240}, timeout=120, message="every task in the end")
    last.signal(signal.SIGTERM)
    assert last.wait(60) == 0
    assert_all_succeeded_with_their_vectors(server, tasks)
    if journal_unpaid:
        assert kills[-1][1], "the last kill must find results in the outbox"
    else:   # nothing journaled: what was computed and not reported at the last kill is computed again
        assert not any(journaled for _, journaled in kills)
        assert unreported and unreported <= set(stub.embedded[lost_at_kill:])
    for embedded_at_kill, journaled in kills:   # a computed, journaled result is never paid for twice
        assert not journaled & set(stub.embedded[embedded_at_kill:])
    assert Journal(journal_path).counts() == {"claims": 0, "outbox": 0}


def _worker_pids(parent: int) -> list[int]:
    pids = []
    for task in Path(f"/proc/{parent}/task").iterdir():   # every thread's children: feeder threads start workers
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:    # a thread that just ended
            continue
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"aitp.vectors.worker" in cmdline:
                pids.append(int(child))
    return pids


def test_kill_9_of_a_process_worker_mid_batch_retries_the_batch(sandbox, ollama, service, tmp_path):
    stub = ollama(models={"nomic-embed-text": 768}, call_cost=0.02)
    tasks = generated_tasks(300)
    server = sandbox(tasks)
    process = service(ollama_env(server, stub, METRICS_PORT="0"))
    wait_until(lambda: server.counts().get("succeeded", 0) >= 16, timeout=60, message="work under way")
    workers = wait_until(lambda: _worker_pids(process.proc.pid), message="the process workers")
    os.kill(workers[0], signal.SIGKILL)
    wait_until(lambda: server.counts() == {"succeeded": 300}, timeout=120, message="every task")
    port = next(json.loads(line)["port"] for line in process.logs().splitlines() if "monitoring listening" in line)
    health = requests.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
    assert health["process_worker_restarts"] >= 1
    assert workers[0] not in _worker_pids(process.proc.pid)
    process.signal(signal.SIGTERM)
    assert process.wait(60) == 0
    assert_all_succeeded_with_their_vectors(server, tasks)


# --- supervision ---
def test_rest_for_one_restarts_the_stages_after_the_failed_one(sandbox, run_pipeline, tmp_path):
    fault = dispatcher_fails_on_its_first_claimed_tasks()
    server = sandbox(generated_tasks(120))
    toml = "[supervision.dispatcher]\nstrategy = \"rest_for_one\"\n"
    pipeline = run_pipeline(settings_for(server, tmp_path, toml), before_message=fault)
    wait_until(lambda: drained(server), message="the queue to drain")
    assert fault.failures and server.counts() == {"succeeded": 120}
    restarts = pipeline.status()["restarts"]
    assert restarts == {"authenticator": 0, "reporter": 0, "provider_workers": 0, "llm_workers": 0,
                        "dispatcher": 1, "rate_limiter": 1, "poller": 1}
    assert pipeline.fatal_reason is None


def test_a_restarted_reporter_sends_the_unjournaled_results_of_the_one_that_failed(
        sandbox, ollama, run_pipeline, tmp_path):
    from actors.messages import PatchesAnswered
    # Fails while it holds results journaled nowhere, on an answer the successor can do without
    # (it sends those results again).
    fault = FailOnce("reporter", lambda stage, message: isinstance(message, PatchesAnswered) and stage.unjournaled)
    stub = ollama(models={"nomic-embed-text": 768})
    tasks = generated_tasks(60)
    server = sandbox(tasks)
    pipeline = run_pipeline(settings_for(server, tmp_path, PROCESSING_MODE="ollama", OLLAMA_BASE_URL=stub.url),
                            before_message=fault)
    wait_until(lambda: drained(server), message="the queue to drain")
    assert fault.failures and server.counts() == {"succeeded": 60}
    assert pipeline.status()["restarts"]["reporter"] == 1
    wait_until(lambda: pipeline.parts.journal.counts() == {"claims": 0, "outbox": 0}, message="a clean journal")
    assert sorted(stub.embedded) == sorted(t["content"]["text"] for t in tasks)    # none computed twice


def test_results_held_in_memory_count_in_the_outbox_gauge(sandbox, ollama, run_pipeline, tmp_path):
    stub = ollama(models={"nomic-embed-text": 768}, call_cost=0.3)
    server = sandbox(generated_tasks(20))
    pipeline = run_pipeline(settings_for(server, tmp_path, PROCESSING_MODE="ollama", OLLAMA_BASE_URL=stub.url))
    wait_until(lambda: stub.batch_sizes, message="the first embed call")    # it takes 0.3 s
    server.start_outage("503")
    wait_until(lambda: pipeline.health()[1]["outbox"] > 0, timeout=30, message="results waiting for the API")
    assert pipeline.parts.journal.counts()["outbox"] == 0          # Ollama's: held, not journaled
    gauge = next(line for line in pipeline.metrics.expose().decode().splitlines()
                 if line.startswith("aitp_outbox_size "))
    assert float(gauge.split()[1]) > 0                             # what the dashboards watch
    server.end_outage()
    wait_until(lambda: drained(server), timeout=60, message="the results once the API is back")
    wait_until(lambda: pipeline.health()[1]["outbox"] == 0, message="an empty outbox")
