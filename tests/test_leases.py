"""Leases in a real Redis (aitp/coordination/leases.py): two services never hold one task, a lease
that runs out is taken over with the task's JSON and any paid result, and Redis going away is a
clear error that takes nothing."""

import pytest

from aitp.coordination.leases import LeaseBook, connect, key_prefix
from aitp.errors import CoordinationError
from conftest import wait_until

pytestmark = pytest.mark.timeout(60)


def _book(redis, owner, lease_seconds=30.0, settled_seconds=120.0, **options):
    return LeaseBook(connect(redis.url), "test:", owner, lease_seconds, settled_seconds, **options)


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
    dead, live = _book(redis, "dead", lease_seconds=0.2), _book(redis, "live", lease_seconds=0.2)
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
    slow, other = _book(redis, "slow", lease_seconds=0.2), _book(redis, "other", lease_seconds=0.2)
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


def test_after_redis_was_away_no_lease_is_taken_over_before_a_whole_lease_period_of_answers(redis_server):
    """Issue 29: leases ran out while Redis was stopped, and the service that saw it first took
    them over from a holder that was about to renew."""
    redis = redis_server()
    now = [0.0]
    holder = _book(redis, "holder", lease_seconds=0.3)
    taker = _book(redis, "taker", lease_seconds=0.3, clock=lambda: now[0])
    holder.acquire([("t1", b'{"_id":"t1"}')])
    redis.stop()
    with pytest.raises(CoordinationError):
        taker.renew()
    redis.start()
    client = redis.client()
    wait_until(lambda: client.zscore("test:leases", "t1") < _redis_ms(client), message="the lease to run out")
    assert _renewed(taker)                          # answered again from now[0] = 0.0
    now[0] = 0.29
    assert taker.take_over() == []                  # within the grace: the holder may still renew
    assert _renewed(holder)                         # and does
    now[0] = 0.31
    assert taker.take_over() == [] and "t1" in holder.held      # renewed: not run out any more


def _redis_ms(client) -> float:
    seconds, micros = client.time()
    return seconds * 1000 + micros / 1000


def test_paid_results_kept_while_redis_is_away_go_to_it_first_when_it_answers(redis_server):
    redis = redis_server()
    a = _book(redis, "a")
    a.acquire([("t1", b'{"_id":"t1"}')])
    redis.stop()
    with pytest.raises(CoordinationError):
        a.renew()
    a.keep_results([("t1", b'{"state":"succeeded"}', "succeeded")])     # never raises: it waits
    assert a.status()["unshared"] == 1
    redis.start()
    wait_until(lambda: _renewed(a), message="Redis to answer again")
    assert a.status()["unshared"] == 0
    assert redis.client().hget("test:lease:t1", "result") == b'{"state":"succeeded"}'


def test_a_task_taken_over_and_reported_is_remembered_for_days_after_its_settled_mark_ran_out(redis_server):
    """Only a task taken over can be finished by another service than the one whose journal claims
    it: its final report leaves a done mark; a task reported by the service that took it leaves none
    (a mark per task would fill Redis)."""
    redis = redis_server()
    dead = _book(redis, "dead", lease_seconds=0.2)
    live = _book(redis, "live", lease_seconds=0.2, settled_seconds=0.05)
    dead.acquire([("t1", b'{"_id":"t1"}'), ("t2", b'{"_id":"t2"}')])
    wait_until(lambda: len(live.take_over()) == 2 or "t1" in live.held, message="the dead service's leases")
    live.acquire([("own", b"{}")])
    live.finish(["t1", "own"], final=True)
    live.finish(["t2"], final=False)                 # released: not done
    client = redis.client()
    wait_until(lambda: not client.exists("test:settled:t1"), message="the settled mark to run out")
    assert _book(redis, "b").finished_elsewhere(["t1", "t2", "own", "t3"]) == {"t1"}
    assert 0 < client.pttl("test:done:t1") <= 7 * 86400 * 1000


def test_the_key_prefix_belongs_to_the_task_api():
    assert key_prefix("", "http://a") != key_prefix("", "http://b")
    assert key_prefix("mine:", "http://a") == "mine:"
