"""What a task handler is and what it produces."""

from __future__ import annotations

import abc

import msgspec

from aitp.config import Settings


class TaskRejected(Exception):
    """The task is malformed for its type; it is reported `failed` with this reason."""


class EmbeddingJob(msgspec.Struct, frozen=True):
    """One text to embed with one model, for one task."""

    task_id: str
    model: str
    text: str
    task_type: str = "text_embedding"
    taken_at: float = 0.0     # time.time() when the poller took it (for ai_task_processing_duration_seconds)


class TaskHandler(abc.ABC):
    """Turns a task of one type into work; built once per pipeline from the settings."""

    type_name: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abc.abstractmethod
    def parse(self, task_id: str, raw: bytes) -> EmbeddingJob:
        """Decode and validate the task's JSON; raise TaskRejected with a reason a person can act on."""
