"""How aitp opens its SQLite files (the journal, the rate-limit counts)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_database(path: Path) -> sqlite3.Connection:
    """An autocommit connection (transactions are explicit) usable from any thread under the
    owner's lock. WAL lets readers and the writer overlap, also across processes; NORMAL keeps every
    commit durable across a process crash (not necessarily a power cut), the failure these files
    are for. A writer waits up to 30 s for another process's transaction."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db
