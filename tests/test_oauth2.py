"""OAuth2 client credentials against a real OAuth2 server (npm's oauth2-mock-server, made strict by
tests/oauth2/server.mjs), with the sandbox task API checking every bearer token there (RFC 7662),
as the real API checks each one with Hydra."""

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
import requests

from aitp.transport.auth import TokenClient
from aitp.errors import AuthError
from aitp.transport.httpserver import QuietServer
from aitp.sandbox.seed import embedding_task, generated_tasks, object_id
from conftest import drained, monitoring_port, wait_until

SECRET = "s3cret-for-tests"


def auth_env(peer, sandbox_server, tmp_path, *, secret=SECRET, toml="", **extra) -> dict[str, str]:
    env = {"API_BASE_URL": sandbox_server.url, "OAUTH2_TOKEN_URL": peer.token_url,
           "OAUTH2_CLIENT_ID": peer.client_id, "OAUTH2_CLIENT_SECRET": secret, "RETRY_BACKOFF_FACTOR": "0.1",
           **extra}
    if toml:
        config = tmp_path / "aitp.toml"
        config.write_text(toml)
        env["AITP_CONFIG"] = str(config)
    return env


def token_lines(process) -> list[dict]:
    lines = []
    for line in process.logs().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "no token":
            lines.append(record)
    return lines


# --- the token client on its own ---
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_both_client_authentication_methods_get_a_token(oauth2_server, method):
    peer = oauth2_server(client_secret="with spaces & symbols:+/=")
    client = TokenClient(peer.token_url, peer.client_id, peer.client_secret, scope="embeddings read",
                         auth_method=method, timeout=5)
    token = client.fetch()
    assert token.access_token and 3590 < token.expires_at - time.time() <= 3600
    wait_until(lambda: peer.token_requests(ok=True), message="the server to log the request")
    request = peer.token_requests(ok=True)[0]
    assert (request["method"], request["grant_type"], request["scope"]) == (method, "client_credentials",
                                                                           "embeddings read")
    assert repr(token) == f"Token(expires_at={token.expires_at:.0f})"    # a token never reaches a log via repr


def test_a_wrong_secret_is_named_invalid_client_and_the_secret_never_printed(oauth2_server):
    peer = oauth2_server()
    with pytest.raises(AuthError) as caught:
        TokenClient(peer.token_url, peer.client_id, "wrong-secret-value", timeout=5).fetch()
    message = str(caught.value)
    assert peer.token_url in message and "401" in message and "invalid_client" in message
    assert "wrong-secret-value" not in message


class _OddTokenEndpoint(BaseHTTPRequestHandler):
    release: threading.Event

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/slow":
            self.release.wait(10)
        body = b"<html>a proxy error page</html>"
        self.send_response(200 if self.path == "/html" else 502)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def odd_endpoint():
    handler = type("Handler", (_OddTokenEndpoint,), {"release": threading.Event()})
    server = QuietServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    handler.release.set()
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("path, expected", [
    ("/html", "answered 200 without a token in JSON"),
    ("/bad-gateway", "answered 502: non-JSON answer"),
    ("/slow", "did not answer within 0.3 s"),
])
def test_odd_token_endpoints_give_one_clear_error(odd_endpoint, path, expected):
    with pytest.raises(AuthError) as caught:
        TokenClient(odd_endpoint + path, "id", "the-secret", timeout=0.3).fetch()
    assert expected in str(caught.value) and odd_endpoint + path in str(caught.value)
    assert "the-secret" not in str(caught.value)


def test_an_unreachable_token_endpoint_is_named():
    with pytest.raises(AuthError, match=r"token endpoint http://127.0.0.1:9/token unreachable"):
        TokenClient("http://127.0.0.1:9/token", "id", "secret", timeout=2).fetch()


# --- the service, end to end ---
def test_short_lived_tokens_are_refreshed_about_once_per_lifetime(oauth2_server, sandbox, ollama, service,
                                                                  tmp_path):
    peer = oauth2_server(lifetime=3)
    # The stub embeds one batch at a time: 12 batches of 16 take at least 7.2 s, several lifetimes.
    stub = ollama(models={"nomic-embed-text": 768}, call_cost=0.6)
    tasks = generated_tasks(192)
    server = sandbox(tasks, introspection_url=peer.introspection_url)
    env = auth_env(peer, server, tmp_path, toml="[auth]\nrefresh_margin_seconds = 0.5\n",
                   PROCESSING_MODE="ollama", OLLAMA_BASE_URL=stub.url, SUPPORTED_MODELS="nomic-embed-text")
    process = service(env)
    wait_until(lambda: drained(server), timeout=90, message="the queue to drain")
    assert server.counts() == {"succeeded": 192}
    fetches = [event["at"] for event in peer.token_requests(ok=True)]      # the server's clock
    assert len(fetches) >= 2, "the run outlasts a token (12 serial batches of 0.6 s): it must be refreshed"
    # Refreshed when the token is about to expire (lifetime 3 s less the 0.5 s margin), never sooner:
    # a lower bound on the gaps, which a slow machine can only widen (0.5 s of slack for the time a
    # fetch takes between the service's clock and the server's).
    gaps = [later - earlier for earlier, later in zip(fetches, fetches[1:])]
    assert min(gaps) >= 3 - 0.5 - 0.5, gaps
    assert sum(server.request_counts().values()) > 10 * len(fetches)      # never a fetch per request
    process.signal(15)
    assert process.wait(60) == 0


def test_a_token_revoked_mid_run_is_replaced_and_every_task_succeeds(oauth2_server, sandbox, service, tmp_path):
    peer = oauth2_server()
    first = generated_tasks(10)
    server = sandbox(first, introspection_url=peer.introspection_url)
    process = service(auth_env(peer, server, tmp_path))
    wait_until(lambda: drained(server), message="the first tasks")
    assert len(peer.token_requests(ok=True)) == 1
    peer.revoke_all()
    wait_until(lambda: peer.saw("revoked"), message="the revocation")
    later = [embedding_task(object_id(100 + i), f"after revocation {i}") for i in range(10)]
    server.add_tasks(later)
    wait_until(lambda: drained(server), message="the later tasks")
    assert server.counts() == {"succeeded": 20}
    assert len(peer.token_requests(ok=True)) == 2           # one renewal, shared by every stage
    process.signal(15)
    assert process.wait(60) == 0
    for secret in (SECRET,):
        assert secret not in process.logs()


def test_a_wrong_secret_pauses_polling_and_backs_off(oauth2_server, sandbox, service, tmp_path):
    peer = oauth2_server()
    tasks = generated_tasks(5)
    server = sandbox(tasks, introspection_url=peer.introspection_url)
    process = service(auth_env(peer, server, tmp_path, secret="not-the-secret", RETRY_BACKOFF_FACTOR="0.2"))
    wait_until(lambda: len(peer.token_requests(ok=False)) >= 4, timeout=30, message="a few refused fetches")
    refused_at = time.monotonic()
    lines = token_lines(process)
    assert lines and all(peer.token_url in line["error"] and "invalid_client" in line["error"] for line in lines)
    assert server.request_counts().get("GET pending", 0) == 0      # no polling without a token
    assert all(server.history(task["_id"]) == ["pending"] for task in tasks)
    health = requests.get(f"http://127.0.0.1:{wait_until(lambda: monitoring_port(process))}/health", timeout=10)
    token_endpoint = health.json()["dependencies"]["token endpoint"]
    assert (health.status_code, health.json()["status"]) == (200, "degraded")
    assert token_endpoint["state"] == "down" and "invalid_client" in token_endpoint["last_error"]
    assert "not-the-secret" not in health.text
    # Backing off: the waits double (0.2, 0.4, 0.8 s ... with jitter), so a few seconds see few fetches.
    wait_until(lambda: time.monotonic() - refused_at > 2, message="two more seconds")
    assert len(peer.token_requests(ok=False)) <= 9
    process.signal(15)
    assert process.wait(60) == 0
    assert "not-the-secret" not in process.logs()


def test_the_token_server_down_for_a_while_then_back(oauth2_server, sandbox, service, tmp_path):
    peer = oauth2_server(lifetime=2)
    server = sandbox(generated_tasks(10), introspection_url=peer.introspection_url)
    process = service(auth_env(peer, server, tmp_path, toml="[auth]\nrefresh_margin_seconds = 0.5\n"))
    wait_until(lambda: drained(server), message="the first tasks")
    peer.stop()
    later = [embedding_task(object_id(200 + i), f"during the outage {i}") for i in range(10)]
    server.add_tasks(later)
    wait_until(lambda: len(token_lines(process)) >= 2, timeout=30, message="failed refreshes while it is down")
    assert server.counts().get("succeeded") == 10           # nothing passes without a valid token
    peer.start()                                             # same port, new keys: old tokens are unknown
    wait_until(lambda: drained(server), timeout=60, message="the tasks after the outage")
    assert server.counts() == {"succeeded": 20}
    process.signal(15)
    assert process.wait(60) == 0


def test_a_fresh_token_refused_by_the_api_is_a_configuration_error(oauth2_server, sandbox, service, tmp_path):
    issuer = oauth2_server()
    trusted = oauth2_server()          # the API trusts another project: no token of `issuer` passes
    tasks = generated_tasks(3)
    server = sandbox(tasks, introspection_url=trusted.introspection_url)
    process = service(auth_env(issuer, server, tmp_path, RETRY_BACKOFF_FACTOR="0.2"))
    wait_until(lambda: "freshly issued token" in process.logs(), timeout=30, message="the configuration error")
    noticed_at = time.monotonic()
    wait_until(lambda: time.monotonic() - noticed_at > 2, message="two more seconds")
    # Fetches are spaced by a growing backoff, not one per refused request.
    fetched = len(issuer.token_requests(ok=True))
    assert fetched <= 8 and server.request_counts().get("GET pending", 0) <= 3 * fetched
    assert all(server.history(task["_id"]) == ["pending"] for task in tasks)
    process.signal(15)
    assert process.wait(60) == 0


def test_config_show_tells_whether_a_token_is_held_and_never_shows_it(oauth2_server, sandbox, service, tmp_path):
    peer = oauth2_server()
    server = sandbox(generated_tasks(2), introspection_url=peer.introspection_url)
    env = auth_env(peer, server, tmp_path)
    process = service(env)
    wait_until(lambda: drained(server), message="the tasks")
    shown = subprocess.run([sys.executable, "-m", "actors", "config", "show"], capture_output=True, text=True,
                           timeout=60, cwd=tmp_path,
                           env={"PATH": "", "AITP_DATA_DIR": str(tmp_path / "data"), **env})
    process.signal(15)
    assert process.wait(60) == 0
    assert shown.returncode == 0
    assert "# token: held, expires " in shown.stdout and peer.token_url in shown.stdout
    assert SECRET not in shown.stdout and "eyJ" not in shown.stdout      # no secret, no JWT


def test_the_token_post_is_never_redirected_and_a_huge_or_wordy_answer_is_cut(scripted):
    elsewhere = scripted(lambda peer, number: peer.read_request() and peer.send(
        b'HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n{"access_token":"stolen","expires_in":9}'))
    redirecting = scripted(lambda peer, number: peer.read_request() and peer.send(
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: " + elsewhere.url.encode() + b"/token\r\n"
        b"Content-Length: 0\r\n\r\n"))
    client = TokenClient(redirecting.url + "/token", "aitp", "the-secret", auth_method="client_secret_post",
                         timeout=5)
    with pytest.raises(AuthError, match="answered 307"):
        client.fetch()
    assert elsewhere.requests == []                       # the form, secret and all, went nowhere else

    huge = scripted(lambda peer, number: peer.read_request() and peer.send(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b" " * 1_000_000))
    with pytest.raises(AuthError, match="more than"):
        TokenClient(huge.url, "aitp", "s", timeout=5).fetch()

    problem = json.dumps({"error": "invalid_client\n" + "x" * 5000, "error_description": "no"}).encode()
    wordy = scripted(lambda peer, number: peer.read_request() and peer.send(
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\n\r\n%s" % (len(problem), problem)))
    with pytest.raises(AuthError) as error:
        TokenClient(wordy.url, "aitp", "s", timeout=5).fetch()
    assert "invalid_client?xxx" in str(error.value)         # the server's words, cut and printable
    assert len(str(error.value)) < 300 and "\n" not in str(error.value)
