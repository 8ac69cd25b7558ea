"""Supervisor: starts the stages, restarts a failed one by its policy, and stops the service when a
stage fails more often than its restart intensity allows.

One-for-one restarts the failed stage alone. Rest-for-one also replaces the stages started after
it: each is taken out of the directory (so messages for it wait there), hands its held work and
unhandled messages to its successor, and stops. Those collateral restarts are counted but do not
use up the intensity of the stage that failed.

A restart waits an exponential backoff (the policy's backoff_seconds, doubled per restart within
the period, at most backoff_max_seconds), so that a poison input cannot use up the intensity in
milliseconds; meanwhile messages for the stage wait in the directory. The successor gets every
message its predecessor had not handled, the one it failed on first. A message that makes a stage
fail twice in a row is quarantined: it is not delivered again, and the tasks it carries are
reported failed with the reason.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import pykka

from aitp.config import ChildPolicy
from aitp.timers import backoff_delay
from actors.messages import Rejection, StageFailed, TasksRejected, tasks_carried
from actors.directory import StageDirectory

log = logging.getLogger("aitp.supervisor")

_WATCH_INTERVAL = 0.5   # seconds between checks for a stage that died without saying so


@dataclass
class ChildSpec:
    name: str
    start: Callable[[list], pykka.ActorRef]   # starts an instance, handing it a previous one's work
    policy: ChildPolicy
    restarts: deque = field(default_factory=deque)
    total_restarts: int = 0
    given: list = field(default_factory=list)   # work handed to the current instance
    seen_dead: bool = False
    urn: str = ""                 # the current instance
    restarting: bool = False      # failed; its successor starts after a backoff
    failed_on: object = None      # the message the last instance failed on (twice: quarantined)


class _Watch:
    """Supervisor to itself: look for stages that died without a StageFailed (e.g. in on_start)."""


@dataclass
class _Restart:
    """Supervisor to itself: the backoff is over; start the successors, each with its work."""

    starts: list   # (spec, held work, unhandled messages), in start order


class Supervisor(pykka.ThreadingActor):
    def __init__(self, directory: StageDirectory, specs: list[ChildSpec], initial_work: dict[str, list],
                 on_fatal: Callable[[str], None], schedule: Callable[[float, Callable[[], None]], None],
                 stop_last: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.directory, self.specs = directory, {spec.name: spec for spec in specs}
        self.order = [spec.name for spec in specs]
        # Stopped in the reverse of the start order, but for `stop_last`, stopped just before the
        # first stage started (the Poller, which renews the leases while the calls finish).
        reverse = [name for name in reversed(self.order) if name not in stop_last]
        self.stop_order = reverse[:-1] + [name for name in stop_last if name in self.order] + reverse[-1:]
        self.initial_work, self.on_fatal, self.schedule = initial_work, on_fatal, schedule
        self.stopping = False
        self.stop_timeout = 10.0   # per stage; the pipeline sets it from the request timeout
        self.quarantined = 0

    def on_start(self) -> None:
        for name in self.order:
            self._start(self.specs[name], self.initial_work.get(name, []))
        self._watch_later()

    def _start(self, spec: ChildSpec, work: list, first: list | tuple = ()) -> None:
        spec.given = list(work)
        spec.seen_dead = spec.restarting = False
        ref = spec.start(work)
        spec.urn = ref.actor_urn
        self.directory.put(spec.name, ref, first)

    def _watch_later(self) -> None:
        me = self.actor_ref
        self.schedule(_WATCH_INTERVAL, lambda: me.tell(_Watch()) if me.is_alive() else None)

    def on_receive(self, message) -> None:
        try:
            if isinstance(message, StageFailed):
                self._failed(message.stage, message.error, message.orphans, message.undelivered, message.urn,
                             message.failed_on)
            elif isinstance(message, _Restart):
                if not self.stopping:
                    for spec, held, waiting in message.starts:
                        self._start(spec, held, waiting)
            elif isinstance(message, _Watch):
                self._watch()
        except Exception as exc:  # noqa: BLE001 - nobody supervises the supervisor: stop the service
            log.exception("supervisor failed")
            if not self.stopping:
                self.stopping = True
                self.on_fatal(f"supervisor failed: {exc!r}")

    def _watch(self) -> None:
        for name in self.order:
            spec, ref = self.specs[name], self.directory.ref(name)
            if ref is not None and not ref.is_alive() and not self.stopping and not spec.restarting:
                if spec.seen_dead:   # dead for a whole interval and no StageFailed came: restart it
                    self._failed(name, "stopped without reporting an error", spec.given, (), ref.actor_urn)
                else:
                    spec.seen_dead = True
        self._watch_later()

    def _failed(self, name: str, error: str, orphans: list, undelivered=(), urn: str = "",
                failed_on: object = None) -> None:
        spec = self.specs[name]
        if self.stopping or spec.restarting or spec.urn != urn:
            return   # shutting down, or that instance was already replaced (the watch saw it first)
        self.directory.take_down(name, urn)   # the stage did so itself, unless it died another way
        now = time.monotonic()
        while spec.restarts and now - spec.restarts[0] > spec.policy.period_seconds:
            spec.restarts.popleft()
        if spec.policy.restart == "temporary":
            log.error("stage stopped and is temporary: not restarted",
                      extra={"fields": {"stage": name, "error": error}})
            return
        if len(spec.restarts) >= spec.policy.intensity:
            reason = (f"stage {name} failed more than {spec.policy.intensity} times in "
                      f"{spec.policy.period_seconds:g}s; last error: {error}")
            log.critical("giving up", extra={"fields": {"stage": name, "reason": reason}})
            self.stopping = True
            self.on_fatal(reason)
            return
        undelivered = list(undelivered)
        if failed_on is not None and failed_on is spec.failed_on:
            undelivered = [message for message in undelivered if message is not failed_on]
            self._quarantine(name, failed_on, error)
            failed_on = None
        spec.failed_on = failed_on
        spec.restarts.append(now)
        spec.total_restarts += 1
        spec.restarting = True
        delay = backoff_delay(len(spec.restarts), spec.policy.backoff_seconds, spec.policy.backoff_max_seconds,
                              random.random)
        log.warning("restarting stage", extra={"fields": {"stage": name, "error": error,
                                                          "restarts": spec.total_restarts,
                                                          "handed_over": len(orphans),
                                                          "unhandled_messages": len(undelivered),
                                                          "in_s": round(delay, 3),
                                                          "strategy": spec.policy.strategy}})
        starts = [(spec, orphans, undelivered)]
        if spec.policy.strategy == "rest_for_one":
            for later_spec, held, waiting in self._take_down_later(name):
                later_spec.total_restarts += 1
                later_spec.restarting = True
                starts.append((later_spec, held, waiting))
        me = self.actor_ref
        self.schedule(delay, lambda: me.tell(_Restart(starts)) if me.is_alive() else None)

    def _quarantine(self, name: str, message: object, error: str) -> None:
        """`message` made stage `name` fail twice: never deliver it again; fail the tasks it carries."""
        task_ids = tasks_carried(message)
        self.quarantined += 1
        log.error("message quarantined: it made a stage fail twice", extra={"fields": {
            "stage": name, "message": type(message).__name__, "tasks": len(task_ids), "error": error}})
        if task_ids:
            reason = f"quarantined: its work made stage {name} fail twice ({error})"[:500]
            self.directory.tell("reporter", TasksRejected([Rejection(task_id, reason) for task_id in task_ids]))

    def _take_down_later(self, name: str) -> list[tuple[ChildSpec, list, list]]:
        """Stop the stages started after `name`, last first, keeping what each held."""
        taken = []
        for later in reversed(self.order[self.order.index(name) + 1:]):
            spec, ref = self.specs[later], self.directory.take_down(later)
            held, waiting = list(spec.given), []
            if ref is not None:
                try:
                    held, waiting = ref.proxy().hand_over().get(timeout=self.stop_timeout)
                    ref.actor_stopped.wait(self.stop_timeout)
                except (pykka.ActorDeadError, pykka.Timeout):
                    log.warning("stage did not hand over in time", extra={"fields": {"stage": later}})
            log.info("restarting stage with the one before it", extra={"fields": {"stage": later, "after": name}})
            taken.append((spec, held, waiting))
        return list(reversed(taken))

    # --- asked by the pipeline ---
    def restarts(self) -> dict[str, int]:
        return {name: spec.total_restarts for name, spec in self.specs.items()}

    def stop_children(self) -> None:
        self.stopping = True
        self.directory.closed = True
        for name in self.stop_order:
            # Out of the directory first: a message told after the stop message would be dropped by
            # pykka, so it goes to the directory's `undeliverable` instead.
            ref = self.directory.take_down(name)
            if ref is not None:
                try:
                    ref.stop(block=True, timeout=self.stop_timeout)
                except pykka.Timeout:
                    log.warning("stage did not stop in time", extra={"fields": {"stage": name}})
