"""What a vector worker process does with one job: the PATCH body of each task, or its error.

Ollama's `/api/embed` already sends unit vectors, written as shortest float32 text, which is
what aitp would send. Such a batch goes out as the provider wrote it: each row is read once, to
check its length, its size and its norm, and its text is copied into the body. That takes about
35 us per 768-dimension vector, against 150 us to parse, normalise and write it again
(aitp/vectors.py). Any other batch (not unit length, longer text, other providers, the mock)
takes that normalising way, which imports numpy on first use: a worker serving Ollama never
loads it (about 0.1 s of CPU and 16 MB per process).
"""

from __future__ import annotations

import math
import time

import msgspec

from aitp.vector_jobs import TaskVector, VectorJob, VectorJobResult

SUCCESS_PREFIX = b'{"state":"succeeded","result":'
# Within float32 rounding of a sum over thousands of squares (Ollama normalises in float32).
UNIT_TOLERANCE = 1e-5
# The longest shortest float32 text, "-1.17549435e-38", and its comma. A row written longer (say
# float64 digits) is written again, so a body never grows past what aitp's own text would take.
_FLOAT32_TEXT_BYTES = 16


class _OllamaRows(msgspec.Struct):
    embeddings: list[msgspec.Raw]


_rows_decoder = msgspec.json.Decoder(_OllamaRows)
_row_decoder = msgspec.json.Decoder(list[float])


def process_job(job: VectorJob) -> VectorJobResult:
    """Run in a process worker; raises VectorContractError when the whole batch breaks the contract."""
    started = time.perf_counter()
    written = unit_rows_as_written(job.payload, len(job.task_ids), job.dimension) \
        if job.decoder == "ollama" else None
    if written is not None:
        bodies, dimension = [SUCCESS_PREFIX + row + b"}" for row in written[0]], written[1]
    else:
        from aitp.vectors import normalised_bodies     # numpy: only for batches that need it
        bodies, dimension = normalised_bodies(job)
    results = []
    for task_id, body in zip(job.task_ids, bodies, strict=True):
        if len(body) > job.max_body_bytes:
            results.append(TaskVector(task_id, None, f"result body of {len(body)} bytes exceeds the "
                                                     f"API limit of {job.max_body_bytes}"))
        else:
            results.append(TaskVector(task_id, body))
    return VectorJobResult(results=results, dimension=dimension, seconds=time.perf_counter() - started)


def unit_rows_as_written(payload: bytes, count: int, dimension: int | None) -> tuple[list[bytes], int] | None:
    """The text of each row of an Ollama answer and their length, when every row already is what
    aitp would send: `count` rows of one non-zero length (the pinned `dimension` if there is one),
    each of unit norm and written no longer than float32 text needs. None otherwise: the batch
    then goes the normalising way, which also says what is wrong with it."""
    try:
        rows = _rows_decoder.decode(payload).embeddings
    except msgspec.DecodeError:
        return None
    if len(rows) != count:
        return None
    texts: list[bytes] = []
    width = dimension
    for raw in rows:
        text = bytes(raw)
        try:
            values = _row_decoder.decode(text)
        except msgspec.DecodeError:      # not numbers, or out of float64's range
            return None
        if width is None:
            width = len(values)
        if not values or len(values) != width or len(text) > _FLOAT32_TEXT_BYTES * width + 1:
            return None
        # hypot is exact enough and never overflows; a NaN or infinity fails the comparison.
        if not abs(math.hypot(*values) - 1.0) <= UNIT_TOLERANCE:
            return None
        texts.append(text)
    return texts, width or 0
