"""Issue 28: one dependency's fault reaches only the tasks that need it, and its return is seen at once."""

import pytest

from aitp.sandbox.seed import generated_tasks, llm_tasks
from conftest import drained, settings_for, wait_until


def test_a_task_api_outage_is_probed_every_few_seconds_however_many_patches_it_parked(sandbox, run_pipeline,
                                                                                      tmp_path):
    """The backoff counts failed probes, not parked PATCHes (hundreds of them here, which made the next
    probe wait the backoff's ceiling of a minute), and is capped by outage_backoff_max_seconds."""
    server = sandbox(generated_tasks(1500))
    pipeline = run_pipeline(settings_for(server, tmp_path, AITP_RESILIENCE__OUTAGE_BACKOFF_MAX_SECONDS="0.2"))
    wait_until(lambda: server.counts().get("succeeded", 0) >= 100, message="the drain under way")
    server.start_outage("reset")          # no Retry-After to honour: the backoff alone sets the pace
    reporter = pipeline.stage("reporter")
    wait_until(lambda: reporter.status().get(timeout=5)["parked"] >= 2, message="results parked")
    parked = reporter.status().get(timeout=5)["parked"]
    seen = sum(server.store.requests.values())
    wait_until(lambda: sum(server.store.requests.values()) >= seen + 10, timeout=30,
               message=f"ten more probes with {parked} results parked")
    code, health = pipeline.health()
    # Named not ok; "down" or "degraded" by whether an answer from before the outage was observed
    # last (the client's threads report in any order).
    assert (code, health["status"]) == (200, "degraded")
    assert health["dependencies"]["task API"]["state"] in ("degraded", "down")
    server.end_outage()
    wait_until(lambda: drained(server), timeout=60, message="the drain to end once the API answers")
    assert server.counts() == {"succeeded": 1500}
    assert pipeline.health()[1]["dependencies"]["task API"]["state"] == "ok"


def test_a_chat_endpoint_that_fails_leaves_embeddings_through_the_same_base_url_alone(
        sandbox, openai_stub, run_pipeline, tmp_path, wikidata_stub):
    """OpenAI chat answering 503 for the whole run (issue 28: its failures opened the breaker the
    embeddings shared, and 56 of 200 embeddings succeeded in 40 s): every embedding succeeds, the
    LLM tasks go back to pending, and the chat breaker alone is open."""
    from aitp.sandbox.openai_stub import STUB_KEY, Injected
    stub = openai_stub(models={"text-embedding-3-small": 8})
    stub.chat_outage = Injected(503)
    wikidata = wikidata_stub()
    llm = llm_tasks(10)
    embeddings = generated_tasks(200, models=("text-embedding-3-small",))
    server = sandbox(llm + embeddings)
    settings = settings_for(server, tmp_path, OPENAI_API_KEY=STUB_KEY, OPENAI_BASE_URL=stub.url, MAX_RETRIES="1",
                            AITP_MODELS__DIMENSIONS='{"text-embedding-3-small": 8}', **wikidata.settings_env())
    pipeline = run_pipeline(settings)
    wait_until(lambda: all(server.state_of(t["_id"]) == "succeeded" for t in embeddings), timeout=60,
               message="every embedding to succeed")
    wait_until(lambda: stub.chat_requests, message="a chat call")
    breakers = pipeline.status()["breakers"]
    assert breakers["openai"]["state"] == "closed"
    assert not any(server.state_of(t["_id"]) == "succeeded" for t in llm)
    assert all(server.state_of(t["_id"]) in ("pending", "in_progress") for t in llm)


def test_while_wikidata_is_down_a_paid_chat_answer_is_kept_and_never_asked_for_again(
        sandbox, openai_stub, run_pipeline, tmp_path, wikidata_stub):
    """Issue 28: at every retry each LLM task asked the chat model again, then failed on the look-up
    (2,632 paid answers for 160 tasks in 40 s). Now the answer is kept until its task is reported:
    every embedding succeeds, the LLM tasks stay pending, and the chat model is asked at most once
    per task (an answer that fails the schema is asked once more), however often they are tried."""
    from aitp.sandbox.openai_stub import STUB_KEY
    stub = openai_stub(models={"text-embedding-3-small": 8})
    wikidata = wikidata_stub()
    wikidata.outage = 503
    llm = llm_tasks(5)
    embeddings = generated_tasks(100, models=("text-embedding-3-small",))
    server = sandbox(llm + embeddings)
    settings = settings_for(server, tmp_path, OPENAI_API_KEY=STUB_KEY, OPENAI_BASE_URL=stub.url, MAX_RETRIES="1",
                            AITP_MODELS__DIMENSIONS='{"text-embedding-3-small": 8}',
                            AITP_RESILIENCE__CIRCUIT_BREAKER_RESET_SECONDS="0.2",
                            AITP_PROCESSING__RETRY_BACKOFF_MAX_SECONDS="0.3",
                            AITP_WIKIDATA__MAX_ATTEMPTS="1",
                            **wikidata.settings_env())
    pipeline = run_pipeline(settings)
    wait_until(lambda: all(server.state_of(t["_id"]) == "succeeded" for t in embeddings), timeout=60,
               message="every embedding to succeed")
    # Tried again and again: each trial of Wikidata's breaker is a call the stub sees.
    wait_until(lambda: len(wikidata.calls()) >= 3 * len(llm), timeout=60, message="many tries of the LLM tasks")
    kept = pipeline.parts.journal.answers_kept()
    assert not any(server.state_of(t["_id"]) == "succeeded" for t in llm)
    assert len(stub.chat_requests) <= 2 * len(llm)
    assert kept > 0       # the paid answers wait in the journal for Wikidata
    # Held: back to pending between tries (their answers kept), never failed.
    assert all(server.history(t["_id"])[1:].count("pending") >= 1 for t in llm)
    assert all(server.state_of(t["_id"]) in ("pending", "in_progress") for t in llm)


@pytest.mark.parametrize("status", [413, 422])
def test_a_refused_success_report_fails_the_task_with_the_reason_and_never_leaves_it_in_progress(
        status, sandbox, run_pipeline, tmp_path):
    """Issue 29: a success PATCH answered with a 4xx other than the contract's 400 was logged and
    dropped, and the task stayed in_progress for good."""
    tasks = generated_tasks(20)
    server = sandbox(tasks)
    refused = tasks[3]["_id"]
    server.refuse_results_with[refused] = status
    pipeline = run_pipeline(settings_for(server, tmp_path))
    wait_until(lambda: drained(server), message="every task settled")
    assert server.state_of(refused) == "failed" and str(status) in str(server.error_of(refused))
    assert server.counts() == {"succeeded": 19, "failed": 1}
    wait_until(lambda: pipeline.parts.journal.counts() == {"claims": 0, "outbox": 0}, message="a clean journal")


def test_with_wikidata_down_and_when_down_unenriched_the_tasks_that_can_go_without_it_are_reported(
        sandbox, openai_stub, run_pipeline, tmp_path, wikidata_stub):
    """wikidata.when_down = "unenriched": after hold_seconds, topics, impact areas and severities are
    reported with null ids (the severity asked with the names alone); identifying_data, whose people
    are kept only when Wikidata knows them, stays pending."""
    from aitp.sandbox.openai_stub import STUB_KEY
    stub = openai_stub()
    wikidata = wikidata_stub()
    wikidata.outage = 503
    llm = llm_tasks(2)
    server = sandbox(llm)
    settings = settings_for(server, tmp_path, OPENAI_API_KEY=STUB_KEY, OPENAI_BASE_URL=stub.url, MAX_RETRIES="1",
                            AITP_WIKIDATA__WHEN_DOWN="unenriched", AITP_WIKIDATA__HOLD_SECONDS="0.5",
                            AITP_WIKIDATA__MAX_ATTEMPTS="1", **wikidata.settings_env())
    run_pipeline(settings)
    others = [t for t in llm if t["type"] != "identifying_data"]
    wait_until(lambda: all(server.state_of(t["_id"]) == "succeeded" for t in others), timeout=60,
               message="the tasks that can go without Wikidata reported")
    for task in others:
        result = server.result(task["_id"])
        if task["type"] == "defining_topics":
            assert result and all(topic["wikidataId"] is None for topic in result)
        elif task["type"] == "defining_impact_area":
            assert result["wikidataId"] is None
    assert all(server.state_of(t["_id"]) != "succeeded" for t in llm if t["type"] == "identifying_data")
