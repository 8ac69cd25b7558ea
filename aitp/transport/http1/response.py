"""What an answer is: a Response, or a BodySink that takes its body as it arrives."""

from __future__ import annotations

from typing import Callable, NamedTuple


class Response(NamedTuple):
    status: int
    headers: dict[str, str]       # names in lower case
    body: bytes | bytearray       # a large body stays in the buffer it was read into (no copy);
                                  # empty when it went to a body sink


# Asked with an answer's status and headers; returns where that answer's body goes, piece by
# piece, or None to read it whole into Response.body.
BodySink = Callable[[int, dict[str, str]], Callable[[memoryview | bytes], None] | None]
