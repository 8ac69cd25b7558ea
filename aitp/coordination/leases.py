"""Leases in Redis: which service holds which task, so that several services on one task API never
embed the same task twice. The API has no lease or compare-and-set of its own: it lists every
pending task, and a claim (`PATCH in_progress`) is seen by the others only once it has landed.

Keys, under a prefix of the API's own (two APIs can share one Redis):
- `leases`: a sorted set, task id -> when its lease runs out (ms, Redis's own clock).
- `lease:<id>`: a hash with the holder (`owner`), the task's JSON (`task`: the API lists only pending
  tasks, so whoever takes over an in-progress one needs it from here) and, once computed, a paid
  result (`result`, `state`) that is written here before it is reported.
- `settled:<id>`: set for `settled_seconds` when a task's final state was reported, so that a service
  whose pending list is older than that report does not take the task again.
- `done:<id>`: set for `done_seconds` (days) by the final report of a task taken over from another
  service (the only way one service can finish another's claim), so that the other, resuming its
  journal's claims after a long stop, leaves those finished meanwhile. One key per task taken over,
  not per task: at 360 tasks a second, a mark for each would hold some 30 GB for a week.

After Redis was away, no lease is taken over until this service has been answered for a whole
lease period: the holders, back too, have had their renewals (issue 29: without it the other
service took over and paid again for 256 tasks held through an 8-second outage).

Each step is one Lua script, so it is atomic in Redis: two services can never both acquire a task.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import NamedTuple

from aitp.errors import CoordinationError

log = logging.getLogger("aitp.coordination")

# Redis's clock in ms, so that hosts whose clocks differ agree on when a lease runs out.
_NOW = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

_ACQUIRE = _NOW + """
local prefix, owner, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local got = {}
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('EXISTS', prefix .. 'settled:' .. id) == 0 then
    local key = prefix .. 'lease:' .. id
    local holder = redis.call('HGET', key, 'owner')
    if not holder or holder == owner then
      redis.call('HSET', key, 'owner', owner, 'task', ARGV[i + 1])
      redis.call('ZADD', prefix .. 'leases', now + lease, id)
      got[#got + 1] = id
    end
  end
end
return got
"""

# Renew the leases this service holds: {missing, lost}. Missing ones (Redis restarted without its
# data) are written again by the caller with their JSON (_RESTORE); ones another service took over
# are lost.
_RENEW = _NOW + """
local prefix, owner, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local missing, lost = {}, {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local holder = redis.call('HGET', prefix .. 'lease:' .. id, 'owner')
  if holder == owner then
    redis.call('ZADD', prefix .. 'leases', now + lease, id)
  elseif not holder then
    missing[#missing + 1] = id
  else
    lost[#lost + 1] = id
  end
end
return {missing, lost}
"""

_RESTORE = _NOW + """
local prefix, owner, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i = 4, #ARGV, 2 do
  local key = prefix .. 'lease:' .. ARGV[i]
  if not redis.call('HGET', key, 'owner') then
    redis.call('HSET', key, 'owner', owner, 'task', ARGV[i + 1])
    redis.call('ZADD', prefix .. 'leases', now + lease, ARGV[i])
  end
end
return 0
"""

# Take over leases that ran out (their holder died, or stalled for a whole lease): the task's
# JSON and any paid result come along, so the task is resumed and its result not paid for again.
_TAKE_OVER = _NOW + """
local prefix, owner, lease, limit = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', prefix .. 'leases', '-inf', now, 'LIMIT', 0, limit)) do
  local key = prefix .. 'lease:' .. id
  local fields = redis.call('HMGET', key, 'owner', 'task', 'result', 'state')
  if fields[2] then
    redis.call('HSET', key, 'owner', owner)
    redis.call('ZADD', prefix .. 'leases', now + lease, id)
    out[#out + 1] = {id, fields[1] or '', fields[2], fields[3] or '', fields[4] or ''}
  else
    redis.call('ZREM', prefix .. 'leases', id)
  end
end
return out
"""

# A task left the pipeline: its lease goes; a final report also marks it settled for a while.
_FINISH = """
local prefix, owner, settled, final = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
for i = 6, #ARGV do
  local id = ARGV[i]
  local key = prefix .. 'lease:' .. id
  local holder = redis.call('HGET', key, 'owner')
  if not holder or holder == owner then
    redis.call('DEL', key)
    redis.call('ZREM', prefix .. 'leases', id)
  end
  if final then
    redis.call('SET', prefix .. 'settled:' .. id, '1', 'PX', settled)
    if tonumber(ARGV[5]) > 0 then redis.call('SET', prefix .. 'done:' .. id, '1', 'PX', tonumber(ARGV[5])) end
  end
end
return 0
"""

# (id, body, state) triples: each paid result goes to its task's lease.
_KEEP_RESULTS = """
for i = 3, #ARGV, 3 do
  local key = ARGV[1] .. 'lease:' .. ARGV[i]
  if redis.call('EXISTS', key) == 1 then redis.call('HSET', key, 'result', ARGV[i + 1], 'state', ARGV[i + 2]) end
end
return 0
"""

# At most this many leases are taken over at once: a large takeover arrives over a few renewals.
TAKE_OVER_LIMIT = 256


class Adopted(NamedTuple):
    """A task taken over from a service whose lease ran out."""

    task_id: str
    previous_owner: str
    task_json: bytes
    result: bytes | None        # the paid result it had computed, if any
    state: str                  # that result's state ("succeeded" or "failed"), "" without one


def key_prefix(configured: str, api_base_url: str) -> str:
    if configured:
        return configured
    return f"aitp:{hashlib.sha1(api_base_url.encode()).hexdigest()[:12]}:"


def owner_id(data_dir: Path) -> str:
    """This service's name in Redis: the host's, and an id kept in the data directory, so that a
    restarted service (same journal) takes back its own leases rather than waiting for them to run out."""
    from aitp.storage.files import private_file

    path = data_dir / "owner-id"
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if not text:
        text = uuid.uuid4().hex[:12]
        private_file(path).write_text(text)
    return f"{socket.gethostname()[:40]}:{text}"


def connect(redis_url: str, timeout: float = 2.0):
    """A Redis client that fails fast: the pipeline decides what a failure means (no retries here)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(redis_url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry=Retry(NoBackoff(), 0), health_check_interval=0)


def redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError,
            redis.exceptions.ReadOnlyError, redis.exceptions.ResponseError, OSError)


class LeaseBook:
    """This service's side of the leases: what it holds (with each task's JSON, to write a lease
    again if Redis lost it), and the finishes Redis has not taken yet (sent again on the next renewal)."""

    def __init__(self, client, prefix: str, owner: str, lease_seconds: float, settled_seconds: float,
                 done_seconds: float = 7 * 86400.0, clock=time.monotonic) -> None:
        self.client, self.prefix, self.owner = client, prefix, owner
        self.lease_ms = int(lease_seconds * 1000)
        self.settled_ms = int(settled_seconds * 1000)
        self.done_ms = int(done_seconds * 1000)
        self._clock = clock
        self._answered_since: float | None = clock()     # answered without a break since (None: away)
        self._unshared: dict[str, tuple[bytes, str]] = {}  # paid results Redis has not had yet
        self._taken_over: set[str] = set()                 # held here after another service's lease ran out
        self._errors = redis_errors()
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._restore = client.register_script(_RESTORE)
        self._take_over = client.register_script(_TAKE_OVER)
        self._finish = client.register_script(_FINISH)
        self._keep_results = client.register_script(_KEEP_RESULTS)
        self._lock = threading.Lock()
        self.held: dict[str, bytes] = {}                 # task id -> its JSON
        self._unfinished: dict[str, bool] = {}           # task id -> final, waiting for Redis
        self.available = True                            # the last call got an answer
        self.last_error = ""

    def _call(self, script, args: list) -> object:
        try:
            answer = script(args=[self.prefix, self.owner, *args])
        except self._errors as exc:
            self._failed(exc)
            raise CoordinationError(f"Redis did not answer: {type(exc).__name__}: {exc}"[:200]) from None
        if not self.available:
            log.info("Redis answers again")
        if self._answered_since is None:
            self._answered_since = self._clock()
        self.available, self.last_error = True, ""
        return answer

    def _failed(self, exc: BaseException) -> None:
        if self.available:
            log.error("Redis does not answer: no new task is taken until it does",
                      extra={"fields": {"error": f"{type(exc).__name__}: {exc}"[:200]}})
        self.available, self.last_error = False, f"{type(exc).__name__}"
        self._answered_since = None

    def acquire(self, tasks: list[tuple[str, bytes]]) -> set[str]:
        """Lease each (task id, task JSON) that nobody holds and nobody settled lately; the ids
        leased. Raises CoordinationError when Redis does not answer (then nothing is leased)."""
        if not tasks:
            return set()
        args: list = [self.lease_ms]
        for task_id, task_json in tasks:
            args += [task_id, task_json]
        got = {item.decode() for item in self._call(self._acquire, args)}
        with self._lock:
            for task_id, task_json in tasks:
                if task_id in got:
                    self.held[task_id] = task_json
        return got

    def renew(self) -> list[str]:
        """Renew every lease held, and send the finishes that waited; the ids another service took
        over meanwhile (this one stalled past its lease). Raises CoordinationError."""
        with self._lock:
            unfinished = dict(self._unfinished)
            held = list(self.held.items())
            unshared, self._unshared = self._unshared, {}
        try:        # what waited while Redis was away goes first: paid results, then finishes
            self._send_results([(task_id, body, state) for task_id, (body, state) in unshared.items()])
        except CoordinationError:
            with self._lock:
                self._unshared = {**unshared, **self._unshared}
            raise
        for final in (True, False):
            self._send_finish([task_id for task_id, is_final in unfinished.items() if is_final is final], final)
        with self._lock:
            for task_id in unfinished:
                self._unfinished.pop(task_id, None)
        missing, lost = self._call(self._renew, [self.lease_ms, *(task_id for task_id, _ in held)])
        if missing:     # Redis lost them (restarted without its data): written again, as this service holds them
            json_of = dict(held)
            args: list = [self.lease_ms]
            for task_id in (item.decode() for item in missing):
                args += [task_id, json_of[task_id]]
            self._call(self._restore, args)
        lost = [item.decode() for item in lost]
        if lost:
            with self._lock:
                for task_id in lost:
                    self.held.pop(task_id, None)
        return lost

    def take_over(self) -> list[Adopted]:
        """Leases that ran out, now this service's, with what their holder left. None until Redis has
        answered this service for a whole lease period (the grace after an outage). Raises
        CoordinationError."""
        if self._answered_since is None or self._clock() - self._answered_since < self.lease_ms / 1000:
            return []
        adopted = []
        answer = self._call(self._take_over, [self.lease_ms, TAKE_OVER_LIMIT])
        for task_id, previous, task_json, result, state in answer:
            task_id = task_id.decode()
            with self._lock:
                mine = task_id in self.held
                self.held[task_id] = task_json
            if mine:
                continue        # this service's own, run out while it stalled: it still has the task
            with self._lock:
                self._taken_over.add(task_id)
            adopted.append(Adopted(task_id, previous.decode(), task_json, result or None, state.decode()))
        return adopted

    def finish(self, task_ids: list[str], final: bool) -> None:
        """These tasks left the pipeline (reported, or released when not `final`). Never raises: what
        Redis does not take now is sent with the next renewal."""
        if not task_ids:
            return
        with self._lock:
            for task_id in task_ids:
                self.held.pop(task_id, None)
            if not self.available:      # no call (each would wait for Redis): the next renewal sends them
                for task_id in task_ids:
                    self._unfinished[task_id] = final
                return
        try:
            self._send_finish(task_ids, final)
        except CoordinationError:
            with self._lock:
                for task_id in task_ids:
                    self._unfinished[task_id] = final

    def _send_finish(self, task_ids: list[str], final: bool) -> None:
        """The finish script, with a done mark for the final reports of tasks taken over."""
        with self._lock:
            taken_over = [task_id for task_id in task_ids if task_id in self._taken_over] if final else []
        others = [task_id for task_id in task_ids if task_id not in set(taken_over)]
        for ids, done_ms in ((taken_over, self.done_ms), (others, 0)):
            if ids:
                self._call(self._finish, [self.settled_ms, "1" if final else "0", done_ms, *ids])
        with self._lock:
            self._taken_over.difference_update(task_ids)

    def keep_results(self, results: list[tuple[str, bytes, str]]) -> None:
        """Write paid results (task id, body, state) to their tasks' leases before they are reported,
        so that a service taking a task over sends its result instead of paying for it again. Never
        raises: while Redis does not answer they wait here, and go with the next renewal, before
        anything else."""
        if not results:
            return
        with self._lock:
            if not self.available:
                self._unshared.update((task_id, (body, state)) for task_id, body, state in results)
                return
        try:
            self._send_results(results)
        except CoordinationError:
            with self._lock:
                self._unshared.update((task_id, (body, state)) for task_id, body, state in results)

    def _send_results(self, results: list[tuple[str, bytes, str]]) -> None:
        if not results:
            return
        args: list = []
        for task_id, body, state in results:
            args += [task_id, body, state]
        # _call puts the prefix and the owner first; the script reads triples from the third on.
        self._call(self._keep_results, args)

    def finished_elsewhere(self, task_ids: list[str]) -> set[str]:
        """Which of these tasks some service reported in the last `done_seconds`. Raises CoordinationError."""
        if not task_ids:
            return set()
        try:
            marks = self.client.mget([f"{self.prefix}done:{task_id}" for task_id in task_ids])
        except self._errors as exc:
            self._failed(exc)
            raise CoordinationError(f"Redis did not answer: {type(exc).__name__}"[:200]) from None
        return {task_id for task_id, mark in zip(task_ids, marks) if mark is not None}

    def status(self) -> dict:
        with self._lock:
            return {"available": self.available, "held": len(self.held), "unfinished": len(self._unfinished),
                    "unshared": len(self._unshared), "owner": self.owner, "last_error": self.last_error}


def lease_book_for(settings, client) -> LeaseBook | None:
    """The leases REDIS_URL asks for (`client` connects to it); None without it (one service:
    nothing changes)."""
    coordination = settings.coordination
    if client is None:
        return None
    return LeaseBook(client, key_prefix(coordination.key_prefix, settings.api.base_url),
                     owner_id(settings.data_dir), coordination.lease_seconds, coordination.settled_seconds,
                     coordination.done_seconds)
