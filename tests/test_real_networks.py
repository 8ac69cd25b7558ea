"""Real network components in front of the task API: nginx (Debian's nginx-light) as a TLS reverse
proxy with a private CA, gzip on, and keep-alive connections closed every 100 requests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest

from aitp.sandbox.seed import generated_tasks
from conftest import drained, wait_until

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


def private_ca(directory) -> tuple[str, str, str]:
    """(CA certificate, server certificate, server key) for 127.0.0.1, signed by a CA made here."""
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=aitp test CA",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
            "-extfile", "san.ext", "-out", "server.pem")
    return str(directory / "ca.pem"), str(directory / "server.pem"), str(directory / "server.key")


@pytest.fixture
def nginx(tmp_path):
    if not os.path.exists(NGINX):
        pytest.skip("nginx is not installed (tests/install-peers.sh installs nginx-light as root)")
    started = []

    def start(upstream_port: int) -> tuple[str, str, object]:
        home = tmp_path / "nginx"
        (home / "logs").mkdir(parents=True)
        ca, cert, key = private_ca(home)
        port = free_port()
        user = "user root root;\n" if os.geteuid() == 0 else ""
        (home / "nginx.conf").write_text(f"""{user}worker_processes 1;
pid {home}/nginx.pid;
error_log {home}/logs/error.log warn;
daemon off;
events {{ worker_connections 256; }}
http {{
  log_format ratio '$request_method $uri $status $bytes_sent $gzip_ratio';
  access_log {home}/logs/access.log ratio;
  client_body_temp_path {home}/body;
  proxy_temp_path {home}/proxy;
  gzip on;
  gzip_types application/json;
  gzip_min_length 1000;
  gzip_proxied any;
  keepalive_requests 100;
  upstream api {{ server 127.0.0.1:{upstream_port}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{
      proxy_pass http://api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
""")
        process = subprocess.Popen([NGINX, "-c", str(home / "nginx.conf"), "-p", str(home), "-e",
                                    str(home / "logs" / "error.log")], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        started.append(process)
        wait_until(lambda: _accepts(port), message="nginx to listen")
        return f"https://127.0.0.1:{port}", ca, home / "logs" / "access.log"

    yield start
    for process in started:
        process.terminate()
        process.wait(30)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_through_nginx_with_tls_a_private_ca_in_ssl_cert_file_and_gzip_every_task_succeeds(
        nginx, sandbox, service):
    tasks = generated_tasks(300)
    server = sandbox(tasks)
    url, ca, access_log = nginx(int(server.url.rsplit(":", 1)[1]))
    # The private CA only as SSL_CERT_FILE, as an ops team sets it; keep-alive closed every 100 requests.
    process = service({"API_BASE_URL": url, "SSL_CERT_FILE": ca, "PROCESSING_MODE": "mock"})
    wait_until(lambda: drained(server), timeout=120, message="the queue to drain through nginx")
    assert server.counts() == {"succeeded": 300}
    process.signal(15)
    assert process.wait(60) == 0
    polls = [line.split() for line in access_log.read_text().splitlines() if "/api/ai-tasks/pending" in line]
    compressed = [fields for fields in polls if fields[4] != "-"]     # nginx skips lists under 1,000 bytes
    assert compressed and all(float(fields[4]) > 2 for fields in compressed), polls[:5]
    patches = sum(1 for line in access_log.read_text().splitlines() if line.startswith("PATCH"))
    assert patches >= 600                                  # claims and results: several connections of 100


def test_without_the_private_ca_the_task_api_is_refused_not_trusted(nginx, sandbox, service):
    server = sandbox(generated_tasks(3))
    url, _, _ = nginx(int(server.url.rsplit(":", 1)[1]))
    process = service({"API_BASE_URL": url, "PROCESSING_MODE": "mock"})
    wait_until(lambda: "TLSError" in process.logs(), message="the refused certificate in the log")
    assert server.counts() == {"pending": 3}
    process.signal(15)
    assert process.wait(60) == 0


@pytest.mark.parametrize("how", ["SSL_CERT_FILE", "tls.ca_bundle"])
def test_one_tls_policy_for_the_token_wikidata_and_openai_clients(scripted, tmp_path, monkeypatch, how):
    """requests (token, Wikidata) trusts only certifi by default, and httpx (OpenAI) its own: each is
    given aitp's policy, so a private CA in SSL_CERT_FILE or tls.ca_bundle reaches all of them."""
    import ssl

    from aitp.config import load_config
    from aitp.providers.openai_api import OpenAIProvider
    from aitp.transport.auth import TokenClient
    from aitp.transport.tls import client_context
    from aitp.transport.wikidata import WikidataClient

    ca, cert, key = private_ca(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def script(peer, number):
        while (request := peer.read_request()) is not None:
            path = request.split(b" ")[1]
            body = (b'{"access_token":"t","expires_in":60}' if b"token" in path else
                    b'{"search":[{"id":"Q1"}]}' if b"api.php" in path else
                    b'{"object":"list","data":[]}')
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(body), body))
    server = scripted(script, ssl_context=context)
    env = {"PROCESSING_MODE": "mock"}
    if how == "SSL_CERT_FILE":
        monkeypatch.setenv("SSL_CERT_FILE", ca)
    else:
        env["AITP_TLS__CA_BUNDLE"] = ca
    settings = load_config(environ=env, dotenv_dir=tmp_path).settings
    tls = client_context(settings)
    assert TokenClient(f"{server.url}/token", "c", "s", timeout=5, ssl_context=tls).fetch().access_token == "t"
    wikidata = WikidataClient(api_url=f"{server.url}/w/api.php", sparql_url="", pageviews_url="", user_agent="t",
                              timeout=5, ssl_context=tls)
    assert wikidata.search("x", "en", 1) == ["Q1"]
    openai_settings = load_config(environ={**env, "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"{server.url}/v1"},
                                  dotenv_dir=tmp_path).settings
    OpenAIProvider(openai_settings).prepare()           # lists models over TLS; would log a warning if refused
    assert any(b"/v1/models" in request for request in server.requests)
    from aitp.errors import AuthError
    with pytest.raises(AuthError, match="unreachable"):       # requests' own trust does not know the CA
        TokenClient(f"{server.url}/token", "c", "s", timeout=5).fetch()


TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"


@pytest.fixture
def tinyproxy(tmp_path):
    if not os.path.exists(TINYPROXY):
        pytest.skip("tinyproxy is not installed (tests/install-peers.sh installs it as root)")
    port = free_port()
    home = tmp_path / "tinyproxy"
    home.mkdir()
    user = "User root\nGroup root\n" if os.geteuid() == 0 else ""
    (home / "tinyproxy.conf").write_text(f"""{user}Port {port}
Listen 127.0.0.1
Timeout 60
MaxClients 50
Allow 127.0.0.1
LogLevel Connect
LogFile "{home}/tinyproxy.log"
PidFile "{home}/tinyproxy.pid"
""")
    process = subprocess.Popen([TINYPROXY, "-d", "-c", str(home / "tinyproxy.conf")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_until(lambda: _accepts(port), message="tinyproxy to listen")
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(30)


def test_through_a_forward_proxy_the_task_api_goes_via_it_and_ollama_in_no_proxy_does_not(
        tinyproxy, sandbox, ollama, service):
    stub = ollama(models={"nomic-embed-text": 768})
    server = sandbox(generated_tasks(40))
    ollama_url = stub.url.replace("127.0.0.1", "localhost")
    process = service({"API_BASE_URL": server.url, "PROCESSING_MODE": "ollama", "OLLAMA_BASE_URL": ollama_url,
                       "HTTP_PROXY": tinyproxy, "HTTPS_PROXY": tinyproxy, "NO_PROXY": "localhost"})
    wait_until(lambda: drained(server), timeout=120, message="the queue to drain through the proxy")
    assert server.counts() == {"succeeded": 40}
    counts = server.request_counts()
    assert counts["GET pending"] == counts["GET pending via proxy"] > 0
    assert counts["PATCH task"] == counts["PATCH task via proxy"] >= 80
    assert stub.requests_via_proxy == 0 and sum(stub.batch_sizes) == 40
    process.signal(15)
    assert process.wait(60) == 0


def test_https_goes_through_a_connect_tunnel(tinyproxy, scripted, tmp_path):
    import ssl

    from aitp.transport.http1 import Http1Client
    ca, cert, key = private_ca(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = scripted(lambda peer, number: [peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret")
                                            for _ in iter(peer.read_request, None)], ssl_context=context)
    client = Http1Client(server.url, timeout=10, ssl_context=ssl.create_default_context(cafile=ca), proxy=tinyproxy)
    assert [client.request("GET", "/", {}).body for _ in range(3)] == [b"secret"] * 3
    assert server.connections == 1                      # one tunnel, kept alive
    log = (tmp_path / "tinyproxy" / "tinyproxy.log").read_text()
    assert "CONNECT" in log and "secret" not in log
