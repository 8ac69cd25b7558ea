"""`text_embedding`: embed `content.text` with `content.model`."""

from __future__ import annotations

import msgspec

from aitp.tasks.base import EmbeddingJob, TaskHandler, TaskRejected


class _Content(msgspec.Struct):
    text: str
    model: str


class _EmbeddingTask(msgspec.Struct):
    content: _Content


_decoder = msgspec.json.Decoder(_EmbeddingTask)


class TextEmbeddingHandler(TaskHandler):
    type_name = "text_embedding"

    def parse(self, task_id: str, raw: bytes) -> EmbeddingJob:
        try:
            content = _decoder.decode(raw).content
        except msgspec.ValidationError as exc:
            raise TaskRejected(f"malformed text_embedding task: {exc}") from None
        except msgspec.DecodeError as exc:    # invalid UTF-8 inside a string, say (the list split around it)
            raise TaskRejected(f"unreadable text_embedding task: {exc}") from None
        except RecursionError:
            raise TaskRejected("unreadable text_embedding task: nested too deep") from None
        limit = self.settings.processing.max_text_chars
        if not content.text.strip():
            raise TaskRejected("content.text is empty")
        if len(content.text) > limit:
            raise TaskRejected(f"content.text has {len(content.text)} characters, more than the limit of {limit}")
        if not content.model.strip():
            raise TaskRejected("content.model is empty")
        return EmbeddingJob(task_id=task_id, model=content.model, text=content.text, task_type=self.type_name)
