"""What the sandbox task API and the provider stand-ins share: a quiet threading server served from
a thread of its own, and a request handler that answers JSON over kept-alive connections."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler

from aitp.transport.httpserver import QuietServer


class StandIn:
    """`start()` serves on a daemon thread and returns the base URL; `stop()` lets held requests go
    (`release_held`) and closes the server. Safe to use from tests."""

    thread_name = "stand-in"
    url_path = ""            # after host and port in `url` (OpenAI's clients expect /v1)

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = QuietServer((host, port), handler)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{self.url_path}"

    def start(self) -> str:
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name=self.thread_name, daemon=True).start()
        return self.url

    def stop(self) -> None:
        self.release_held()
        self._server.shutdown()
        self._server.server_close()

    def release_held(self) -> None:
        """Let requests held in flight (at a gate, in an outage) finish before the server stops."""


class JsonHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive, as the real servers offer
    disable_nagle_algorithm = True     # headers and body go in two writes: no 40 ms delayed-ACK stall
    content_type = "application/json"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet by design
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
