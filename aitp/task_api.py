"""HTTP client for the NestJS task API, with the status handling of ../shared/CONTRACT.md."""

from __future__ import annotations

import enum
import time
from typing import Callable, Protocol

import msgspec

from aitp.contract import is_object_id
from aitp.errors import ContractError, TaskApiError
from aitp.http1 import BodySink, Http1Client, HttpTransportError, Response
from aitp.retry_after import retry_after_seconds


class Credentials(Protocol):
    """Where the client gets its bearer token; `renew` is called after a 401/403 with the stale one."""

    def current(self) -> str | None: ...

    def renew(self, stale: str | None) -> str | None: ...

    def accepted(self, token: str) -> None:
        """The API took this token (so a later 401/403 means revoked or expired, not misconfigured)."""


class NoCredentials:
    """For a task API that needs no token (a local sandbox started without one)."""

    def current(self) -> str | None:
        return None

    def renew(self, stale: str | None) -> str | None:
        return None

    def accepted(self, token: str) -> None:
        pass


class PatchOutcome(enum.Enum):
    DONE = "done"                        # 200: stored
    GONE = "gone"                        # 302 to /404 or 404: the task no longer exists; drop it
    REJECTED_AFTER_SUCCESS = "rejected"  # 400 after `succeeded`: the task is succeeded, the callback said no
    INVALID = "invalid"                  # other 400: a bug on our side, never retried
    RETRY = "retry"                      # 5xx, 429, timeouts, resets, auth still refused: try later


class PatchResult(msgspec.Struct, frozen=True):
    outcome: PatchOutcome
    status: int | None = None
    detail: str = ""
    retry_after: float | None = None


NOT_SENT = "not sent: the request before it in its group failed"

RequestObserver = Callable[[str, str, str, float], None]  # endpoint, method, status, seconds


def _retry_after(response: Response) -> float | None:
    return retry_after_seconds(response.headers)


def _text(response: Response) -> str:
    return response.body[:400].decode("utf-8", "replace")[:200]


class TaskApiClient:
    """One kept-alive connection pool shared by every stage that talks to the task API."""

    def __init__(self, base_url: str, *, timeout: float, credentials: Credentials | None = None,
                 pool_size: int = 16, observer: RequestObserver | None = None) -> None:
        self._base = "/api/ai-tasks"
        self.credentials: Credentials = credentials or NoCredentials()
        self._observer = observer
        # Every task takes two requests, so the client's CPU per request matters (aitp/http1.py).
        # No retries here and no redirects followed: the stages decide what a failure means.
        self._http = Http1Client(base_url, timeout=timeout, max_idle=pool_size)
        # JSON 404s instead of a redirect to /404 for unknown ids.
        self._headers = {"Content-Type": "application/json", "X-Api-Request": "true"}

    def _send(self, method: str, path: str, endpoint: str, body: bytes | None = None,
              body_sink: BodySink | None = None) -> Response:
        """One request with the current token, renewed and retried once on 401/403."""
        token = self.credentials.current()
        for attempt in (1, 2):
            headers = dict(self._headers)
            if token:
                headers["Authorization"] = f"Bearer {token}"
            started = time.perf_counter()
            status = "error"
            try:
                response = self._http.request(method, path, headers, body, body_sink=body_sink)
                status = str(response.status)
            except HttpTransportError as exc:
                raise TaskApiError(f"{method} {endpoint} failed: {exc.kind}") from None
            finally:
                if self._observer:
                    self._observer(endpoint, method, status, time.perf_counter() - started)
            if response.status in (401, 403):
                if attempt == 1:
                    token = self.credentials.renew(token)
                    continue
            elif token:
                self.credentials.accepted(token)
            return response
        return response

    def fetch_pending(self, consume: Callable[[memoryview | bytes], None] | None = None) -> bytes | bytearray:
        """The raw pending list (the server returns all of it and ignores `limit`). With `consume`,
        a 200 answer's body goes there piece by piece as it arrives, and b"" is returned."""
        sink = None if consume is None else (lambda status, headers: consume if status == 200 else None)
        response = self._send("GET", f"{self._base}/pending", "/api/ai-tasks/pending", body_sink=sink)
        if response.status != 200:
            raise TaskApiError(f"GET pending answered {response.status}: {_text(response)}",
                               status=response.status, retry_after=_retry_after(response))
        return response.body

    def patch(self, task_id: str, body: bytes, *, is_success: bool = False) -> PatchResult:
        if not is_object_id(task_id):
            raise ContractError(f"refusing to put task id {task_id[:40]!r} into a URL")
        try:
            response = self._send("PATCH", f"{self._base}/{task_id}", "/api/ai-tasks/:id", body)
        except TaskApiError as exc:
            return PatchResult(PatchOutcome.RETRY, detail=str(exc))
        code, detail = response.status, _text(response)
        if code == 200:
            return PatchResult(PatchOutcome.DONE, code)
        if code in (301, 302, 303, 307, 308, 404):
            return PatchResult(PatchOutcome.GONE, code, detail)
        if code == 400 and is_success:
            return PatchResult(PatchOutcome.REJECTED_AFTER_SUCCESS, code, detail)
        if 400 <= code < 500 and code not in (401, 403, 408, 429):
            return PatchResult(PatchOutcome.INVALID, code, detail)
        return PatchResult(PatchOutcome.RETRY, code, detail, _retry_after(response))

    def patch_in_order(self, patches: list[tuple[str, bytes, bool]]) -> list[PatchResult]:
        """PATCH each (task id, body, is_success) in turn. After the first RETRY the rest are not
        sent and come back RETRY too: the API is failing, and each would wait out its own timeout."""
        results: list[PatchResult] = []
        for task_id, body, is_success in patches:
            if results and results[-1].outcome is PatchOutcome.RETRY:
                results.append(PatchResult(PatchOutcome.RETRY, detail=NOT_SENT))
            else:
                results.append(self.patch(task_id, body, is_success=is_success))
        return results

    def close(self) -> None:
        self._http.close()

