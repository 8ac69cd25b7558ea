"""The ceiling to compare aitp with: the least a processor must do against the same peers.

Poll, claim each task, one embed call per batch of 16, PATCH each normalised result; a few threads
so that the provider always has the next batch. No journal, no actors, no retries, no checks
beyond normalising. Run by benchmarks/drain.py:  python3 benchmarks/minimal_loop.py API_URL OLLAMA_URL
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import msgspec
import numpy as np
import urllib3

BATCH, THREADS, TAKE = 16, 4, 256


def main(api: str, ollama: str) -> None:
    http = urllib3.PoolManager(maxsize=32, retries=False)   # the leanest client aitp uses too
    claimed: set[str] = set()

    def patch(task_id: str, body: bytes) -> None:
        http.request("PATCH", f"{api}/api/ai-tasks/{task_id}", body=body,
                     headers={"Content-Type": "application/json"}, timeout=30)

    def work(batch: list[dict], claims: ThreadPoolExecutor) -> None:
        list(claims.map(lambda t: patch(t["_id"], b'{"state":"in_progress"}'), batch))
        answer = http.request("POST", f"{ollama}/api/embed", timeout=60, body=msgspec.json.encode(
            {"model": batch[0]["content"]["model"], "input": [t["content"]["text"] for t in batch]}))
        vectors = np.asarray(msgspec.json.decode(answer.data)["embeddings"], dtype=np.float64)
        vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
        bodies = [b'{"state":"succeeded","result":[' + ",".join(map(str, v)).encode() + b"]}" for v in vectors]
        list(claims.map(lambda pair: patch(pair[0]["_id"], pair[1]), zip(batch, bodies)))

    outstanding: list = []
    with ThreadPoolExecutor(THREADS) as workers, ThreadPoolExecutor(16) as claims:
        while True:
            pending = msgspec.json.decode(http.request("GET", f"{api}/api/ai-tasks/pending", timeout=60).data)
            fresh = [t for t in pending if t["_id"] not in claimed][:TAKE]
            if not fresh and not outstanding:
                return
            claimed.update(t["_id"] for t in fresh)
            outstanding += [workers.submit(work, fresh[i:i + BATCH], claims) for i in range(0, len(fresh), BATCH)]
            # Poll again once half the work in hand is done, so the provider never waits for a poll.
            half = max(1, len(outstanding) // 2)
            for future in outstanding[:half]:
                future.result()
            outstanding = outstanding[half:]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
