"""The ceiling to compare aitp with: the least a processor must do against the same peers.

Poll, claim each task, one embed call per batch of 15, PATCH each result; a few threads so that
the provider always has the next batch. No journal, no actors, no process workers, no retries, no
checks: Ollama's rows (already unit float32 text) are cut out of its answer and sent as written,
as aitp sends them. It uses aitp's own HTTP client, with a batch's PATCHes pipelined, so that it
stays the ceiling of the machine. Run by benchmarks/drain.py:  python3 benchmarks/minimal_loop.py API_URL OLLAMA_URL
"""

from __future__ import annotations

import sys
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aitp.transport.http1 import Http1Client  # noqa: E402

BATCH, THREADS, TAKE = 15, 4, 256     # aitp's default batch size


class _Rows(msgspec.Struct):
    embeddings: list[msgspec.Raw]


def main(api: str, ollama: str) -> None:
    task_api = Http1Client(api, timeout=60, max_idle=32)
    provider = Http1Client(ollama, timeout=60, max_idle=8)
    json_headers = {"Content-Type": "application/json"}
    claimed: set[str] = set()

    def patch_each(batch: list[dict], bodies: list[bytes]) -> None:
        task_api.pipeline("PATCH", [(f"/api/ai-tasks/{t['_id']}", json_headers, body)
                                    for t, body in zip(batch, bodies)])

    def work(batch: list[dict]) -> None:
        patch_each(batch, [b'{"state":"in_progress"}'] * len(batch))
        answer = provider.request("POST", "/api/embed", json_headers, msgspec.json.encode(
            {"model": batch[0]["content"]["model"], "input": [t["content"]["text"] for t in batch]}))
        rows = msgspec.json.decode(answer.body, type=_Rows).embeddings
        patch_each(batch, [b'{"state":"succeeded","result":' + bytes(row) + b"}" for row in rows])

    outstanding: list = []
    with ThreadPoolExecutor(THREADS) as workers:
        while True:
            pending = msgspec.json.decode(task_api.request("GET", "/api/ai-tasks/pending", {}).body)
            fresh = [t for t in pending if t["_id"] not in claimed][:TAKE]
            if not fresh and not outstanding:
                return
            claimed.update(t["_id"] for t in fresh)
            outstanding += [workers.submit(work, fresh[i:i + BATCH]) for i in range(0, len(fresh), BATCH)]
            # Poll again once half the work in hand is done, so the provider never waits for a poll.
            half = max(1, len(outstanding) // 2)
            for future in outstanding[:half]:
                future.result()
            outstanding = outstanding[half:]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
