"""What crosses between the service and its vector worker processes, as msgspec structs.

Kept apart from aitp/vectors.py so that the service process never imports numpy: only the
workers do the vector work (numpy costs about 15 MB and 0.1 s of start-up per process).
"""

from __future__ import annotations

import msgspec


class VectorJob(msgspec.Struct, frozen=True):
    decoder: str                 # key of DECODERS: how to read `payload`
    payload: bytes               # the provider's raw response (or the mock's recipe)
    model: str
    task_ids: list[str]
    dimension: int | None        # the model's pinned dimension; None pins it to the first vector
    max_body_bytes: int


class TaskVector(msgspec.Struct, frozen=True):
    task_id: str
    body: bytes | None           # the PATCH body, or None when this task failed
    error: str | None = None


class VectorJobResult(msgspec.Struct, frozen=True):
    results: list[TaskVector]
    dimension: int
    seconds: float               # CPU-side time in the worker, recorded by the parent


class MockRecipe(msgspec.Struct, frozen=True):
    model: str
    texts: list[str]
    dimension: int
