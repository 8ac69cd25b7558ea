"""The task API's wire contract (../shared/CONTRACT.md) as msgspec structs and decoders.

The pending list is decoded in two steps: first into raw slices, one per task, then each task on
its own, and only as far as the poller reads: one malformed task never blocks the others, and a
poll that takes 128 tasks from a list of 100,000 decodes little more than those 128.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import msgspec

from aitp.errors import ContractError

STATES = ("pending", "in_progress", "succeeded", "failed")
_OBJECT_ID = re.compile(r"[0-9a-f]{24}")


def is_object_id(value: object) -> bool:
    """Only a 24-character lowercase hex MongoDB ObjectId may ever reach a URL."""
    return isinstance(value, str) and _OBJECT_ID.fullmatch(value) is not None


class TaskHead(msgspec.Struct):
    """Just enough of a task to route it: its id and type (either may be anything on the wire)."""

    id: Any = msgspec.field(default=None, name="_id")
    type: Any = None


class Task(msgspec.Struct, frozen=True):
    """A task whose id is usable; `raw` keeps its exact JSON for the journal and its handler."""

    id: str
    type: str
    raw: bytes


_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_head_decoder = msgspec.json.Decoder(TaskHead)


class Unusable(msgspec.Struct, frozen=True):
    """An entry of the pending list whose id may not reach a URL: left alone, described for the log."""

    description: str


class PendingList:
    """One poll's answer: a raw slice per entry, each decoded only when the iteration reaches it."""

    def __init__(self, entries: list[msgspec.Raw]) -> None:
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Task | Unusable]:
        """Tasks with a usable id and a string type, and Unusable entries, in server order."""
        for raw in self._entries:
            yield read_entry(raw)

    def read(self, index: int) -> Task | Unusable:
        return read_entry(self._entries[index])


# One JSON escape at a time (so an escaped backslash is never taken for the start of an escape):
# a surrogate pair, a lone surrogate, or any other escape.
_ESCAPES = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
                      rb"|(\\u[dD][89a-fA-F][0-9a-fA-F]{2})|\\.")


def replace_lone_surrogates(body: bytes) -> bytes:
    """JSON allows a lone surrogate escape (`"\\ud800"`, which JavaScript's JSON.stringify writes);
    msgspec, like UTF-8, does not. Replace each with U+FFFD so that one such task cannot make the
    whole list unreadable (no provider could embed the lone surrogate anyway)."""
    return _ESCAPES.sub(lambda m: rb"\ufffd" if m.group(1) else m.group(0), body)


def decode_pending(body: bytes) -> PendingList:
    """Split the pending list; raises ContractError only when the body is not a JSON array."""
    try:
        raws = _list_decoder.decode(body)
    except msgspec.DecodeError as exc:
        repaired = replace_lone_surrogates(body) if b"\\u" in body else body
        try:
            raws = _list_decoder.decode(repaired)
        except msgspec.DecodeError:
            raise ContractError(f"pending list is not a JSON array: {exc}") from None
    return PendingList(raws)


def read_entry(raw: msgspec.Raw) -> Task | Unusable:
    try:
        head = _head_decoder.decode(raw)
    except msgspec.DecodeError:
        return Unusable(f"not an object: {bytes(raw)[:40]!r}")
    if not is_object_id(head.id):
        return Unusable(f"unusable _id {str(head.id)[:40]!r}")
    task_type = head.type if isinstance(head.type, str) else repr(head.type)
    return Task(id=head.id, type=task_type, raw=bytes(raw))


def task_type_of(raw: bytes) -> str:
    """The type of one task's JSON (a journaled claim), or "" when it has none usable."""
    head = _head_decoder.decode(raw)
    return head.type if isinstance(head.type, str) else ""


class StateUpdate(msgspec.Struct, omit_defaults=True):
    """A PATCH body other than a success (a success body is encoded by the vector workers)."""

    state: str
    error: str | None = None


_encoder = msgspec.json.Encoder()


def state_body(state: str, error: str | None = None) -> bytes:
    if state not in STATES:
        raise ContractError(f"invalid state {state!r}")
    return _encoder.encode(StateUpdate(state=state, error=error))


# The two bodies every run sends most: a claim, and a task given back to the queue.
CLAIM_BODY = state_body("in_progress")
RELEASE_BODY = state_body("pending")
