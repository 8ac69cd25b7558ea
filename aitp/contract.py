"""The task API's wire contract (../shared/CONTRACT.md) as msgspec structs and decoders.

The pending list is decoded in two steps: first into raw slices, one per task, then each task on
its own, and only as far as the poller reads: one malformed task never blocks the others, and a
poll that takes 128 tasks from a list of 100,000 decodes little more than those 128.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterator

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
    """An entry of the pending list that is left alone: its id may not reach a URL, or the entry
    cannot be read at all. `reason` is one of a few fixed words (a metric label); `description`
    says more, for the log."""

    reason: str
    description: str


# Why an entry is left alone (bounded: these are metric labels).
UNUSABLE_ID, NOT_AN_OBJECT, TOO_DEEP = "unusable id", "not an object", "too deep"


class PendingList:
    """What one poll kept of the pending list, in server order. `truncated`: the server listed more
    than was kept, so the next poll will find more even if nothing new arrives."""

    def __init__(self, entries: list, truncated: bool = False) -> None:
        self._entries = entries
        self.truncated = truncated

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator:
        return iter(self._entries)

    def read(self, index: int):
        return self._entries[index]


# One JSON escape at a time (so an escaped backslash is never taken for the start of an escape):
# a surrogate pair, a lone surrogate, or any other escape.
_ESCAPES = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
                      rb"|(\\u[dD][89a-fA-F][0-9a-fA-F]{2})|\\.")


def replace_lone_surrogates(body: bytes) -> bytes:
    """JSON allows a lone surrogate escape (`"\\ud800"`, which JavaScript's JSON.stringify writes);
    msgspec, like UTF-8, does not. Replace each with U+FFFD so that one such task cannot make the
    whole list unreadable (no provider could embed the lone surrogate anyway)."""
    return _ESCAPES.sub(lambda m: rb"\ufffd" if m.group(1) else m.group(0), body)


SEGMENT_BYTES = 1 << 20          # split what has arrived once this much has piled up
_CUTS_TRIED = 4                   # candidate boundaries tried per segment before waiting for more
_AFTER_CLOSE = re.compile(rb"[ \t\r\n]*,[ \t\r\n]*\{")


class PendingSplitter:
    """Splits the pending list as it arrives, keeping only the first entries `keep` accepts.

    The server sends every pending task on every poll (38 MB at 100,000), and a poll only needs
    the next few thousand, so holding the whole body would make memory grow with the backlog.
    Arriving bytes are cut into segments of about 1 MB at a `},{` between two entries, each segment
    is split by msgspec, and each entry goes through `keep` (None drops it). Once `max_entries` are
    kept or `max_bytes` of them, the rest of the body is read and dropped.

    A cut that falls inside a string or a nested value can never be taken for a real one: the
    segment is then not a complete JSON array (the entry's own `{` stays open), so its decode
    fails and an earlier candidate, or more data, is tried. A body that is not a JSON array fails
    in `finish` with a ContractError.
    """

    def __init__(self, keep: Callable[[msgspec.Raw], Any] | None = None, *,
                 max_entries: int | None = None, max_bytes: int | None = None,
                 segment_bytes: int = SEGMENT_BYTES) -> None:
        self._keep = keep or read_entry
        self._segment_bytes = segment_bytes
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._buffer = bytearray()       # the unsplit rest, always a JSON array's opening part
        self._entries: list = []
        self._kept_bytes = 0
        self._full = False
        self._truncated = False
        self._split_at = segment_bytes

    def feed(self, data: bytes | memoryview) -> None:
        if self._full:
            return                       # kept enough: the rest only has to be read off the socket
        self._buffer += data
        if len(self._buffer) >= self._split_at:
            self._split_some()

    def finish(self) -> PendingList:
        if not self._full:
            raws = _decode_segment(bytes(self._buffer))
            if raws is None:
                raise ContractError(f"pending list is not a JSON array: {bytes(self._buffer[:60])!r}")
            self._buffer = bytearray()
            self._accept(raws, more_follows=False)
        return PendingList(self._entries, self._truncated)

    def _split_some(self) -> None:
        buffer = self._buffer
        end = len(buffer)
        for _ in range(_CUTS_TRIED):
            boundary = _last_boundary(buffer, end)
            if boundary is None:
                break
            close, comma = boundary
            raws = _decode_segment(bytes(buffer[:close + 1]) + b"]")
            if raws is not None:
                del buffer[:comma]
                buffer[0:1] = b"["       # the comma becomes the opening of the rest
                self._split_at = self._segment_bytes
                self._accept(raws, more_follows=True)
                return
            end = close                  # inside a string or a nested value: try an earlier one
        self._split_at = len(buffer) + self._segment_bytes     # no luck: wait for more before trying again

    def _accept(self, raws: list[msgspec.Raw], more_follows: bool) -> None:
        for raw in raws:
            if self._kept_enough():
                self._stop_keeping()
                return
            entry = self._keep(raw)
            if entry is not None:
                self._entries.append(entry)
                self._kept_bytes += len(raw)
        if more_follows and self._kept_enough():
            self._stop_keeping()

    def _kept_enough(self) -> bool:
        return ((self._max_entries is not None and len(self._entries) >= self._max_entries)
                or (self._max_bytes is not None and self._kept_bytes >= self._max_bytes))

    def _stop_keeping(self) -> None:
        """More entries follow than may be kept: the list is truncated, and the rest is dropped."""
        self._full = self._truncated = True
        self._buffer = bytearray()


def _last_boundary(buffer: bytearray, end: int) -> tuple[int, int] | None:
    """The last `}` before `end` followed by a comma and a `{` (JSON whitespace allowed between):
    where one entry may end and the next begin. Returns the positions of the `}` and the comma."""
    while (close := buffer.rfind(b"}", 0, end)) >= 0:
        if _AFTER_CLOSE.match(buffer, close + 1):
            return close, buffer.index(b",", close + 1)
        end = close
    return None


def _decode_segment(segment: bytes) -> list[msgspec.Raw] | None:
    """The entries of a segment that should be a whole JSON array, or None where it is not one.
    Where msgspec cannot read it (an entry nested too deep, or one that is not JSON, as `Infinity`),
    the array is split by its structure alone, so that each entry is judged on its own."""
    try:
        return _list_decoder.decode(segment)
    except (msgspec.DecodeError, RecursionError):
        pass
    if b"\\u" in segment:
        segment = replace_lone_surrogates(segment)
        try:
            return _list_decoder.decode(segment)
        except (msgspec.DecodeError, RecursionError):
            pass
    return scan_entries(segment)


# One token of JSON's structure: a whole string (escapes included), a quote that opens a string
# never closed (the segment was cut inside it), or one of the five structural characters.
# Everything else (numbers, literals, white space) lies between tokens.
_STRUCTURE = re.compile(rb'"(?:[^"\\]|\\.)*"|"|[\[\]{},]')


def scan_entries(segment: bytes) -> list[msgspec.Raw] | None:
    """Split a JSON array into its entries without recursing into them, so that one entry nested
    deeper than any decoder allows is split off like the others (and then left alone on its own).
    None where `segment` is not one whole array (a string or a bracket left open). Slower than
    msgspec: used only where msgspec gave up."""
    depth, start, entries, opened = 0, -1, [], False
    for token in _STRUCTURE.finditer(segment):
        char = segment[token.start()]
        if char == 0x22:               # a string; a lone quote: cut inside a string
            if token.end() - token.start() == 1:
                return None
            continue
        if char in b"[{":
            if depth == 0:
                if opened or char != 0x5B:
                    return None        # a second top-level value, or not an array
                opened, start = True, token.end()
            depth += 1
        elif char in b"]}":
            depth -= 1
            if depth < 0:
                return None
            if depth == 0:
                last = segment[start:token.start()].strip()
                if last:
                    entries.append(msgspec.Raw(last))
                elif entries:
                    return None        # a trailing comma
                if segment[token.end():].strip():
                    return None
                return entries
        elif depth == 1:               # a comma between two entries
            entries.append(msgspec.Raw(segment[start:token.start()].strip()))
            start = token.end()
    return None


def decode_pending(body: bytes) -> PendingList:
    """Split a whole pending list; raises ContractError only when the body is not a JSON array."""
    splitter = PendingSplitter()
    splitter.feed(body)
    return splitter.finish()


def read_entry(raw: msgspec.Raw) -> Task | Unusable:
    try:
        head = _head_decoder.decode(raw)
    except msgspec.DecodeError:
        return Unusable(NOT_AN_OBJECT, f"not an object: {bytes(raw)[:40]!r}")
    except RecursionError:
        return Unusable(TOO_DEEP, f"nested too deep to read ({len(raw)} bytes): {bytes(raw)[:40]!r}")
    if not is_object_id(head.id):
        return Unusable(UNUSABLE_ID, f"unusable _id {str(head.id)[:40]!r}")
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
