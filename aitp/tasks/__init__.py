"""Task types this service handles: one handler module each, registered here in one place.

A handler turns a task's raw JSON into an `EmbeddingJob` or raises `TaskRejected` with the reason
the task is reported `failed`. A type with no handler is left untouched for a newer worker.
"""

from aitp.tasks.base import EmbeddingJob, TaskHandler, TaskRejected
from aitp.tasks.text_embedding import TextEmbeddingHandler

HANDLERS: dict[str, type[TaskHandler]] = {
    TextEmbeddingHandler.type_name: TextEmbeddingHandler,
}

__all__ = ["HANDLERS", "EmbeddingJob", "TaskHandler", "TaskRejected"]
