"""What the four LLM task types share: their job, how their content is read, and how a model is
asked for an answer that follows a JSON schema (checked by msgspec before anything is reported).

A handler of this kind implements `question` (the user message, from the job), `answer_type` (a
msgspec struct: the schema the model must follow) and `result` (the exact `result` shape of
../shared/LLM-TASKS.md, enriched from Wikidata). Its prompt is a versioned text file in prompts/.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import msgspec

from aitp.providers.base import ChatAnswer
from aitp.tasks.answers import AnswerBook, KeptAnswer, answer_key
from aitp.tasks.base import TaskHandler, TaskRejected

PROMPTS = Path(__file__).resolve().parent / "prompts"
ChatCall = Callable[[str, str, str, str, dict], ChatAnswer]   # (model, system, user, schema name, schema)


class ChatJob(msgspec.Struct, frozen=True):
    """One LLM task: its content as the task sent it (`content` is its raw JSON, for fields beyond
    the text), and the chat model it names."""

    task_id: str
    task_type: str
    model: str
    text: str
    content: bytes = b"{}"
    taken_at: float = 0.0
    enrich: bool = True          # False: Wikidata stayed down past wikidata.hold_seconds, report without it


class LlmResult(msgspec.Struct, frozen=True):
    """A finished task: the PATCH body, and whether a paid provider made it (then it is journaled)."""

    body: bytes
    provider: str
    paid: bool
    tokens: int = 0


class _Content(msgspec.Struct):
    text: Any = None
    model: Any = None


class _Task(msgspec.Struct):
    content: Any = None


_task_decoder = msgspec.json.Decoder(_Task)
_encoder = msgspec.json.Encoder()


@functools.cache
def prompt(name: str) -> str:
    return (PROMPTS / name).read_text(encoding="utf-8").strip()


@functools.cache
def strict_schema(answer_type: type) -> dict:
    """The JSON schema of a msgspec struct in the form structured outputs take: an object at the
    root, every property required, no extra properties (msgspec's forbid_unknown_fields)."""
    schema = msgspec.json.schema(answer_type)
    root_name = schema["$ref"].rsplit("/", 1)[-1]
    defs = schema.get("$defs", {})
    root = dict(defs.pop(root_name))
    if defs:
        root["$defs"] = defs
    return root


class LlmHandler(TaskHandler):
    """Base of the four LLM task types."""

    answer_type: type[msgspec.Struct]
    prompt_name: str
    bare_text_allowed = True          # `content` may be the text itself (the first three types)
    # Whether a result without Wikidata means anything (ids null, a context of names only): not for
    # identifying_data, whose people are kept only when Wikidata knows them.
    reportable_without_wikidata = True

    def parse(self, task_id: str, raw: bytes) -> ChatJob:
        try:
            content = _task_decoder.decode(raw).content
        except (msgspec.DecodeError, RecursionError) as exc:
            raise TaskRejected(f"unreadable {self.type_name} task: {exc}"[:300]) from None
        if isinstance(content, str) and self.bare_text_allowed:
            text, model, extra = content, self.settings.models.default_chat_model, b"{}"
        elif isinstance(content, dict):
            text, model, extra = content.get("text"), content.get("model"), _encoder.encode(content)
        else:
            raise TaskRejected(f"{self.type_name} content must be an object with text and model")
        if not isinstance(text, str) or not text.strip():
            raise TaskRejected("content.text is missing or empty")
        if not isinstance(model, str) or not model.strip():
            raise TaskRejected("content.model is missing or empty")
        limit = self.settings.processing.max_text_chars
        if len(text) > limit:
            raise TaskRejected(f"content.text has {len(text)} characters, more than the limit of {limit}")
        self.check_content(msgspec.json.decode(extra))
        return ChatJob(task_id=task_id, task_type=self.type_name, model=model, text=text, content=extra)

    def check_content(self, content: dict) -> None:
        """Refuse a task whose other fields are malformed (raise TaskRejected)."""

    # --- to implement ---
    def question(self, job: ChatJob, wikidata) -> str:
        """The user message (the severity type adds what Wikidata knows of the items involved)."""
        return job.text

    def schema_for(self, job: ChatJob) -> tuple[type[msgspec.Struct], dict]:
        """The answer's type and its schema (a task may narrow it, as impact areas with options)."""
        return self.answer_type, strict_schema(self.answer_type)

    def result(self, job: ChatJob, answer: msgspec.Struct, wikidata) -> Any:
        raise NotImplementedError

    # --- shared ---
    def run(self, job: ChatJob, chat: Callable[..., tuple[ChatAnswer, str, bool]], wikidata,
            answers: AnswerBook | None = None) -> LlmResult:
        """Ask the model (or take the answer kept from an earlier try), enrich the answer, and encode
        the PATCH body. Outages raise ProviderError."""
        answer, kept = self.ask(job, chat, wikidata, answers)
        return self.finish(job, answer, kept, wikidata)

    def ask(self, job: ChatJob, chat: Callable[..., tuple[ChatAnswer, str, bool]], wikidata,
            answers: AnswerBook | None = None) -> tuple[msgspec.Struct, KeptAnswer]:
        """The model's answer, twice at most (an answer that fails the schema twice fails the task),
        kept in `answers` once it passes; an answer kept for the same question is used instead."""
        answer_type, schema = self.schema_for(job)
        system, user = prompt(self.prompt_name), self.question(job, wikidata)
        key = answer_key(job.model, self.type_name, system, job.text, job.content, schema)
        kept = answers.get(job.task_id, key) if answers is not None else None
        if kept is not None:
            return msgspec.json.decode(kept.content, type=answer_type), kept
        tokens, problems = 0, []
        for _ in range(2):
            reply, provider, paid = chat(job.model, system, user, self.type_name, schema)
            tokens += reply.tokens
            try:
                answer = msgspec.json.decode(reply.content, type=answer_type)
                self.check_answer(job, answer)
                break
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                problems.append(str(exc)[:200])
        else:
            raise TaskRejected(f"the model's answer failed the schema twice: {problems[-1]}")
        kept = KeptAnswer(content=reply.content, provider=provider, paid=paid, tokens=tokens)
        if answers is not None:
            answers.keep(job.task_id, key, kept)
        return answer, kept

    def finish(self, job: ChatJob, answer: msgspec.Struct, kept: KeptAnswer, wikidata) -> LlmResult:
        """The PATCH body from a checked answer, enriched from Wikidata."""
        body = _encoder.encode({"state": "succeeded", "result": self.result(job, answer, wikidata)})
        if len(body) > self.settings.api.max_body_bytes:
            raise TaskRejected(f"the result is {len(body)} bytes, over the API's limit of "
                               f"{self.settings.api.max_body_bytes}")
        return LlmResult(body=body, provider=kept.provider, paid=kept.paid, tokens=kept.tokens)

    def check_answer(self, job: ChatJob, answer: msgspec.Struct) -> None:
        """Checks a schema cannot say; raise ValueError (the model is asked again once)."""
