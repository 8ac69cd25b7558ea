"""Rate limits with an injectable clock: every tier, both strategies, restarts, and two processes,
each against both backends: the SQLite file of one host and the Redis several services share."""

import multiprocessing
import subprocess
import sys
import threading
from datetime import UTC, datetime

import pytest

from actors.pipeline import Pipeline
from aitp.config import load_config
from aitp.coordination.leases import connect
from aitp.coordination.rate_limits import RedisTieredLimits
from aitp.storage.rate_limits import AdmitAll, TieredLimits, next_window, rate_limits_for, window_start
from aitp.sandbox.seed import generated_tasks
from conftest import settings_for, wait_until

# Wednesday 2026-11-25 14:30:30 UTC: mid-minute, mid-hour, mid-day, mid-week, mid-month.
NOW = datetime(2026, 11, 25, 14, 30, 30, tzinfo=UTC).timestamp()
LENGTH = {"minute": 60, "hour": 3600, "day": 86_400, "week": 604_800, "month": 2_592_000}


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "redis"])
def limits(request, tmp_path):
    """`limits(clock, strategy="rolling", name=..., **per)`: the backend under test; the same `name`
    reaches the same counts (a restart, or another process)."""
    if request.param == "sqlite":
        return lambda clock, strategy="rolling", name="limits", **per: TieredLimits(
            tmp_path / f"{name}.sqlite3", per, strategy, clock=clock)
    redis = request.getfixturevalue("redis_server")()
    return lambda clock, strategy="rolling", name="limits", **per: RedisTieredLimits(
        redis.client(), f"{name}:", per, strategy, clock=clock)


@pytest.mark.parametrize("period", ["minute", "hour", "day", "week", "month"])
def test_rolling_window_of_each_tier(limits, period):
    clock = Clock()
    limiter = limits(clock, **{period: 5})
    assert limiter.reserve(3).granted == 3
    clock.now += LENGTH[period] / 2
    second = limiter.reserve(4)
    assert (second.granted, second.not_before) == (2, NOW + LENGTH[period])   # the oldest 3 leave then
    assert limiter.remaining() == 0 and limiter.not_before() == NOW + LENGTH[period]
    clock.now = NOW + LENGTH[period] - 0.001
    assert limiter.reserve(1).granted == 0
    clock.now = NOW + LENGTH[period]            # exactly one window after: the first 3 have left
    assert limiter.reserve(5).granted == 3
    assert limiter.exceeded[period] == 3                 # each reserve that got less than it asked


@pytest.mark.parametrize("period, start, following", [
    ("minute", datetime(2026, 11, 25, 14, 30), datetime(2026, 11, 25, 14, 31)),
    ("hour", datetime(2026, 11, 25, 14), datetime(2026, 11, 25, 15)),
    ("day", datetime(2026, 11, 25), datetime(2026, 11, 26)),
    ("week", datetime(2026, 11, 23), datetime(2026, 11, 30)),          # ISO weeks start on Monday
    ("month", datetime(2026, 11, 1), datetime(2026, 12, 1)),
])
def test_fixed_windows_are_calendar_aligned_in_utc(limits, period, start, following):
    start, following = start.replace(tzinfo=UTC).timestamp(), following.replace(tzinfo=UTC).timestamp()
    assert window_start(period, "fixed", NOW) == start
    assert next_window(period, NOW) == following
    clock = Clock(following - 1)
    limiter = limits(clock, "fixed", **{period: 2})
    assert limiter.reserve(3).granted == 2
    assert limiter.not_before() == following
    clock.now = following                      # a new window: the count starts again
    assert limiter.reserve(3).granted == 2


def test_december_rolls_over_into_january():
    december = datetime(2026, 12, 31, 23, 59, tzinfo=UTC).timestamp()
    assert next_window("month", december) == datetime(2027, 1, 1, tzinfo=UTC).timestamp()


def test_every_tier_must_have_room(limits):
    clock = Clock()
    limiter = limits(clock, minute=10, hour=12, day=100)
    assert limiter.reserve(8).granted == 8
    clock.now += 61
    assert limiter.reserve(8).granted == 4                 # the minute is free again, the hour is not
    usage = {tier.period: (tier.used, tier.remaining) for tier in limiter.usage()}
    assert usage == {"minute": (4, 6), "hour": (12, 0), "day": (12, 88)}
    assert limiter.not_before() == NOW + 3600              # when the first 8 leave the hour


def test_refunds_come_off_their_own_reservation(limits):
    clock = Clock()
    limiter = limits(clock, minute=5)
    old = limiter.reserve(5)
    clock.now += 59
    limiter.refund(old.reservation, 2)                     # two of them never reached a provider
    assert limiter.remaining() == 2
    clock.now += 2                                         # the old reservation left the window...
    new = limiter.reserve(5)
    assert new.granted == 5
    limiter.refund(old.reservation, 3)                     # ...so refunding it now frees nothing
    assert limiter.remaining() == 0
    limiter.refund(new.reservation, 10)                    # never below zero
    assert limiter.remaining() == 5


def test_a_restart_in_the_middle_of_a_window_keeps_the_count(limits):
    clock = Clock()
    first = limits(clock, minute=10)
    assert first.reserve(7).granted == 7
    first.close()
    clock.now += 30
    again = limits(clock, minute=10)
    assert again.reserve(7).granted == 3
    clock.now += 31
    assert again.remaining() == 7


def _backend(where: str, per: dict, now: float):
    if where.startswith("unix://"):
        return RedisTieredLimits(connect(where), "shared:", per, "fixed", clock=lambda: now)
    return TieredLimits(where, per, "fixed", clock=lambda: now)


def _reserve_one_at_a_time(where: str, attempts: int, now: float, results) -> None:
    limiter = _backend(where, {"minute": 150, "day": 1000}, now)
    results.put(sum(limiter.reserve(1).granted for _ in range(attempts)))
    limiter.close()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_two_processes_sharing_the_limits_never_exceed_them_together(backend, tmp_path, redis_server):
    where = str(tmp_path / "shared.sqlite3") if backend == "sqlite" else redis_server().url
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_reserve_one_at_a_time, args=(where, 120, NOW, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    granted = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(30)
    assert sum(granted) == 150 and all(g > 0 for g in granted)
    assert _backend(where, {"minute": 150}, NOW).remaining() == 0


def test_settings_choose_the_backend(tmp_path):
    def backend(**env):
        return rate_limits_for(load_config(environ={"AITP_DATA_DIR": str(tmp_path), **env},
                                           dotenv_dir=tmp_path).settings)

    assert isinstance(backend(), AdmitAll)
    assert isinstance(backend(RATE_LIMIT_PER_HOUR="5", RATE_LIMIT_ENABLED="false"), AdmitAll)
    chosen = backend(RATE_LIMIT_PER_HOUR="5", RATE_LIMIT_STRATEGY="fixed")
    assert isinstance(chosen, TieredLimits) and chosen.limits == {"hour": 5} and chosen.strategy == "fixed"
    assert chosen.path == tmp_path / "rate_limits.sqlite3"
    elsewhere = backend(RATE_LIMIT_PER_DAY="5", RATE_LIMIT_STORAGE_PATH=str(tmp_path / "x" / "limits.db"))
    assert elsewhere.path == tmp_path / "x" / "limits.db"


# --- end to end: against the sandbox ---
def test_a_run_admits_exactly_the_limit_and_leaves_the_rest_pending(sandbox, service, tmp_path):
    tasks = generated_tasks(20)
    server = sandbox(tasks)
    env = {"API_BASE_URL": server.url, "RATE_LIMIT_PER_MINUTE": "7", "POLLING_INTERVAL_SECONDS": "0.1"}
    first = service(env)
    wait_until(lambda: server.counts().get("succeeded") == 7, message="seven tasks")
    wait_until(lambda: "rate limit reached: polling paused" in first.logs(), message="the pause")
    polls = server.request_counts().get("GET pending", 0)
    first.signal(15)
    assert first.wait(60) == 0
    assert server.request_counts().get("GET pending", 0) <= polls + 1      # it slept, it did not spin
    assert polls <= 4

    # A restart within the minute keeps the count: nothing more is admitted, nothing is claimed.
    second = service(env)
    wait_until(lambda: "rate limit reached: polling paused" in second.logs(), message="the pause after restart")
    second.signal(15)
    assert second.wait(60) == 0
    assert server.counts() == {"succeeded": 7, "pending": 13}
    untouched = [t for t in tasks if server.state_of(t["_id"]) == "pending"]
    assert len(untouched) == 13 and all(server.history(t["_id"]) == ["pending"] for t in untouched)

    shown = subprocess.run([sys.executable, "-m", "actors", "config", "show"], capture_output=True, text=True,
                           timeout=60, cwd=tmp_path, env={"PATH": "", "AITP_DATA_DIR": str(tmp_path / "data"), **env})
    assert "per minute: 7 of 7 used, 0 left, next unit free at" in shown.stdout


def test_units_of_tasks_no_provider_saw_are_refunded_at_shutdown(sandbox, ollama, tmp_path):
    stub = ollama(models={"nomic-embed-text": 768})
    stub.gate.clear()                      # the first call is held in flight; the other batches wait
    server = sandbox(generated_tasks(64))
    toml = "[shutdown]\ndeadline_seconds = 0.1\n[batching]\nmax_items = 8\n"
    settings = settings_for(server, tmp_path, toml, PROCESSING_MODE="ollama", OLLAMA_BASE_URL=stub.url,
                            CONCURRENCY_LIMIT="1", RATE_LIMIT_PER_HOUR="1000")
    pipeline = Pipeline(settings)
    assert pipeline.start()
    wait_until(lambda: stub.waiting_at_gate, message="the first provider call")
    stopping = threading.Thread(target=pipeline.shutdown)
    stopping.start()
    wait_until(lambda: pipeline.ctx.directory.closed, message="the stages to stop")
    stub.gate.set()
    stopping.join(60)
    sent = sum(stub.batch_sizes)
    assert 0 < sent <= 8                  # one call, whatever the machine's pace
    usage = TieredLimits(settings.rate_limit_path, {"hour": 1000}, "rolling").usage()
    assert usage[0].used == sent      # every unit reserved for a task that no provider saw came back
    assert server.counts().get("pending") == 64 - server.counts().get("succeeded", 0)
