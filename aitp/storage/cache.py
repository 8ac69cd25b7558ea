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
        self._db = open_database(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value BLOB, stored_at REAL)")
        self._lock = threading.Lock()
        self._ttl, self._clock = ttl_seconds, clock
        self.hits = self.misses = 0

    def get(self, key: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT value, stored_at FROM cache WHERE key = ?", (key,)).fetchone()
            if row is not None and self._clock() - row[1] < self._ttl:
                self.hits += 1
                return bytes(row[0])
            self.misses += 1
            return None

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO cache VALUES (?, ?, ?)", (key, value, self._clock()))

    def close(self) -> None:
        with self._lock:
            self._db.close()
