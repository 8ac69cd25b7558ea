"""Rate limits shared by every service on one Redis: the same five tiers, strategies, reservations
and refunds as the SQLite backend (aitp/storage/rate_limits.py), counted atomically by a Lua script.

Keys under the API's prefix: `rl:at` (a sorted set, reservation id -> when, in seconds), `rl:units`
(a hash, reservation id -> units still counted, lowered by refunds) and `rl:next` (the last id).
Times come from each service's clock, as with the SQLite file several processes share: keep the
hosts' clocks in step (NTP), as any fixed calendar window needs.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

from aitp.coordination.leases import redis_errors
from aitp.errors import CoordinationError
from aitp.storage.rate_limits import (Admission, RateLimitBackend, Tiered, TierUsage, configured_limits, tier_state,
                                      window_start)

log = logging.getLogger("aitp.rate_limits")

_KEEP_SECONDS = 32 * 86_400.0    # longer than any window, fixed months included
_CHUNK = 1000                     # ids per HMGET: Lua's unpack() has a limit of a few thousand

_SUM = """
local function sum_units(amounts, ids)
  local total = 0
  for first = 1, #ids, 1000 do
    local values = redis.call('HMGET', amounts, unpack(ids, first, math.min(first + 999, #ids)))
    for _, value in ipairs(values) do total = total + (tonumber(value) or 0) end
  end
  return total
end
"""

# ARGV: prefix, now, units, forget-before, then (start, exclusive, limit) per tier.
_RESERVE = _SUM + """
local prefix, now, units, forget = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local at, amounts = prefix .. 'rl:at', prefix .. 'rl:units'
local free = nil
local used = {}
for i = 5, #ARGV, 3 do
  local start = ARGV[i]
  if ARGV[i + 1] == '1' then start = '(' .. start end
  local count = sum_units(amounts, redis.call('ZRANGEBYSCORE', at, start, '+inf'))
  used[#used + 1] = count
  local room = math.max(0, tonumber(ARGV[i + 2]) - count)
  if free == nil or room < free then free = room end
end
local granted = units
if free ~= nil and free < units then granted = free end
local id = 0
if granted > 0 then
  id = redis.call('INCR', prefix .. 'rl:next')
  redis.call('ZADD', at, now, id)
  redis.call('HSET', amounts, id, granted)
end
local old = redis.call('ZRANGEBYSCORE', at, '-inf', '(' .. forget)
for first = 1, #old, 1000 do
  redis.call('HDEL', amounts, unpack(old, first, math.min(first + 999, #old)))
end
if #old > 0 then redis.call('ZREMRANGEBYSCORE', at, '-inf', '(' .. forget) end
return {granted, id, used}
"""

_REFUND = """
local amounts, id, units = ARGV[1] .. 'rl:units', ARGV[2], tonumber(ARGV[3])
local held = tonumber(redis.call('HGET', amounts, id))
if held then redis.call('HSET', amounts, id, math.max(0, held - units)) end
return 0
"""

_USED = _SUM + """
local prefix = ARGV[1]
local used = {}
for i = 2, #ARGV, 2 do
  local start = ARGV[i]
  if ARGV[i + 1] == '1' then start = '(' .. start end
  used[#used + 1] = sum_units(prefix .. 'rl:units', redis.call('ZRANGEBYSCORE', prefix .. 'rl:at', start, '+inf'))
end
return used
"""


class RedisTieredLimits(Tiered):
    """Every configured tier at once, in Redis, shared by every service that uses it."""

    def __init__(self, client, prefix: str, limits: dict[str, int], strategy: str,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(limits, strategy, clock)
        self.client, self.prefix = client, prefix
        self._errors = redis_errors()
        self._reserve = client.register_script(_RESERVE)
        self._refund = client.register_script(_REFUND)
        self._used = client.register_script(_USED)
        self._lock = threading.Lock()

    def _starts(self, now: float) -> list[str]:
        """(start, exclusive) per tier, as the scripts read them. Rolling: a unit reserved exactly a
        window ago has left it; fixed: the window's first instant is inside."""
        args: list[str] = []
        for period in self.limits:
            args += [repr(window_start(period, self.strategy, now)), "1" if self.strategy == "rolling" else "0"]
        return args

    def _call(self, script, args: list) -> object:
        try:
            return script(args=[self.prefix, *args])
        except self._errors as exc:
            raise CoordinationError(f"Redis did not answer: {type(exc).__name__}: {exc}"[:200]) from None

    def _rows_after(self, start: float) -> Iterable[tuple[float, int]]:
        ids_and_times = self.client.zrangebyscore(f"{self.prefix}rl:at", f"({start!r}", "+inf", withscores=True)
        for first in range(0, len(ids_and_times), _CHUNK):
            piece = ids_and_times[first:first + _CHUNK]
            units = self.client.hmget(f"{self.prefix}rl:units", [reservation for reservation, _ in piece])
            for (_, at), count in zip(piece, units):
                if count is not None and int(count) > 0:
                    yield at, int(count)

    def _read(self) -> tuple[int, float | None, list[TierUsage]]:
        now = self.clock()
        used = self._call(self._used, self._starts(now))
        used_of = dict(zip(self.limits, (int(count) for count in used)))
        try:
            return tier_state(self.limits, self.strategy, now, used_of.__getitem__, self._rows_after)
        except self._errors as exc:
            raise CoordinationError(f"Redis did not answer: {type(exc).__name__}: {exc}"[:200]) from None

    def reserve(self, units: int) -> Admission:
        if units <= 0:
            return Admission(0, None)
        now = self.clock()
        args: list = [repr(now), units, repr(now - _KEEP_SECONDS)]
        starts = self._starts(now)
        for index, period in enumerate(self.limits):
            args += [starts[2 * index], starts[2 * index + 1], self.limits[period]]
        granted, reservation, used = self._call(self._reserve, args)
        granted, reservation = int(granted), int(reservation)
        not_before = None
        if granted < units:
            with self._lock:
                for period, count in zip(self.limits, used):
                    if self.limits[period] - int(count) - granted <= 0:   # the tiers full now refused the rest
                        self.exceeded[period] += 1
            not_before = self.not_before()
        return Admission(granted, not_before, reservation)

    def refund(self, reservation: int, units: int = 1) -> None:
        """Never raises: a refund Redis missed leaves the units counted, the safe side of a limit."""
        if reservation <= 0 or units <= 0:
            return
        try:
            self._call(self._refund, [reservation, units])
        except CoordinationError as exc:
            log.warning("a rate-limit refund was lost: Redis does not answer",
                        extra={"fields": {"units": units, "error": str(exc)}})



def shared_rate_limits_for(settings, client) -> RateLimitBackend | None:
    """The Redis backend when REDIS_URL is set and limits are on (None otherwise)."""
    from aitp.coordination.leases import key_prefix

    limits = configured_limits(settings)
    if limits is None:
        return None
    prefix = key_prefix(settings.coordination.key_prefix, settings.api.base_url)
    return RedisTieredLimits(client, prefix, limits, settings.rate_limit.strategy)
