"""What a vector worker process does with one job: the PATCH body of each task, or its error.

Ollama's `/api/embed` already sends unit vectors, written as shortest float32 text, which is
what aitp would send. Such a batch goes out as the provider wrote it: each row is found by a byte
search and read once, to check its length, its size and its norm, and its text becomes the body.
That takes about 26 us per 768-dimension vector, against 150 us to parse, normalise and write it
again (aitp/vectors/checks.py). Any other batch (not unit length, longer text, other providers, the mock)
takes that normalising way, which imports numpy on first use: a worker serving Ollama never
loads it (about 0.1 s of CPU and 16 MB per process). A worker says where each such row lies in
the payload rather than sending its text back: the parent holds the payload already.
"""

from __future__ import annotations

import math
import time

import msgspec

from aitp.vectors.jobs import SUCCESS_PREFIX, SUCCESS_SUFFIX, TaskVector, VectorJob, VectorJobResult

# Within float32 rounding of a sum over thousands of squares (Ollama normalises in float32).
UNIT_TOLERANCE = 1e-5
# The longest shortest float32 text, "-1.17549435e-38", and its comma. A row written longer (say
# float64 digits) is written again, so a body never grows past what aitp's own text would take.
_FLOAT32_TEXT_BYTES = 16


_row_decoder = msgspec.json.Decoder(list[float])
_EMBEDDINGS_KEY = b'"embeddings"'


def process_job(job: VectorJob, *, rows_by_place: bool = False) -> VectorJobResult:
    """Run in a process worker (or, with none, in the service); raises VectorContractError when the
    whole batch breaks the contract.
    With `rows_by_place`, a body that would be a row of the payload as written comes back as where
    that row lies (TaskVector.row, for vector_jobs.with_bodies in the parent, which holds the payload)."""
    started = time.perf_counter()
    written = unit_rows_as_written(job.payload, len(job.task_ids), job.dimension) \
        if job.decoder == "ollama" else None
    if written is not None:
        places, dimension = written
        if rows_by_place:
            vectors = [TaskVector(task_id, None, row=place)
                       for task_id, place in zip(job.task_ids, places, strict=True)]
        else:
            vectors = [TaskVector(task_id, SUCCESS_PREFIX + job.payload[start:end] + SUCCESS_SUFFIX)
                       for task_id, (start, end) in zip(job.task_ids, places, strict=True)]
        sizes = [len(SUCCESS_PREFIX) + end - start + len(SUCCESS_SUFFIX) for start, end in places]
    else:
        from aitp.vectors.checks import normalised_bodies     # numpy: only for batches that need it
        bodies, dimension = normalised_bodies(job)
        vectors = [TaskVector(task_id, body) for task_id, body in zip(job.task_ids, bodies, strict=True)]
        sizes = [len(body) for body in bodies]
    results = [vector if size <= job.max_body_bytes else
               TaskVector(vector.task_id, None, f"result body of {size} bytes exceeds the API limit of "
                                                f"{job.max_body_bytes}")
               for vector, size in zip(vectors, sizes)]
    return VectorJobResult(results=results, dimension=dimension, seconds=time.perf_counter() - started)


def unit_rows_as_written(payload: bytes, count: int, dimension: int | None) -> tuple[list[tuple[int, int]], int] | None:
    """Where each row of an Ollama answer lies in `payload`, and their length, when every row
    already is what aitp would send: `count` rows of one non-zero length (the pinned `dimension`
    if there is one), each of unit norm and written no longer than float32 text needs. None
    otherwise: the batch then goes the normalising way, which also says what is wrong with it."""
    places = compact_row_places(payload, count)
    if places is None:
        return None
    width = dimension
    with memoryview(payload) as view:
        for start, end in places:
            try:      # each row's own text: what is checked is exactly what will be sent
                values = _row_decoder.decode(view[start:end])
            except msgspec.DecodeError:      # not numbers, or out of float64's range
                return None
            if width is None:
                width = len(values)
            if not values or len(values) != width or end - start > _FLOAT32_TEXT_BYTES * width + 1:
                return None
            # hypot is exact enough and never overflows; a NaN or infinity fails the comparison.
            if not abs(math.hypot(*values) - 1.0) <= UNIT_TOLERANCE:
                return None
    return places, width or 0


def compact_row_places(payload: bytes, count: int) -> list[tuple[int, int]] | None:
    """Where each of `count` rows of "embeddings" lies, in an answer written as Go writes it, with
    no spaces. Found by searching single bytes (memchr), not by parsing: a parse only to find the
    rows cost a third of the check. A number holds no bracket, so a row ends at the first "]"
    after its "[". The key must appear once (a decoder takes the last of two) with no "{" before it
    but the answer's own, so it is not in a nested object. Anything else gives None and the batch
    goes the normalising way, which parses the whole answer. Each row found is then read from its
    own text, so even an answer built to mislead this search could only get rows sent that passed
    every check."""
    key = payload.find(_EMBEDDINGS_KEY)
    if key < 0 or payload[:1] != b"{" or payload.find(b"{", 1, key) >= 0:
        return None
    start = key + len(_EMBEDDINGS_KEY)
    if payload[start:start + 2] != b":[":
        return None
    start += 2
    places = []
    for number in range(count):
        if payload[start:start + 1] != b"[":
            return None
        end = payload.find(b"]", start) + 1
        if not end or payload[end:end + 1] != (b"]" if number == count - 1 else b","):
            return None
        places.append((start, end))
        start = end + 1
    if not places or payload.find(_EMBEDDINGS_KEY, start) >= 0:
        return None
    return places
