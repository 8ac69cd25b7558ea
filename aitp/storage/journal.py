"""The journal: one SQLite file with claimed tasks, the outbox of unreported results, and model pins.

Order of writes makes a crash at any moment safe: a claim is written before the task is PATCHed
`in_progress`; a journaled result enters the outbox in the same transaction that retires its
claim; an outbox row is deleted only after the API acknowledged the PATCH. A result that is not
journaled (unpaid, see actors/reporter.py) keeps its claim until then, so a crash computes it again.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import msgspec

from aitp.contract import state_body
from aitp.storage.sqlite import open_database

if TYPE_CHECKING:
    from aitp.vectors.jobs import TaskVector

_SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    task_id     TEXT PRIMARY KEY,
    task_json   BLOB NOT NULL,
    claimed_at  REAL NOT NULL,
    reservation INTEGER NOT NULL DEFAULT 0,
    sent        INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbox (
    task_id    TEXT PRIMARY KEY,
    body       BLOB NOT NULL,
    state      TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS answers (
    task_id    TEXT PRIMARY KEY,
    key        TEXT NOT NULL,
    answer     BLOB NOT NULL,
    kept_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS model_dimensions (
    model      TEXT PRIMARY KEY,
    dimension  INTEGER NOT NULL
);
"""


class Claim(msgspec.Struct, frozen=True):
    task_id: str
    task_json: bytes
    reservation: int = 0      # the rate-limit reservation its unit came from (0: none)
    sent: bool = False        # has a provider been asked to embed it (so its unit is spent)?


class OutboxEntry(msgspec.Struct, frozen=True):
    task_id: str
    body: bytes
    state: str


def result_entry(result: TaskVector) -> OutboxEntry:
    """The outbox entry for one task's result: its success body, or a failure with the reason."""
    if result.body is not None:
        return OutboxEntry(result.task_id, result.body, "succeeded")
    return OutboxEntry(result.task_id, state_body("failed", result.error or "no vector"), "failed")


class Journal:
    """Thread-safe; every method is one short transaction."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = open_database(self.path)
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(claims)")}
        for column in ("reservation", "sent"):   # a journal written before rate-limit refunds existed
            if column not in columns:
                self._db.execute(f"ALTER TABLE claims ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
        # Whether any chat answer is kept: add_results, on the embeddings' hot path, skips their
        # table while none is.
        self._answers_kept = self._db.execute("SELECT 1 FROM answers LIMIT 1").fetchone() is not None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _write(self, sql: str, rows: list[tuple]) -> None:
        if rows:
            with self._transaction() as db:
                db.executemany(sql, rows)

    # --- claims ---
    def record_claims(self, claims: list[Claim]) -> None:
        now = time.time()
        self._write("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?)",
                    [(claim.task_id, claim.task_json, now, claim.reservation, int(claim.sent)) for claim in claims])

    def mark_sent(self, task_ids: list[str]) -> None:
        """These claimed tasks go to a provider now: their rate-limit units are spent."""
        self._write("UPDATE claims SET sent = 1 WHERE task_id = ?", [(task_id,) for task_id in task_ids])

    def drop_claims(self, task_ids: list[str]) -> None:
        self._write("DELETE FROM claims WHERE task_id = ?", [(task_id,) for task_id in task_ids])

    def claims(self) -> list[Claim]:
        with self._lock:
            rows = self._db.execute("SELECT task_id, task_json, reservation, sent FROM claims "
                                    "ORDER BY claimed_at").fetchall()
        return [Claim(task_id, bytes(task_json), reservation, bool(sent))
                for task_id, task_json, reservation, sent in rows]

    def reservations_of(self, task_ids: list[str]) -> dict[str, int]:
        """The rate-limit reservation of each claimed task (tasks without a claim are left out)."""
        with self._lock:
            return {task_id: row[0] for task_id in task_ids
                    if (row := self._db.execute("SELECT reservation FROM claims WHERE task_id = ?",
                                                (task_id,)).fetchone())}

    # --- outbox ---
    def add_results(self, entries: list[OutboxEntry]) -> None:
        """Store results and retire their claims in one transaction."""
        if not entries:
            return
        now = time.time()
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO outbox VALUES (?, ?, ?, ?)",
                           [(e.task_id, e.body, e.state, now) for e in entries])
            db.executemany("DELETE FROM claims WHERE task_id = ?", [(e.task_id,) for e in entries])
            if self._answers_kept:     # a result stands for the chat answer it was made from (a release does not)
                db.executemany("DELETE FROM answers WHERE task_id = ?",
                               [(e.task_id,) for e in entries if e.state != "pending"])

    def acknowledge(self, task_ids: list[str]) -> None:
        """The API took these results: forget them, whether they were in the outbox or (results
        not journaled, see actors/reporter.py) still only claimed."""
        if not task_ids:
            return
        rows = [(task_id,) for task_id in task_ids]
        with self._transaction() as db:
            db.executemany("DELETE FROM outbox WHERE task_id = ?", rows)
            db.executemany("DELETE FROM claims WHERE task_id = ?", rows)

    # --- paid chat answers, kept until the result made from them is journaled (aitp/tasks/answers.py) ---
    def keep_answer(self, task_id: str, key: str, answer: bytes) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)", (task_id, key, answer, time.time()))
            self._answers_kept = True

    def kept_answer(self, task_id: str, key: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT answer FROM answers WHERE task_id = ? AND key = ?",
                                   (task_id, key)).fetchone()
        return bytes(row[0]) if row else None

    def has_answer(self, task_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM answers WHERE task_id = ?", (task_id,)).fetchone() is not None

    def drop_answers(self, task_ids: list[str]) -> None:
        self._write("DELETE FROM answers WHERE task_id = ?", [(task_id,) for task_id in task_ids])

    def purge_answers(self, older_than_seconds: float) -> int:
        """Answers kept for tasks this service never finished (another took them): dropped by age."""
        with self._transaction() as db:
            purged = db.execute("DELETE FROM answers WHERE kept_at < ?", (time.time() - older_than_seconds,)).rowcount
            self._answers_kept = db.execute("SELECT 1 FROM answers LIMIT 1").fetchone() is not None
        return purged

    def outbox(self) -> list[OutboxEntry]:
        with self._lock:
            rows = self._db.execute("SELECT task_id, body, state FROM outbox ORDER BY created_at").fetchall()
        return [OutboxEntry(task_id, bytes(body), state) for task_id, body, state in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            claims = self._db.execute("SELECT count(*) FROM claims").fetchone()[0]
            outbox = self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        return {"claims": claims, "outbox": outbox}

    def answers_kept(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM answers").fetchone()[0]

    # --- model dimensions learned from the first vector ---
    def pin_dimension(self, model: str, dimension: int) -> int:
        """Pin `model` to `dimension` unless already pinned; return the pinned value."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO model_dimensions VALUES (?, ?)", (model, dimension))
            return self._db.execute("SELECT dimension FROM model_dimensions WHERE model = ?",
                                    (model,)).fetchone()[0]

    def pinned_dimensions(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT model, dimension FROM model_dimensions").fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()
