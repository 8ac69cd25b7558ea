import subprocess
import sys

import msgspec
import numpy as np
import pytest

from aitp.errors import VectorContractError
from aitp.sandbox.ollama_stub import stub_vector
from aitp.vectors.jobs import with_bodies
from aitp.vectors.work import compact_row_places, process_job
from aitp.vectors.checks import MockRecipe, VectorJob, checked_unit_vectors, mock_vector, success_bodies


def ollama_payload(rows) -> bytes:
    return msgspec.json.encode({"model": "m", "embeddings": rows})


def job(payload: bytes, count: int, dimension=3, decoder="ollama", limit=100_000) -> VectorJob:
    return VectorJob(decoder=decoder, payload=payload, model="m", task_ids=[f"t{i}" for i in range(count)],
                     dimension=dimension, max_body_bytes=limit)


def decoded(body: bytes) -> np.ndarray:
    message = msgspec.json.decode(body)
    assert message["state"] == "succeeded"
    return np.asarray(message["result"], dtype=np.float32)


def test_vectors_are_normalised_and_in_input_order():
    result = process_job(job(ollama_payload([[3, 0, 4], [0, 2, 0]]), 2))
    assert [r.task_id for r in result.results] == ["t0", "t1"]
    assert np.allclose(decoded(result.results[0].body), [0.6, 0, 0.8])
    assert np.allclose(decoded(result.results[1].body), [0, 1, 0])
    assert result.dimension == 3


@pytest.mark.parametrize("rows, count, dimension, message", [
    ([[1, 2, 3]], 2, 3, "expected 2 vectors"),
    ([[1, 2, 3], [1, 2]], 2, 3, "different lengths"),
    ([[1, 2]], 1, 3, "returned dimension 2, pinned at 3"),
    ([[0, 0, 0]], 1, 3, "all zeros"),
    ([[1e308, -1e308, 1e308]], 1, 3, None),   # finite but its plain norm overflows
    ([[1e-320, 0, 0]], 1, 3, None),            # subnormal, not zero
])
def test_the_vector_contract(rows, count, dimension, message):
    if message is None:
        vector = decoded(process_job(job(ollama_payload(rows), count, dimension)).results[0].body)
        assert np.isfinite(vector).all() and np.isclose(np.linalg.norm(vector), 1.0, atol=1e-6)
        return
    with pytest.raises(VectorContractError, match=message):
        process_job(job(ollama_payload(rows), count, dimension))


def test_non_finite_values_break_the_contract():
    with pytest.raises(VectorContractError, match="NaN or infinity"):
        checked_unit_vectors(np.array([[1.0, np.nan, 2.0]]), 1, 3)
    with pytest.raises(VectorContractError, match="out of range"):
        process_job(job(b'{"embeddings":[[1e999,1,1]]}', 1))


@pytest.mark.parametrize("payload", [b"not json", b'{"error":"boom"}', b'{"embeddings":"x"}', b"[NaN]"])
def test_garbage_is_a_contract_error(payload):
    with pytest.raises(VectorContractError):
        process_job(job(payload, 1))


def test_unpinned_dimension_takes_the_first_vectors_length():
    assert process_job(job(ollama_payload([[1, 2, 3, 4]]), 1, dimension=None)).dimension == 4


def test_bodies_hold_float32_in_shortest_form():
    vector = stub_vector("m", "text", 768)
    [body] = success_bodies(checked_unit_vectors(vector[None, :], 1, 768))
    numbers = body[body.index(b"[") + 1:body.index(b"]")].split(b",")
    expected = (vector / np.linalg.norm(vector)).astype(np.float32)
    assert np.array_equal(np.asarray([float(n) for n in numbers], dtype=np.float32), expected)
    assert max(len(n.lstrip(b"-")) for n in numbers) <= 14          # no 17-digit doubles
    assert len(body) <= len(",".join(map(str, expected))) + 40      # as short as numpy's own shortest repr


def test_a_body_over_the_limit_fails_only_its_task():
    result = process_job(job(ollama_payload([[1, 2, 3]]), 1, limit=20))
    assert result.results[0].body is None
    assert "exceeds the API limit of 20" in result.results[0].error


def test_mock_vectors_are_deterministic_per_model_and_text():
    recipe = msgspec.msgpack.encode(MockRecipe(model="m", texts=["a", "b", "a"], dimension=16))
    result = process_job(job(recipe, 3, dimension=16, decoder="mock"))
    a, b, a_again = (decoded(r.body) for r in result.results)
    assert np.array_equal(a, a_again) and not np.array_equal(a, b)
    assert np.isclose(np.linalg.norm(a), 1.0, atol=1e-6)
    assert not np.array_equal(mock_vector("m", "a", 16), mock_vector("other", "a", 16))


# --- Ollama's unit vectors pass through as written (aitp/vectors/work.py) ---

def go_text(vectors) -> bytes:
    """Rows as Ollama writes them: shortest float32 text, exponents for small values, no spaces."""
    return b"[" + b",".join(b"[" + b",".join(str(np.float32(x)).encode() for x in row) + b"]"
                            for row in vectors) + b"]"


def ollama_raw(rows_text: bytes) -> bytes:
    return b'{"model":"m","embeddings":' + rows_text + b',"prompt_eval_count":7}'


def test_unit_float32_rows_go_out_as_the_provider_wrote_them(monkeypatch):
    monkeypatch.setattr("aitp.vectors.checks.normalised_bodies", lambda job: pytest.fail("written again"))
    units = checked_unit_vectors(np.stack([stub_vector("m", t, 768) for t in ("a", "b", "c")]), 3, 768)
    # A tiny value is written "1e-07", as Go writes it; its neighbour keeps the norm at 1.
    units[0, 6] = np.sqrt(np.float64(units[0, 5]) ** 2 + np.float64(units[0, 6]) ** 2 - 1e-14)
    units[0, 5] = np.float32(1e-7)
    text = go_text(units)
    result = process_job(job(ollama_raw(text), 3, dimension=768))
    rows = msgspec.json.decode(text)
    for row_text, task_vector in zip(text[1:-1].split(b"],["), result.results):
        assert task_vector.body == b'{"state":"succeeded","result":[' + row_text.strip(b"[]") + b"]}"
    assert [decoded(r.body).tolist() for r in result.results] == np.asarray(rows, dtype=np.float32).tolist()
    assert result.dimension == 768


def test_integers_that_make_a_unit_vector_pass_through():
    result = process_job(job(ollama_raw(b"[[0,1,0],[-1,0,0]]"), 2))
    assert [r.body for r in result.results] == [b'{"state":"succeeded","result":[0,1,0]}',
                                                b'{"state":"succeeded","result":[-1,0,0]}']


def test_one_row_off_unit_length_sends_the_whole_batch_through_normalising():
    result = process_job(job(ollama_raw(b"[[0,1,0],[0,0,1.001]]"), 2))
    assert [decoded(r.body).tolist() for r in result.results] == [[0, 1, 0], [0, 0, 1]]
    assert result.results[1].body == b'{"state":"succeeded","result":[0.0,0.0,1.0]}'   # written by aitp


def test_unit_rows_in_float64_digits_are_written_again_as_float32():
    unit = stub_vector("m", "a", 64) / np.linalg.norm(stub_vector("m", "a", 64))
    payload = ollama_raw(msgspec.json.encode([unit.tolist()]))          # 17 significant digits
    [task_vector] = process_job(job(payload, 1, dimension=64)).results
    assert len(task_vector.body) < len(payload) * 0.8
    assert np.array_equal(decoded(task_vector.body), checked_unit_vectors(unit[None, :], 1, 64)[0])


def test_a_worker_names_where_written_rows_lie_and_the_parent_makes_the_same_bodies():
    # The parent holds the payload: the rows need not cross the pipe back (aitp/vectors/pool.py).
    batch = job(ollama_raw(b"[[0,1,0],[-1,0,0],[0,1,0],[0,0,1]]"), 4)    # one row twice
    by_place = process_job(batch, rows_by_place=True)
    assert all(r.body is None and r.row for r in by_place.results)
    assert [batch.payload[slice(*r.row)] for r in by_place.results] == [b"[0,1,0]", b"[-1,0,0]", b"[0,1,0]", b"[0,0,1]"]
    assert by_place.results[0].row != by_place.results[2].row       # equal rows, each its own place
    assert with_bodies(by_place, bytearray(batch.payload)) == \
        msgspec.structs.replace(process_job(batch), seconds=by_place.seconds)


@pytest.mark.parametrize("payload", [
    b'{"model":"m","embeddings":[ [0,1,0] ,\n [-1,0,0]]}',                                  # spaced
    b'{"model":"m","meta":{"embeddings":[[1,0,0],[1,0,0]]},"embeddings":[[0,1,0],[-1,0,0]]}',  # nested first
    b'{"embeddings":[[1,0,0],[1,0,0]],"model":"m","embeddings":[[0,1,0],[-1,0,0]]}',    # twice: the last counts
    b'{"model":"m","embeddings":[[0,1,0],[-1,0,0]],"more":{"embeddings":[]}}',           # nested after
    b'{"model":"{","embeddings":[[0,1,0],[-1,0,0]]}',                                     # a brace in a string
])
def test_rows_not_laid_out_as_go_writes_them_are_parsed_not_searched(payload):
    # Finding rows by byte search is only trusted on Go's compact layout; anything else is parsed
    # whole by the normalising way, which reads the rows a JSON decoder reads.
    assert compact_row_places(payload, 2) is None
    result = process_job(job(payload, 2))
    assert [decoded(r.body).tolist() for r in result.results] == [[0, 1, 0], [-1, 0, 0]]
    assert result.results[0].body == b'{"state":"succeeded","result":[0.0,1.0,0.0]}'   # written by aitp


def test_rows_a_byte_search_misreads_are_checked_from_their_own_text():
    # An escaped key hides the real rows from the search, and a decoy key holds the searched
    # bytes. The decoy's rows are what would be sent, so they are what is checked: one is not unit
    # length, and the whole answer is parsed instead, as a JSON decoder reads it.
    payload = b'{"embedding\\u0073":[[0,1,0],[-1,0,0]],"x\\"embeddings":[[1,0,0],[0,0,5]]}'
    assert [payload[start:end] for start, end in compact_row_places(payload, 2)] == [b"[1,0,0]", b"[0,0,5]"]
    result = process_job(job(payload, 2))
    assert [decoded(r.body).tolist() for r in result.results] == [[0, 1, 0], [-1, 0, 0]]


def test_rows_are_counted_where_they_are_searched():
    payload = ollama_raw(b"[[0,1,0],[-1,0,0],[1,0,0]]")
    places = compact_row_places(payload, 3)
    assert [payload[start:end] for start, end in places] == [b"[0,1,0]", b"[-1,0,0]", b"[1,0,0]"]
    assert compact_row_places(payload, 2) is None and compact_row_places(payload, 4) is None
    with pytest.raises(VectorContractError, match="expected 2 vectors"):
        process_job(job(payload, 2))


def test_a_written_row_over_the_body_limit_fails_its_task_by_place_too():
    batch = job(ollama_raw(b"[[0,1,0],[1,0,0.0000000000]]"), 2, limit=40)
    result = process_job(batch, rows_by_place=True)
    assert result.results[1].row is None and result.results[1].body is None
    assert "exceeds the API limit of 40" in result.results[1].error
    resolved = with_bodies(result, batch.payload)
    assert resolved.results[0].body == b'{"state":"succeeded","result":[0,1,0]}'
    assert resolved.results[1] == result.results[1]


@pytest.mark.parametrize("rows_text, count, dimension, message", [
    (b"[[0,1,0]]", 2, 3, "expected 2 vectors"),
    (b"[[0,1,0],[0,1]]", 2, 3, "different lengths"),
    (b"[[0,0,0,1]]", 1, 3, "returned dimension 4, pinned at 3"),
    (b"[[1e999,0,0]]", 1, 3, "out of range"),
    (b"[[]]", 1, None, "empty"),
])
def test_unit_rows_that_break_the_contract_are_refused_all_the_same(rows_text, count, dimension, message):
    with pytest.raises(VectorContractError, match=message):
        process_job(job(ollama_raw(rows_text), count, dimension))


def test_a_worker_serving_ollama_unit_vectors_never_imports_numpy(tmp_path):
    # A real interpreter, as a worker is: numpy costs each worker 0.1 s of CPU and 16 MB.
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys\n"
        "from aitp.vectors.jobs import VectorJob\n"
        "from aitp.vectors.work import compact_row_places, process_job\n"
        "job = VectorJob('ollama', b'{\"embeddings\":[[0.6,0.8],[1,0]]}', 'm', ['a', 'b'], 2, 1000)\n"
        "assert [r.body for r in process_job(job).results] == "
        "[b'{\"state\":\"succeeded\",\"result\":[0.6,0.8]}', b'{\"state\":\"succeeded\",\"result\":[1,0]}']\n"
        "print('numpy' in sys.modules)\n"
        "job = VectorJob('ollama', b'{\"embeddings\":[[3,4]]}', 'm', ['a'], 2, 1000)\n"
        "process_job(job)\n"
        "print('numpy' in sys.modules)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "True"]
