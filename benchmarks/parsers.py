"""CPU per answer: aitp's HTTP/1.1 response reader (aitp/transport/http1/connection.py) against bare httptools
(llhttp, the parser of Node and uvicorn), on the answers a task actually gets. Since issue 20 aitp's
reader is httptools with aitp's callbacks, so the difference is what those cost; run it from an
older checkout (before "http1: answers parsed by httptools") to compare with the hand-written
reader, as benchmarks/README.md records.

Run from the repository root: python3 benchmarks/parsers.py [--answers 20000]

It captures real answers from the sandbox task API (a claim's and a result's PATCH, pipelined in
groups as aitp sends them), then replays the same bytes through a socket pair to each reader, in
the reading thread, timing that thread's CPU. Both pay the same recv() calls; what differs is the
parsing and the building of a response (status, lower-cased headers, body) that aitp uses.

h11 is not measured: its client refuses a second request before the first answer is complete (no
pipelining), and pipelining is why aitp has its own client (benchmarks/README.md).
It prints numbers and asserts nothing. httptools must be installed (pip install httptools).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aitp.sandbox import SandboxServer  # noqa: E402
from aitp.sandbox.seed import generated_tasks, object_id  # noqa: E402
from aitp.transport.http1 import Response  # noqa: E402
from aitp.transport.http1.connection import _Connection  # noqa: E402 - the reader itself, not the pool

GROUP = 15          # a batch's results go as one pipelined group


def captured_answers(count: int) -> bytes:
    """The raw bytes the sandbox answers to `count` PATCHes: claims, then results with a vector."""
    server = SandboxServer(generated_tasks(count))
    server.start()
    try:
        host, port = server.url.removeprefix("http://").split(":")
        vector = "[" + ",".join(["0.036"] * 768) + "]"
        bodies = [b'{"state":"in_progress"}'] * count + \
                 [f'{{"state":"succeeded","result":{vector}}}'.encode()] * count
        ids = [object_id(i) for i in range(count)] * 2
        requests = [(f"PATCH /api/ai-tasks/{task_id} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"X-Api-Request: true\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
                    for task_id, body in zip(ids, bodies)]
        with socket.create_connection((host, int(port))) as sock:
            connection = _Connection(sock, timeout=30)
            raw = bytearray()
            for start in range(0, len(requests), GROUP):
                group = requests[start:start + GROUP]
                sock.sendall(b"".join(group))
                for _ in group:
                    before = len(raw)
                    connection.expect_answer()
                    response, _ = connection.read_response("PATCH")
                    assert response.status == 200, response.body[:200]
                    raw += _serialise(response)
                    assert len(raw) > before
            return bytes(raw)
    finally:
        server.stop()


def _serialise(response: Response) -> bytes:
    head = "".join(f"{name}: {value}\r\n" for name, value in response.headers.items()
                   if name not in ("transfer-encoding", "content-length"))
    return (f"HTTP/1.1 {response.status} X\r\n{head}content-length: {len(response.body)}\r\n\r\n").encode() \
        + bytes(response.body)


def _replay(raw: bytes, answers: int, read_all) -> float:
    """CPU seconds the reading thread spends on `answers` answers fed through a socket pair."""
    reader, writer = socket.socketpair()
    reader.settimeout(30)
    threading.Thread(target=lambda: (writer.sendall(raw), writer.close()), daemon=True).start()
    started = time.thread_time()
    got = read_all(reader, answers)
    spent = time.thread_time() - started
    reader.close()
    assert got == answers, (got, answers)
    return spent


def read_with_http1(sock: socket.socket, answers: int) -> int:
    connection = _Connection(sock, timeout=30)
    for _ in range(answers):
        connection.start_deadline()
        connection.expect_answer()
        response, _ = connection.read_response("PATCH")
    return answers


def read_with_httptools(sock: socket.socket, answers: int) -> int:
    import httptools

    done: list[Response] = []

    class Answer:
        """httptools' callbacks, building what aitp's reader returns."""

        def __init__(self) -> None:
            self.headers: dict[str, str] = {}
            self.body = bytearray()

        def on_header(self, name: bytes, value: bytes) -> None:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            done.append(Response(parser.get_status_code(), self.headers, bytes(self.body)))
            self.headers, self.body = {}, bytearray()

    parser = httptools.HttpResponseParser(Answer())
    buffer = bytearray(256 * 1024)
    view = memoryview(buffer)
    while len(done) < answers:
        count = sock.recv_into(view)
        if not count:
            break
        parser.feed_data(view[:count])
    return len(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks whose claim and result answers are captured")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    try:
        import httptools
    except ImportError:
        raise SystemExit("httptools is not installed: pip install httptools") from None
    raw = captured_answers(args.tasks)
    answers = 2 * args.tasks
    print(f"Python {sys.version.split()[0]}, httptools {httptools.__version__}; {answers} answers, "
          f"{len(raw) / answers:.0f} bytes each on average", flush=True)
    results: dict[str, list[float]] = {"aitp http1": [], "httptools": []}
    for _ in range(args.repeat):      # alternated, so that a slow spell of the machine hits both
        results["aitp http1"].append(_replay(raw, answers, read_with_http1) / answers)
        results["httptools"].append(_replay(raw, answers, read_with_httptools) / answers)
    for name, seconds in results.items():
        print(f"{name:12} {statistics.median(seconds) * 1e6:6.1f} µs per answer (median of {args.repeat}; "
              f"{min(seconds) * 1e6:.1f} to {max(seconds) * 1e6:.1f})", flush=True)
    difference = statistics.median(results["httptools"]) - statistics.median(results["aitp http1"])
    print(f"per task (two answers): httptools {'+' if difference >= 0 else ''}{2 * difference * 1e6:.1f} µs "
          f"against aitp's reader", flush=True)


if __name__ == "__main__":
    main()
