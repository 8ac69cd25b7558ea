import os
import random
import signal
import threading

import msgspec
import pytest

from aitp.errors import VectorContractError
from aitp.vectors.pool import VectorPool, WorkerDied
from aitp.vectors.checks import MockRecipe, VectorJob
from conftest import wait_until


def mock_job(texts, dimension=8):
    payload = msgspec.msgpack.encode(MockRecipe(model="m", texts=texts, dimension=dimension))
    return VectorJob(decoder="mock", payload=payload, model="m", task_ids=[f"t{i}" for i in range(len(texts))],
                     dimension=dimension, max_body_bytes=1_000_000)


@pytest.fixture
def pool():
    vector_pool = VectorPool(1)
    vector_pool.warm_up()
    yield vector_pool
    vector_pool.close()


def test_jobs_run_in_another_process(pool):
    result = pool.submit(mock_job(["a", "b"])).result(timeout=30)
    assert [r.task_id for r in result.results] == ["t0", "t1"]
    assert pool.worker_pids() and os.getpid() not in pool.worker_pids()


def test_contract_errors_come_back_as_errors(pool):
    job = VectorJob(decoder="ollama", payload=b"garbage", model="m", task_ids=["t"], dimension=3, max_body_bytes=10)
    with pytest.raises(VectorContractError):
        pool.submit(job).result(timeout=30)


def test_a_dead_worker_is_replaced_and_its_job_retried(pool):
    (pid,) = pool.worker_pids()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: _dead(pid), message="worker to die")
    result = pool.submit(mock_job(["x"])).result(timeout=60)
    assert result.results[0].body is not None
    assert pool.restarts == 1
    assert pid not in pool.worker_pids()


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:   # a zombie until the pool reaps it still counts as dead for this test
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_a_closed_pool_refuses_work_instead_of_starting_processes():
    vector_pool = VectorPool(1)
    vector_pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        vector_pool.submit(mock_job(["late"])).result(timeout=10)
    assert vector_pool.restarts == 0


def test_workers_killed_at_any_moment_never_leave_a_job_hanging(pool):
    """Kill the worker at random moments of big jobs (10 MB of bodies each): every job ends, with its
    result or WorkerDied, and the pool goes on."""
    rng = random.Random(3)
    big = mock_job([f"text {i}" for i in range(200)], dimension=4096)
    outcomes = []
    for _ in range(15):
        future = pool.submit(big, attempts=1)
        threading.Event().wait(rng.uniform(0.0, 0.15))      # a random moment, not a timing assertion
        for pid in pool.worker_pids():
            os.kill(pid, signal.SIGKILL)
        try:
            outcomes.append(len(future.result(timeout=30).results))
        except WorkerDied:
            outcomes.append("died")
    assert set(outcomes) <= {200, "died"} and "died" in outcomes
    assert len(pool.submit(mock_job(["after"])).result(timeout=30).results) == 1


def test_an_exception_that_cannot_be_pickled_still_comes_back_as_its_text():
    import pickle
    from aitp.vectors.worker import pickled
    error = pickle.loads(pickled(ValueError(lambda: 0)))
    assert isinstance(error, RuntimeError) and "ValueError" in str(error)


def test_an_unreadable_answer_fails_its_job_and_the_worker_goes_on(pool, monkeypatch):
    # Private on purpose (one of the few reach-ins left): a real worker never writes an unreadable
    # answer, so the pool's decoder is made to fail once instead.
    import aitp.vectors.pool as vector_pool
    real = vector_pool._result_decoder
    broken = [True]

    class BreaksOnce:
        def decode(self, body):
            if broken:
                broken.clear()
                raise ValueError("garbled")
            return real.decode(body)
    monkeypatch.setattr(vector_pool, "_result_decoder", BreaksOnce())
    job = VectorJob("mock", msgspec.msgpack.encode(MockRecipe("m", ["a"], 4)), "m", [f"{1:024x}"], 4, 100_000)
    with pytest.raises(RuntimeError, match="unreadable answer"):
        pool.submit(job).result(timeout=30)
    assert len(pool.submit(job).result(timeout=30).results) == 1


def test_the_pipe_carries_messages_of_any_size_whole_and_sees_the_end():
    import socket
    from aitp.vectors.worker import Pipe
    left, right = socket.socketpair()
    sender, receiver = Pipe(left), Pipe(right)
    big = os.urandom(3_000_000)                # far more than a socket buffer holds: many reads
    # The sender runs in a thread, since the big message fills the socket's buffers.
    thread = threading.Thread(target=lambda: [sender.send(Pipe.message(b"J") + big), sender.send(Pipe.message(b"P"))])
    thread.start()
    first = receiver.receive()
    assert bytes(first[:1]) == b"J" and first[1:] == big
    assert bytes(receiver.receive()) == b"P"
    thread.join()
    left.sendall(b"\x00\x00\x00\x00\x00\x00\x00\x09Jhalf")   # promises 9 bytes, sends 5, closes
    sender.close()
    with pytest.raises(EOFError):
        receiver.receive()
    receiver.close()


def test_without_workers_jobs_run_in_the_calling_thread():
    # workers.process_workers = 0: no process to hop to; errors still come back through the future.
    inline = VectorPool(0)
    inline.warm_up()
    seen = []
    future = inline.submit(mock_job(["a", "b"]))
    future.add_done_callback(lambda done: seen.append(threading.current_thread()))
    assert future.done() and seen == [threading.current_thread()]
    assert [r.task_id for r in future.result().results] == ["t0", "t1"] and inline.worker_pids() == []
    garbage = VectorJob(decoder="ollama", payload=b"garbage", model="m", task_ids=["t"], dimension=3,
                        max_body_bytes=10)
    with pytest.raises(VectorContractError):
        inline.submit(garbage).result(timeout=0)
    inline.close()
    with pytest.raises(RuntimeError, match="closed"):
        inline.submit(mock_job(["late"])).result(timeout=0)


def test_a_worker_that_stops_answering_is_replaced_and_its_job_retried():
    vector_pool = VectorPool(1, answer_timeout=1.0)
    try:
        vector_pool.warm_up()
        stuck = vector_pool.worker_pids()[0]
        os.kill(stuck, signal.SIGSTOP)          # alive but silent, as a worker caught in a pathological input
        result = vector_pool.submit(mock_job(["after a hang"])).result(timeout=60)
        assert len(result.results) == 1
        assert vector_pool.restarts == 1 and vector_pool.worker_pids() != [stuck]
        wait_until(lambda: _dead(stuck), message="the stuck worker to be killed")
    finally:
        vector_pool.close()


def test_workers_get_only_the_environment_they_need(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-in-a-worker")
    monkeypatch.setenv("OAUTH2_CLIENT_SECRET", "client-secret-never-in-a-worker")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    vector_pool = VectorPool(1)
    try:
        vector_pool.warm_up()
        with open(f"/proc/{vector_pool.worker_pids()[0]}/environ", "rb") as environ:
            names = {entry.split(b"=", 1)[0].decode() for entry in environ.read().split(b"\0") if entry}
        assert "OPENAI_API_KEY" not in names and "OAUTH2_CLIENT_SECRET" not in names
        assert {"OMP_NUM_THREADS", "PYTHONPATH"} <= names
        assert len(vector_pool.submit(mock_job(["still works"])).result(timeout=30).results) == 1
    finally:
        vector_pool.close()
