"""Authenticator: owns the bearer token; one fetch at a time, refreshed before it expires and on 401/403."""

from __future__ import annotations

import logging
import threading
import time

import pykka

from aitp.auth import Token, TokenClient
from aitp.errors import AuthError
from aitp.logs import add_secret
from actors.messages import RefreshToken
from actors.stage import PipelineContext, Stage

log = logging.getLogger("aitp.authenticator")


class TokenCell:
    """The current token, readable by every HTTP thread without asking the actor."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.token: Token | None = None

    def get(self) -> Token | None:
        with self._lock:
            return self.token

    def set(self, token: Token | None) -> None:
        with self._lock:
            self.token = token


class Authenticator(Stage):
    name = "authenticator"

    def __init__(self, ctx: PipelineContext, orphans: list | None = None,
                 client: TokenClient | None = None, cell: TokenCell | None = None) -> None:
        super().__init__(ctx, orphans)
        self.client, self.cell = client, cell or TokenCell()
        self.failures = 0
        self.fetches = 0
        self.generation = 0          # bumped by every new token; older refresh timers then do nothing
        self.retry_scheduled = False

    def setup(self) -> None:
        token = self.cell.get()
        if self.client is not None:
            delay = 0.0 if token is None else self._refresh_delay(token)
            self.later(delay, RefreshToken(self.generation))

    def on_receive(self, message) -> None:
        if isinstance(message, RefreshToken) and message.generation == self.generation:
            self.retry_scheduled = False
            self._fetch()

    def _refresh_delay(self, token: Token) -> float:
        lifetime = max(1.0, token.expires_at - time.time())
        return lifetime - min(self.settings.auth.refresh_margin_seconds, lifetime / 2)

    def _fetch(self) -> Token | None:
        if self.client is None:
            return None
        try:
            token = self.client.fetch()
        except AuthError as exc:
            self.failures += 1
            delay = self.ctx.backoff(self.failures)
            log.error("no token", extra={"fields": {"error": str(exc), "retry_in_s": round(delay, 2)}})
            if not self.retry_scheduled:
                self.retry_scheduled = True
                self.later(delay, RefreshToken(self.generation))
            return None
        self.failures = 0
        self.fetches += 1
        self.generation += 1
        add_secret(token.access_token)
        self.cell.set(token)
        self.later(self._refresh_delay(token), RefreshToken(self.generation))
        log.info("token fetched", extra={"fields": {"expires_in_s": round(token.expires_at - time.time())}})
        return token

    # --- asked by HTTP threads through `ActorCredentials` ---
    def renew(self, stale: str | None) -> str | None:
        """Single flight: a caller whose token is already replaced gets the new one without a fetch."""
        current = self.cell.get()
        if current is not None and current.access_token != stale:
            return current.access_token
        token = self._fetch()
        return token.access_token if token else None

    def status(self) -> dict:
        token = self.cell.get()
        return {"configured": self.client is not None, "token_held": token is not None,
                "expires_at": round(token.expires_at) if token else None, "fetches": self.fetches}


class ActorCredentials:
    """The task API client's view of the Authenticator: reads the cell, asks the actor to renew."""

    def __init__(self, cell: TokenCell, directory, timeout: float) -> None:
        self._cell, self._directory, self._timeout = cell, directory, timeout

    def current(self) -> str | None:
        token = self._cell.get()
        return token.access_token if token else None

    def renew(self, stale: str | None) -> str | None:
        ref = self._directory.ref(Authenticator.name)
        if ref is None:
            return self.current()
        try:
            return ref.proxy().renew(stale).get(timeout=self._timeout)
        except (pykka.ActorDeadError, pykka.Timeout):
            return self.current()
