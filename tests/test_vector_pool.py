import os
import signal

import msgspec
import pytest

from aitp.errors import VectorContractError
from aitp.vector_pool import VectorPool
from aitp.vectors import MockRecipe, VectorJob
from conftest import wait_until


def mock_job(texts, dimension=8):
    payload = msgspec.msgpack.encode(MockRecipe(model="m", texts=texts, dimension=dimension))
    return VectorJob(decoder="mock", payload=payload, model="m", task_ids=[f"t{i}" for i in range(len(texts))],
                     dimension=dimension, max_body_bytes=100_000)


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
