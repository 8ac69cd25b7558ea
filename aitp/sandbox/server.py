"""The sandbox task API: `GET /api/ai-tasks/pending`, `PATCH /api/ai-tasks/:id`, `POST /oauth2/token`.

Faithful to the real server where it matters to a worker: every pending task on every poll, no
claiming, 403 for a missing or stale token, a redirect to /404 for an unknown id (JSON 404 with
`X-Api-Request: true`), a 100 kB body limit, and only `state` stored. `/_sandbox/*` routes let a
person or a test look inside; when client auth is on they need a bearer token like the task API.

A stand-in for tests and demos, never a production task API: it keeps everything in memory and
says so in a warning when it listens beyond loopback.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
import secrets
import socket
import struct
import threading
import time
from collections import Counter
from urllib.parse import parse_qs, unquote

import msgspec
import requests

from aitp.config import is_loopback
from aitp.contract import STATES
from aitp.sandbox.stand_in import JsonHandler, StandIn

log = logging.getLogger("aitp.sandbox")
_OBJECT_ID = re.compile(r"^[0-9a-fA-F]{24}$")

BODY_LIMIT = 100 * 1024
_encoder = msgspec.json.Encoder()


class _Store:
    """Tasks in insertion order, their state history, issued tokens; one lock for all."""

    def __init__(self, tasks: list[dict]) -> None:
        self.lock = threading.Lock()
        self.tasks: dict[str, dict] = {}
        self.history: dict[str, list[str]] = {}
        self.results: dict[str, object] = {}
        self.errors: dict[str, object] = {}      # the `error` a client sent with `failed` (the real server drops it)
        self.tokens: dict[str, float] = {}
        self.requests: Counter[str] = Counter()
        self.token_requests = 0
        self.bytes_polled = 0                    # bytes of pending lists served (benchmarks)
        self._pending_cache: bytes | None = None
        self.raw: dict[str, bytes] = {}          # entries listed exactly as given (hostile bytes)
        # Tasks by state, kept as states change: read every few ms by tests and benchmarks, which a
        # count over every task (under the lock the request handlers need) would slow at 20,000.
        self.by_state: Counter[str] = Counter()
        self.add(tasks)

    def _put(self, key: str, task: dict) -> None:
        """Store `task` under `key` (the lock held), replacing any task there."""
        if (old := self.tasks.get(key)) is not None:
            self.by_state[old.get("state", "?")] -= 1
        self.tasks[key] = task
        self.by_state[task.get("state", "?")] += 1

    def remove(self, key: str) -> None:
        with self.lock:
            if (old := self.tasks.pop(key, None)) is not None:
                self.by_state[old.get("state", "?")] -= 1
            self._pending_cache = None

    def add_raw(self, key: str, raw: bytes) -> None:
        """List `raw` as it is (invalid UTF-8, deep nesting, not an object...) while `key` is pending.
        With a usable id as `key`, a PATCH to it is stored like any other."""
        with self.lock:
            self._put(key, {"_id": key, "state": "pending"})
            self.history[key] = ["pending"]
            self.raw[key] = raw
            self._pending_cache = None

    def add(self, tasks: list[dict]) -> None:
        with self.lock:
            for task in tasks:
                task = dict(task)
                task.setdefault("state", "pending")
                key = str(task.get("_id"))
                self._put(key, task)
                self.history[key] = [task["state"]]
            self._pending_cache = None

    def pending_body(self, duplicate: bool = False) -> bytes:
        with self.lock:
            if duplicate:
                pending = [t for t in self.tasks.values() if t.get("state") == "pending"]
                return json.dumps(pending + pending, separators=(",", ":")).encode()
            if self._pending_cache is None:
                pending = [t for k, t in self.tasks.items() if t.get("state") == "pending" and k not in self.raw]
                try:
                    body = _encoder.encode(pending)
                except UnicodeEncodeError:   # a lone surrogate: escape it as Node's JSON.stringify does
                    body = json.dumps(pending, separators=(",", ":")).encode()
                raws = [raw for k, raw in self.raw.items() if self.tasks[k].get("state") == "pending"]
                if raws:
                    body = body[:-1] + (b"," if pending else b"") + b",".join(raws) + b"]"
                self._pending_cache = body
            return self._pending_cache

    def set_state(self, task_id: str, state: str, result: object, error: object = None) -> None:
        with self.lock:
            task = self.tasks[task_id]
            self.by_state[task.get("state", "?")] -= 1
            self.by_state[state] += 1
            task["state"] = state
            self.history[task_id].append(state)
            if state == "succeeded":
                self.results[task_id] = result
            if state == "failed":
                self.errors[task_id] = error
            self._pending_cache = None


class SandboxServer(StandIn):
    """Start with `start()` (returns the base URL), stop with `stop()`; safe to use from tests."""

    thread_name = "sandbox"

    def __init__(self, tasks: list[dict] | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 client_id: str | None = None, client_secret: str | None = None,
                 token_lifetime: float = 3600.0, introspection_url: str | None = None) -> None:
        self.store = _Store(tasks or [])
        self.client_id, self.client_secret = client_id, client_secret
        self.token_lifetime = token_lifetime
        # With an introspection URL, every bearer token is checked there (RFC 7662), as the real
        # server checks each one with Hydra; without it, the sandbox checks the tokens it issued.
        self.introspection_url = introspection_url
        self._introspection = requests.Session() if introspection_url else None
        self.fail_next: list[int] = []   # status codes to answer the next API requests with (fault injection)
        # An outage of the task API, until set back to None: "503" answers 503 with Retry-After,
        # "reset" drops each connection without an answer, "hang" answers nothing until the outage ends.
        self.outage: str | None = None
        self.garbage_polls = 0                   # answer the next N polls with 200 and a body that is not JSON
        self.duplicate_in_list = False           # list every pending task twice
        self.strict_bodies = False               # 400 for a body with fields besides state and result (a
                                                 # ValidationPipe with forbidNonWhitelisted)
        self.reject_results_of: set[str] = set() # store `succeeded`, then answer 400 (a callback that refused it)
        self.refuse_results_with: dict[str, int] = {}   # task id -> a 4xx for its success report, not stored
        self.outage_over = threading.Event()
        super().__init__(host, port, _make_handler(self))

    @property
    def requires_token(self) -> bool:
        return self.client_id is not None or self.introspection_url is not None

    @property
    def token_url(self) -> str:
        return f"{self.url}/oauth2/token"

    def start(self) -> str:
        host = self._server.server_address[0]
        if not is_loopback(host):
            log.warning("the sandbox task API listens beyond loopback: it is a stand-in for tests and demos, "
                        "with every task in memory, not a production server", extra={"fields": {"host": host}})
        return super().start()

    def release_held(self) -> None:
        self.outage_over.set()   # let hanging requests go

    def stop(self) -> None:
        super().stop()
        if self._introspection is not None:
            self._introspection.close()

    # --- looking inside ---
    def start_outage(self, kind: str) -> None:
        self.outage_over.clear()
        self.outage = kind

    def end_outage(self) -> None:
        self.outage = None
        self.outage_over.set()

    def remove_task(self, task_id: str) -> None:
        """The task disappears (deleted on the server): later PATCHes get a redirect or 404."""
        self.store.remove(task_id)

    def add_tasks(self, tasks: list[dict]) -> None:
        self.store.add(tasks)

    def add_raw_entry(self, key: str, raw: bytes) -> None:
        """List these exact bytes as one more entry while `key` is pending (see _Store.add_raw)."""
        self.store.add_raw(key, raw)

    def state_of(self, task_id: str) -> str:
        with self.store.lock:
            return self.store.tasks[task_id]["state"]

    def counts(self) -> dict[str, int]:
        with self.store.lock:
            return {state: count for state, count in self.store.by_state.items() if count}

    def counts_by_type(self) -> dict[str, dict[str, int]]:
        """type -> state -> how many tasks."""
        out: dict[str, dict[str, int]] = {}
        with self.store.lock:
            for task in self.store.tasks.values():
                by_state = out.setdefault(str(task.get("type")), {})
                by_state[task.get("state", "?")] = by_state.get(task.get("state", "?"), 0) + 1
        return out

    def history(self, task_id: str) -> list[str]:
        with self.store.lock:
            return list(self.store.history[task_id])

    def result(self, task_id: str) -> object:
        with self.store.lock:
            return self.store.results.get(task_id)

    def error_of(self, task_id: str) -> object:
        """The reason the client sent with `failed` (kept by the sandbox only, for tests)."""
        with self.store.lock:
            return self.store.errors.get(task_id)

    def request_counts(self) -> dict[str, int]:
        with self.store.lock:
            return dict(self.store.requests)

    def revoke_tokens(self) -> None:
        with self.store.lock:
            self.store.tokens.clear()

    def snapshot(self) -> dict:
        with self.store.lock:
            return {"counts": dict(Counter(t.get("state", "?") for t in self.store.tasks.values())),
                    "requests": dict(self.store.requests), "token_requests": self.store.token_requests}

    # --- behaviour ---
    def issue_token(self) -> tuple[str, float]:
        token = secrets.token_urlsafe(24)
        with self.store.lock:
            self.store.tokens[token] = time.time() + self.token_lifetime
            self.store.token_requests += 1
        return token, self.token_lifetime

    def token_valid(self, header: str | None) -> bool:
        if not self.requires_token:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        if self._introspection is not None:
            try:
                answer = self._introspection.post(self.introspection_url, data={"token": header[7:]}, timeout=5)
                return answer.status_code == 200 and answer.json().get("active") is True
            except (requests.RequestException, ValueError):
                return False   # the authorisation server cannot vouch for the token: fail closed
        with self.store.lock:
            expires = self.store.tokens.get(header[7:])
        return expires is not None and expires > time.time()

    def check_client(self, headers, form: dict[str, str]) -> bool:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        auth = headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
                client_id, secret = unquote(client_id), unquote(secret)
            except (ValueError, UnicodeDecodeError):
                return False
        # Compared in constant time: how long a refusal takes must not tell how much was right.
        return (hmac.compare_digest((client_id or "").encode(), (self.client_id or "").encode())
                & hmac.compare_digest((secret or "").encode(), (self.client_secret or "").encode()))


_SEVERITIES = {"critical", "high_3", "high_2", "high_1", "medium_3", "medium_2", "medium_1", "low_3", "low_2", "low_1"}


def result_fits(task_type: object, result: object) -> bool:
    """Whether a `succeeded` result has the shape the API's callback for that type reads
    (../shared/LLM-TASKS.md); the callback refuses (400) any other."""
    if task_type == "identifying_data":
        return isinstance(result, dict) and isinstance(result.get("personalities"), list) and all(
            isinstance(p, dict) and isinstance(p.get("wikidata"), dict) and isinstance(p.get("name"), str)
            for p in result["personalities"])
    if task_type == "defining_topics":
        return isinstance(result, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                                and t.get("language") == "pt" for t in result)
    if task_type == "defining_impact_area":
        return isinstance(result, dict) and isinstance(result.get("name"), str) and result.get("language") == "pt"
    if task_type == "defining_severity":
        return isinstance(result, dict) and result.get("severity") in _SEVERITIES
    return isinstance(result, list) and bool(result) and all(isinstance(x, (int, float)) for x in result)


def _make_handler(sandbox: SandboxServer) -> type[JsonHandler]:
    class Handler(JsonHandler):
        content_type = "application/json; charset=utf-8"     # as NestJS answers

        def _json(self, status: int, obj: object) -> None:
            try:
                body = _encoder.encode(obj)
            except UnicodeEncodeError:   # a lone surrogate in a task: escape it as Node does
                body = json.dumps(obj, separators=(",", ":")).encode()
            self._reply(status, body)

        def _error(self, status: int, message: str, error: str) -> None:
            self._json(status, {"message": message, "error": error, "statusCode": status})

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _count(self, name: str) -> None:
            with sandbox.store.lock:
                sandbox.store.requests[name] += 1
                if self.headers.get("Via"):          # came through a forward proxy
                    sandbox.store.requests[f"{name} via proxy"] += 1

        def _injected_failure(self) -> bool:
            outage = sandbox.outage
            if outage == "503":
                self._reply(503, b'{"message":"Service Unavailable","statusCode":503}', {"Retry-After": "1"})
                return True
            if outage == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()   # an RST, as from a proxy whose upstream died
                return True
            if outage == "hang":
                sandbox.outage_over.wait(30)
                self.close_connection = True
                return True
            if sandbox.fail_next:
                status = sandbox.fail_next.pop(0)
                self._error(status, "injected failure", "Injected")
                return True
            return False

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/api/ai-tasks/pending":
                self._count("GET pending")
                if self._injected_failure():
                    return
                if not sandbox.token_valid(self.headers.get("Authorization")):
                    return self._error(403, "Forbidden resource", "Forbidden")
                if sandbox.garbage_polls > 0:
                    sandbox.garbage_polls -= 1
                    return self._reply(200, b"<html><body>502 Bad Gateway</body></html>")
                body = sandbox.store.pending_body(sandbox.duplicate_in_list)
                with sandbox.store.lock:
                    sandbox.store.bytes_polled += len(body)
                return self._reply(200, body)
            if path.startswith("/_sandbox/") and not sandbox.token_valid(self.headers.get("Authorization")):
                return self._error(403, "Forbidden resource", "Forbidden")
            if path == "/_sandbox/stats":
                return self._json(200, sandbox.snapshot())
            if path == "/_sandbox/tasks":
                with sandbox.store.lock:
                    listing = [{"_id": k, "state": t.get("state"), "history": sandbox.store.history[k],
                                "result": sandbox.store.results.get(k)} for k, t in sandbox.store.tasks.items()]
                return self._json(200, listing)
            if path == "/404":
                return self._reply(200, b'"Not Found"')
            self._error(404, f"Cannot GET {path}", "Not Found")

        def do_PATCH(self) -> None:  # noqa: N802
            body = self._body()
            prefix = "/api/ai-tasks/"
            if not self.path.startswith(prefix):
                return self._error(404, f"Cannot PATCH {self.path}", "Not Found")
            self._count("PATCH task")
            if self._injected_failure():
                return
            if not sandbox.token_valid(self.headers.get("Authorization")):
                return self._error(403, "Forbidden resource", "Forbidden")
            if len(body) > BODY_LIMIT:
                return self._error(413, "request entity too large", "Payload Too Large")
            task_id = self.path[len(prefix):]
            if not _OBJECT_ID.match(task_id):
                return self._error(400, "Invalid ObjectId format", "Bad Request")
            try:
                update = msgspec.json.decode(body)
                state = update["state"]
            except (msgspec.DecodeError, KeyError, TypeError):
                return self._error(400, "Invalid state", "Bad Request")
            if state not in STATES:
                return self._error(400, "Invalid state", "Bad Request")
            if sandbox.strict_bodies and set(update) - {"state", "result"}:
                extra = sorted(set(update) - {"state", "result"})[0]
                return self._error(400, f"property {extra} should not exist", "Bad Request")
            if task_id not in sandbox.store.tasks:
                if self.headers.get("X-Api-Request") == "true":
                    return self._error(404, "Task not found", "Not Found")
                return self._reply(302, b"", {"Location": "/404"})
            if state == "succeeded" and task_id in sandbox.refuse_results_with:
                return self._error(sandbox.refuse_results_with[task_id], "result refused", "Unprocessable Entity")
            result = update.get("result")
            sandbox.store.set_state(task_id, state, result, update.get("error"))
            if state == "succeeded" and (task_id in sandbox.reject_results_of or not result_fits(
                    sandbox.store.tasks[task_id].get("type"), result)):
                # The real server stores the state first, then its callback rejects the result.
                return self._error(400, "callback rejected the result", "Bad Request")
            with sandbox.store.lock:
                task = dict(sandbox.store.tasks[task_id])
            self._json(200, task)

        def do_POST(self) -> None:  # noqa: N802
            body = self._body()
            if self.path == "/oauth2/token":
                form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
                if form.get("grant_type") != "client_credentials":
                    return self._json(400, {"error": "unsupported_grant_type"})
                if sandbox.requires_token and not sandbox.check_client(self.headers, form):
                    return self._json(401, {"error": "invalid_client",
                                            "error_description": "Client authentication failed"})
                token, lifetime = sandbox.issue_token()
                return self._json(200, {"access_token": token, "token_type": "bearer",
                                        "expires_in": int(lifetime), "scope": form.get("scope", "")})
            if self.path.startswith("/_sandbox/") and not sandbox.token_valid(self.headers.get("Authorization")):
                return self._error(403, "Forbidden resource", "Forbidden")
            if self.path == "/_sandbox/tasks":
                sandbox.add_tasks(msgspec.json.decode(body))
                return self._json(200, {"added": True})
            if self.path == "/_sandbox/revoke":
                sandbox.revoke_tokens()
                return self._json(200, {"revoked": True})
            self._error(404, f"Cannot POST {self.path}", "Not Found")

    return Handler
