"""A transport for the OpenAI SDK's HTTP client that bounds an answer: its size, and its total time.

httpx (which the SDK uses; `httpx2` in its newer releases) applies its read timeout to each read, so
a server that drips a byte at a time could hold a call for as long as it liked, and it reads any
answer whole, however large. This wraps the SDK's own transport: an answer whose Content-Length is
over the cap is refused before its body is read, and the body's bytes are counted as they arrive.
The deadline is the same rule as aitp/transport/http1/'s: the timeout, plus a second per 64 kB.
"""

from __future__ import annotations

import time

try:                      # the SDK's HTTP library: httpx2 in newer releases, httpx before
    import httpx2 as httpx
except ImportError:       # pragma: no cover - depends on the installed SDK
    import httpx

_DEADLINE_BYTES_PER_SECOND = 64 * 1024


def capped_inner_transport(ssl_context, proxy: str | None = None) -> httpx.BaseTransport:
    """The SDK's own kind of transport, with aitp's TLS policy (aitp/transport/tls.py) and the proxy
    the environment names (a transport of one's own does not read it, as a client would)."""
    return httpx.HTTPTransport(verify=ssl_context, proxy=proxy)


class CappedTransport(httpx.BaseTransport):
    def __init__(self, max_bytes: int, timeout: float, inner: httpx.BaseTransport | None = None) -> None:
        self._inner = inner or httpx.HTTPTransport()
        self._max_bytes, self._timeout = max_bytes, timeout

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        response = self._inner.handle_request(request)
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self._max_bytes:
            response.close()
            raise httpx.ReadError(f"an answer of {length} bytes, over the {self._max_bytes} allowed", request=request)
        stream = _CappedStream(response.stream, request, self._max_bytes, started + self._timeout)
        return httpx.Response(response.status_code, headers=response.headers, stream=stream,
                              extensions=response.extensions, request=request)

    def close(self) -> None:
        self._inner.close()


class _CappedStream(httpx.SyncByteStream):
    def __init__(self, inner, request: httpx.Request, max_bytes: int, deadline: float) -> None:
        self._inner, self._request = inner, request
        self._max_bytes, self._deadline = max_bytes, deadline

    def __iter__(self):
        received = 0
        for chunk in self._inner:
            received += len(chunk)
            if received > self._max_bytes:
                raise httpx.ReadError(f"an answer of more than {self._max_bytes} bytes", request=self._request)
            if time.monotonic() > self._deadline + received / _DEADLINE_BYTES_PER_SECOND:
                raise httpx.ReadTimeout("no complete answer within the request's deadline", request=self._request)
            yield chunk

    def close(self) -> None:
        self._inner.close()
