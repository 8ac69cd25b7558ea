"""What a vector worker process does with one job: the PATCH body of each task, or its error.

Ollama's `/api/embed` already sends unit vectors, written as shortest float32 text, which is
what aitp would send. Such a batch goes out as the provider wrote it: each row is read once, to
check its length, its size and its norm, and its text becomes the body. That takes about 35 us per
768-dimension vector, against 150 us to parse, normalise and write it again
(aitp/vectors.py). Any other batch (not unit length, longer text, other providers, the mock)
takes that normalising way, which imports numpy on first use: a worker serving Ollama never
loads it (about 0.1 s of CPU and 16 MB per process). A worker says where each such row lies in
the payload rather than sending its text back: the parent holds the payload already.
"""

from __future__ import annotations

import math
import time

import msgspec

from aitp.vector_jobs import SUCCESS_PREFIX, SUCCESS_SUFFIX, TaskVector, VectorJob, VectorJobResult

# Within float32 rounding of a sum over thousands of squares (Ollama normalises in float32).
UNIT_TOLERANCE = 1e-5
# The longest shortest float32 text, "-1.17549435e-38", and its comma. A row written longer (say
# float64 digits) is written again, so a body never grows past what aitp's own text would take.
_FLOAT32_TEXT_BYTES = 16


class _OllamaRows(msgspec.Struct):
    embeddings: list[msgspec.Raw]


_rows_decoder = msgspec.json.Decoder(_OllamaRows)
_row_decoder = msgspec.json.Decoder(list[float])


def process_job(job: VectorJob, *, rows_by_place: bool = False) -> VectorJobResult:
    """Run in a process worker (or, with none, in the service); raises VectorContractError when the
    whole batch breaks the contract.
    With `rows_by_place`, a body that would be a row of the payload as written comes back as where
    that row lies (TaskVector.row, for vector_jobs.with_bodies in the parent, which holds the payload)."""
    started = time.perf_counter()
    written = unit_rows_as_written(job.payload, len(job.task_ids), job.dimension) \
        if job.decoder == "ollama" else None
    if written is not None:
        texts, dimension = written
        places = _places(job.payload, texts) if rows_by_place else None
        if places:
            vectors = [TaskVector(task_id, None, row=place)
                       for task_id, place in zip(job.task_ids, places, strict=True)]
        else:
            vectors = [TaskVector(task_id, SUCCESS_PREFIX + text + SUCCESS_SUFFIX)
                       for task_id, text in zip(job.task_ids, texts, strict=True)]
        sizes = [len(SUCCESS_PREFIX) + len(text) + len(SUCCESS_SUFFIX) for text in texts]
    else:
        from aitp.vectors import normalised_bodies     # numpy: only for batches that need it
        bodies, dimension = normalised_bodies(job)
        vectors = [TaskVector(task_id, body) for task_id, body in zip(job.task_ids, bodies, strict=True)]
        sizes = [len(body) for body in bodies]
    results = [vector if size <= job.max_body_bytes else
               TaskVector(vector.task_id, None, f"result body of {size} bytes exceeds the API limit of "
                                                f"{job.max_body_bytes}")
               for vector, size in zip(vectors, sizes)]
    return VectorJobResult(results=results, dimension=dimension, seconds=time.perf_counter() - started)


def _places(payload: bytes, texts: list[bytes]) -> list[tuple[int, int]] | None:
    """Where each row's text lies in `payload`, in order. Ollama writes each row one comma after
    the last; otherwise the text is searched for (from the end of the last, so that equal rows
    each find their own). The slice at each place is these very bytes, whatever else it holds."""
    places, end = [], 0
    for text in texts:
        start = end + 1 if payload.startswith(text, end + 1) else payload.find(text, end)
        if start < 0:      # not from this payload after all: send the bodies themselves
            return None
        end = start + len(text)
        places.append((start, end))
    return places


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
