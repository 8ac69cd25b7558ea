"""Issue 28: one dependency's fault reaches only the tasks that need it, and its return is seen at once."""

from aitp.sandbox.seed import generated_tasks
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
    server.end_outage()
    wait_until(lambda: drained(server), timeout=60, message="the drain to end once the API answers")
    assert server.counts() == {"succeeded": 1500}
