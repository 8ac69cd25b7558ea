"""A small SQLite cache with a time to live: Wikidata look-ups are made once a week, not once per task."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from aitp.storage.sqlite import open_database

# Expired rows are deleted at the first use and then every this many writes, so the file does not
# grow without bound with names looked up once.
_PURGE_EVERY_PUTS = 1000


class TtlCache:
    """`get` returns what `put` stored under a key, until its time to live has passed (the cache's,
    or a shorter one given to `put`, as for a negative answer). Counts its hits and misses (for
    /metrics)."""

    def __init__(self, path: Path, ttl_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._db = None           # opened on first use: a service with no LLM task never creates the file
        self._lock = threading.Lock()
        self._ttl, self._clock = ttl_seconds, clock
        self._puts = 0
        self.hits = self.misses = self.purged = 0

    def get(self, key: str) -> bytes | None:
        with self._lock:
            row = self._open().execute("SELECT value, stored_at, ttl FROM cache WHERE key = ?", (key,)).fetchone()
            if row is not None and self._clock() - row[1] < (self._ttl if row[2] is None else row[2]):
                self.hits += 1
                return bytes(row[0])
            self.misses += 1
            return None

    def put(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None:
        with self._lock:
            db = self._open()
            db.execute("INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?)", (key, value, self._clock(), ttl_seconds))
            self._puts += 1
            if self._puts % _PURGE_EVERY_PUTS == 0:
                self._purge(db)

    def _purge(self, db) -> None:
        self.purged += db.execute("DELETE FROM cache WHERE stored_at + coalesce(ttl, ?) <= ?",
                                  (self._ttl, self._clock())).rowcount

    def _open(self):
        """The connection, opened the first time (under the lock)."""
        if self._db is None:
            db = open_database(self._path)
            db.execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value BLOB, stored_at REAL, ttl REAL)")
            if "ttl" not in {row[1] for row in db.execute("PRAGMA table_info(cache)")}:   # a cache of before
                db.execute("ALTER TABLE cache ADD COLUMN ttl REAL")
            self._purge(db)
            self._db = db
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
