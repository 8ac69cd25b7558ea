"""Authenticator: owns the bearer token.

One fetch at a time however many stages ask; the token is refreshed `auth.refresh_margin_seconds`
before it expires, and at once when the API refuses it (401/403). A failed fetch is retried with
backoff by a timer, never by the callers: while it waits, a caller gets no new fetch. A token that
the API refuses before it ever accepted it points at the configuration (a client of another
project, say): that is said once, clearly, and the next fetch waits for a backoff.
"""

from __future__ import annotations

import logging
import threading
import time

import msgspec
import pykka

from aitp.observability.dependencies import TOKEN_ENDPOINT, Dependencies
from aitp.transport.auth import AuthStatus, Token, TokenClient, write_auth_status
from aitp.errors import AuthError
from aitp.observability.logs import add_secret
from actors.messages import TokenArrived
from actors.stage import PipelineContext, Stage

log = logging.getLogger("aitp.authenticator")


class RefreshDue(msgspec.Struct, frozen=True):
    """The Authenticator's timer: fetch a new token; stale when a newer token came meanwhile."""

    generation: int


class TokenCell:
    """The current token, readable by every HTTP thread without asking the actor."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.token: Token | None = None
        self.accepted = False          # has the API taken the current token at least once?

    def get(self) -> Token | None:
        with self._lock:
            return self.token

    def set(self, token: Token | None) -> None:
        with self._lock:
            self.token, self.accepted = token, False

    def mark_accepted(self, access_token: str) -> None:
        with self._lock:
            if self.token is not None and self.token.access_token == access_token:
                self.accepted = True

    def was_accepted(self) -> bool:
        with self._lock:
            return self.accepted


class Authenticator(Stage):
    name = "authenticator"

    def __init__(self, ctx: PipelineContext, orphans: list | None = None, *,
                 token_client: TokenClient | None = None, cell: TokenCell | None = None,
                 dependencies: Dependencies | None = None) -> None:
        super().__init__(ctx, orphans)
        self.client, self.cell = token_client, cell or TokenCell()
        self.dependencies = dependencies or Dependencies()
        self.failures = 0              # failed fetches in a row
        self.refusals = 0              # fresh tokens refused in a row
        self.fetches = 0
        self.generation = 0            # bumped by every new token; older refresh timers then do nothing
        self.retry_scheduled = False
        self.next_fetch_allowed = 0.0  # monotonic; after a fresh token was refused
        self.last_error: str | None = None

    def setup(self) -> None:
        token = self.cell.get()
        if self.client is not None:
            delay = 0.0 if token is None else self._refresh_delay(token)
            self.later(delay, RefreshDue(self.generation))

    def receive(self, message) -> None:
        if isinstance(message, RefreshDue) and message.generation == self.generation:
            self.retry_scheduled = False
            self._fetch()

    def _refresh_delay(self, token: Token) -> float:
        lifetime = max(1.0, token.expires_at - time.time())
        return lifetime - min(self.settings.auth.refresh_margin_seconds, lifetime / 2)

    def _fetch(self) -> Token | None:
        if self.client is None:
            return None
        had_token = self._usable(self.cell.get())
        try:
            token = self.client.fetch()
        except AuthError as exc:
            self.failures += 1
            self.last_error = str(exc)
            self.dependencies.failed(TOKEN_ENDPOINT, str(exc))     # retried all the same, a refused secret too
            delay = self.ctx.probe_backoff(self.failures)
            log.error("no token", extra={"fields": {"token_url": self.client.token_url, "error": str(exc),
                                                     "retry_in_s": round(delay, 2)}})
            self._retry_in(delay)
            self._publish()
            return None
        self.failures = 0
        self.last_error = None
        self.dependencies.succeeded(TOKEN_ENDPOINT)
        self.fetches += 1
        self.generation += 1
        add_secret(token.access_token)
        self.cell.set(token)
        self.later(self._refresh_delay(token), RefreshDue(self.generation))
        log.info("token fetched", extra={"fields": {"expires_in_s": round(token.expires_at - time.time())}})
        self._publish()
        if not had_token:   # the Poller waits for a token instead of polling without one
            self.tell("poller", TokenArrived())
        return token

    def _publish(self) -> None:
        """Leave the token's state (never the token) where `aitp config show` reads it."""
        token = self.cell.get()
        try:
            write_auth_status(self.settings.auth_status_path, AuthStatus(
                token_url=self.client.token_url if self.client else "", token_held=self._usable(token),
                expires_at=token.expires_at if token else None, last_error=self.last_error, updated_at=time.time()))
        except OSError as exc:
            log.warning("cannot write the token status", extra={"fields": {"error": str(exc)}})

    def _retry_in(self, delay: float) -> None:
        if not self.retry_scheduled:
            self.retry_scheduled = True
            self.later(delay, RefreshDue(self.generation))

    @staticmethod
    def _usable(token: Token | None) -> bool:
        return token is not None and not token.expires_within(0)

    # --- asked by HTTP threads through `ActorCredentials` ---
    def renew(self, stale: str | None) -> str | None:
        """After a 401/403 with `stale`: the newer token if there is one (single flight), else a fetch,
        unless the backoff of a failed fetch or of a refused fresh token is still running."""
        current = self.cell.get()
        if current is not None and current.access_token != stale:
            return current.access_token
        if self.client is None or self.retry_scheduled:
            return stale
        if current is not None and not self.cell.was_accepted():
            return self._refused_fresh(current)
        self.refusals = 0
        if time.monotonic() < self.next_fetch_allowed:
            return stale
        token = self._fetch()
        return token.access_token if token else None

    def _refused_fresh(self, current: Token) -> str:
        now = time.monotonic()
        if now < self.next_fetch_allowed:
            return current.access_token
        self.refusals += 1
        delay = self.ctx.probe_backoff(self.refusals)
        self.next_fetch_allowed = now + delay
        self.last_error = "the task API refused a token it never accepted"
        log.error("the task API refuses a freshly issued token", extra={"fields": {
            "why": "a configuration error, not an expiry: the OAuth2 client must belong to the project the "
                   "task API trusts (check ORY_PROJECT_SLUG or OAUTH2_TOKEN_URL, and OAUTH2_CLIENT_ID)",
            "token_url": self.client.token_url if self.client else None,
            "client_id": self.settings.auth.client_id, "retry_in_s": round(delay, 2)}})
        self._retry_in(delay)    # then fetch a new one and try again
        return current.access_token

    def status(self) -> dict:
        token = self.cell.get()
        return {"configured": self.client is not None, "token_held": self._usable(token),
                "expires_at": round(token.expires_at) if token else None, "fetches": self.fetches,
                "last_error": self.last_error}


class ActorCredentials:
    """The task API client's view of the Authenticator: reads the cell, asks the actor to renew."""

    def __init__(self, cell: TokenCell, directory, timeout: float) -> None:
        self._cell, self._directory, self._timeout = cell, directory, timeout

    def current(self) -> str | None:
        token = self._cell.get()
        return token.access_token if token is not None and not token.expires_within(0) else None

    def accepted(self, token: str) -> None:
        self._cell.mark_accepted(token)

    def renew(self, stale: str | None) -> str | None:
        ref = self._directory.ref(Authenticator.name)
        if ref is None:
            return self.current()
        try:
            return ref.proxy().renew(stale).get(timeout=self._timeout)
        except (pykka.ActorDeadError, pykka.Timeout):
            return self.current()
