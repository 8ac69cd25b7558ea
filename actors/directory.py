"""Name -> current actor: how the stages reach each other across restarts."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any, Callable

import pykka


class StageDirectory:
    """Name -> current actor. A message for a stage that is down waits here and goes to the
    restarted stage, so a restart loses no message."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[str, pykka.ActorRef] = {}
        self._waiting: dict[str, list[Any]] = defaultdict(list)
        self.closed = False
        # Once closed (shutting down), a message for a stage that is gone goes here instead: the
        # pipeline journals late results rather than lose them.
        self.undeliverable: Callable[[str, Any], None] | None = None

    def tell(self, name: str, message: Any) -> None:
        with self._lock:
            ref = self._refs.get(name)
            if ref is not None:
                try:
                    ref.tell(message)
                    return
                except pykka.ActorDeadError:
                    pass
            if not self.closed:
                self._waiting[name].append(message)
                return
        if self.undeliverable is not None:
            self.undeliverable(name, message)

    def ref(self, name: str) -> pykka.ActorRef | None:
        with self._lock:
            return self._refs.get(name)

    def put(self, name: str, ref: pykka.ActorRef, first: list | tuple = ()) -> None:
        """Register a (re)started stage and hand it `first` (what its predecessor held unhandled,
        which is older), then what waited here for it, in order."""
        with self._lock:
            self._refs[name] = ref
            waiting, self._waiting[name] = [*first, *self._waiting[name]], []
            for index, message in enumerate(waiting):
                try:
                    ref.tell(message)
                except pykka.ActorDeadError:   # died at once (in on_start): keep the rest for the next one
                    self._waiting[name] = waiting[index:]
                    break

    def take_down(self, name: str, urn: str | None = None) -> pykka.ActorRef | None:
        """Unregister a stage that is about to be replaced (only the instance `urn`, when given):
        messages for it wait here meanwhile. Once this returns, no tell through the directory can
        still reach the old instance."""
        with self._lock:
            ref = self._refs.get(name)
            if ref is None or (urn is not None and ref.actor_urn != urn):
                return None
            return self._refs.pop(name)

    def waiting(self, name: str) -> int:
        with self._lock:
            return len(self._waiting[name])

    def statuses(self, names: list[str], seconds: float, last: dict[str, dict]) -> dict[str, dict]:
        """Each stage's status(), asked of all at once (one inside a long call delays none of the
        others) and waited for `seconds` together. A stage that takes longer is shown `busy` with
        its `last` answer (a slow poll or token fetch); one that is gone, `down`."""
        asked: dict[str, Any] = {}
        for name in names:
            ref = self.ref(name)
            try:
                asked[name] = ref.proxy().status() if ref is not None and ref.is_alive() else None
            except pykka.ActorDeadError:
                asked[name] = None
        deadline = time.monotonic() + seconds
        stages: dict[str, dict] = {}
        for name, answer in asked.items():
            try:
                stages[name] = {"state": "down"} if answer is None else \
                    answer.get(timeout=max(0.0, deadline - time.monotonic()))
                last[name] = stages[name]
            except pykka.ActorDeadError:
                stages[name] = {"state": "down"}
            except pykka.Timeout:
                stages[name] = {**last.get(name, {}), "state": "busy"}
        return stages
