"""A small HTTP/1.1 client for the task API: kept-alive connections, pipelining, no redirects, no retries.

Why not urllib3 or requests: every task costs two PATCHes, and on loopback a request costs about
300 µs of client CPU with urllib3 (700 µs with requests) against about 100 µs here, and neither
pipelines, which keeps a far API busy (benchmarks/README.md). Answers are parsed by httptools
(llhttp, the parser of Node and uvicorn), which took less CPU per answer than the hand-written
reader it replaced (benchmarks/parsers.py); this module keeps the connections, the pipelining and
the policy: TLS with certificate checks, proxies, 1xx answers skipped, folded header lines refused,
`Transfer-Encoding` with `Content-Length` read by its chunks and the connection closed after it, a
101 never pooled, a total deadline per request (not per read: a server dripping a byte a second
cannot hold a request), an optional cap on a body read whole (checked before anything is
allocated for it), gzip and deflate inflated in bounded pieces, and one quiet reconnect when a
kept-alive connection turns out to have been closed by the server before it answered.
"""

from __future__ import annotations

import base64
import logging
import os
import select
import socket
import ssl
import threading
import time
import zlib
from collections import deque
from typing import Callable, NamedTuple
from urllib.parse import unquote, urlsplit
from urllib.request import proxy_bypass_environment

import httptools

from aitp.timers import running_mean

log = logging.getLogger("aitp.http1")

_MAX_HEADER_BYTES = 64 * 1024
# A request must be answered within its timeout, plus one second for every this many bytes of
# answer that arrived: a large pending list on a slow link still arrives, a server that drips a
# byte at a time does not hold the request past about its timeout.
_DEADLINE_BYTES_PER_SECOND = 64 * 1024
# A connection given back this recently is reused without asking the kernel whether the server
# closed it (one syscall less per request); servers keep idle connections for seconds (Node: 5 s),
# and a close in that window is still caught: it fails before any answer and is retried once.
TRUSTED_IDLE_SECONDS = 1.0
# Each connection reads answers through one reused buffer of this size: `recv(n)` would allocate
# n bytes and shrink them for every read, and above glibc's mmap threshold (128 kB) that is three
# extra system calls (mmap, mremap, munmap) per read, about a third of a pipelined PATCH's CPU.
_FILL_BYTES = 64 * 1024
_TLS_RECORD_BYTES = 16 * 1024     # the most one TLS record carries: what a non-blocking send offers at once
# Pipelined requests go out in groups of at most this size: it bounds the copy that joins them.
# (Each group used to fit the socket buffers, 64 kB, so that sending it could not wait on a
# server waiting for its answers to be read; _Connection.send now reads while it sends. A
# batch's 15 results, some 145 kB, now go in one group instead of three: three naps and three
# rounds of reads became one, some 20 us of CPU per task in the benchmark.)
PIPELINE_GROUP_BYTES = 1024 * 1024
# A server answers pipelined requests one at a time, and reading each answer as it comes costs a
# thread wake-up each: most of a pipelined PATCH's client CPU on loopback against the sandbox.
# So after sending a group the reader first sleeps through most of the time its answers took
# last time, per answer, for requests of that size, and then reads what has come together. The
# nap is at most GATHER_MAX_SECONDS: a server that got slower, or stalls, costs little latency,
# and one that got faster shortens the next nap, as the group's time then is mostly the nap.
# Far from the server, nothing can come back before a round trip: the nap also covers most of
# the latency measured before the first answer (which no wait can shorten), so that a far API's
# answers are read together too, not one wake-up each as they trickle in.
_GATHER_SHARE = 0.8
GATHER_MAX_SECONDS = 0.01
_GATHER_MIN_SECONDS = 0.0002      # shorter naps save no wake-up
_GATHER_WEIGHT = 0.5              # of the latest group in the running mean per answer
_LATENCY_SHARE = 0.9              # of the measured time to the first answer
_LATENCY_NAP_MAX = 1.0
_LATENCY_DECAY = 0.9              # a first answer already there after the nap: maybe the server is nearer now
# Answers handed over early at once, at least: each handing costs the caller a message, and answers
# that trickle in one by one (a server writing each as it is done) would cost one each.
EARLY_ANSWERS = 16


class HttpTransportError(Exception):
    """No complete answer: refused, reset, timed out or malformed. `kind` names which, for logs."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class _ClosedBeforeAnswer(HttpTransportError):
    """The server closed the connection before sending a byte of the answer."""


class Response(NamedTuple):
    status: int
    headers: dict[str, str]       # names in lower case
    body: bytes | bytearray       # a large body stays in the buffer it was read into (no copy);
                                  # empty when it went to a body sink


# Asked with an answer's status and headers; returns where that answer's body goes, piece by
# piece, or None to read it whole into Response.body.
BodySink = Callable[[int, dict[str, str]], Callable[[memoryview | bytes], None] | None]


class Http1Client:
    """Requests to one origin (`base_url`'s scheme, host and port) over a small pool of connections."""

    def __init__(self, base_url: str, *, timeout: float, max_idle: int = 16,
                 ssl_context: ssl.SSLContext | None = None, pipelining: bool = True,
                 trusted_idle_seconds: float = TRUSTED_IDLE_SECONDS, max_body_bytes: int | None = None,
                 proxy: str | None = None) -> None:
        """`timeout`: the deadline of each request (see _DEADLINE_BYTES_PER_SECOND); `max_body_bytes`:
        the largest body read whole (a streamed one, to a body sink, is the sink's to bound);
        `proxy`: a forward proxy's URL (proxy_for() reads it from the environment, as every HTTP
        client does): https goes through a CONNECT tunnel, http as absolute-form requests."""
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
        # Through a proxy, plain http requests name the whole URL (absolute form); https tunnels.
        self._target_prefix = f"http://{self._host_header}" if self._proxy and not self._tls else ""
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        # Off for good once a server (or a proxy before it) answered part of a group and then went
        # silent: `pipeline` then sends one request at a time.
        self.pipelining = pipelining
        # Seconds per answer of the last pipelined groups, by the size class of their requests (a
        # claim's answer comes sooner than a result's), and seconds to their first answer: how long
        # `pipeline` naps before reading.
        self._answer_seconds: dict[int, float] = {}
        self._latency_seconds: dict[int, float] = {}

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
        results: list[Response | HttpTransportError] = []
        told = 0          # answers handed to `progress` so far
        while len(results) < len(messages):
            group = next_group(messages, len(results)) if self.pipelining else len(results) + 1
            try:
                connection, reused = self._take()
            except HttpTransportError as exc:         # refused, or no route: none can be sent
                results += [exc] * (len(messages) - len(results))
                break
            answered = 0
            keep_alive = True
            count = group - len(results)
            payload = b"".join(messages[len(results):group])
            size_class = (len(payload) // count).bit_length()
            try:
                connection.start_deadline()
                connection.send(payload)
                sent_at = time.monotonic()
                latency = self._latency_seconds.get(size_class, 0.0)
                if nap := gather_seconds(self._answer_seconds.get(size_class), count, latency):
                    time.sleep(nap)
                first_at = None
                while len(results) < group and keep_alive:
                    connection.start_deadline()     # each answer of the group has its own
                    connection.expect_answer()
                    response, keep_alive = connection.read_response(method)
                    results.append(response)
                    answered += 1
                    if first_at is None:
                        first_at = time.monotonic()
                    if progress is not None and len(results) - told >= EARLY_ANSWERS \
                            and len(results) < len(messages) and not connection.answer_waiting():
                        progress(results)
                        told = len(results)
            except _ClosedBeforeAnswer as exc:
                # Closed before the next answer: the rest are sent again on a fresh connection
                # (harmless for idempotent requests, even if the server did carry some out),
                # unless this connection was fresh and answered nothing at all.
                connection.close()
                if not answered and not reused:
                    results += [exc] * (len(messages) - len(results))
                continue
            except HttpTransportError as exc:
                connection.close()
                if exc.kind == "Timeout" and answered and self.pipelining:
                    self.pipelining = False
                    log.warning("a server answered part of a group of pipelined requests, then nothing: "
                                "sending one request at a time from now on",
                                extra={"fields": {"server": f"{self._host}:{self._port}"}})
                results += [exc] * (len(messages) - len(results))
                break
            except BaseException:
                connection.close()
                raise
            if answered == count and first_at is not None:
                done_at = time.monotonic()
                waited = first_at - sent_at
                # Only a first answer that came after the nap tells how far the server is.
                latency = running_mean(latency or None, waited, _GATHER_WEIGHT) if waited > nap + 0.001 \
                    else latency * _LATENCY_DECAY
                self._latency_seconds[size_class] = latency
                self._answer_seconds[size_class] = running_mean(
                    self._answer_seconds.get(size_class), max(0.0, done_at - sent_at - latency) / count,
                    _GATHER_WEIGHT)
            if keep_alive:
                self._give_back(connection)
            else:
                connection.close()
        return results

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

    def _tunnel(self, sock: socket.socket) -> None:
        """CONNECT to the origin through the proxy; the TLS handshake then runs inside the tunnel, so
        the proxy sees neither the requests nor the token."""
        lines = [f"CONNECT {self._host}:{self._port} HTTP/1.1", f"Host: {self._host}:{self._port}"]
        if self._proxy.authorization:
            lines.append(f"Proxy-Authorization: {self._proxy.authorization}")
        connection = _Connection(sock, self._timeout, _MAX_HEADER_BYTES)
        try:
            connection.start_deadline()
            connection.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            status, _, _ = connection.read_tunnel_answer()
        except HttpTransportError:
            sock.close()
            raise
        if status != 200:
            sock.close()
            raise HttpTransportError("ProxyError", f"the proxy refused the tunnel to {self._host}:{self._port}: "
                                                   f"{status}")

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
            self._tunnel(sock)
        if self._ssl_context is not None:
            try:
                sock = self._ssl_context.wrap_socket(sock, server_hostname=self._host)
            except (OSError, ssl.SSLError) as exc:
                sock.close()
                raise HttpTransportError("TLSError", str(exc)[:200]) from None
        return _Connection(sock, self._timeout, self._max_body_bytes)


class _Proxy(NamedTuple):
    host: str
    port: int
    authorization: str | None       # Basic credentials from the proxy URL's userinfo


def _parse_proxy(url: str) -> _Proxy:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"an http:// forward proxy, not {url!r}")
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(credentials).decode()
    return _Proxy(parts.hostname, parts.port or 80, authorization)


def proxy_for(base_url: str, environ=None) -> str | None:
    """The forward proxy the environment names for `base_url` (HTTPS_PROXY or HTTP_PROXY, upper or
    lower case), or None where NO_PROXY excludes its host, as curl and requests read them."""
    environ = os.environ if environ is None else environ
    parts = urlsplit(base_url)
    proxies = {name.lower(): value for name, value in environ.items()
               if name.lower() in ("http_proxy", "https_proxy", "no_proxy") and value}
    proxy = proxies.get(f"{parts.scheme}_proxy")
    if not proxy:
        return None
    no_proxy = proxies.get("no_proxy", "")
    if no_proxy and proxy_bypass_environment(parts.hostname or "", {"no": no_proxy}):
        return None
    return proxy


# Output of one decompression step: a small compressed piece of a hostile answer can expand a
# thousandfold, so output is taken a bounded piece at a time.
_INFLATE_BYTES = 1024 * 1024


def _decoder_for(content_encoding: str):
    """A zlib decompressor for gzip or deflate (zlib-wrapped) bodies; None for identity."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(32 + zlib.MAX_WBITS)     # gzip or zlib header, detected
    raise HttpTransportError("ProtocolError", f"an answer in an encoding not asked for: {encoding[:20]!r}")


def _decompressing(sink: Callable[[memoryview | bytes], None], decoder) -> Callable[[memoryview | bytes], None]:
    """A sink that inflates what it is given, a bounded piece at a time, into `sink`."""
    def feed(data: memoryview | bytes) -> None:
        try:
            while data:
                out = decoder.decompress(data, _INFLATE_BYTES)
                if out:
                    sink(out)
                data = decoder.unconsumed_tail
        except zlib.error as exc:
            raise HttpTransportError("ProtocolError", f"a compressed answer that does not inflate: {exc}") from None
    return feed


def _decompressed(body: bytes | bytearray, decoder, cap: int | None) -> bytes:
    parts, size, data = [], 0, bytes(body)
    try:
        while data:
            out = decoder.decompress(data, _INFLATE_BYTES)
            size += len(out)
            if cap is not None and size > cap:
                raise HttpTransportError("TooLarge", f"an answer that inflates past the {cap} bytes allowed")
            parts.append(out)
            data = decoder.unconsumed_tail
    except zlib.error as exc:
        raise HttpTransportError("ProtocolError", f"a compressed answer that does not inflate: {exc}") from None
    return b"".join(parts)


def gather_seconds(seconds_per_answer: float | None, count: int, latency: float = 0.0) -> float:
    """How long to nap before reading the answers to `count` pipelined requests, when such answers
    took `seconds_per_answer` each last time (None: no idea yet, so no nap), after `latency`
    seconds before the first."""
    if seconds_per_answer is None or count < 2:
        return 0.0
    nap = min(_LATENCY_NAP_MAX, _LATENCY_SHARE * latency) + \
        min(GATHER_MAX_SECONDS, _GATHER_SHARE * seconds_per_answer * (count - 1))
    return nap if nap >= _GATHER_MIN_SECONDS else 0.0


def _ready(sock: socket.socket, timeout: float | None, *, writing: bool) -> tuple[bool, bool]:
    """(readable, writable) as soon as the socket has something to read (a closed or broken one
    counts) or, `writing`, takes more; (False, False) after `timeout` seconds."""
    if hasattr(select, "poll"):           # select() fails on descriptors above 1023
        poller = select.poll()
        poller.register(sock, select.POLLIN | (select.POLLOUT if writing else 0))
        events = poller.poll(None if timeout is None else timeout * 1000)
        mask = events[0][1] if events else 0
        return bool(mask & (select.POLLIN | select.POLLHUP | select.POLLERR)), bool(mask & select.POLLOUT)
    read, write, broken = select.select([sock], [sock] if writing else [], [sock], timeout)
    return bool(read or broken), bool(write)


def next_group(messages: list[bytes], start: int) -> int:
    """Where the group of pipelined requests that begins at `start` ends: at most
    PIPELINE_GROUP_BYTES, or one request."""
    end, size = start, 0
    while end < len(messages) and (end == start or size + len(messages[end]) <= PIPELINE_GROUP_BYTES):
        size += len(messages[end])
        end += 1
    return end


class _Partial:
    """The answer httptools is parsing now."""

    __slots__ = ("status", "version", "headers", "head_done", "head_left", "until_close", "both_framings",
                 "sink", "decoder", "received", "body")

    def __init__(self) -> None:
        self.status, self.version, self.headers = 0, "", {}
        self.head_done = self.until_close = self.both_framings = False
        self.head_left = _MAX_HEADER_BYTES
        self.sink: Callable[[memoryview | bytes], None] | None = None
        self.decoder = None
        self.received = 0
        self.body = bytearray()


class _Connection:
    """One socket, its parser (httptools: llhttp, as in Node and uvicorn) and the answers parsed
    ahead of being asked for (pipelined ones arrive together)."""

    def __init__(self, sock: socket.socket, timeout: float | None = None, max_body_bytes: int | None = None) -> None:
        self._sock = sock
        self._timeout = timeout
        self._max_body_bytes = max_body_bytes
        self._deadline: float | None = None      # when the current request must have its answer
        self._buffer = bytearray()
        self._scratch = memoryview(bytearray(_FILL_BYTES))
        self._received_any = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        # Transfer-Encoding with Content-Length: llhttp would refuse the answer; it is read by its
        # chunks instead, and the connection closed after it (answer.both_framings).
        self._parser.set_dangerous_leniencies(lenient_chunked_length=True)
        self._answers: deque[tuple[Response, bool]] = deque()   # parsed, not yet asked for
        self._partial: _Partial | None = None
        self._sink_factory: BodySink | None = None
        self._tunnel_answer = False
        self._callback_error: BaseException | None = None

    def looks_open(self) -> bool:
        """An idle connection with something to read has been closed (or broken) by the server."""
        if self._buffer or self._answers or self._partial is not None:
            return False
        try:
            readable, _ = _ready(self._sock, 0, writing=False)
        except (OSError, ValueError):
            return False
        return not readable

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        """Send all of `data`, reading whatever the server answers meanwhile into the buffer.
        A server may stop reading requests until its answers are read (one that writes them
        blocking, as Python's http.server does), and a group of pipelined requests can be larger
        than the sockets' buffers: writing it all before reading could then wait forever on both
        sides. The usual case is one send, as with sendall: the buffers take the whole group."""
        self._received_any = False
        if isinstance(self._sock, ssl.SSLSocket):
            return self._send_tls(memoryview(data))
        view, sent = memoryview(data), 0
        try:
            sent = self._sock.send(view)
            while sent < len(view):
                writable, closed = self._wait_writable_reading()
                if closed:        # the rest can never be sent: what was answered is read as usual
                    return
                if writable:
                    sent += self._sock.send(view[sent:])
        except TimeoutError:
            raise HttpTransportError("Timeout", "sending the request") from None
        except OSError as exc:
            if self._buffer:      # answers came before the error: they are read, the rest retried
                return
            raise _ClosedBeforeAnswer("ConnectionError", f"sending the request: {type(exc).__name__}") from None

    def _send_tls(self, view: memoryview) -> None:
        """`send` over TLS. An SSLSocket with a timeout writes all or times out, so the socket is
        made non-blocking while a group goes out, a TLS record's worth at a time; what the server
        answers meanwhile is read. After a WANT_WRITE the same bytes are offered again, as
        OpenSSL requires."""
        sock, timeout, sent = self._sock, self._sock.gettimeout(), 0
        deadline = None if timeout is None else time.monotonic() + timeout
        sock.setblocking(False)
        try:
            while sent < len(view):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise HttpTransportError("Timeout", "sending the request")
                readable, writable = _ready(sock, left, writing=True)
                if readable:
                    try:
                        count = sock.recv_into(self._scratch)
                    except ssl.SSLWantReadError:
                        count = -1                      # a record not yet whole: read later
                    if count == 0:
                        return                          # closed: what was answered is read as usual
                    if count > 0:
                        self._buffer += self._scratch[:count]
                if writable:
                    try:
                        sent += sock.send(view[sent:sent + _TLS_RECORD_BYTES])
                    except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                        pass
        except OSError as exc:
            if self._buffer:
                return
            raise _ClosedBeforeAnswer("ConnectionError", f"sending the request: {type(exc).__name__}") from None
        finally:
            try:
                sock.settimeout(timeout)
            except OSError:
                pass

    def _wait_writable_reading(self) -> tuple[bool, bool]:
        """Wait until the socket takes more or has something to read, and read that. Returns
        (writable, closed by the server)."""
        readable, writable = _ready(self._sock, self._sock.gettimeout(), writing=True)
        if not (readable or writable):
            raise TimeoutError
        if readable:
            count = self._sock.recv_into(self._scratch)
            if not count:
                return False, True
            self._buffer += self._scratch[:count]
        return writable, False

    def start_deadline(self) -> None:
        """A request starts now: its answer must be complete within the timeout (plus a second per
        _DEADLINE_BYTES_PER_SECOND bytes received)."""
        if self._timeout is not None:
            self._deadline = time.monotonic() + self._timeout
            self._sock.settimeout(self._timeout)     # for sending; each read then waits what is left

    def _arm(self) -> None:
        """Before a read: wait at most until the deadline."""
        if self._deadline is None:
            return
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise HttpTransportError("Timeout", "no complete answer within the request's deadline")
        self._sock.settimeout(left)

    def _received(self, count: int) -> None:
        self._received_any = True
        if self._deadline is not None:
            self._deadline += count / _DEADLINE_BYTES_PER_SECOND

    def _check_size(self, size: int) -> None:
        if self._max_body_bytes is not None and size > self._max_body_bytes:
            raise HttpTransportError("TooLarge", f"an answer of {size} bytes or more, over the "
                                                 f"{self._max_body_bytes} allowed")

    def answer_waiting(self) -> bool:
        """Whether the next answer can be read without waiting for the server."""
        return bool(self._answers or self._buffer)

    def expect_answer(self) -> None:
        """The next bytes read begin a new answer (a pipelined one may already be buffered)."""
        self._received_any = self.answer_waiting() or self._partial is not None

    def read_response(self, method: str, body_sink: BodySink | None = None) -> tuple[Response, bool]:
        """The next answer on this connection and whether the connection may be used again. With
        `body_sink`, the body of a 200 (or whatever the sink factory accepts) goes to the sink as
        it arrives instead of into the Response."""
        if method == "HEAD":
            raise ValueError("HEAD is not supported: its answer's length describes a body never sent")
        self._sink_factory = body_sink
        try:
            while not self._answers:
                self._feed_buffered() or self._fill_and_feed()
        finally:
            self._sink_factory = None
        response, keep_alive = self._answers.popleft()
        if body_sink is not None and response.body and (sink := body_sink(response.status, response.headers)):
            sink(response.body)        # parsed before it was asked for (pipelined): handed over whole
            response = Response(response.status, response.headers, b"")
        return response, keep_alive

    def read_tunnel_answer(self) -> tuple[int, str, dict[str, str]]:
        """A proxy's answer to CONNECT: its head only (a 200 has no body; nothing may follow it)."""
        self._tunnel_answer = True
        while self._partial is None or not self._partial.head_done:
            self._feed_buffered() or self._fill_and_feed()
        answer = self._partial
        if answer.received or self._buffer or self._answers and answer.status == 200:
            raise HttpTransportError("ProxyError", "the proxy sent bytes after its answer to CONNECT")
        return answer.status, answer.version, answer.headers

    # --- httptools (llhttp) parses; these are its callbacks and what feeds it ---

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._answers and self._answers[-1][0].status == 101:
                # Switching protocols, which nothing here asked for (llhttp stops there): what
                # follows is not HTTP/1.1, so the connection can never go back to the pool.
                self._answers.append((self._answers.pop()[0], False))
                return
            self._raise_parse_error(exc)

    def _raise_parse_error(self, exc: Exception) -> None:
        if isinstance(exc, httptools.HttpParserCallbackError):
            error, self._callback_error = self._callback_error, None
            if error is not None:
                raise error from None
            raise HttpTransportError("ProtocolError", "the answer could not be read") from None
        reason = str(exc)
        if "whitespace after header value" in reason:
            # An obsolete folded line (RFC 9112 5.2): refused, as a value split across lines is a way
            # to smuggle one header past a proxy that reads it differently.
            reason = "a folded header line"
        raise HttpTransportError("ProtocolError", f"a malformed answer: {reason}"[:200]) from None

    def _feed_buffered(self) -> bool:
        """Feed what was read while a request was being sent; False when there was nothing."""
        if not self._buffer:
            return False
        data, self._buffer = bytes(self._buffer), bytearray()
        self._feed(data)
        return True

    def _fill_and_feed(self) -> None:
        try:
            count = self._receive()
        except HttpTransportError as exc:
            answer = self._partial
            if exc.kind == "Closed" and answer is not None and answer.head_done and answer.until_close:
                self._complete(answer, keep_alive=False)      # a body that ends where the connection does
                return
            raise
        self._feed(self._scratch[:count])

    def _fail_in_callback(self, error: BaseException) -> None:
        """httptools wraps whatever a callback raises; _feed raises the original instead."""
        self._callback_error = error
        raise error

    def on_message_begin(self) -> None:
        self._partial = _Partial()

    def on_status(self, status: bytes) -> None:
        self._count_head(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        answer = self._count_head(len(name) + len(value))
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers = answer.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        answer = self._partial
        answer.head_done = True
        answer.status = self._parser.get_status_code()
        answer.version = f"HTTP/{self._parser.get_http_version()}"
        headers = answer.headers
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        # Both framings: the chunks are read, and the connection is not trusted again.
        answer.both_framings = chunked and "content-length" in headers
        answer.until_close = not chunked and "content-length" not in headers and answer.status not in (204, 304) \
            and not 100 <= answer.status < 200
        if self._tunnel_answer or 100 <= answer.status < 200:
            return
        if self._sink_factory is not None and not self._answers:     # the answer asked for, not one after it
            try:
                answer.sink = self._sink_factory(answer.status, headers)
            except BaseException as exc:  # noqa: BLE001 - re-raised by _feed as it was
                self._fail_in_callback(exc)
        try:
            answer.decoder = _decoder_for(headers.get("content-encoding", ""))
        except HttpTransportError as exc:
            self._fail_in_callback(exc)
        if answer.decoder is not None and answer.sink is not None:
            answer.sink = _decompressing(answer.sink, answer.decoder)
        if answer.sink is None and "content-length" in headers:
            try:
                self._check_size(int(headers["content-length"]))   # before anything is read for it
            except ValueError:
                pass          # llhttp has refused it already
            except HttpTransportError as exc:
                self._fail_in_callback(exc)

    def on_body(self, body: bytes) -> None:
        answer = self._partial
        answer.received += len(body)
        if answer.sink is not None:
            try:
                answer.sink(body)
            except BaseException as exc:  # the sink's own error reaches the caller as it was raised
                self._fail_in_callback(exc)
            return
        try:
            self._check_size(answer.received)
        except HttpTransportError as exc:
            self._fail_in_callback(exc)
        answer.body += body

    def on_message_complete(self) -> None:
        answer = self._partial
        if self._tunnel_answer:
            return
        if 100 <= answer.status < 200 and answer.status != 101:
            self._partial = None          # informational: the real answer follows
            return
        try:
            self._complete(answer, self._parser.should_keep_alive() and not answer.both_framings)
        except BaseException as exc:  # noqa: BLE001 - re-raised by _feed as it was
            self._fail_in_callback(exc)

    def _complete(self, answer: _Partial, keep_alive: bool) -> None:
        body: bytes | bytearray = answer.body
        if answer.decoder is not None and answer.sink is None:
            body = _decompressed(body, answer.decoder, self._max_body_bytes)
        self._answers.append((Response(answer.status, answer.headers, body), keep_alive))
        self._partial = None

    def _count_head(self, size: int) -> _Partial:
        answer = self._partial
        answer.head_left -= size
        if answer.head_left < 0:
            self._fail_in_callback(HttpTransportError("ProtocolError", "answer headers too long"))
        return answer

    def _receive(self) -> int:
        """Read what has come into the scratch buffer (waiting at most until the deadline)."""
        self._arm()
        try:
            count = self._sock.recv_into(self._scratch)
        except TimeoutError:
            raise HttpTransportError("Timeout", "waiting for the answer") from None
        except OSError as exc:
            error = HttpTransportError if self._received_any else _ClosedBeforeAnswer
            raise error("ConnectionError", f"reading the answer: {type(exc).__name__}") from None
        if not count:
            if not self._received_any:
                raise _ClosedBeforeAnswer("ConnectionError", "closed before answering")
            raise HttpTransportError("Closed", "closed in the middle of the answer")
        self._received(count)
        return count

