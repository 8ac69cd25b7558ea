"""What the running pipeline does on a clock, besides the stages' own timers: the dependencies'
states refreshed from the breakers and Redis every second, the heartbeat line, and the mock
provider's warning repeated."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable

from aitp.config import Settings
from aitp.observability.metrics import Metrics
from aitp.tasks.answers import ANSWERS_KEPT_SECONDS
from aitp.timers import Scheduler
from actors.parts import Parts

log = logging.getLogger("aitp.pipeline")

_REFRESH_SECONDS = 1.0
_PURGE_SECONDS = 3600.0
_MOCK_WARNING_SECONDS = 600.0     # how often the mock provider's warning is repeated


class Watch:
    def __init__(self, settings: Settings, parts: Parts, metrics: Metrics, scheduler: Scheduler,
                 running: Callable[[], bool], poller_status: Callable[[], dict]) -> None:
        self.settings, self.parts, self.metrics, self.scheduler = settings, parts, metrics, scheduler
        self.running, self.poller_status = running, poller_status
        self.decided_before: Counter = Counter()
        self.next_heartbeat = time.monotonic() + settings.monitoring.heartbeat_seconds
        self.next_purge = time.monotonic() + _PURGE_SECONDS

    def start(self) -> None:
        self._refresh()
        if self.settings.uses_mock_provider:
            self._warn_mock()

    def _refresh(self) -> None:
        if not self.running():
            return
        self.parts.refresh_dependencies()
        if time.monotonic() >= self.next_purge:     # chat answers of tasks another service finished
            self.next_purge = time.monotonic() + _PURGE_SECONDS
            self.parts.journal.purge_answers(ANSWERS_KEPT_SECONDS)
        every = self.settings.monitoring.heartbeat_seconds
        if every and time.monotonic() >= self.next_heartbeat:
            self.next_heartbeat = time.monotonic() + every
            # Off the scheduler's thread: asking the Poller may wait, the stages' timers may not.
            threading.Thread(target=self.heartbeat, name="aitp-heartbeat", daemon=True).start()
        self.scheduler.call_later(_REFRESH_SECONDS, self._refresh)

    def heartbeat(self) -> None:
        """One INFO line: tasks decided since the last one, by type and state; in flight, the window;
        the dependencies that are not ok."""
        decided = Counter(self.metrics.decided)
        since, self.decided_before = decided - self.decided_before, decided
        try:
            poller = self.poller_status()
        except Exception:  # noqa: BLE001 - a Poller restarting or busy: the line goes out without it
            poller = {}
        done: dict[str, dict[str, int]] = {}
        for (task_type, state), count in sorted(since.items()):
            done.setdefault(task_type, {})[state] = count
        log.info("heartbeat", extra={"fields": {"done": done, "in_flight": poller.get("in_flight"),
                                                "window": poller.get("window"),
                                                "not_ok": self.parts.dependencies.not_ok()}})

    def _warn_mock(self) -> None:
        """Said at start and every few minutes while it lasts: the mock's vectors are not embeddings."""
        if not self.running():
            return
        log.warning("the mock provider is in use: its vectors are deterministic stand-ins, not embeddings; "
                    "never point this service at a production task API",
                    extra={"fields": {"mode": self.settings.processing.mode}})
        self.scheduler.call_later(_MOCK_WARNING_SECONDS, self._warn_mock)
