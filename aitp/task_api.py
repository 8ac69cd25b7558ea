"""HTTP client for the NestJS task API, with the status handling of ../shared/CONTRACT.md."""

from __future__ import annotations

import enum
import time
from typing import Callable, Protocol

import msgspec
import urllib3

from aitp.contract import is_object_id
from aitp.errors import ContractError, TaskApiError
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


RequestObserver = Callable[[str, str, str, float], None]  # endpoint, method, status, seconds


class _Answer(msgspec.Struct, frozen=True):
    """What the client keeps of an HTTP answer."""

    status_code: int
    content: bytes
    headers: dict[str, str]

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


def _retry_after(response: _Answer) -> float | None:
    return retry_after_seconds(response.headers)


class TaskApiClient:
    """One kept-alive connection pool shared by every stage that talks to the task API."""

    def __init__(self, base_url: str, *, timeout: float, credentials: Credentials | None = None,
                 pool_size: int = 16, observer: RequestObserver | None = None) -> None:
        self._base = base_url.rstrip("/") + "/api/ai-tasks"
        self._timeout = timeout
        self.credentials: Credentials = credentials or NoCredentials()
        self._observer = observer
        # urllib3 directly, not requests: a request costs about a third of the CPU (measured in
        # benchmarks/README.md), and every task takes two. No retries, no redirects followed.
        self._pool = urllib3.PoolManager(maxsize=pool_size, block=False, retries=False)
        # JSON 404s instead of a redirect to /404 for unknown ids.
        self._headers = {"Content-Type": "application/json", "X-Api-Request": "true"}

    def _send(self, method: str, url: str, endpoint: str, body: bytes | None = None) -> _Answer:
        """One request with the current token, renewed and retried once on 401/403."""
        token = self.credentials.current()
        for attempt in (1, 2):
            headers = dict(self._headers)
            if token:
                headers["Authorization"] = f"Bearer {token}"
            started = time.perf_counter()
            status = "error"
            try:
                raw = self._pool.request(method, url, body=body, headers=headers, timeout=self._timeout,
                                         redirect=False, retries=False)
                response = _Answer(raw.status, raw.data, {k.lower(): v for k, v in raw.headers.items()})
                status = str(response.status_code)
            except urllib3.exceptions.HTTPError as exc:
                raise TaskApiError(f"{method} {endpoint} failed: {_reason(exc)}") from None
            finally:
                if self._observer:
                    self._observer(endpoint, method, status, time.perf_counter() - started)
            if response.status_code in (401, 403):
                if attempt == 1:
                    token = self.credentials.renew(token)
                    continue
            elif token:
                self.credentials.accepted(token)
            return response
        return response

    def fetch_pending(self) -> bytes:
        """The raw pending list (the server returns all of it and ignores `limit`)."""
        response = self._send("GET", f"{self._base}/pending", "/api/ai-tasks/pending")
        if response.status_code != 200:
            raise TaskApiError(f"GET pending answered {response.status_code}: {response.text[:200]}",
                               status=response.status_code, retry_after=_retry_after(response))
        return response.content

    def patch(self, task_id: str, body: bytes, *, is_success: bool = False) -> PatchResult:
        if not is_object_id(task_id):
            raise ContractError(f"refusing to put task id {task_id[:40]!r} into a URL")
        try:
            response = self._send("PATCH", f"{self._base}/{task_id}", "/api/ai-tasks/:id", body)
        except TaskApiError as exc:
            return PatchResult(PatchOutcome.RETRY, detail=str(exc))
        code, detail = response.status_code, response.text[:200]
        if code == 200:
            return PatchResult(PatchOutcome.DONE, code)
        if code in (301, 302, 303, 307, 308, 404):
            return PatchResult(PatchOutcome.GONE, code, detail)
        if code == 400 and is_success:
            return PatchResult(PatchOutcome.REJECTED_AFTER_SUCCESS, code, detail)
        if 400 <= code < 500 and code not in (401, 403, 408, 429):
            return PatchResult(PatchOutcome.INVALID, code, detail)
        return PatchResult(PatchOutcome.RETRY, code, detail, _retry_after(response))

    def close(self) -> None:
        self._pool.clear()


def _reason(exc: urllib3.exceptions.HTTPError) -> str:
    """A short name for what went wrong (the URL is already in the message; no headers, no token)."""
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return "Timeout"
    if isinstance(exc, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ProtocolError)):
        return "ConnectionError"
    return type(exc).__name__
