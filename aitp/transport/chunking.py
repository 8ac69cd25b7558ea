"""How many PATCHes go on one connection at a time: as few chunks as keep each short at the API's
measured pace (a hand-off and an answer message cost more than a request on a fast API)."""

from __future__ import annotations

# The fewest PATCHes a pipelined chunk carries: a batch's results go as one chunk.
_PIPELINED_CHUNK = 16
# About how long one chunk should take on its connection. A fast API gets a take's claims in one
# or two chunks (each more chunk costs a hand-off, an answer message and thread wake-ups); a slow
# one gets them spread over the whole pool. A take is a few hundred ms of provider work, so claims
# that land within 50 ms keep well ahead of it.
_CHUNK_SECONDS = 0.05


def chunk_sizes(items: int, threads: int, pipelining: bool, patch_seconds: float | None) -> list[int]:
    """How many PATCHes each chunk carries: as few chunks as keep each within _CHUNK_SECONDS at
    the API's measured pace (all `threads` while that pace is unknown), at most one per thread."""
    if not items:
        return []
    smallest = _PIPELINED_CHUNK if pipelining else 1
    if patch_seconds:
        smallest = max(smallest, int(_CHUNK_SECONDS / patch_seconds))
    ways = max(1, min(threads, items // smallest))
    size, extra = divmod(items, ways)
    return [size + (index < extra) for index in range(ways)]
