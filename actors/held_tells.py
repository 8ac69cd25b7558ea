"""HeldTells: the tells a stage puts off until its inbox is empty (Stage.tell_soon), joined into
one message per receiver and kind. A plain object: no pykka, no thread.

On a failure, what earlier messages held is told; what the failing message added is told too when
telling it twice is harmless (`repeat_safe`: a TasksSettled), and dropped when the message's replay
by the next instance tells it again and twice would cost (a TasksClaimed: a batch paid twice).
"""

from __future__ import annotations

from typing import Any, Callable

Key = tuple[str, Callable[[list], Any]]

# Held items of one kind past this go out at once: a stage that never finds its inbox empty still
# settles its tasks (and frees the Poller's credit) every few batches.
HOLD_AT_MOST = 256


class HeldTells:
    def __init__(self, at_most: int = HOLD_AT_MOST) -> None:
        self.at_most = at_most
        self.held: dict[Key, list] = {}
        self.repeat_safe: set[Key] = set()
        self.marks: dict[Key, int] | None = None    # while a message is handled: what was held before it

    def hold(self, stage: str, make: Callable[[list], Any], items: list, repeat_safe: bool) -> bool:
        """Hold `items` for make(items) to `stage`; True when they should go out now (too many)."""
        key = (stage, make)
        held = self.held.setdefault(key, [])
        held.extend(items)
        if repeat_safe:
            self.repeat_safe.add(key)
        return len(held) >= self.at_most

    def begin(self) -> None:
        """A message is being handled: what it adds is its own until end()."""
        self.marks = {key: len(items) for key, items in self.held.items()}

    def end(self) -> None:
        self.marks = None

    def failed(self) -> None:
        """The message being handled failed (it will be handled again): drop what it added that
        its replay tells again. A failure between messages (in idle work) drops nothing."""
        if self.marks is None:
            return
        for key, items in self.held.items():
            if key not in self.repeat_safe:
                del items[self.marks.get(key, 0):]
        self.marks = None

    def take(self) -> list[tuple[str, Any]]:
        """Every (stage, message) held, in the order the kinds were first held; nothing is left."""
        held, self.held, self.repeat_safe = self.held, {}, set()
        if self.marks is not None:
            self.marks = {}
        return [(stage, make(items)) for (stage, make), items in held.items() if items]
