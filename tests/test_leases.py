"""Leases in a real Redis (aitp/coordination/leases.py): two services never hold one task, a lease
that runs out is taken over with the task's JSON and any paid result, and Redis going away is a
clear error that takes nothing."""

import pytest

from aitp.coordination.leases import LeaseBook, connect, key_prefix
from aitp.errors import CoordinationError
from conftest import wait_until

pytestmark = pytest.mark.timeout(60)


def _book(redis, owner, lease_seconds=30.0, settled_seconds=120.0):
    return LeaseBook(connect(redis.url), "test:", owner, lease_seconds, settled_seconds)


def test_a_task_is_leased_to_one_service_only(redis_server):
    redis = redis_server()
    a, b = _book(redis, "a"), _book(redis, "b")
    assert a.acquire([("t1", b'{"_id":"t1"}'), ("t2", b'{"_id":"t2"}')]) == {"t1", "t2"}
    assert b.acquire([("t1", b"{}"), ("t3", b'{"_id":"t3"}')]) == {"t3"}
    assert a.acquire([("t1", b'{"_id":"t1"}')]) == {"t1"}          # its own again: still its own
    assert set(a.held) == {"t1", "t2"} and set(b.held) == {"t3"}


def test_a_finished_task_is_not_taken_again_while_settled_but_a_released_one_is(redis_server):
    redis = redis_server()
    a, b = _book(redis, "a"), _book(redis, "b")
    a.acquire([("done", b"{}"), ("back", b"{}")])
    a.finish(["done"], final=True)
    a.finish(["back"], final=False)
    assert b.acquire([("done", b"{}"), ("back", b"{}")]) == {"back"}   # an old list still shows "done"
    assert a.held == {}


def test_a_lease_that_runs_out_is_taken_over_with_the_task_and_its_paid_result(redis_server):
    redis = redis_server()
    dead, live = _book(redis, "dead", lease_seconds=0.2), _book(redis, "live")
    dead.acquire([("paid", b'{"_id":"paid"}'), ("unpaid", b'{"_id":"unpaid"}')])
    dead.keep_results([("paid", b'{"state":"succeeded","result":[1]}', "succeeded")])
    assert live.take_over() == []                                      # not run out yet
    adopted = wait_until(live.take_over, message="the dead service's leases to run out")
    by_id = {task.task_id: task for task in adopted}
    assert set(by_id) == {"paid", "unpaid"}
    assert by_id["paid"].result == b'{"state":"succeeded","result":[1]}' and by_id["paid"].state == "succeeded"
    assert by_id["unpaid"].result is None and by_id["unpaid"].task_json == b'{"_id":"unpaid"}'
    assert by_id["paid"].previous_owner == "dead"
    assert live.take_over() == []                                      # now live's, renewed
    assert sorted(dead.renew()) == ["paid", "unpaid"] and dead.held == {}   # lost to live


def test_renewing_moves_a_lease_on(redis_server):
    redis = redis_server()
    book = _book(redis, "a", lease_seconds=30)
    book.acquire([("t1", b"{}")])
    client = redis.client()
    before = client.zscore("test:leases", "t1")
    wait_until(lambda: book.renew() == [] and client.zscore("test:leases", "t1") > before,
               message="a renewal to move the lease's end")


def test_a_stalled_service_learns_which_leases_it_lost(redis_server):
    redis = redis_server()
    slow, other = _book(redis, "slow", lease_seconds=0.2), _book(redis, "other")
    slow.acquire([("t1", b'{"_id":"t1"}')])
    wait_until(lambda: [task.task_id for task in other.take_over()] == ["t1"], message="t1 to be taken over")
    assert slow.renew() == ["t1"] and "t1" not in slow.held and "t1" in other.held


def test_a_redis_that_lost_its_data_gets_the_held_leases_written_again(redis_server):
    redis = redis_server(persistent=False)
    a, b = _book(redis, "a"), _book(redis, "b")
    a.acquire([("t1", b'{"_id":"t1"}')])
    redis.restart()                                                    # everything forgotten
    wait_until(lambda: _renewed(a), message="Redis to answer again")   # written again by its holder
    assert b.acquire([("t1", b"{}")]) == set()
    assert redis.client().hget("test:lease:t1", "task") == b'{"_id":"t1"}'


def _renewed(book):
    try:
        return book.renew() == []
    except CoordinationError:
        return False


def test_without_redis_nothing_is_leased_and_finishes_wait_for_it(redis_server):
    redis = redis_server()
    a = _book(redis, "a")
    a.acquire([("t1", b"{}")])
    redis.stop()
    with pytest.raises(CoordinationError):
        a.acquire([("t2", b"{}")])
    assert not a.available and "t2" not in a.held
    a.finish(["t1"], final=True)                                       # never raises: kept for later
    assert a.status()["unfinished"] == 1
    redis.start()
    wait_until(lambda: _renewed(a), message="Redis to answer again")
    assert a.available and a.status()["unfinished"] == 0
    assert _book(redis, "b").acquire([("t1", b"{}")]) == set()         # settled: the finish got through


def test_the_key_prefix_belongs_to_the_task_api():
    assert key_prefix("", "http://a") != key_prefix("", "http://b")
    assert key_prefix("mine:", "http://a") == "mine:"
