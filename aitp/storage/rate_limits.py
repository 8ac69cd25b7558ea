"""Rate limits per minute, hour, day, week and month. A unit is one task sent to a provider.

Units are reserved atomically in a SQLite file (`BEGIN IMMEDIATE`), so several `aitp run`
processes sharing the file share the limits, and a restart keeps the count. Each reservation is a
row (time, units); a unit refunded for a task that never reached a provider is taken off the row it
was reserved in, so a refund never lowers the count of a window the reservation was not in.

- `rolling`: the window is the last 60 s, 3600 s, 1 day, 7 days, 30 days before now.
- `fixed`: the calendar minute, hour, day, ISO week (from Monday) and month, in UTC.
"""

from __future__ import annotations

import abc
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Callable, Iterable

import msgspec

from aitp.storage.sqlite import open_database

PERIODS = ("minute", "hour", "day", "week", "month")
ROLLING_SECONDS = {"minute": 60.0, "hour": 3600.0, "day": 86_400.0, "week": 604_800.0, "month": 2_592_000.0}
_KEEP_SECONDS = 32 * 86_400.0    # longer than any window, fixed months included


class Admission(msgspec.Struct, frozen=True):
    granted: int                 # how many of the asked units were reserved
    not_before: float | None     # when more may be asked for (time.time()), if any were refused
    reservation: int = 0         # the row to refund from (0: nothing reserved)


class TierUsage(msgspec.Struct, frozen=True):
    period: str
    limit: int
    used: int
    remaining: int
    resets_at: float | None      # when a unit is next freed (time.time()), None while not full


class RateLimitBackend(abc.ABC):
    # Does a refund give anything back? Only then must the journal note when a claimed task
    # reached a provider (its unit spent), which costs a SQLite commit per batch.
    refunds_units = True

    @abc.abstractmethod
    def reserve(self, units: int) -> Admission:
        """Reserve up to `units` atomically."""

    @abc.abstractmethod
    def refund(self, reservation: int, units: int = 1) -> None:
        """Give back units of `reservation` for tasks that never reached a provider."""

    def remaining(self) -> int | None:
        """Units that may be reserved now (None: no limit)."""
        return None

    def not_before(self) -> float | None:
        """When a unit will be free again (time.time()), or None when one is free now."""
        return None

    def usage(self) -> list[TierUsage]:
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class AdmitAll(RateLimitBackend):
    """No limits configured (RATE_LIMIT_ENABLED=false, or every tier 0)."""

    refunds_units = False

    def reserve(self, units: int) -> Admission:
        return Admission(granted=units, not_before=None)

    def refund(self, reservation: int, units: int = 1) -> None:
        pass


def window_start(period: str, strategy: str, now: float) -> float:
    """The start of `period`'s window that contains `now`."""
    if strategy == "rolling":
        return now - ROLLING_SECONDS[period]
    moment = datetime.fromtimestamp(now, UTC)
    if period == "minute":
        start = moment.replace(second=0, microsecond=0)
    elif period == "hour":
        start = moment.replace(minute=0, second=0, microsecond=0)
    elif period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    elif period == "week":
        start = (moment - timedelta(days=moment.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start.timestamp()


def next_window(period: str, now: float) -> float:
    """When the fixed window after the one holding `now` starts."""
    start = datetime.fromtimestamp(window_start(period, "fixed", now), UTC)
    if period == "month":
        return (start.replace(year=start.year + 1, month=1) if start.month == 12
                else start.replace(month=start.month + 1)).timestamp()
    length = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1),
              "week": timedelta(weeks=1)}[period]
    return (start + length).timestamp()


def free_at(strategy: str, period: str, limit: int, now: float, used: int,
            rows_after: Callable[[float], Iterable[tuple[float, int]]]) -> float:
    """When `period` will have a free unit again, given `used` >= its `limit` now. Rolling: walk the
    window's reservations (time, units) oldest first until enough have left to free one unit."""
    if strategy == "fixed":
        return next_window(period, now)
    excess = used - limit + 1
    for at, units in rows_after(window_start(period, "rolling", now)):
        excess -= units
        if excess <= 0:
            return at + ROLLING_SECONDS[period]
    return now


def tier_state(limits: dict[str, int], strategy: str, now: float, used_of: Callable[[str], int],
               rows_after: Callable[[float], Iterable[tuple[float, int]]]) -> tuple[int, float | None, list[TierUsage]]:
    """(units free now, when the next unit frees if none is, each tier's usage): the arithmetic
    every backend shares, over its own way of counting (`used_of`) and listing (`rows_after`)."""
    free, blocked_until, tiers = None, None, []
    for period, limit in limits.items():
        used = used_of(period)
        remaining = max(0, limit - used)
        resets_at = free_at(strategy, period, limit, now, used, rows_after) if remaining == 0 else None
        tiers.append(TierUsage(period, limit, used, remaining, resets_at))
        free = remaining if free is None else min(free, remaining)
        if resets_at is not None:
            blocked_until = resets_at if blocked_until is None else max(blocked_until, resets_at)
    return (free if free is not None else 1 << 62), blocked_until, tiers


class Tiered(RateLimitBackend):
    """What the tiered backends share: the configured tiers, refusals counted by tier, and the
    readings, each from one moment's state (`_read`: units free, when one frees, each tier's usage)."""

    def __init__(self, limits: dict[str, int], strategy: str, clock: Callable[[], float]) -> None:
        unknown = set(limits) - set(PERIODS)
        if unknown:
            raise ValueError(f"unknown rate-limit periods {sorted(unknown)}")
        self.limits = {period: limit for period, limit in limits.items() if limit > 0}
        self.strategy, self.clock = strategy, clock
        self.exceeded: dict[str, int] = {period: 0 for period in self.limits}   # refusals, by the tier that refused

    @abc.abstractmethod
    def _read(self) -> tuple[int, float | None, list[TierUsage]]:
        """(units free now, when the next unit frees if none is, each tier's usage)."""

    def remaining(self) -> int | None:
        return self._read()[0]

    def not_before(self) -> float | None:
        free, blocked_until, _ = self._read()
        return None if free > 0 else blocked_until

    def usage(self) -> list[TierUsage]:
        return self._read()[2]


def configured_limits(settings) -> dict[str, int] | None:
    """The limit of each period RATE_LIMIT_* sets; None when limits are off or none is set."""
    config = settings.rate_limit
    limits = {period: getattr(config, f"per_{period}") for period in PERIODS}
    return limits if config.enabled and any(limits.values()) else None


class TieredLimits(Tiered):
    """Every configured tier at once, in one SQLite file shared by the processes of a host."""

    def __init__(self, path: Path | str, limits: dict[str, int], strategy: str,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(limits, strategy, clock)
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = open_database(self.path)
        self._db.execute("CREATE TABLE IF NOT EXISTS reservations ("
                         "id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, units INTEGER NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS reservations_at ON reservations (at)")

    # --- reading one moment's state, inside a transaction ---
    def _used(self, db: sqlite3.Connection, period: str, now: float) -> int:
        start = window_start(period, self.strategy, now)
        # Rolling: a unit reserved exactly `length` ago has left the window; fixed: the start is inside.
        operator = ">" if self.strategy == "rolling" else ">="
        return db.execute(f"SELECT COALESCE(SUM(units), 0) FROM reservations WHERE at {operator} ?",
                          (start,)).fetchone()[0]

    def _rows_after(self, db: sqlite3.Connection, start: float) -> Iterable[tuple[float, int]]:
        return db.execute("SELECT at, units FROM reservations WHERE at > ? AND units > 0 ORDER BY at", (start,))

    def _state(self, db: sqlite3.Connection, now: float) -> tuple[int, float | None, list[TierUsage]]:
        return tier_state(self.limits, self.strategy, now, lambda period: self._used(db, period, now),
                          lambda start: self._rows_after(db, start))

    def _read(self) -> tuple[int, float | None, list[TierUsage]]:
        with self._lock:
            return self._state(self._db, self.clock())

    # --- the backend ---
    def reserve(self, units: int) -> Admission:
        if units <= 0:
            return Admission(0, None)
        with self._lock:
            now = self.clock()
            self._db.execute("BEGIN IMMEDIATE")   # one writer at a time across every process on the file
            try:
                free, blocked_until, tiers = self._state(self._db, now)
                granted = min(units, free)
                reservation = 0
                if granted:
                    reservation = self._db.execute("INSERT INTO reservations (at, units) VALUES (?, ?)",
                                                   (now, granted)).lastrowid
                self._db.execute("DELETE FROM reservations WHERE at < ?", (now - _KEEP_SECONDS,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if granted < units:
                for tier in tiers:   # the tiers that are full now refused the rest
                    if tier.remaining - granted <= 0:
                        self.exceeded[tier.period] += 1
        not_before = None
        if granted < units:
            not_before = blocked_until if blocked_until is not None else self.not_before()
        return Admission(granted, not_before, reservation)

    def refund(self, reservation: int, units: int = 1) -> None:
        if reservation <= 0 or units <= 0:
            return
        with self._lock:
            self._db.execute("UPDATE reservations SET units = MAX(0, units - ?) WHERE id = ?", (units, reservation))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def rate_limits_for(settings) -> RateLimitBackend:
    """The backend RATE_LIMIT_* asks for: tiered limits in SQLite, or none."""
    limits = configured_limits(settings)
    if limits is None:
        return AdmitAll()
    return TieredLimits(settings.rate_limit_path, limits, settings.rate_limit.strategy)
