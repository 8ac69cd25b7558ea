"""Ollama over HTTP: `/api/embed` with a list input per batch; `/api/tags` and `/api/pull` at startup."""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Callable, TypeVar

import msgspec

from aitp.config import Settings
from aitp.errors import ProviderError
from aitp.transport.http1 import Http1Client, HttpTransportError, proxy_for
from aitp.providers.base import ChatAnswer, Provider, RawEmbedding
from aitp.transport.tls import client_context, requests_session

log = logging.getLogger("aitp.providers.ollama")
T = TypeVar("T")


class _Model(msgspec.Struct):
    name: str


class _Tags(msgspec.Struct):
    models: list[_Model] = []


class _PullProgress(msgspec.Struct):
    status: str = ""
    error: str = ""
    total: int = 0
    completed: int = 0


# Ollama writes its counts after the vectors. Reading them from the tail spares the service a
# parse of some 240 kB of floats per batch (the process worker parses those).
_PROMPT_TOKENS = re.compile(rb'"prompt_eval_count"\s*:\s*(\d{1,12})')
_TAIL_BYTES = 1024


def prompt_tokens(body: bytes | bytearray) -> int:
    """The prompt_eval_count of an /api/embed answer, or 0 when its tail has none."""
    found = _PROMPT_TOKENS.search(body[-_TAIL_BYTES:])
    return int(found.group(1)) if found else 0


_tags_decoder = msgspec.json.Decoder(_Tags)
_progress_decoder = msgspec.json.Decoder(_PullProgress)
_encoder = msgspec.json.Encoder()
_JSON = {"Content-Type": "application/json"}


def _base_name(model: str) -> str:
    """`nomic-embed-text` and `nomic-embed-text:latest` are the same model."""
    return model if ":" in model else f"{model}:latest"


class _ChatMessage(msgspec.Struct, frozen=True):
    content: str = ""


class _ChatResponse(msgspec.Struct):
    message: _ChatMessage = _ChatMessage()
    prompt_eval_count: int = 0
    eval_count: int = 0


_chat_decoder = msgspec.json.Decoder(_ChatResponse)


class OllamaProvider(Provider):
    name = "ollama"
    paid = False

    def __init__(self, settings: Settings, base_url: str | None = None, name: str = "ollama") -> None:
        self.name = name          # "ollama", then "ollama@2", "ollama@3" for more hosts in OLLAMA_BASE_URL
        self._base = (base_url or settings.ollama_base_urls[0]).rstrip("/")
        self.endpoint = self._base
        self._timeout = settings.ollama.timeout
        self._download_timeout = settings.ollama.model_download_timeout
        self._pull_missing = settings.ollama.pull_missing_models
        self._supported = {_base_name(model) for model in settings.processing.supported_models}
        self._supported_names = settings.processing.supported_models
        self._dimensions = settings.models.dimensions
        # Every call but a pull goes through the lean client (aitp/transport/http1/); like every HTTP
        # client, it goes through HTTP_PROXY / HTTPS_PROXY unless NO_PROXY names Ollama's host.
        self._tls = client_context(settings) if self._base.startswith("https:") else None
        proxy = proxy_for(self._base)
        self._embed_client = Http1Client(self._base, timeout=self._timeout, max_idle=8, ssl_context=self._tls,
                                         max_body_bytes=settings.ollama.max_answer_bytes, proxy=proxy)
        self._pull_lock = threading.Lock()     # one pull at a time, however many batches found a model gone
        self._chat_client = Http1Client(self._base, timeout=settings.ollama.chat_timeout, max_idle=8,
                                        ssl_context=self._tls, max_body_bytes=settings.ollama.max_answer_bytes,
                                        proxy=proxy)
        self._chat_models = sorted(set(settings.models.chat.values())) if settings.processing.mode in (
            "ollama", "hybrid") else []
    def refusal(self, model: str) -> str | None:
        if _base_name(model) not in self._supported:
            return (f"model {model!r} is not in SUPPORTED_MODELS {self._supported_names} "
                    "and Ollama only serves those")
        return None

    def dimension(self, model: str) -> int | None:
        return self._dimensions.get(model)

    def prepare(self) -> None:
        present = self.installed_models()
        for model in [*self._supported_names, *self._chat_models]:
            if _base_name(model) in present:
                continue
            if not self._pull_missing:
                raise ProviderError(f"model {model!r} is missing in Ollama at {self._base} and pulling is off",
                                    provider=self.name, retryable=False)
            self.pull(model)

    def installed_models(self) -> set[str]:
        try:
            response = self._embed_client.request("GET", "/api/tags", {"Accept": "application/json"})
            if response.status != 200:
                raise ProviderError(f"cannot list Ollama models at {self._base}: it answered {response.status}",
                                    provider=self.name, status=response.status)
            return {_base_name(model.name) for model in _tags_decoder.decode(response.body).models}
        except (HttpTransportError, msgspec.DecodeError) as exc:
            raise ProviderError(f"cannot list Ollama models at {self._base}: {exc}", provider=self.name) from None

    def pull(self, model: str) -> None:
        """Stream `/api/pull`, logging progress at most every few seconds."""
        import requests    # only for a pull (streamed, minutes long): not loaded by a service that never pulls
        session = requests_session(self._tls)
        log.info("pulling model", extra={"fields": {"model": model, "ollama": self._base}})
        last_logged = 0.0
        try:
            with session.post(f"{self._base}/api/pull", data=_encoder.encode({"model": model, "stream": True}),
                                    stream=True, timeout=(self._timeout, self._download_timeout)) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if not line:
                        continue
                    progress = _progress_decoder.decode(line)
                    if progress.error:
                        raise ProviderError(f"Ollama could not pull {model!r}: {progress.error}",
                                            provider=self.name, retryable=False)
                    now = time.monotonic()
                    if progress.status == "success" or now - last_logged >= 5:
                        last_logged = now
                        percent = round(100 * progress.completed / progress.total, 1) if progress.total else None
                        log.info("pull progress", extra={"fields": {"model": model, "status": progress.status,
                                                                     "percent": percent}})
                    if progress.status == "success":
                        return
        except (requests.RequestException, msgspec.DecodeError) as exc:
            raise ProviderError(f"pulling {model!r} from Ollama at {self._base} failed: {exc}",
                                provider=self.name) from None
        raise ProviderError(f"Ollama ended the pull of {model!r} without success", provider=self.name)

    def embed(self, model: str, texts: list[str]) -> RawEmbedding:
        if _base_name(model) not in self._supported:
            return self._embed(model, texts)
        return self._pulled_if_gone(model, lambda: self._embed(model, texts))

    def _pulled_if_gone(self, model: str, call: Callable[[], T]) -> T:
        """`call()`; if Ollama says the model is gone (deleted while we ran, or another Ollama behind
        the same address), pull it again and call once more. If that fails too, the call is retried
        as after an outage and its tasks go back to pending: a missing model is never the tasks' fault."""
        try:
            return call()
        except ProviderError as exc:
            if exc.status != 404:
                raise
        self._pull_again(model)
        try:
            return call()
        except ProviderError as exc:
            if exc.status != 404:
                raise
            raise ProviderError(f"model {model!r} still missing in Ollama at {self._base} after a pull",
                                provider=self.name, status=404, counts_as_outage=True) from None

    def _pull_again(self, model: str) -> None:
        with self._pull_lock:
            if _base_name(model) in self.installed_models():
                return                        # another batch's pull brought it back meanwhile
            if not self._pull_missing:
                raise ProviderError(f"model {model!r} is missing in Ollama at {self._base} and pulling is off",
                                    provider=self.name, status=404, counts_as_outage=True)
            log.warning("model missing in Ollama; pulling it again", extra={"fields": {"model": model}})
            try:
                self.pull(model)
            except ProviderError as exc:      # retried later like an outage, never failing the tasks
                raise ProviderError(str(exc), provider=self.name, status=404, counts_as_outage=True) from None

    def _embed(self, model: str, texts: list[str]) -> RawEmbedding:
        # Ollama cuts a long input to the model's context by itself (its default, said explicitly): a
        # long article is embedded from its beginning, as the original service did, not failed.
        body = _encoder.encode({"model": model, "input": texts, "truncate": True})
        response = self._post(self._embed_client, "/api/embed", body)
        if response.status != 200:
            detail = response.body[:400].decode("utf-8", "replace")[:200]
            # One NaN fails a whole batch with 500, one over-long input with 400: split and retry.
            raise ProviderError(f"Ollama /api/embed answered {response.status}: {detail}",
                                provider=self.name, status=response.status,
                                input_specific=response.status in (400, 500))
        # Garbage is the process worker's to report, as a contract error for the whole batch.
        return RawEmbedding(decoder="ollama", payload=response.body, tokens=prompt_tokens(response.body))

    def chat(self, model: str, system: str, user: str, schema_name: str, schema: dict) -> ChatAnswer:
        """/api/chat with `format` set to the JSON schema (structured outputs) and no streaming.
        `model` is the local model (the operator's [models.chat] mapping chose it); pulled again if
        it is gone, as embedding models are."""
        if model not in self._chat_models:
            return self._chat(model, system, user, schema)
        return self._pulled_if_gone(model, lambda: self._chat(model, system, user, schema))

    def _chat(self, model: str, system: str, user: str, schema: dict) -> ChatAnswer:
        body = _encoder.encode({"model": model, "stream": False, "format": schema, "options": {"temperature": 0},
                                "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]})
        response = self._post(self._chat_client, "/api/chat", body)
        if response.status != 200:
            detail = response.body[:400].decode("utf-8", "replace")[:200]
            raise ProviderError(f"Ollama /api/chat answered {response.status}: {detail}", provider=self.name,
                                status=response.status, retryable=response.status != 400,
                                counts_as_outage=response.status != 400)
        try:
            answer = _chat_decoder.decode(response.body)
        except msgspec.DecodeError as exc:
            raise ProviderError(f"Ollama /api/chat answer unreadable: {exc}", provider=self.name) from None
        return ChatAnswer(content=answer.message.content, tokens=answer.prompt_eval_count + answer.eval_count)

    def _post(self, client: Http1Client, path: str, body: bytes):
        try:
            return client.request("POST", path, _JSON, body)
        except HttpTransportError as exc:
            raise ProviderError(f"Ollama at {self._base} unreachable: {exc.kind}", provider=self.name) from None

    def close(self) -> None:
        self._embed_client.close()
        self._chat_client.close()
