"""A small HTTP/1.1 client for the task API: kept-alive connections, pipelining, no redirects, no retries.

Why not urllib3 or requests: every task costs two PATCHes, and on loopback a request costs about
300 µs of client CPU with urllib3 (700 µs with requests) against about 100 µs here, and neither
pipelines, which keeps a far API busy (benchmarks/README.md). Answers are parsed by httptools
(llhttp, the parser of Node and uvicorn), which took less CPU per answer than the hand-written
reader it replaced (benchmarks/parsers.py); this package keeps the connections, the pipelining and
the policy: TLS with certificate checks, proxies, 1xx answers skipped, folded header lines refused,
`Transfer-Encoding` with `Content-Length` read by its chunks and the connection closed after it, a
101 never pooled, a total deadline per request (not per read: a server dripping a byte a second
cannot hold a request), an optional cap on a body read whole (checked before anything is
allocated for it), gzip and deflate inflated in bounded pieces, and one quiet reconnect when a
kept-alive connection turns out to have been closed by the server before it answered.

One module per concern: `client` (the pool: take, give back, connect, request), `connection` (one
socket, its deadlines and its httptools reader), `pipelining` (groups of requests and when to read
their answers), `proxy`, `decoders` (gzip and deflate), `response` and `errors`.
"""

from aitp.transport.http1.client import TRUSTED_IDLE_SECONDS, Http1Client
from aitp.transport.http1.errors import HttpTransportError
from aitp.transport.http1.pipelining import (EARLY_ANSWERS, GATHER_MAX_SECONDS, PIPELINE_GROUP_BYTES,
                                             gather_seconds, next_group)
from aitp.transport.http1.proxy import proxy_for
from aitp.transport.http1.response import BodySink, Response

__all__ = [
    "BodySink",
    "EARLY_ANSWERS",
    "GATHER_MAX_SECONDS",
    "Http1Client",
    "HttpTransportError",
    "PIPELINE_GROUP_BYTES",
    "Response",
    "TRUSTED_IDLE_SECONDS",
    "gather_seconds",
    "next_group",
    "proxy_for",
]
