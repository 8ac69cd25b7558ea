"""/health, /ready and /metrics, and the logs a run leaves behind."""

import json
import re
import socket

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from aitp.sandbox.ollama_stub import OllamaStub
from aitp.sandbox.openai_stub import STUB_KEY
from aitp.sandbox.seed import demo_tasks, generated_tasks
from conftest import monitoring_port, drained, settings_for, wait_until

CLIENT_SECRET = "client-secret-never-logged"


def get(port: int, path: str) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}{path}", timeout=10)


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, (label, value), ...): value} from Prometheus text."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return out


def total(metrics: dict, name: str, **labels) -> float:
    return sum(value for key, value in metrics.items()
               if key[0] == name and all((k, v) in key[1:] for k, v in labels.items()))


def test_ready_flips_from_503_to_200_once_the_provider_is_up(sandbox, service, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as placeholder:     # reserve a port, then free it
        port = placeholder.getsockname()[1]
    server = sandbox(generated_tasks(5))
    process = service({"API_BASE_URL": server.url, "PROCESSING_MODE": "ollama",
                       "OLLAMA_BASE_URL": f"http://127.0.0.1:{port}", "RETRY_BACKOFF_FACTOR": "0.1"})
    metrics_port = wait_until(lambda: monitoring_port(process), message="the monitoring port")
    not_ready = get(metrics_port, "/ready")
    assert not_ready.status_code == 503 and not_ready.json() == {"ready": False, "reason": "preparing providers"}
    assert get(metrics_port, "/health").json()["status"] == "starting"
    ollama = OllamaStub(models={"nomic-embed-text": 768}, port=port)
    ollama.start()
    try:
        wait_until(lambda: get(metrics_port, "/ready").status_code == 200, message="/ready to turn 200")
        assert get(metrics_port, "/ready").json() == {"ready": True, "reason": "running"}
        wait_until(lambda: drained(server), message="the queue to drain")
        process.signal(15)
        assert process.wait(60) == 0
    finally:
        ollama.stop()


def test_metrics_after_a_run_match_what_the_sandbox_saw_and_logs_carry_ids_but_no_secret(
        sandbox, ollama, service, tmp_path):
    stub = ollama(models={"nomic-embed-text": 768})
    tasks = demo_tasks(60)
    server = sandbox(tasks, client_id="aitp", client_secret=CLIENT_SECRET)
    process = service({"API_BASE_URL": server.url, "OAUTH2_TOKEN_URL": server.token_url, "OAUTH2_CLIENT_ID": "aitp",
                       "OAUTH2_CLIENT_SECRET": CLIENT_SECRET, "PROCESSING_MODE": "ollama",
                       "OLLAMA_BASE_URL": stub.url, "OPENAI_API_KEY": STUB_KEY, "LOG_LEVEL": "DEBUG"})
    port = wait_until(lambda: monitoring_port(process), message="the monitoring port")
    wait_until(lambda: drained(server, left_alone=5), message="the queue to drain")
    wait_until(lambda: total(samples(get(port, "/metrics").text), "ai_tasks_in_flight") == 0,
               message="nothing in flight")
    polls_before = server.request_counts()["GET pending"]
    metrics = samples(get(port, "/metrics").text)
    counts, requests_seen = server.counts(), server.request_counts()

    assert total(metrics, "ai_tasks_processed_total", status="succeeded") == counts["succeeded"] == 60
    assert total(metrics, "ai_tasks_processed_total", status="failed") == counts["failed"]
    assert total(metrics, "ai_task_processing_duration_seconds_count") == counts["succeeded"] + counts["failed"]
    # Polling goes on: the service counts a poll when its answer is back, the sandbox when it arrives.
    assert polls_before - 1 <= total(metrics, "api_requests_total", method="GET") <= requests_seen["GET pending"]
    assert total(metrics, "api_requests_total", method="PATCH") == requests_seen["PATCH task"]
    assert total(metrics, "ollama_requests_total", status="success") == len(stub.batch_sizes)
    assert total(metrics, "aitp_batch_size_sum", provider="ollama") == sum(stub.batch_sizes)
    # The process workers' own time reaches /metrics: one observation per batch they handled.
    assert total(metrics, "aitp_vector_work_seconds_count") == len(stub.batch_sizes)
    assert total(metrics, "ollama_tokens_used_total") > 0
    assert total(metrics, "aitp_tasks_left_alone_total") == 5
    assert total(metrics, "circuit_breaker_state", service="ollama") == 0
    assert total(metrics, "aitp_outbox_size") == 0
    for name in ("ai_tasks_in_flight", "api_request_duration_seconds_count", "aitp_provider_latency_seconds_count",
                 "aitp_stage_queue_depth", "aitp_actor_restarts_total", "aitp_process_worker_restarts_total",
                 "aitp_poller_credit", "rate_limit_check_duration_seconds_count"):
        assert any(key[0] == name for key in metrics), name

    health = get(port, "/health").json()
    assert health["status"] == "ok" and health["mode"] == "ollama"
    assert health["token"]["held"] is True and isinstance(health["token"]["expires_at"], int)
    assert set(health["stages"]) == {"poller", "authenticator", "rate_limiter", "dispatcher", "provider_workers",
                                     "llm_workers", "reporter"}
    process.signal(15)
    assert process.wait(60) == 0

    logs = process.logs()
    tokens = list(server.store.tokens)
    assert tokens
    for secret in (CLIENT_SECRET, STUB_KEY, *tokens):
        assert secret not in logs and secret not in json.dumps(health)
    # Every line of a task's life names it; the lines after batching name its batch too.
    task_id = next(t["_id"] for t in tasks if t.get("type") == "text_embedding"
                   and server.state_of(t["_id"]) == "succeeded")
    lines = [json.loads(line) for line in logs.splitlines() if task_id in line]
    events = [line["event"] for line in lines]
    assert {"task taken", "task claimed", "batch sent", "task reported"} <= set(events)
    sent = next(line for line in lines if line["event"] == "batch sent")
    reported = next(line for line in lines if line["event"] == "task reported")
    assert reported["task_id"] == task_id and reported["batch_id"] == sent["batch_id"]
    assert all(re.fullmatch(r"[0-9a-f]{12}", line["batch_id"]) for line in lines if "batch_id" in line)


def test_a_busy_metrics_port_stops_startup_naming_the_key(sandbox, service):
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen()
    try:
        server = sandbox(generated_tasks(1))
        process = service({"API_BASE_URL": server.url, "METRICS_PORT": str(taken.getsockname()[1])})
        assert process.wait(60) == 2
        assert "monitoring.metrics_port" in process.logs() and "a free TCP port" in process.logs()
    finally:
        taken.close()


@pytest.mark.parametrize("path, status", [("/nope", 404)])
def test_unknown_paths_are_404(sandbox, run_pipeline, tmp_path, path, status):
    pipeline = run_pipeline(settings_for(sandbox([]), tmp_path))
    assert get(pipeline.monitor.port, path).status_code == status


def test_the_server_answers_probes_until_stopped_and_then_lets_go_of_its_port():
    from aitp.observability.monitoring import MonitoringServer
    server = MonitoringServer(0, health=lambda: (200, {"ok": True}), ready=lambda: (True, "up"),
                              metrics=lambda: b"", host="127.0.0.1")
    server.start()
    socket.create_connection(("127.0.0.1", server.port), timeout=5).close()   # a probe that hangs up
    with requests.Session() as session:     # kept alive: answered by a handler thread, not the accept loop
        assert [session.get(f"http://127.0.0.1:{server.port}/health", timeout=5).json() for _ in range(3)] == \
            [{"ok": True}] * 3
        assert get(server.port, "/ready").json() == {"ready": True, "reason": "up"}
    server.stop()
    assert not server.serving
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5)


def test_the_server_listens_on_loopback_by_default_and_bounds_its_connections():
    from aitp.config import Settings
    from aitp.observability.monitoring import MonitoringServer
    assert Settings().monitoring.host == "127.0.0.1"

    def server_with(**limits):
        server = MonitoringServer(0, health=lambda: (200, {"ok": True}), ready=lambda: (True, "up"),
                                  metrics=lambda: b"", **limits)
        server.start()
        return server

    quick = server_with(read_timeout=0.5)
    try:
        assert quick.host == "127.0.0.1"
        idle = socket.create_connection(("127.0.0.1", quick.port), timeout=10)
        assert idle.recv(1) == b""          # a connection that sends nothing is dropped after the read timeout
        idle.close()
    finally:
        quick.stop()
    bounded = server_with(max_connections=2, read_timeout=60)
    try:
        held = [socket.create_connection(("127.0.0.1", bounded.port), timeout=10) for _ in range(2)]
        wait_until(lambda: _refused_at_once(bounded.port), message="a third connection closed at once")
        for sock in held:
            sock.close()
        wait_until(lambda: _answers(bounded.port), message="probes answered again")
    finally:
        bounded.stop()


def _refused_at_once(port: int) -> bool:
    """A connection the server closes without reading a request (all its slots are taken)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            return sock.recv(100) == b""
        except ConnectionResetError:
            return True


def _answers(port: int) -> bool:
    try:
        return get(port, "/health").status_code == 200
    except requests.RequestException:
        return False


def test_labels_from_task_data_are_bounded_to_what_the_configuration_knows():
    from aitp.observability.metrics import Metrics
    metrics = Metrics(known_models={"nomic-embed-text"}, known_types={"text_embedding"})
    for number in range(500):                       # a hostile API inventing names
        metrics.provider_call("openai", f"model-{number}", "success", 1, 0.01, tokens=3)
        metrics.task_decided(f"type-{number}", "failed", 0.1)
    metrics.provider_call("openai", "nomic-embed-text", "success", 1, 0.01)
    found = samples(metrics.expose().decode())
    models = {dict(key[1:]).get("model") for key in found if key[0] == "openai_requests_total"}
    types = {dict(key[1:]).get("task_type") for key in found if key[0] == "ai_tasks_processed_total"}
    assert models == {"nomic-embed-text", "other"} and types == {"other"}
    assert total(found, "openai_requests_total", model="other") == 500
