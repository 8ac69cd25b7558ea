"""Sample tasks for the sandbox: well-formed ones plus the malformed and foreign ones a real queue holds."""

from __future__ import annotations

import random

_WORDS = ("verification request for the invoice of march", "address changed after the onboarding call",
          "customer reports a duplicate payment", "passport scan is blurred on page two",
          "utility bill older than three months", "name differs from the bank statement",
          "héllo wörld ✓ 你好 مرحبا", "an emoji 🚀 and a quote \" in the text")


def object_id(index: int, prefix: int = 0x68B89107) -> str:
    """A deterministic, valid 24-hex-character ObjectId."""
    return f"{prefix:08x}{index:016x}"


def embedding_task(task_id: str, text: object, model: object = "nomic-embed-text", **extra) -> dict:
    return {"_id": task_id, "type": "text_embedding", "state": "pending",
            "content": {"text": text, "model": model},
            "callbackRoute": "verification_update_embedding",
            "callbackParams": {"targetId": task_id, "field": "embedding"},
            "createdAt": "2024-01-01T00:00:00.000Z", "updatedAt": "2024-01-01T00:00:00.000Z", "__v": 0, **extra}


def generated_tasks(count: int, *, seed: int = 7, models: tuple[str, ...] = ("nomic-embed-text",),
                    start: int = 0) -> list[dict]:
    """`count` well-formed text_embedding tasks with varied texts."""
    rng = random.Random(seed)
    return [embedding_task(object_id(start + i), f"{rng.choice(_WORDS)} #{start + i}", models[i % len(models)])
            for i in range(count)]


def hostile_tasks(start: int, max_text_chars: int = 1_000_000) -> list[dict]:
    """What a real pending list may hold besides good tasks; keyed by what each one tests."""
    ids = iter(object_id(start + i, prefix=0x0BADBAD0) for i in range(100))
    return [
        # malformed text_embedding tasks: reported failed, with the reason logged
        {"_id": next(ids), "type": "text_embedding", "state": "pending", "content": {"model": "nomic-embed-text"}},
        embedding_task(next(ids), ""),
        embedding_task(next(ids), 12345),
        embedding_task(next(ids), "no model given", model=""),
        embedding_task(next(ids), "x" * (max_text_chars + 1)),
        {"_id": next(ids), "type": "text_embedding", "state": "pending", "content": "not an object"},
        # types this service does not handle: left pending for a newer worker
        {"_id": next(ids), "type": "defining_topics", "state": "pending", "content": {"text": "topics"}},
        {"_id": next(ids), "type": "identifying_data", "state": "pending", "content": {"text": "who"}},
        # ids that must never reach a URL: left alone
        embedding_task("../../etc/passwd", "hostile id"),
        embedding_task("68b89107952364b0aad89c1d%2F", "hostile id"),
        embedding_task("68b89107952364b0aad89c1dA", "25 characters"),
    ]


def demo_tasks(count: int = 200) -> list[dict]:
    """The demo's queue: `count` good tasks with the hostile ones shuffled in."""
    tasks = generated_tasks(count) + hostile_tasks(count)
    random.Random(3).shuffle(tasks)
    return tasks
