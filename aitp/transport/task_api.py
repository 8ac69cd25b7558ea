"""HTTP client for the NestJS task API, with the status handling of ../shared/CONTRACT.md."""

from __future__ import annotations

import enum
import ssl
import time
from collections import deque
from typing import Callable, Protocol

import msgspec

from aitp.contract import is_object_id
from aitp.errors import ContractError, TaskApiError
from aitp.transport.http1 import BodySink, Http1Client, HttpTransportError, Response, proxy_for
from aitp.transport.retry_after import retry_after_seconds
from aitp.timers import running_mean


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


_DONE = PatchResult(PatchOutcome.DONE, 200)      # frozen: every taken PATCH shares it
NO_ANSWER = "no answer: the request before it in its group failed"
# How much each new group moves TaskApiClient.patch_seconds: a few groups follow a change of pace.
_PATCH_SECONDS_WEIGHT = 0.25

_ACCEPT_GZIP = {"Accept-Encoding": "gzip"}
# How many recent PATCH groups the round-trip estimate looks back over (the smallest of their times).
_ROUND_TRIP_SAMPLES = 32
RequestObserver = Callable[[str, str, str, float], None]  # endpoint, method, status, seconds


def _retry_after(response: Response) -> float | None:
    return retry_after_seconds(response.headers)


def _patch_result(response: Response, is_success: bool) -> PatchResult:
    code = response.status
    if code == 200:
        return _DONE
    detail = _text(response)
    if code in (301, 302, 303, 307, 308, 404):
        return PatchResult(PatchOutcome.GONE, code, detail)
    if code == 400 and is_success:
        return PatchResult(PatchOutcome.REJECTED_AFTER_SUCCESS, code, detail)
    if 400 <= code < 500 and code not in (401, 403, 408, 429):
        return PatchResult(PatchOutcome.INVALID, code, detail)
    return PatchResult(PatchOutcome.RETRY, code, detail, _retry_after(response))


def _text(response: Response) -> str:
    return response.body[:400].decode("utf-8", "replace")[:200]


def _final_before_refusal(patches: list[tuple[str, bytes, bool]], results: list[PatchResult | None],
                          early: Callable[[int, list[PatchResult | None]], None]) -> Callable[[list[Response]], None]:
    """The `progress` of patch_in_order's first attempt (when todo is every patch, in order): the
    answers before the first refused token are final, and `early` is told so as they come."""
    final = 0

    def answered(answers: list[Response]) -> None:
        nonlocal final
        start = final
        while final < len(answers) and answers[final].status not in (401, 403):
            results[final] = _patch_result(answers[final], patches[final][2])
            final += 1
        if final > start:
            early(final, results)
    return answered


class TaskApiClient:
    """One kept-alive connection pool shared by every stage that talks to the task API."""

    def __init__(self, base_url: str, *, timeout: float, credentials: Credentials | None = None,
                 pool_size: int = 16, observer: RequestObserver | None = None, pipelining: bool = True,
                 max_answer_bytes: int | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self._base = "/api/ai-tasks"
        self.credentials: Credentials = credentials or NoCredentials()
        self._observer = observer
        # Every task takes two requests, so the client's CPU per request matters (aitp/transport/http1/).
        # No retries here and no redirects followed: the stages decide what a failure means.
        self._http = Http1Client(base_url, timeout=timeout, max_idle=pool_size, pipelining=pipelining,
                                 max_body_bytes=max_answer_bytes, ssl_context=ssl_context, proxy=proxy_for(base_url))
        # JSON 404s instead of a redirect to /404 for unknown ids.
        self._headers = {"Content-Type": "application/json", "X-Api-Request": "true"}
        # Wall seconds one PATCH takes in a group sent together (a running mean; None before the
        # first): how the stages size the chunks they send on one connection (actors/stage.py).
        self.patch_seconds: float | None = None
        # The shortest wall time of the last few PATCH groups: the round trip to the API plus one
        # request's work, which is what the Poller sizes its window by (actors/poller.py).
        self._group_seconds: deque[float] = deque(maxlen=_ROUND_TRIP_SAMPLES)

    def _send(self, method: str, path: str, endpoint: str, body: bytes | None = None,
              body_sink: BodySink | None = None, extra_headers: dict[str, str] | None = None) -> Response:
        """One request with the current token, renewed and retried once on 401/403."""
        token = self.credentials.current()
        for attempt in (1, 2):
            headers = {**self._headers_with(token), **(extra_headers or {})}
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
        # The list is JSON that compresses about tenfold (38 MB at 100,000 tasks): a proxy in front of
        # the API (nginx, a load balancer) that gzips it saves most of each poll; it is inflated as it
        # arrives, a bounded piece at a time (aitp/transport/http1/decoders.py).
        response = self._send("GET", f"{self._base}/pending", "/api/ai-tasks/pending", body_sink=sink,
                              extra_headers=_ACCEPT_GZIP)
        if response.status != 200:
            raise TaskApiError(f"GET pending answered {response.status}: {_text(response)}",
                               status=response.status, retry_after=_retry_after(response))
        return response.body

    @property
    def round_trip_seconds(self) -> float | None:
        """About one round trip to the API (None before the first PATCH group was answered)."""
        samples = list(self._group_seconds)     # appended to by other threads
        return min(samples) if samples else None

    @property
    def pipelining(self) -> bool:
        """Whether PATCHes go pipelined (configured, and not turned off by a server that dropped them)."""
        return self._http.pipelining

    def patch(self, task_id: str, body: bytes, *, is_success: bool = False) -> PatchResult:
        return self.patch_in_order([(task_id, body, is_success)])[0]

    def patch_in_order(self, patches: list[tuple[str, bytes, bool]],
                       early: Callable[[int, list[PatchResult | None]], None] | None = None) -> list[PatchResult]:
        """PATCH each (task id, body, is_success), pipelined on one connection (a PATCH of a state
        is idempotent, so one the server may not have carried out can be sent again). After the first
        request without an answer the rest come back RETRY too: the API is failing.

        `early(count, results)`, when given, is told as answers come in that results[:count] are
        final (the answers before the first refused token, which is tried again, or the first error)."""
        for task_id, _, _ in patches:
            if not is_object_id(task_id):
                raise ContractError(f"refusing to put task id {task_id[:40]!r} into a URL")
        results: list[PatchResult | None] = [None] * len(patches)
        todo = list(range(len(patches)))
        token = self.credentials.current()
        answered = None if early is None else _final_before_refusal(patches, results, early)
        for attempt in (1, 2):
            headers = self._headers_with(token)
            answers, seconds = self._patch_group(patches, todo, headers, answered if attempt == 1 else None)
            refused = self._take_answers(patches, todo, answers, results, seconds, attempt)
            if token and any(r is not None and r.status not in (None, 401, 403) for r in results):
                self.credentials.accepted(token)
            if not refused:
                break
            token = self.credentials.renew(token)       # once, for all the refused ones
            todo = refused
        return results

    def _patch_group(self, patches: list[tuple[str, bytes, bool]], todo: list[int], headers: dict[str, str],
                     progress: Callable[[list[Response]], None] | None,
                     ) -> tuple[list[Response | HttpTransportError], float]:
        """PATCH the `todo` ones of `patches` as one pipelined group: the answers, and the seconds
        per PATCH, which the pace and round-trip estimates take in."""
        started = time.perf_counter()
        answers = self._http.pipeline("PATCH", [(f"{self._base}/{patches[i][0]}", headers, patches[i][1])
                                                for i in todo], progress=progress)
        elapsed = time.perf_counter() - started
        self._group_seconds.append(elapsed)
        seconds = elapsed / max(1, len(todo))
        self.patch_seconds = running_mean(self.patch_seconds, seconds, _PATCH_SECONDS_WEIGHT)
        return answers, seconds

    def _take_answers(self, patches: list[tuple[str, bytes, bool]], todo: list[int],
                      answers: list[Response | HttpTransportError], results: list[PatchResult | None],
                      seconds: float, attempt: int) -> list[int]:
        """Put each answer to the `todo` patches into `results`, observed; returns the ones whose
        token was refused on the first attempt, to send again with a renewed one."""
        refused = []
        failed = False
        for index, answer in zip(todo, answers):
            if isinstance(answer, HttpTransportError):
                results[index] = PatchResult(PatchOutcome.RETRY, detail=NO_ANSWER if failed else
                                             f"PATCH /api/ai-tasks/:id failed: {answer.kind}")
                if not failed and self._observer:
                    self._observer("/api/ai-tasks/:id", "PATCH", "error", seconds)
                failed = True
                continue
            if self._observer:
                self._observer("/api/ai-tasks/:id", "PATCH", str(answer.status), seconds)
            if answer.status in (401, 403) and attempt == 1:
                refused.append(index)
            results[index] = _patch_result(answer, patches[index][2])
        return refused

    def _headers_with(self, token: str | None) -> dict[str, str]:
        headers = dict(self._headers)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def close(self) -> None:
        self._http.close()

