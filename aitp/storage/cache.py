"""A small SQLite cache with a time to live: Wikidata look-ups are made once a week, not once per task."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from aitp.storage.sqlite import open_database


class TtlCache:
    """`get` returns what `put` stored under a key, until `ttl_seconds` have passed. Counts its hits
    and misses (for /metrics)."""

    def __init__(self, path: Path, ttl_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._db = None           # opened on first use: a service with no LLM task never creates the file
        self._lock = threading.Lock()
        self._ttl, self._clock = ttl_seconds, clock
        self.hits = self.misses = 0

    def get(self, key: str) -> bytes | None:
        with self._lock:
            row = self._open().execute("SELECT value, stored_at FROM cache WHERE key = ?", (key,)).fetchone()
            if row is not None and self._clock() - row[1] < self._ttl:
                self.hits += 1
                return bytes(row[0])
            self.misses += 1
            return None

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._open().execute("INSERT OR REPLACE INTO cache VALUES (?, ?, ?)", (key, value, self._clock()))

    def _open(self):
        """The connection, opened the first time (under the lock)."""
        if self._db is None:
            self._db = open_database(self._path)
            self._db.execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value BLOB, stored_at REAL)")
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
