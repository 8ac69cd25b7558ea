"""A stand-in for Ollama's HTTP API (`/api/tags`, `/api/pull`, `/api/embed`) for tests, benchmarks and
trying `PROCESSING_MODE=ollama` without a GPU.

It behaves as Ollama is reported to: one batch computed at a time, 500 for a whole batch when one
input yields NaN; an input longer than the context is cut to it when the request says `truncate`
(Ollama's default), else answered with 400 (`honours_truncate=False` answers 400 either way, as
some models' runners do). Its vectors are unit length and
written as shortest float32 text, as `/api/embed` writes them (normalised the way aitp does, so
tests can compare exactly); `normalised=False` sends raw ones, as the legacy `/api/embeddings`
and some servers that copy this API do.
"""

from __future__ import annotations

import hashlib
import threading
import time
import msgspec
import numpy as np

from aitp.vectors.float32_text import shortest_float32
from aitp.sandbox.stand_in import JsonHandler, StandIn
from aitp.vectors.checks import checked_unit_vectors

POISON = "<<nan>>"   # an input containing this makes the stub's model produce NaN


def stub_vector(model: str, text: str, dimension: int) -> np.ndarray:
    """The stub's raw (unnormalised) vector for a text: what a test expects, once normalised."""
    digest = hashlib.sha256(f"stub\0{model}\0{text}".encode("utf-8", "surrogatepass")).digest()
    seed = int.from_bytes(digest[:8], "little")
    return np.random.default_rng(seed).standard_normal(dimension) * 3.0


class OllamaStub(StandIn):
    thread_name = "ollama-stub"

    def __init__(self, *, models: dict[str, int] | None = None, installed: list[str] | None = None,
                 context_chars: int = 8192, call_cost: float = 0.0, input_cost: float = 0.0,
                 normalised: bool = True, honours_truncate: bool = True, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.honours_truncate = honours_truncate
        self.models = models or {"nomic-embed-text": 768}          # what /api/pull can fetch: name -> dimension
        self.installed = set(installed if installed is not None else self.models)
        self.context_chars, self.call_cost, self.input_cost = context_chars, call_cost, input_cost
        self.normalised = normalised
        self.gpu = threading.Lock()          # one batch at a time, as a GPU runner does
        self.lock = threading.Lock()
        self.batch_sizes: list[int] = []
        self.pulls: list[str] = []
        self.fail_next: list[int] = []       # statuses to answer the next /api/embed calls with
        self.garbage_next = 0                # answer the next N calls with 200 and a body that is not JSON
        self.embedded: list[str] = []        # every text embedded successfully, in order
        self.gate = threading.Event()        # cleared: /api/embed calls wait at it (a call held in flight)
        self.gate.set()
        self.waiting_at_gate = 0
        self.chat_requests: list[dict] = []   # each /api/chat request as it came
        self.requests_via_proxy = 0           # requests that came with a Via header
        self.busy_seconds = 0.0
        super().__init__(host, port, _handler(self))

    def release_held(self) -> None:
        self.gate.set()

    def chat(self, request: dict) -> tuple[int, bytes]:
        """/api/chat with `format` as a JSON schema: a schema-valid answer (see providers.mock)."""
        from aitp.providers.mock import schema_answer
        with self.lock:
            self.chat_requests.append(request)
            if self.fail_next:
                return self.fail_next.pop(0), b'{"error":"injected failure"}'
        name = str(request.get("model", "")).removesuffix(":latest")
        if name not in self.installed:
            return 404, msgspec.json.encode({"error": f"model \"{name}\" not found, try pulling it first"})
        user = next((m.get("content", "") for m in request.get("messages", []) if m.get("role") == "user"), "")
        content = schema_answer(name, user, request.get("format") or {})
        return 200, msgspec.json.encode({"model": request.get("model"), "done": True,
                                         "message": {"role": "assistant", "content": content},
                                         "prompt_eval_count": len(user) // 4, "eval_count": len(content) // 4})

    def embed(self, model: str, inputs: list[str], truncate: bool = True) -> tuple[int, bytes]:
        if truncate and self.honours_truncate:
            inputs = [text[:self.context_chars] for text in inputs]
        if not self.gate.is_set():
            with self.lock:
                self.waiting_at_gate += 1
            self.gate.wait(30)
        with self.lock:
            self.batch_sizes.append(len(inputs))
            if self.fail_next:
                return self.fail_next.pop(0), b'{"error":"injected failure"}'
            if self.garbage_next > 0:
                self.garbage_next -= 1
                return 200, b'{"model": "x", "embeddings": [[0.1, 0.2], [garbage'
        name = model.removesuffix(":latest")
        if name not in self.models or name not in self.installed:
            return 404, msgspec.json.encode({"error": f"model \"{model}\" not found, try pulling it first"})
        # Made before taking the "GPU": the stub's own Python work is not GPU time, and it would
        # otherwise show as idle GPU in the benchmarks' busy fraction.
        vectors = self._vectors(name, inputs)
        with self.gpu:
            if self.call_cost or self.input_cost:
                started = time.perf_counter()
                time.sleep(self.call_cost + self.input_cost * len(inputs))
                self.busy_seconds += time.perf_counter() - started   # the GPU model's busy time
            if any(len(text) > self.context_chars for text in inputs):
                return 400, b'{"error":"the input length exceeds the context length"}'
            if any(POISON in text for text in inputs):
                return 500, b'{"error":"failed to encode response: json: unsupported value: NaN"}'
        with self.lock:
            self.embedded.extend(inputs)
        return 200, msgspec.json.encode({"model": model, "embeddings": vectors,
                                         "prompt_eval_count": sum(len(t) // 4 + 1 for t in inputs)})

    def _vectors(self, model: str, inputs: list[str]) -> list[list[float]]:
        if not inputs:
            return []
        raw = np.stack([stub_vector(model, text, self.models[model]) for text in inputs])
        if not self.normalised:
            return raw.tolist()
        return shortest_float32(checked_unit_vectors(raw, len(inputs), None)).tolist()


def _handler(stub: OllamaStub) -> type[JsonHandler]:
    class Handler(JsonHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/api/tags":
                # As Ollama lists them: a name with its tag, `:latest` where it was given none.
                tagged = [name if ":" in name else f"{name}:latest" for name in sorted(stub.installed)]
                names = [{"name": name, "model": name} for name in tagged]
                return self._reply(200, msgspec.json.encode({"models": names}))
            self._reply(404, b"404 page not found")

        def do_POST(self) -> None:  # noqa: N802
            request = msgspec.json.decode(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            if self.headers.get("Via"):              # came through a forward proxy
                stub.requests_via_proxy += 1
            if self.path == "/api/embed":
                inputs = request.get("input")
                inputs = [inputs] if isinstance(inputs, str) else inputs
                return self._reply(*stub.embed(request.get("model", ""), inputs, request.get("truncate", True)))
            if self.path == "/api/chat":
                return self._reply(*stub.chat(request))
            if self.path == "/api/pull":
                return self._pull(request.get("model") or request.get("name", ""))
            self._reply(404, b"404 page not found")

        def _pull(self, model: str) -> None:
            name = model.removesuffix(":latest")
            stub.pulls.append(name)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if name in stub.models:
                lines = [{"status": "pulling manifest"},
                         {"status": "downloading", "total": 1000, "completed": 500},
                         {"status": "downloading", "total": 1000, "completed": 1000},
                         {"status": "success"}]
                stub.installed.add(name)
            else:
                lines = [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]
            for line in lines:
                chunk = msgspec.json.encode(line) + b"\n"
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")

    return Handler
