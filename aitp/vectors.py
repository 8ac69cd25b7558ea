"""Vector work that runs in the process workers: decode, check, normalise, encode PATCH bodies.

The parent process never parses floats: it hands a provider's raw response bytes here and gets
back finished PATCH bodies (or per-task errors) plus the time the work took.
"""

from __future__ import annotations

import hashlib
import time
from typing import Callable

import msgspec
import numpy as np

from aitp.errors import VectorContractError


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


class _OllamaEmbedResponse(msgspec.Struct):
    embeddings: list[list[float]]


_ollama_decoder = msgspec.json.Decoder(_OllamaEmbedResponse)
_recipe_decoder = msgspec.msgpack.Decoder(MockRecipe)


def mock_vector(model: str, text: str, dimension: int) -> np.ndarray:
    """Deterministic from model and text: the same task always gets the same vector."""
    seed = int.from_bytes(hashlib.sha256(f"{model}\0{text}".encode("utf-8", "surrogatepass")).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dimension)


def _decode_mock(payload: bytes) -> np.ndarray:
    recipe = _recipe_decoder.decode(payload)
    return np.stack([mock_vector(recipe.model, text, recipe.dimension) for text in recipe.texts])


def _decode_ollama(payload: bytes) -> np.ndarray:
    try:
        rows = _ollama_decoder.decode(payload).embeddings
    except msgspec.DecodeError as exc:
        raise VectorContractError(f"Ollama response is not an embeddings object: {exc}") from None
    if rows and len({len(row) for row in rows}) != 1:
        raise VectorContractError("Ollama returned vectors of different lengths in one batch")
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), -1 if rows else 0)


DECODERS: dict[str, Callable[[bytes], np.ndarray]] = {
    "mock": _decode_mock,
    "ollama": _decode_ollama,
}


def checked_unit_vectors(matrix: np.ndarray, count: int, dimension: int | None) -> np.ndarray:
    """One vector per input, the pinned dimension, finite, non-zero; returned L2-normalised as float32."""
    if matrix.ndim != 2 or matrix.shape[0] != count:
        raise VectorContractError(f"expected {count} vectors, got {matrix.shape[0] if matrix.ndim else 0}")
    if dimension is not None and matrix.shape[1] != dimension:
        raise VectorContractError(f"expected dimension {dimension}, got {matrix.shape[1]}")
    if matrix.shape[1] == 0:
        raise VectorContractError("vectors are empty")
    if not np.isfinite(matrix).all():
        raise VectorContractError("a vector holds NaN or infinity")
    # Scale by the largest component first: the norm of huge (finite) values would overflow to inf.
    peaks = np.abs(matrix).max(axis=1, keepdims=True)
    if (peaks == 0).any():
        raise VectorContractError("a vector is all zeros")
    scaled = matrix / peaks
    return (scaled / np.linalg.norm(scaled, axis=1, keepdims=True)).astype(np.float32)


def success_body(vector: np.ndarray) -> bytes:
    """`{"state":"succeeded","result":[...]}` with each float32 in its shortest round-trip form."""
    return b'{"state":"succeeded","result":[' + ",".join(map(str, vector)).encode() + b"]}"


def process_job(job: VectorJob) -> VectorJobResult:
    """Run in a process worker; raises VectorContractError when the whole batch breaks the contract."""
    started = time.perf_counter()
    matrix = DECODERS[job.decoder](job.payload)
    vectors = checked_unit_vectors(matrix, len(job.task_ids), job.dimension)
    results = []
    for task_id, vector in zip(job.task_ids, vectors, strict=True):
        body = success_body(vector)
        if len(body) > job.max_body_bytes:
            results.append(TaskVector(task_id, None, f"result body of {len(body)} bytes exceeds the "
                                                     f"API limit of {job.max_body_bytes}"))
        else:
            results.append(TaskVector(task_id, body))
    return VectorJobResult(results=results, dimension=int(vectors.shape[1]),
                           seconds=time.perf_counter() - started)
