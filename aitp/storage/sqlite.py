"""How aitp opens its SQLite files (the journal, the rate-limit counts)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from aitp.storage.files import private_file


def open_database(path: Path) -> sqlite3.Connection:
    """An autocommit connection (transactions are explicit) usable from any thread under the
    owner's lock. WAL lets readers and the writer overlap, also across processes; NORMAL keeps every
    commit durable across a process crash (not necessarily a power cut), the failure these files
    are for. A writer waits up to 30 s for another process's transaction.

    secure_delete=FAST: builds that default it on (Debian's, for one) overwrite every page a
    delete frees, and each acknowledged result frees about three pages of vector. That tripled the
    cost of acknowledging a result (32 against 9 us per task). FAST still zeroes deleted rows in
    the pages a delete writes anyway; freed overflow pages keep old vectors until they are reused,
    in a file that never leaves this host.

    The file is 0600 before SQLite opens it, and SQLite gives its -wal and -shm files the same mode."""
    private_file(path)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA secure_delete=FAST")
    return db
