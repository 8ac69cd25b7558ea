"""What crosses between the service and its vector worker processes, as msgspec structs.

Kept apart from aitp/vectors/checks.py so that the service process never imports numpy: only the
workers do the vector work (numpy costs about 15 MB and 0.1 s of start-up per process), unless
workers.process_workers = 0 runs it in the service (aitp/vectors/pool.py).
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


SUCCESS_PREFIX = b'{"state":"succeeded","result":'
SUCCESS_SUFFIX = b"}"


class TaskVector(msgspec.Struct, frozen=True):
    task_id: str
    body: bytes | None           # the PATCH body, or None when this task failed
    error: str | None = None
    # From a worker, in place of a body that is a row of the job's payload as the provider wrote
    # it: where that row lies. The parent holds the payload, so a batch's vectors cross the pipe
    # once, not twice; with_bodies() makes the bodies.
    row: tuple[int, int] | None = None


class VectorJobResult(msgspec.Struct, frozen=True):
    results: list[TaskVector]
    dimension: int
    seconds: float               # CPU-side time in the worker, recorded by the parent


class MockRecipe(msgspec.Struct, frozen=True):
    model: str
    texts: list[str]
    dimension: int


def with_bodies(result: VectorJobResult, payload: bytes | bytearray) -> VectorJobResult:
    """`result` with a body for each task a worker gave as a row of `payload` (its job's)."""
    if not any(vector.row for vector in result.results):
        return result
    view = memoryview(payload)
    return msgspec.structs.replace(result, results=[
        TaskVector(vector.task_id, b"".join((SUCCESS_PREFIX, view[vector.row[0]:vector.row[1]], SUCCESS_SUFFIX)))
        if vector.row else vector for vector in result.results])
