"""AnswerBook: a chat answer is kept until the result made from it is journaled, so that a retry
after a failure that came after it (Wikidata down, a result too large to report, a crash) never
asks the model again (issue 28: 2,632 paid answers for 160 tasks while Wikidata answered 503).

Paid answers (OpenAI's) go to the journal, in the same file as the claims: they outlive a crash,
and the outbox row of the result replaces them in one transaction. Unpaid ones (Ollama, the mock)
are kept in memory only, as their results are. Thread-safe: LlmWorkers' threads use it.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import msgspec

from aitp.storage.journal import Journal

# A paid answer whose task this service never finished (another service took it over) is
# dropped from the journal at a start this long after it was kept.
ANSWERS_KEPT_SECONDS = 7 * 86400
# Unpaid answers held in memory at most (the oldest go first): a few minutes of LLM tasks.
_UNPAID_AT_MOST = 10_000


class KeptAnswer(msgspec.Struct, frozen=True):
    """A chat answer that passed its schema and checks: its JSON, and who made it."""

    content: str
    provider: str
    paid: bool
    tokens: int = 0


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(KeptAnswer)


def answer_key(model: str, schema_name: str, system: str, text: str, content: bytes, schema: dict) -> str:
    """What an answer was asked for: the task (its text and content), the model, the prompt's version
    and the schema. Not the enrichment the question carries (the severity's Wikidata context): that
    may change between two tries (a cache row expired, Wikidata away), and the answer paid stays good."""
    digest = hashlib.sha256()
    for part in (model, schema_name, system, text, content.decode("utf-8", "replace"),
                 _encoder.encode(schema).decode()):
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


class AnswerBook:
    def __init__(self, journal: Journal | None, unpaid_at_most: int = _UNPAID_AT_MOST) -> None:
        self.journal = journal
        self._lock = threading.Lock()
        self._unpaid: OrderedDict[str, tuple[str, KeptAnswer]] = OrderedDict()
        self._at_most = unpaid_at_most
        self.reused = 0

    def get(self, task_id: str, key: str) -> KeptAnswer | None:
        with self._lock:
            held = self._unpaid.get(task_id)
        answer = held[1] if held is not None and held[0] == key else None
        if answer is None and self.journal is not None:
            kept = self.journal.kept_answer(task_id, key)
            answer = _decoder.decode(kept) if kept is not None else None
        if answer is not None:
            with self._lock:
                self.reused += 1
        return answer

    def keep(self, task_id: str, key: str, answer: KeptAnswer) -> None:
        if answer.paid and self.journal is not None:
            self.journal.keep_answer(task_id, key, _encoder.encode(answer))
            return
        with self._lock:
            self._unpaid[task_id] = (key, answer)
            self._unpaid.move_to_end(task_id)
            while len(self._unpaid) > self._at_most:
                self._unpaid.popitem(last=False)

    def holds(self, task_id: str) -> bool:
        """Is an answer kept for this task (for whatever question)?"""
        with self._lock:
            if task_id in self._unpaid:
                return True
        return self.journal is not None and self.journal.has_answer(task_id)

    def done(self, task_id: str) -> None:
        """The task's result exists now (a paid one is journaled with it, which drops the answer)."""
        with self._lock:
            self._unpaid.pop(task_id, None)
