"""`/health`, `/ready` and `/metrics` on METRICS_PORT, served from a thread of their own.

- `/health`: JSON of the service's state (mode, stages with restarts, breakers, token held or not,
  rate-limit usage); 200 while the service runs, 503 once it is failing or stopping. Never a secret.
- `/ready`: 503 until the pipeline is up, its models present and a token held (when OAuth2 is
  configured); 200 after. For load balancers and Kubernetes readiness probes.
- `/metrics`: Prometheus text format.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
from http.server import BaseHTTPRequestHandler
from typing import Callable

import msgspec

from aitp.transport.httpserver import QuietServer

log = logging.getLogger("aitp.monitoring")

# Probes come from a few places (Docker, Prometheus, a load balancer): more connections at once
# than this are closed at once, and a connection that sends nothing is dropped after the timeout,
# so that a client holding connections open cannot pile up threads.
MAX_CONNECTIONS = 16
READ_TIMEOUT_SECONDS = 5.0


class _BoundedServer(QuietServer):
    """A thread per connection, at most `max_connections` of them."""

    def __init__(self, address, handler, max_connections: int) -> None:
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)      # full: closed at once rather than queued
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class MonitoringServer:
    def __init__(self, port: int, *, health: Callable[[], tuple[int, dict]], ready: Callable[[], tuple[bool, str]],
                 metrics: Callable[[], bytes], host: str = "127.0.0.1", max_connections: int = MAX_CONNECTIONS,
                 read_timeout: float = READ_TIMEOUT_SECONDS) -> None:
        self._server = _BoundedServer((host, port), _handler(health, ready, metrics, read_timeout), max_connections)
        # Bounds handle_request's own wait if a connection is gone by the time it is accepted.
        self._server.timeout = 0.5
        self._stop_reader, self._stop_writer = socket.socketpair()
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return self._server.server_address[0]

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def serving(self) -> bool:
        """Whether the thread that answers probes is running (False again once `stop` returns)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="aitp-monitoring", daemon=True)
        self._thread.start()
        log.info("monitoring listening", extra={"fields": {"host": self.host, "port": self.port,
                                                            "paths": ["/health", "/ready", "/metrics"]}})

    def _serve(self) -> None:
        # Sleeps until a probe connects or stop() writes: serve_forever() would wake up every poll
        # interval (ten times a second at 0.1 s, a millisecond of CPU a second on an idle service)
        # and, with a longer one, make a stop wait that long.
        with selectors.DefaultSelector() as selector:
            selector.register(self._server.socket, selectors.EVENT_READ)
            selector.register(self._stop_reader, selectors.EVENT_READ)
            while not any(key.fileobj is self._stop_reader for key, _ in selector.select()):
                self._server.handle_request()

    def stop(self) -> None:
        self._stop_writer.send(b"x")
        if self._thread is not None:
            self._thread.join(5)
        self._server.server_close()
        self._stop_reader.close()
        self._stop_writer.close()


def _handler(health, ready, metrics, read_timeout: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = read_timeout      # a connection that sends nothing does not hold its thread

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - probes every few seconds: quiet
            pass

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics":
                    return self._reply(200, metrics(), "text/plain; version=0.0.4; charset=utf-8")
                if path == "/health":
                    status, body = health()
                    return self._reply(status, msgspec.json.encode(body), "application/json")
                if path == "/ready":
                    is_ready, why = ready()
                    body = msgspec.json.encode({"ready": is_ready, "reason": why})
                    return self._reply(200 if is_ready else 503, body, "application/json")
            except Exception as exc:  # noqa: BLE001 - a probe must get an answer, not a dropped connection
                log.exception("monitoring endpoint failed", extra={"fields": {"path": path}})
                return self._reply(500, msgspec.json.encode({"error": type(exc).__name__}), "application/json")
            self._reply(404, b'{"error":"not found"}', "application/json")

        do_HEAD = do_GET

    return Handler
