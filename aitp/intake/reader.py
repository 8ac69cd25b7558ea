"""What an entry of the pending list becomes when it is taken: a job to compute, or a rejection
(the task is malformed, or no provider of this mode will take it), so that one bad task never
stops the others."""

from __future__ import annotations

import logging

import msgspec

from aitp.contract import Task
from aitp.tasks import ChatJob, EmbeddingJob, TaskHandler, TaskRejected

log = logging.getLogger("aitp.poller")


class TakenTask(msgspec.Struct, frozen=True):
    """A task the poller took: its job and the exact JSON the journal keeps for a resume."""

    job: EmbeddingJob | ChatJob
    raw: bytes


class Rejection(msgspec.Struct, frozen=True):
    task_id: str
    reason: str
    batch_id: str = ""


class TaskReader:
    """Parses a task with its type's handler and asks the routers whether anything can compute it."""

    def __init__(self, handlers: dict[str, TaskHandler], router, chat_router) -> None:
        self.handlers, self.router, self.chat_router = handlers, router, chat_router

    def read(self, task: Task, now: float) -> TakenTask | Rejection:
        """The task as a job stamped `taken_at=now`, or why it is reported `failed`. Entries were
        screened on arrival (`PendingCursor.screen`): their type has a handler."""
        try:
            job = self.handlers[task.type].parse(task.id, task.raw)
            refusal = self.chat_router.refusal(job.model) if isinstance(job, ChatJob) \
                else self.router.refusal(job.model, job.text)
            if refusal:
                raise TaskRejected(refusal)
            return TakenTask(job=msgspec.structs.replace(job, taken_at=now), raw=task.raw)
        except TaskRejected as exc:
            return Rejection(task.id, str(exc))
        except Exception as exc:  # noqa: BLE001 - a handler's bug fails its task, not the Poller
            log.exception("handler failed on a task", extra={"fields": {"task_id": task.id}})
            return Rejection(task.id, f"could not read the task: {exc!r}"[:300])
