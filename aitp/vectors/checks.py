"""Vector work that needs numpy, in the process workers: decode, check, normalise, encode PATCH bodies.

The parent process never parses floats: it hands a provider's raw response bytes to a worker
(aitp/vectors/work.py) and gets back finished PATCH bodies, places of rows it may send as written,
or per-task errors (with workers.process_workers = 0 all of this runs in the service instead).
Batches that are not already unit float32 vectors come here.
"""

from __future__ import annotations

import binascii
import hashlib
from typing import Callable

import msgspec
import numpy as np

from aitp.errors import DimensionMismatch, RowContractError, VectorContractError
from aitp.vectors.float32_text import shortest_float32
from aitp.vectors.jobs import SUCCESS_PREFIX, SUCCESS_SUFFIX, MockRecipe, VectorJob  # noqa: F401 - MockRecipe re-exported

_encode_json = msgspec.json.Encoder().encode


class _OllamaEmbedResponse(msgspec.Struct):
    embeddings: list[list[float]]


class _OpenAIEmbedding(msgspec.Struct):
    index: int
    embedding: str | list[float]     # base64 of little-endian float32, or floats from servers that ignore the ask


class _OpenAIEmbedResponse(msgspec.Struct):
    data: list[_OpenAIEmbedding]


_ollama_decoder = msgspec.json.Decoder(_OllamaEmbedResponse)
_openai_decoder = msgspec.json.Decoder(_OpenAIEmbedResponse)
_recipe_decoder = msgspec.msgpack.Decoder(MockRecipe)


def mock_vector(model: str, text: str, dimension: int) -> np.ndarray:
    """Deterministic from model and text: the same task always gets the same vector."""
    seed = int.from_bytes(hashlib.sha256(f"{model}\0{text}".encode("utf-8", "surrogatepass")).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dimension)


def _decode_mock(payload: bytes) -> np.ndarray:
    try:
        recipe = _recipe_decoder.decode(payload)
    except msgspec.DecodeError as exc:        # ours, so never expected: still one batch's error, not a crash
        raise VectorContractError(f"mock recipe unreadable: {exc}") from None
    return np.stack([mock_vector(recipe.model, text, recipe.dimension) for text in recipe.texts])


def _decode_ollama(payload: bytes) -> np.ndarray:
    try:
        rows = _ollama_decoder.decode(payload).embeddings
    except msgspec.DecodeError as exc:
        raise VectorContractError(f"Ollama response is not an embeddings object: {exc}") from None
    if rows and len({len(row) for row in rows}) != 1:
        raise VectorContractError("Ollama returned vectors of different lengths in one batch")
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), -1 if rows else 0)


def _decode_openai(payload: bytes) -> np.ndarray:
    try:
        data = _openai_decoder.decode(payload).data
    except msgspec.DecodeError as exc:
        raise VectorContractError(f"OpenAI response is not an embeddings list: {exc}") from None
    if sorted(item.index for item in data) != list(range(len(data))):
        raise VectorContractError("OpenAI response indexes are not 0..n-1, each once")
    rows = []
    for item in sorted(data, key=lambda item: item.index):
        if isinstance(item.embedding, str):
            try:
                raw = binascii.a2b_base64(item.embedding, strict_mode=True)
            except binascii.Error as exc:
                raise VectorContractError(f"embedding {item.index} is not valid base64: {exc}") from None
            if len(raw) % 4:
                raise VectorContractError(f"embedding {item.index} is {len(raw)} bytes, not whole float32s")
            rows.append(np.frombuffer(raw, dtype="<f4"))
        else:
            rows.append(np.asarray(item.embedding, dtype=np.float64))
    if rows and len({len(row) for row in rows}) != 1:
        raise VectorContractError("OpenAI returned vectors of different lengths in one batch")
    return np.stack(rows).astype(np.float64) if rows else np.empty((0, 0))


DECODERS: dict[str, Callable[[bytes], np.ndarray]] = {
    "mock": _decode_mock,
    "ollama": _decode_ollama,
    "openai": _decode_openai,
}


def checked_unit_vectors(matrix: np.ndarray, count: int, dimension: int | None) -> np.ndarray:
    """One vector per input, the pinned dimension, finite, non-zero; returned L2-normalised as float32."""
    if matrix.ndim != 2 or matrix.shape[0] != count:
        raise VectorContractError(f"expected {count} vectors, got {matrix.shape[0] if matrix.ndim else 0}")
    if dimension is not None and matrix.shape[1] != dimension:
        raise DimensionMismatch(matrix.shape[1], dimension)
    if matrix.shape[1] == 0:
        raise VectorContractError("vectors are empty")
    bad_rows = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad_rows.size:
        raise RowContractError(f"vector {_rows(bad_rows)} of {count} holds NaN or infinity")
    # Scale by the largest component first: the norm of huge (finite) values would overflow to inf.
    peaks = np.abs(matrix).max(axis=1, keepdims=True)
    zero_rows = np.flatnonzero(peaks[:, 0] == 0)
    if zero_rows.size:
        raise RowContractError(f"vector {_rows(zero_rows)} of {count} is all zeros")
    scaled = matrix / peaks
    return (scaled / np.linalg.norm(scaled, axis=1, keepdims=True)).astype(np.float32)


def _rows(indexes: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in indexes[:5])
    return shown + (f" (and {indexes.size - 5} more)" if indexes.size > 5 else "")


def success_bodies(vectors: np.ndarray) -> list[bytes]:
    """`{"state":"succeeded","result":[...]}` per row, each float32 in its shortest round-trip form."""
    return [SUCCESS_PREFIX + _encode_json(row) + SUCCESS_SUFFIX
            for row in shortest_float32(vectors).tolist()]


def normalised_bodies(job: VectorJob) -> tuple[list[bytes], int]:
    """Decode, check and normalise a batch: each task's PATCH body, and the vectors' length.
    Raises VectorContractError when the batch breaks the contract."""
    matrix = DECODERS[job.decoder](job.payload)
    vectors = checked_unit_vectors(matrix, len(job.task_ids), job.dimension)
    return success_bodies(vectors), int(vectors.shape[1])
