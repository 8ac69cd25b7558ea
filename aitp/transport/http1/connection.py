"""One kept-alive socket: sending (reading while it sends), deadlines, and answers read by httptools."""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections import deque
from typing import Callable

import httptools

from aitp.transport.http1.decoders import _decoder_for, _decompressed, _decompressing
from aitp.transport.http1.errors import HttpTransportError, _ClosedBeforeAnswer
from aitp.transport.http1.response import BodySink, Response

_MAX_HEADER_BYTES = 64 * 1024
# A request must be answered within its timeout, plus one second for every this many bytes of
# answer that arrived: a large pending list on a slow link still arrives, a server that drips a
# byte at a time does not hold the request past about its timeout.
_DEADLINE_BYTES_PER_SECOND = 64 * 1024
# Each connection reads answers through one reused buffer of this size: `recv(n)` would allocate
# n bytes and shrink them for every read, and above glibc's mmap threshold (128 kB) that is three
# extra system calls (mmap, mremap, munmap) per read, about a third of a pipelined PATCH's CPU.
_FILL_BYTES = 64 * 1024
_TLS_RECORD_BYTES = 16 * 1024     # the most one TLS record carries: what a non-blocking send offers at once


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

