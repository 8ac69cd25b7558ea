"""Task types this service handles: one handler module each, registered here in one place.

A handler turns a task's raw JSON into a job (an `EmbeddingJob`, batched across tasks, or a
`ChatJob`, run on its own by an LLM handler) or raises `TaskRejected` with the reason the task is
reported `failed`. A type with no handler is left untouched for a newer worker.
"""

from aitp.tasks.base import EmbeddingJob, TaskHandler, TaskRejected
from aitp.tasks.chat import ChatJob, LlmHandler, LlmResult
from aitp.tasks.defining_impact_area import DefiningImpactAreaHandler
from aitp.tasks.defining_severity import DefiningSeverityHandler
from aitp.tasks.defining_topics import DefiningTopicsHandler
from aitp.tasks.identifying_data import IdentifyingDataHandler
from aitp.tasks.text_embedding import TextEmbeddingHandler

HANDLERS: dict[str, type[TaskHandler]] = {handler.type_name: handler for handler in (
    TextEmbeddingHandler, IdentifyingDataHandler, DefiningTopicsHandler, DefiningImpactAreaHandler,
    DefiningSeverityHandler)}
# The types whose tasks ask a chat model (LlmHandler): their share of the Poller's window is bounded.
CHAT_TYPES = frozenset(name for name, handler in HANDLERS.items() if issubclass(handler, LlmHandler))

__all__ = ["CHAT_TYPES", "HANDLERS", "ChatJob", "EmbeddingJob", "LlmHandler", "LlmResult", "TaskHandler",
           "TaskRejected"]
