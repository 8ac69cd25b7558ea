"""Breakers shared through Redis, so that one service learning that a provider is down spares the
others the failures. A breaker is shared by the services that call the same endpoint (its URL is
part of the key): each GPU box's Ollama keeps a breaker of its own, while every service's OpenAI
breaker is one.

pybreaker's own Redis storage makes a Redis call at every state read, under the breaker's lock: a
Redis that hangs (a paused VM, a black-holed network) held each begin and end of a provider call
for the socket timeout (one took 14 s; issue 29). Here a breaker reads and writes a local mirror
(MirroredStorage, no I/O), and one thread (BreakerMirror) brings the mirrors and Redis together a
few times a second, with a short timeout: what this service learnt goes to Redis, what the others
learnt comes back. While Redis does not answer, each service's breakers are its own.
The keys are pybreaker's (`<namespace>:pybreaker:state` and so on).
"""

from __future__ import annotations

import calendar
import hashlib
import logging
import threading
import time
from datetime import UTC, datetime

import pybreaker

log = logging.getLogger("aitp.breakers")

SYNC_SECONDS = 0.25          # how often the mirrors meet Redis
SYNC_TIMEOUT_SECONDS = 0.1   # a Redis slower than this is away for the breakers


class MirroredStorage(pybreaker.CircuitBreakerStorage):
    """pybreaker's storage interface over local values; the changes wait in `ops` for the mirror."""

    def __init__(self, namespace: str) -> None:
        super().__init__("mirrored")
        self.namespace = namespace
        self._lock = threading.Lock()
        self._state, self._counter, self._successes = pybreaker.STATE_CLOSED, 0, 0
        self._opened_at: datetime | None = None
        self.ops: list[tuple] = []         # changes Redis has not had yet, in order
        self.changed = 0                   # bumped by each change: a pull does not undo a newer one

    def key(self, name: str) -> str:
        return f"{self.namespace}:pybreaker:{name}"

    def _change(self, op: tuple) -> None:
        self.ops.append(op)
        self.changed += 1

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, state: str) -> None:
        with self._lock:
            self._state = str(state)
            self._change(("set", "state", self._state))

    def increment_counter(self) -> None:
        with self._lock:
            self._counter += 1
            self._change(("incr", "fail_counter"))

    def reset_counter(self) -> None:
        with self._lock:
            self._counter = 0
            self._change(("set", "fail_counter", 0))

    def increment_success_counter(self) -> None:
        with self._lock:
            self._successes += 1
            self._change(("incr", "success_counter"))

    def reset_success_counter(self) -> None:
        with self._lock:
            self._successes = 0
            self._change(("set", "success_counter", 0))

    @property
    def counter(self) -> int:
        return self._counter

    @property
    def success_counter(self) -> int:
        return self._successes

    @property
    def opened_at(self) -> datetime | None:
        return self._opened_at

    @opened_at.setter
    def opened_at(self, now: datetime) -> None:
        with self._lock:
            self._opened_at = now
            self._change(("opened_at", int(calendar.timegm(now.timetuple()))))

    # --- for the mirror ---
    def take_ops(self) -> tuple[list[tuple], int]:
        with self._lock:
            ops, self.ops = self.ops, []
            return ops, self.changed

    def give_back(self, ops: list[tuple]) -> None:
        """Redis did not take them: sent with the next sync, before what came since."""
        with self._lock:
            self.ops = (ops + self.ops)[-1000:]

    def adopt(self, seen: int, state: bytes | None, counter: bytes | None, successes: bytes | None,
              opened_at: bytes | None) -> None:
        """What Redis holds now, unless this breaker changed since the sync began."""
        with self._lock:
            if self.changed != seen or state is None:
                return
            self._state = state.decode()
            self._counter, self._successes = int(counter or 0), int(successes or 0)
            self._opened_at = datetime(*time.gmtime(int(opened_at))[:6], tzinfo=UTC) if opened_at else None


class BreakerMirror:
    """Brings every MirroredStorage of this service and Redis together, from one thread."""

    def __init__(self, client) -> None:
        from aitp.coordination.leases import redis_errors
        self.client, self._errors = client, redis_errors()
        self.storages: list[MirroredStorage] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.available = True

    def storage(self, namespace: str) -> MirroredStorage:
        storage = MirroredStorage(namespace)
        self.storages.append(storage)
        return storage

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="aitp-breaker-mirror", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SYNC_SECONDS):
            self.sync()

    def sync(self) -> bool:
        """One meeting: push every breaker's changes, then read them all back. False when Redis did
        not answer (the changes wait for the next)."""
        taken = [(storage, *storage.take_ops()) for storage in self.storages]
        try:
            pipe = self.client.pipeline(transaction=False)
            for storage, ops, _ in taken:
                for op in ops:
                    _queue(pipe, storage, op)
            for storage, _, _ in taken:
                pipe.mget([storage.key(name) for name in ("state", "fail_counter", "success_counter", "opened_at")])
            answers = pipe.execute()
        except self._errors as exc:
            for storage, ops, _ in taken:
                storage.give_back(ops)
            if self.available:
                log.warning("breakers not shared while Redis does not answer: each is this service's own",
                            extra={"fields": {"error": type(exc).__name__}})
            self.available = False
            return False
        self.available = True
        for (storage, _, seen), values in zip(taken, answers[-len(taken):] if taken else []):
            storage.adopt(seen, *values)
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)


def _queue(pipe, storage: MirroredStorage, op: tuple) -> None:
    if op[0] == "set":
        pipe.set(storage.key(op[1]), op[2])
    elif op[0] == "incr":
        pipe.incr(storage.key(op[1]))
    else:       # opened_at: the latest opening wins, whoever wrote it
        pipe.eval("local old = tonumber(redis.call('GET', KEYS[1]) or '0') "
                  "if tonumber(ARGV[1]) > old then redis.call('SET', KEYS[1], ARGV[1]) end return 0",
                  1, storage.key("opened_at"), op[1])


def shared_breaker_storage(mirror: BreakerMirror, prefix: str, name: str, endpoint: str) -> MirroredStorage:
    """The mirrored storage of the breaker of `name` at `endpoint`."""
    digest = hashlib.sha1(endpoint.encode()).hexdigest()[:8]
    return mirror.storage(f"{prefix}breaker:{name}:{digest}")
