"""Resuming a task claimed elsewhere: by the last run (the journal) or by a service that died (its
lease in Redis). Either way the task is `in_progress` on the API and only its JSON is at hand."""

from __future__ import annotations

import logging

from aitp.contract import RELEASE_BODY, state_body, task_type_of
from aitp.storage.journal import OutboxEntry
from aitp.tasks import ChatJob, EmbeddingJob, TaskHandler, TaskRejected

log = logging.getLogger("aitp.actors")


def resume(handlers: dict[str, TaskHandler], task_id: str, task_json: bytes) -> EmbeddingJob | ChatJob | OutboxEntry:
    """The job to compute again, or the answer the API gets instead: `failed` with the reason when
    the task is malformed, `pending` when no handler takes its type (another worker may)."""
    try:
        handler = handlers.get(task_type_of(task_json))
        if handler is None:
            return OutboxEntry(task_id, RELEASE_BODY, "pending")
        return handler.parse(task_id, task_json)
    except Exception as exc:  # noqa: BLE001 - a claim that no longer parses, whatever the reason
        reason = str(exc) if isinstance(exc, TaskRejected) else f"unreadable claim: {exc!r}"
        log.warning("a claimed task cannot be resumed; reporting it failed",
                    extra={"fields": {"task_id": task_id, "reason": reason[:200]}})
        return OutboxEntry(task_id, state_body("failed", reason[:500]), "failed")
