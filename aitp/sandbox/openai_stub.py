"""A stand-in for an OpenAI-compatible embeddings endpoint (`/v1/embeddings`, `/v1/models`) for
tests and benchmarks; point OPENAI_BASE_URL at `stub.url`.

It answers as OpenAI does: 401 with a partly masked key for a wrong key, 404 for an unknown
model, 400 for `dimensions` sent to a model that does not take it and for an input longer than the
context, base64 float32 vectors when asked for, usage counts. Faults can be injected: answers for
the next calls (429 with headers, 500, garbage), NaN for inputs holding POISON, a gate that holds
calls until released.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time

import msgspec
import numpy as np

from aitp.sandbox.stand_in import JsonHandler, StandIn
from aitp.sandbox.ollama_stub import POISON

STUB_KEY = "sk-stub-0123456789abcdef"


def openai_stub_vector(model: str, text: str, dimension: int) -> np.ndarray:
    """The stub's float32 vector for a text, before any `dimensions` shortening."""
    seed = int.from_bytes(hashlib.sha256(f"openai\0{model}\0{text}".encode("utf-8", "surrogatepass")).digest()[:8],
                          "little")
    return (np.random.default_rng(seed).standard_normal(dimension) * 2.0).astype(np.float32)


class Injected(msgspec.Struct):
    status: int
    body: bytes = b'{"error":{"message":"injected failure","type":"server_error"}}'
    headers: dict[str, str] = {}


class OpenAIStub(StandIn):
    thread_name, url_path = "openai-stub", "/v1"

    def __init__(self, *, models: dict[str, int] | None = None, api_key: str = STUB_KEY,
                 context_chars: int = 8192, host: str = "127.0.0.1", port: int = 0) -> None:
        self.models = models or {"text-embedding-3-small": 1536, "text-embedding-ada-002": 1536}
        self.api_key, self.context_chars = api_key, context_chars
        self.lock = threading.Lock()
        self.requests: list[dict] = []      # model, inputs, dimensions, encoding_format of each embeddings call
        self.chat_requests: list[dict] = []  # each chat completions request as it came
        self.chats_at_gate = 0
        self.fail_next: list[Injected] = []
        self.chat_outage: Injected | None = None    # every chat call answered so (embeddings unaffected)
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate = threading.Event()       # cleared: calls wait at the gate until it is set
        self.gate.set()
        super().__init__(host, port, _handler(self))

    def release_held(self) -> None:
        self.gate.set()

    def chat(self, request: dict) -> tuple[int, bytes, dict[str, str]]:
        """Chat completions with structured outputs: a schema-valid answer (see providers.mock)."""
        from aitp.providers.mock import schema_answer
        with self.lock:
            self.chat_requests.append(request)
            if self.chat_outage is not None:
                return self.chat_outage.status, self.chat_outage.body, self.chat_outage.headers
            if self.fail_next:
                injected = self.fail_next.pop(0)
                return injected.status, injected.body, injected.headers
        with self.lock:
            self.chats_at_gate += 0 if self.gate.is_set() else 1
        self.gate.wait(30)
        schema = ((request.get("response_format") or {}).get("json_schema") or {}).get("schema") or {}
        user = next((m.get("content", "") for m in request.get("messages", []) if m.get("role") == "user"), "")
        content = schema_answer(request.get("model", ""), user, schema)
        return 200, msgspec.json.encode({
            "id": "chatcmpl-stub", "object": "chat.completion", "model": request.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content, "refusal": None}}],
            "usage": {"prompt_tokens": len(user) // 4, "completion_tokens": len(content) // 4,
                      "total_tokens": (len(user) + len(content)) // 4}}), {}

    def calls_of(self, model: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["model"] == model]

    def embed(self, request: dict) -> tuple[int, bytes, dict[str, str]]:
        model, inputs = request.get("model", ""), request.get("input")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
        with self.lock:
            self.requests.append({"model": model, "inputs": inputs, "dimensions": request.get("dimensions"),
                                  "encoding_format": request.get("encoding_format"), "at": time.monotonic()})
            if self.fail_next:
                injected = self.fail_next.pop(0)
                return injected.status, injected.body, injected.headers
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self.gate.wait(30)
            return self._answer(model, inputs, request)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _answer(self, model: str, inputs: list[str], request: dict) -> tuple[int, bytes, dict[str, str]]:
        if model not in self.models:
            return 404, _error(f"The model `{model}` does not exist or you do not have access to it.",
                               "invalid_request_error", code="model_not_found"), {}
        dimension = self.models[model]
        wanted = request.get("dimensions")
        if wanted is not None and not model.startswith("text-embedding-3"):
            return 400, _error("This model does not support specifying dimensions.", "invalid_request_error",
                               param="dimensions"), {}
        if not inputs or len(inputs) > 2048:
            return 400, _error("'$.input' is invalid.", "invalid_request_error", param="input"), {}
        for text in inputs:
            if len(text) > self.context_chars:
                return 400, _error(f"This model's maximum context length is {self.context_chars} tokens, however "
                                   f"you requested {len(text)} tokens. Please reduce your prompt.",
                                   "invalid_request_error", param="input"), {}
        data = []
        for index, text in enumerate(inputs):
            vector = openai_stub_vector(model, text, dimension)
            if wanted is not None:   # OpenAI shortens and renormalises
                vector = vector[:wanted] / np.linalg.norm(vector[:wanted])
            if POISON in text:
                vector = np.full_like(vector, np.nan)
            vector = vector.astype("<f4")
            embedding = (base64.b64encode(vector.tobytes()).decode() if request.get("encoding_format") == "base64"
                         else [float(x) for x in vector])
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        data.reverse()   # order by `index`, not by position: clients must not rely on the list order
        tokens = sum(len(text) // 4 + 1 for text in inputs)
        return 200, msgspec.json.encode({"object": "list", "data": data, "model": model,
                                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}), {}


def _error(message: str, kind: str, *, param: str | None = None, code: str | None = None) -> bytes:
    return msgspec.json.encode({"error": {"message": message, "type": kind, "param": param, "code": code}})


def _handler(stub: OpenAIStub) -> type[JsonHandler]:
    class Handler(JsonHandler):
        def _authorised(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {stub.api_key}":
                return True
            given = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            masked = f"{given[:3]}{'*' * 10}{given[-4:]}" if len(given) > 8 else "***"
            self._reply(401, _error(f"Incorrect API key provided: {masked}. You can find your API key at "
                                    "https://platform.openai.com/account/api-keys.", "invalid_request_error",
                                    code="invalid_api_key"))
            return False

        def do_GET(self) -> None:  # noqa: N802
            if not self._authorised():
                return
            if self.path == "/v1/models":
                return self._reply(200, msgspec.json.encode({"object": "list", "data": [
                    {"id": name, "object": "model", "owned_by": "stub"} for name in stub.models]}))
            self._reply(404, _error("not found", "invalid_request_error"))

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not self._authorised():
                return
            if self.path == "/v1/chat/completions":
                return self._reply(*stub.chat(msgspec.json.decode(body)))
            if self.path != "/v1/embeddings":
                return self._reply(404, _error("not found", "invalid_request_error"))
            self._reply(*stub.embed(msgspec.json.decode(body)))

    return Handler
