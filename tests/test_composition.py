"""The plain objects the composition root uses, built directly: what a start resumes and a stop
releases (aitp/storage/recovery.py), provider start-up (aitp/providers/startup.py), the /health
body (aitp/observability/health.py), and which stage is built with which parts (actors/parts.py)."""

import inspect
import threading

import msgspec
import pytest

from aitp.config import Settings
from aitp.errors import CoordinationError, ProviderError
from aitp.observability.health import health_body
from aitp.providers.startup import prepare_providers
from aitp.sandbox.seed import embedding_task, object_id
from aitp.storage.journal import Claim, Journal, OutboxEntry
from aitp.storage.recovery import recover, release_claims
from aitp.tasks import HANDLERS
from aitp.transport.task_api import PatchOutcome, PatchResult
from actors.parts import PART_NAMES, STAGE_PARTS
from actors.pipeline import STAGES

HANDLERS_NOW = {name: handler(Settings()) for name, handler in HANDLERS.items()}


def claim(number: int, reservation: int = 0, sent: bool = False, raw: bytes | None = None) -> Claim:
    task_id = object_id(number)
    return Claim(task_id, raw if raw is not None else msgspec.json.encode(embedding_task(task_id, f"text {number}")),
                 reservation, sent)


class Leases:
    """What recovery asks of aitp/coordination/leases.py's LeaseBook."""

    def __init__(self, ours=None, down=False, done=()) -> None:
        self.ours, self.down, self.finished, self.done = ours, down, [], set(done)

    def finished_elsewhere(self, task_ids):
        if self.down:
            raise CoordinationError("Redis does not answer")
        return self.done & set(task_ids)

    def acquire(self, tasks):
        if self.down:
            raise CoordinationError("Redis does not answer")
        return {task_id for task_id, _ in tasks if self.ours is None or task_id in self.ours}

    def finish(self, task_ids, final):
        self.finished.append((sorted(task_ids), final))


@pytest.fixture
def journal(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite3")
    yield journal
    journal.close()


def test_a_start_resumes_claims_answers_the_unreadable_and_counts_the_outbox_in_flight(journal):
    unknown_type = msgspec.json.encode({"_id": object_id(3), "type": "translating", "state": "in_progress"})
    journal.record_claims([claim(1), claim(2, raw=b"{not json"), claim(3, raw=unknown_type)])
    journal.add_results([OutboxEntry(object_id(9), b'{"state":"succeeded"}', "succeeded")])
    resumed, in_flight = recover(journal, HANDLERS_NOW, claiming=True, leases=None)
    assert [job.task_id for job in resumed] == [object_id(1)]
    answers = {entry.task_id: entry.state for entry in journal.outbox()}
    assert answers == {object_id(2): "failed", object_id(3): "pending", object_id(9): "succeeded"}
    assert sorted(in_flight) == sorted([object_id(1), object_id(2), object_id(3), object_id(9)])
    assert [c.task_id for c in journal.claims()] == [object_id(1)]


def test_without_claiming_the_last_runs_claims_are_dropped_as_they_are_still_pending(journal):
    journal.record_claims([claim(1), claim(2)])
    resumed, in_flight = recover(journal, HANDLERS_NOW, claiming=False, leases=None)
    assert resumed == [] and in_flight == [] and journal.claims() == []


def test_claims_another_service_took_over_are_left_to_it_and_resumed_when_redis_is_away(journal):
    journal.record_claims([claim(1), claim(2)])
    resumed, _ = recover(journal, HANDLERS_NOW, claiming=True, leases=Leases(ours={object_id(2)}))
    assert [job.task_id for job in resumed] == [object_id(2)]
    assert [c.task_id for c in journal.claims()] == [object_id(2)]
    resumed, _ = recover(journal, HANDLERS_NOW, claiming=True, leases=Leases(down=True))
    assert [job.task_id for job in resumed] == [object_id(2)]


def test_claims_another_service_reported_since_leave_the_journal_without_a_provider_call(journal):
    """Issue 29: a service restarted after the settled marks ran out resumed 256 claims another
    service had finished, and paid for them again."""
    journal.record_claims([claim(1), claim(2)])
    resumed, in_flight = recover(journal, HANDLERS_NOW, claiming=True, leases=Leases(done={object_id(1)}))
    assert [job.task_id for job in resumed] == [object_id(2)] and in_flight == [object_id(2)]
    assert [c.task_id for c in journal.claims()] == [object_id(2)]


class Api:
    def __init__(self, outcomes) -> None:
        self.outcomes, self.sent = outcomes, []

    def patch_in_order(self, patches):
        self.sent += patches
        return [PatchResult(self.outcomes.get(task_id, PatchOutcome.DONE), 200) for task_id, _, _ in patches]


class Refunds:
    def __init__(self) -> None:
        self.refunded = []

    def refund(self, reservation, units=1):
        self.refunded.append((reservation, units))


def test_a_stop_releases_every_claim_the_api_takes_and_refunds_only_units_no_provider_spent(journal):
    journal.record_claims([claim(1, reservation=7), claim(2, reservation=7, sent=True), claim(3, reservation=8)])
    api, refunds, leases = Api({object_id(3): PatchOutcome.RETRY}), Refunds(), Leases()
    release_claims(journal, api, refunds, leases, claiming=True)
    assert [task_id for task_id, body, _ in api.sent] == [object_id(1), object_id(2), object_id(3)]
    assert refunds.refunded == [(7, 1)]                     # task 2's unit was spent, task 3 is kept
    assert [c.task_id for c in journal.claims()] == [object_id(3)]     # resumed at the next start
    assert leases.finished == [([object_id(1), object_id(2)], False)]


class Flaky:
    endpoint = "http://127.0.0.1:1"

    def __init__(self, failures: int, retryable: bool = True) -> None:
        self.failures, self.retryable, self.calls = failures, retryable, 0

    def prepare(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise ProviderError("not ready", provider="test", retryable=self.retryable)


def test_a_provider_is_prepared_again_until_it_works_and_a_stop_ends_the_wait():
    provider = Flaky(failures=2)
    assert prepare_providers({"openai": provider}, "openai", 0.001, threading.Event())
    assert provider.calls == 3
    stopped = threading.Event()
    stopped.set()
    assert not prepare_providers({"openai": Flaky(failures=5)}, "openai", 0.001, stopped)
    with pytest.raises(ProviderError):
        prepare_providers({"openai": Flaky(failures=1, retryable=False)}, "openai", 0.001, threading.Event())


def test_in_hybrid_mode_an_ollama_that_is_not_ready_is_skipped():
    ollama, remote = Flaky(failures=99), Flaky(failures=0)
    assert prepare_providers({"ollama": ollama, "openai": remote}, "hybrid", 0.001, threading.Event())
    assert (ollama.calls, remote.calls) == (1, 1)


def test_health_says_failing_with_the_reason_and_503_and_shows_busy_stages():
    status = {"stages": {"poller": {"state": "busy", "in_flight": 3, "window": 256}, "reporter": {"outbox": 1}},
              "breakers": {"openai": {"state": "open"}}, "outbox": 1, "restarts": {"poller": 2}}
    code, body = health_body(status, Settings(), "running", 12.34, None)
    assert code == 200 and body["status"] == "ok"
    assert body["stages"] == {"poller": {"state": "busy", "restarts": 2},
                              "reporter": {"state": "running", "restarts": 0}}
    assert (body["in_flight"], body["window"], body["breakers"], body["uptime_s"]) == (3, 256, {"openai": "open"}, 12.3)
    code, body = health_body(status, Settings(), "running", 1.0, "stage poller restarted too often")
    assert code == 503 and body["status"] == "failing" and body["reason"] == "stage poller restarted too often"
    assert health_body(status, Settings(), "stopping", 1.0, None)[0] == 503


@pytest.mark.parametrize("name, stage_class", STAGES)
def test_each_stage_is_built_with_exactly_the_parts_its_constructor_names(name, stage_class):
    keyword_only = [parameter.name for parameter in inspect.signature(stage_class.__init__).parameters.values()
                    if parameter.kind is inspect.Parameter.KEYWORD_ONLY]
    assert sorted(keyword_only) == sorted(STAGE_PARTS[name])
    assert set(STAGE_PARTS[name]) <= PART_NAMES


def test_a_dependency_is_degraded_then_down_and_ok_again_with_one_log_line_per_change(caplog):
    from aitp.observability.dependencies import Dependencies, api_observer, breaker_state
    now = [1_000.0]
    dependencies = Dependencies(clock=lambda: now[0])
    observe = api_observer(dependencies)
    with caplog.at_level("INFO", logger="aitp.dependencies"):
        observe("/api/ai-tasks/pending", "GET", "200", 0.01)
        for status in ("503", "429", "503", "error", "502"):
            now[0] += 1
            observe("/api/ai-tasks/:id", "PATCH", status, 0.01)
        down = dependencies.snapshot()["task API"]
        now[0] += 5
        observe("/api/ai-tasks/:id", "PATCH", "404", 0.01)       # an answer: the API is up
    assert (down["state"], down["last_error"]) == ("down", "PATCH /api/ai-tasks/:id: 502")
    assert down["since"] == "1970-01-01T00:16:45+00:00" and down["last_success"] == "1970-01-01T00:16:42+00:00"
    assert dependencies.snapshot()["task API"]["state"] == "ok" and dependencies.not_ok() == []
    # degraded, ok at the 429 (an answer), degraded, down (the third in a row), ok
    assert [record.getMessage() for record in caplog.records] == [
        "dependency failing", "dependency answers again", "dependency failing", "dependency failing",
        "dependency answers again"]
    assert breaker_state({"state": "open", "failures": 5})[0] == "down"
    assert breaker_state({"state": "closed", "failures": 2})[0] == "degraded"
    assert breaker_state({"state": "closed", "failures": 0}) == ("ok", None)


def test_health_is_degraded_with_200_while_a_dependency_is_not_ok():
    status = {"stages": {}}
    dependencies = {"task API": {"state": "down", "since": None, "last_error": "x", "last_success": None}}
    code, body = health_body(status, Settings(), "running", 1.0, None, dependencies)
    assert (code, body["status"], body["dependencies"]) == (200, "degraded", dependencies)
    assert health_body(status, Settings(), "running", 1.0, None, {})[1]["status"] == "ok"


def test_the_heartbeat_says_what_was_done_since_the_last_one_and_what_is_not_ok(caplog):
    from types import SimpleNamespace

    from aitp.observability.dependencies import Dependencies
    from aitp.observability.metrics import Metrics
    from actors.watch import Watch
    metrics, dependencies = Metrics(known_types=set(HANDLERS)), Dependencies()
    dependencies.failed("wikidata", "answered 503")
    watch = Watch(Settings(), SimpleNamespace(dependencies=dependencies), metrics, scheduler=None,
                  running=lambda: True, poller_status=lambda: {"in_flight": 7, "window": 256})
    for state in ("succeeded", "succeeded", "failed"):
        metrics.task_decided("text_embedding", state)
    with caplog.at_level("INFO", logger="aitp.pipeline"):
        watch.heartbeat()
        metrics.task_decided("defining_topics", "succeeded")
        watch.heartbeat()
    first, second = (record.fields for record in caplog.records if record.getMessage() == "heartbeat")
    assert first == {"done": {"text_embedding": {"failed": 1, "succeeded": 2}}, "in_flight": 7, "window": 256,
                     "not_ok": ["wikidata"]}
    assert second["done"] == {"defining_topics": {"succeeded": 1}}
