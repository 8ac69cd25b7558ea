"""Dependencies: what each dependency (the task API, the token endpoint, each provider endpoint and
kind, Wikidata, Redis) looks like from here: `ok`, `degraded` (failing, not yet given up on) or
`down`, since when, its last error (scrubbed of secrets) and its last success. /health shows it
and says `degraded` while one is not ok; one log line is written when a dependency changes
state, not one per task per retry. Thread-safe: the task API's client reports from its threads.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Callable

from aitp.observability.logs import scrub

log = logging.getLogger("aitp.dependencies")

OK, DEGRADED, DOWN = "ok", "degraded", "down"
# Failures in a row after which a dependency reported by its calls is down, not degraded.
DOWN_AFTER = 3
TASK_API, TOKEN_ENDPOINT, REDIS = "task API", "token endpoint", "redis"


class _Dependency:
    __slots__ = ("state", "since", "last_error", "last_success", "failures")

    def __init__(self, now: float) -> None:
        self.state, self.since = OK, now
        self.last_error: str | None = None
        self.last_success: float | None = None
        self.failures = 0


def _stamp(moment: float | None) -> str | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


class Dependencies:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._known: dict[str, _Dependency] = {}

    def succeeded(self, name: str) -> None:
        now = self._clock()
        with self._lock:
            dependency = self._get(name, now)
            dependency.last_success, dependency.failures = now, 0
            if dependency.state != OK:
                self._move(name, dependency, OK, now)

    def failed(self, name: str, error: str) -> None:
        now = self._clock()
        with self._lock:
            dependency = self._get(name, now)
            dependency.failures += 1
            dependency.last_error = scrub(error)[:300]
            self._move(name, dependency, DOWN if dependency.failures >= DOWN_AFTER else DEGRADED, now)

    def set(self, name: str, state: str, error: str | None = None) -> None:
        """A state read elsewhere (a breaker's, Redis's availability)."""
        now = self._clock()
        with self._lock:
            dependency = self._get(name, now)
            if state == OK:
                dependency.last_success = now
            elif error:
                dependency.last_error = scrub(error)[:300]
            self._move(name, dependency, state, now)

    def _get(self, name: str, now: float) -> _Dependency:
        dependency = self._known.get(name)
        if dependency is None:
            dependency = self._known[name] = _Dependency(now)
        return dependency

    @staticmethod
    def _move(name: str, dependency: _Dependency, state: str, now: float) -> None:
        if dependency.state == state:
            return
        was, dependency.state, dependency.since = dependency.state, state, now
        fields = {"dependency": name, "state": state, "was": was}
        if state == OK:
            log.info("dependency answers again", extra={"fields": fields})
        else:
            log.warning("dependency failing", extra={"fields": {**fields, "error": dependency.last_error}})

    def snapshot(self) -> dict[str, dict]:
        with self._lock:
            return {name: {"state": d.state, "since": _stamp(d.since), "last_error": d.last_error,
                           "last_success": _stamp(d.last_success)} for name, d in sorted(self._known.items())}

    def not_ok(self) -> list[str]:
        with self._lock:
            return sorted(name for name, d in self._known.items() if d.state != OK)


def breaker_state(status: dict) -> tuple[str, str | None]:
    """A breaker's status (ProviderBreaker.status) as a dependency's state and error."""
    if status["state"] != "closed":
        return DOWN, f"circuit breaker {status['state']} after {status['failures']} failures in a row"
    if status["failures"]:
        return DEGRADED, f"{status['failures']} failures in a row"
    return OK, None


def api_observer(dependencies: Dependencies) -> Callable[[str, str, str, float], None]:
    """TaskApiClient's observer feeding `dependencies`: no answer or a 5xx is a failure (a 429 is an
    API that answers: the backoff it asks for is honoured, and it is not named down for it)."""
    def observe(endpoint: str, method: str, status: str, seconds: float) -> None:
        if status == "error" or status.startswith("5"):
            dependencies.failed(TASK_API, f"{method} {endpoint}: {'no answer' if status == 'error' else status}")
        else:
            dependencies.succeeded(TASK_API)
    return observe
