"""OpenAI (or any OpenAI-compatible endpoint) through the official SDK: one request per batch.

The SDK's hidden retries are off (`max_retries=0`) and its 600 s default timeout is replaced by
OPENAI_TIMEOUT: the pipeline's own retry policy decides, with the waits the API asks for. The raw
response bytes (base64 vectors) go to a process worker; nothing here parses floats.
"""

from __future__ import annotations

import logging

import msgspec
import openai

from aitp.config import Settings
from aitp.errors import ConfigError, ProviderError
from aitp.providers.base import ChatAnswer, Provider, RawEmbedding
from aitp.transport.capped import CappedTransport, capped_inner_transport
from aitp.transport.http1 import proxy_for
from aitp.transport.tls import client_context
from aitp.transport.retry_after import retry_after_seconds
from aitp.tokens import estimate_tokens

log = logging.getLogger("aitp.providers.openai")

OPENAI_DEFAULT_URL = "https://api.openai.com/v1"


class _Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0


class _UsageOnly(msgspec.Struct):
    usage: _Usage = _Usage()


_usage_decoder = msgspec.json.Decoder(_UsageOnly)


class _ChatUsage(msgspec.Struct, frozen=True):
    total_tokens: int = 0


class _ChatMessage(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None


class _Choice(msgspec.Struct):
    message: _ChatMessage


class _ChatCompletion(msgspec.Struct):
    choices: list[_Choice]
    usage: _ChatUsage = _ChatUsage()


_chat_decoder = msgspec.json.Decoder(_ChatCompletion)


def is_reasoning_model(model: str) -> bool:
    """OpenAI's reasoning models take only temperature 1."""
    name = model.lower()
    return name.startswith(("o1", "o3", "o4", "gpt-5"))


class OpenAIProvider(Provider):
    name = "openai"

    def __init__(self, settings: Settings, key_source: str = "default") -> None:
        config = settings.openai
        self._base = config.base_url.rstrip("/") or OPENAI_DEFAULT_URL
        self.endpoint = self._base
        self._key_source = key_source
        # The SDK's own client, on a transport that caps an answer's size and total time.
        http_client = openai.DefaultHttpxClient(transport=CappedTransport(
            config.max_answer_bytes, config.timeout,
            inner=capped_inner_transport(client_context(settings), proxy_for(self._base))))
        self._client = openai.OpenAI(api_key=config.api_key, base_url=self._base, timeout=config.timeout,
                                     max_retries=0, http_client=http_client)
        self._timeout = config.timeout
        self._configured_dimensions = settings.models.dimensions
        self._dimension_prefixes = tuple(config.dimensions_model_prefixes)
        self.max_batch_inputs = config.max_batch_inputs
        self.max_batch_tokens = config.max_batch_tokens
        self._max_input_tokens = config.max_input_tokens

    def takes_dimensions(self, model: str) -> bool:
        return model.startswith(self._dimension_prefixes)

    def dimension(self, model: str) -> int | None:
        return self._configured_dimensions.get(model)

    def input_refusal(self, text: str) -> str | None:
        tokens = estimate_tokens(text)
        if tokens > self._max_input_tokens:
            return (f"text of about {tokens} tokens exceeds the OpenAI limit of {self._max_input_tokens} "
                    "tokens per input")
        return None

    def prepare(self) -> None:
        """Check the key once at startup (listing models costs nothing); an endpoint that is
        unreachable or has no model list is left to the breaker, as hybrid mode can do without it."""
        try:
            self._client.models.with_raw_response.list()
        except openai.AuthenticationError:
            raise self._key_refused_config() from None
        except (openai.APIStatusError, openai.APIConnectionError) as exc:
            log.warning("OpenAI endpoint not checked at startup",
                        extra={"fields": {"endpoint": self._base, "error": _describe(exc)}})

    def _key_refused_config(self) -> ConfigError:
        return ConfigError("openai.api_key", "***", f"a key that the endpoint {self._base} accepts "
                           "(it answered 401 Unauthorized)", self._key_source)

    def embed(self, model: str, texts: list[str]) -> RawEmbedding:
        options: dict = {}
        dimension = self._configured_dimensions.get(model)
        if dimension is not None and self.takes_dimensions(model):
            options["dimensions"] = dimension
        response = self._call(self._client.embeddings.with_raw_response.create, model=model, input=texts,
                              encoding_format="base64", **options)
        content = response.content
        try:
            tokens = _usage_decoder.decode(content).usage.prompt_tokens
        except msgspec.DecodeError:
            tokens = 0   # the process worker reports the garbage as a contract error for the batch
        return RawEmbedding(decoder="openai", payload=content, tokens=tokens)

    def chat(self, model: str, system: str, user: str, schema_name: str, schema: dict) -> ChatAnswer:
        """Chat completions with structured outputs (a strict JSON schema). Reasoning models (o1,
        o3, o4, gpt-5) accept only temperature 1; the others answer at a low one."""
        response = self._call(
            self._client.chat.completions.with_raw_response.create,
            model=model, temperature=1 if is_reasoning_model(model) else 0.2,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": schema_name, "strict": True, "schema": schema}})
        try:
            answer = _chat_decoder.decode(response.content)
            choice = answer.choices[0].message
        except (msgspec.DecodeError, IndexError) as exc:
            raise ProviderError(f"OpenAI chat answer unreadable: {exc}", provider=self.name) from None
        if choice.refusal:
            raise ProviderError(f"the model refused: {choice.refusal[:200]}", provider=self.name, retryable=False,
                                counts_as_outage=False)
        return ChatAnswer(content=choice.content or "", tokens=answer.usage.total_tokens)

    def _call(self, create, **request):
        """One SDK call, its failures turned into ProviderError (no hidden retries: max_retries=0)."""
        model = request["model"]
        try:
            return create(**request)
        except openai.APITimeoutError:
            raise ProviderError(f"OpenAI at {self._base} did not answer within {self._timeout} s",
                                provider=self.name) from None
        except openai.APIConnectionError as exc:
            raise ProviderError(f"OpenAI at {self._base} unreachable: {_describe(exc)}", provider=self.name) from None
        except openai.APIStatusError as exc:
            raise self._status_error(exc, model) from None

    def _status_error(self, exc: openai.APIStatusError, model: str) -> ProviderError:
        status = exc.status_code
        if status == 401:
            # The server's message may quote part of the key: say only where the key came from.
            return ProviderError(f"OpenAI at {self._base} refused the API key (openai.api_key, from "
                                 f"{self._key_source}): 401", provider=self.name, status=status)
        detail = _describe(exc)
        if status == 429:
            return ProviderError(f"OpenAI rate limit: {detail}", provider=self.name, status=status,
                                 retry_after=retry_after_seconds(exc.response.headers))
        if status == 400:
            about_dimensions = exc.param == "dimensions" or "dimensions" in detail
            # A 400 about the request as a whole cannot be mended by splitting; one about an input can.
            return ProviderError(f"OpenAI rejected the request: {detail}", provider=self.name, status=status,
                                 input_specific=not about_dimensions, retryable=False)
        if status in (403, 404):
            return ProviderError(f"OpenAI cannot embed with model {model!r}: {detail}", provider=self.name,
                                 status=status, retryable=False)
        return ProviderError(f"OpenAI answered {status}: {detail}", provider=self.name, status=status,
                             retry_after=retry_after_seconds(exc.response.headers))

    def close(self) -> None:
        self._client.close()


def _describe(exc: openai.APIError) -> str:
    status = getattr(exc, "status_code", None)
    message = exc.message if isinstance(exc.message, str) else repr(exc.message)
    text = f"{status} {message}" if status else f"{type(exc).__name__}: {message}"
    return text[:300]
