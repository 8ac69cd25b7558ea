"""PatchSender: a stage's PATCHes, queued in chunks and sent by its pool's threads, each thread
taking every chunk waiting when it comes free (up to MAX_GROUP PATCHes) as one pipelined group.

Why coalesce: a chunk holds its thread for a round trip. On loopback that is a millisecond and
chunks rarely wait; with the API 100 ms away, a chunk per batch of results would hold a thread per
100 ms and cap the rate at threads x batch / RTT. Taking what has queued meanwhile makes groups
grow with the round trip by themselves, as a TCP window does, with no setting to tune.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from aitp.transport.task_api import PatchOutcome, PatchResult, TaskApiClient

log = logging.getLogger("aitp.actors")

# The most PATCHes one group carries: a bounded answer to read, and a failure (the group stops at
# its first request without an answer) that costs a bounded number of retries.
MAX_GROUP = 256


@dataclass
class _Chunk:
    items: list
    patch_of: Callable[[Any], tuple[str, bytes, bool]]
    answer: Callable[[list[tuple[Any, PatchResult]]], Any]


class PatchSender:
    def __init__(self, pool: ThreadPoolExecutor, threads: int, api: TaskApiClient,
                 deliver: Callable[[Any], None], stage_name: str) -> None:
        self._pool, self._threads, self._api = pool, threads, api
        self._deliver, self._stage_name = deliver, stage_name
        self._lock = threading.Lock()
        self._queued: deque[_Chunk] = deque()
        self._queued_items = 0
        self._senders = 0           # threads taking from the queue now
        self._on_wire = 0           # of them, those with a group on the wire
        self._closed = False        # set by a stop that drops what is queued (the journal keeps it)

    def send(self, chunks: list[list], patch_of: Callable[[Any], tuple[str, bytes, bool]],
             answer: Callable[[list[tuple[Any, PatchResult]]], Any]) -> None:
        with self._lock:
            for items in chunks:
                if items:
                    self._queued.append(_Chunk(items, patch_of, answer))
                    self._queued_items += len(items)
            starting = min(self._threads - self._senders, len(self._queued))
            self._senders += starting
        for _ in range(starting):
            self._pool.submit(self._send_queued)

    def drop_queued(self) -> None:
        """Stop sending what waits (a graceful stop: the journal keeps its work); groups on the
        wire finish and are answered."""
        with self._lock:
            self._closed = True
            self._queued.clear()
            self._queued_items = 0

    def _take_group(self) -> list[_Chunk]:
        with self._lock:
            if self._closed or not self._queued:
                self._senders -= 1
                return []
            # A fair share of what waits among the threads about to take from it, so that a take's
            # claims still spread over every thread starting (a slow API) rather than one taking
            # all. Threads on the wire take nothing for a round trip: a thread that comes free
            # while the others are out takes everything, or what waits would wait a round trip more.
            share = min(MAX_GROUP, -(-self._queued_items // (self._senders - self._on_wire)))
            group = [self._queued.popleft()]
            size = len(group[0].items)
            while self._queued and size < share and size + len(self._queued[0].items) <= MAX_GROUP:
                chunk = self._queued.popleft()
                group.append(chunk)
                size += len(chunk.items)
            self._queued_items -= size
            self._on_wire += 1
            return group

    def _send_queued(self) -> None:
        while group := self._take_group():
            patches = [chunk.patch_of(item) for chunk in group for item in chunk.items]
            delivery = _Delivery(group, self._deliver)
            try:
                results = self._api.patch_in_order(patches, early=delivery.up_to)
            except Exception as exc:  # noqa: BLE001 - a chunk without an answer would be stranded
                log.exception("PATCHing a group failed in the client; its items will be retried",
                              extra={"fields": {"stage": self._stage_name, "items": len(patches)}})
                results = [PatchResult(PatchOutcome.RETRY, detail=f"client error: {exc!r}"[:200])] * len(patches)
            with self._lock:
                self._on_wire -= 1
            delivery.up_to(len(patches), results)


class _Delivery:
    """A group's answers to its chunks' stages, in order, as they become final: on a busy API the
    first claims of a large group are answered long before the last, and a provider waiting for
    work should not wait for the whole group (answer functions take any part of a chunk's items)."""

    def __init__(self, group: list[_Chunk], deliver: Callable[[Any], None]) -> None:
        self._group, self._deliver = group, deliver
        self._chunk = 0          # the chunk delivering next
        self._offset = 0         # items of it delivered already
        self._done = 0           # items of the group delivered

    def up_to(self, count: int, results: list) -> None:
        """Deliver the answers of items [delivered, count)."""
        while self._done < count and self._chunk < len(self._group):
            chunk = self._group[self._chunk]
            take = min(len(chunk.items) - self._offset, count - self._done)
            items = chunk.items[self._offset:self._offset + take]
            self._deliver(chunk.answer(list(zip(items, results[self._done:self._done + take]))))
            self._done += take
            self._offset += take
            if self._offset == len(chunk.items):
                self._chunk, self._offset = self._chunk + 1, 0
