"""Http1Client: requests to one origin over a small pool of kept-alive connections."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import Callable
from urllib.parse import urlsplit

from aitp.transport.http1.connection import _Connection
from aitp.transport.http1.errors import HttpTransportError, _ClosedBeforeAnswer
from aitp.transport.http1.pipelining import Pipelining
from aitp.transport.http1.proxy import _parse_proxy, absolute_form_prefix, tunnel
from aitp.transport.http1.response import BodySink, Response

# A connection given back this recently is reused without asking the kernel whether the server
# closed it (one syscall less per request); servers keep idle connections for seconds (Node: 5 s),
# and a close in that window is still caught: it fails before any answer and is retried once.
TRUSTED_IDLE_SECONDS = 1.0


class Http1Client:
    """Requests to one origin (`base_url`'s scheme, host and port) over a small pool of connections."""

    def __init__(self, base_url: str, *, timeout: float, max_idle: int = 16,
                 ssl_context: ssl.SSLContext | None = None, pipelining: bool = True,
                 trusted_idle_seconds: float = TRUSTED_IDLE_SECONDS, max_body_bytes: int | None = None,
                 proxy: str | None = None) -> None:
        """`timeout`: the deadline of each request (see _DEADLINE_BYTES_PER_SECOND in connection.py);
        `max_body_bytes`: the largest body read whole (a streamed one, to a body sink, is the sink's
        to bound); `proxy`: a forward proxy's URL (proxy_for() reads it from the environment, as
        every HTTP client does): https goes through a CONNECT tunnel, http as absolute-form requests."""
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.path_prefix = parts.path.rstrip("/")
        self._host = parts.hostname
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        self._host_header = parts.netloc.rpartition("@")[2]
        self._timeout = timeout
        self._max_idle = max_idle
        self._max_body_bytes = max_body_bytes
        self._trusted_idle_seconds = trusted_idle_seconds
        self._ssl_context = (ssl_context or ssl.create_default_context()) if self._tls else None
        self._proxy = _parse_proxy(proxy) if proxy else None
        self._target_prefix = absolute_form_prefix(self._proxy, self._tls, self._host_header)
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._pipelining = Pipelining(pipelining, f"{self._host}:{self._port}")

    @property
    def pipelining(self) -> bool:
        """Whether `pipeline` still sends a group back to back (see Pipelining.enabled)."""
        return self._pipelining.enabled

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes | None = None,
                *, body_sink: BodySink | None = None) -> Response:
        """`path` is appended to the base URL's path. Raises HttpTransportError without an answer.
        With `body_sink`, a large body can be consumed as it arrives instead of held whole; an
        exception raised by the sink closes the connection and reaches the caller."""
        head = self._head(method, self.path_prefix + path, headers, body)
        connection, reused = self._take()
        try:
            try:
                return self._exchange(connection, method, head, body, body_sink)
            except _ClosedBeforeAnswer:
                if not reused:
                    raise
            connection.close()                # the server dropped a kept-alive connection: one fresh try
            connection = self._connect()
            return self._exchange(connection, method, head, body, body_sink)
        except BaseException:
            connection.close()
            raise

    def pipeline(self, method: str, requests: list[tuple[str, dict[str, str], bytes | None]],
                 progress: Callable[[list[Response]], None] | None = None) -> list[Response | HttpTransportError]:
        """Send the (path, headers, body) requests back to back on one connection, then read the
        answers in order: one write and a few reads for a group instead of a round trip each
        (benchmarks/README.md). Only for idempotent requests: the ones the server did not answer
        before closing are sent again on a fresh connection (servers close after some number of
        requests: nginx after 1,000). Returns, in order, a Response or the HttpTransportError that
        stopped that request; after an error, the rest get it too.

        `progress`, when given, is called with the answers so far whenever reading on would wait
        for the server and EARLY_ANSWERS or more came since it was last called (never after the
        last one): a server serves a group one request at a time, and on a busy one the first
        answers of a large group are worth acting on before the last come."""
        messages = [self._head(method, self.path_prefix + path, headers, body) + (body or b"")
                    for path, headers, body in requests]
        return self._pipelining.run(self._take, self._give_back, method, messages, progress)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _head(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> bytes:
        lines = [f"{method} {self._target_prefix}{target} HTTP/1.1", f"Host: {self._host_header}"]
        if self._target_prefix and self._proxy.authorization:
            lines.append(f"Proxy-Authorization: {self._proxy.authorization}")
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if any("\r" in line or "\n" in line for line in lines):
            raise ValueError("a line break inside a request line or header would split the request")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _exchange(self, connection: _Connection, method: str, head: bytes, body: bytes | None,
                  body_sink: BodySink | None) -> Response:
        connection.start_deadline()
        connection.send(head + body if body else head)
        response, keep_alive = connection.read_response(method, body_sink)
        if keep_alive:
            self._give_back(connection)
        else:
            connection.close()
        return response

    def _take(self) -> tuple[_Connection, bool]:
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self._connect(), False
            if time.monotonic() - connection.idle_since < self._trusted_idle_seconds or connection.looks_open():
                return connection, True
            connection.close()

    def _give_back(self, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(connection)
                return
        connection.close()

    def _connect(self) -> _Connection:
        host, port = (self._proxy.host, self._proxy.port) if self._proxy else (self._host, self._port)
        try:
            sock = socket.create_connection((host, port), timeout=self._timeout)
        except TimeoutError:
            raise HttpTransportError("Timeout", f"connecting to {host}:{port}") from None
        except OSError as exc:
            raise HttpTransportError("ConnectionError", f"connecting to {host}:{port}: "
                                                        f"{exc.strerror or type(exc).__name__}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._proxy and self._tls:
            tunnel(sock, self._proxy, self._host, self._port, self._timeout)
        if self._ssl_context is not None:
            try:
                sock = self._ssl_context.wrap_socket(sock, server_hostname=self._host)
            except (OSError, ssl.SSLError) as exc:
                sock.close()
                raise HttpTransportError("TLSError", str(exc)[:200]) from None
        return _Connection(sock, self._timeout, self._max_body_bytes)
