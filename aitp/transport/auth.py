"""OAuth2 client credentials: fetching a bearer token (the Authenticator actor owns when)."""

from __future__ import annotations

import os
import ssl
import time
from pathlib import Path
from urllib.parse import quote_plus

import msgspec

from aitp.errors import AuthError
from aitp.transport.tls import requests_session
from aitp.storage.files import private_file


# A token answer is a few hundred bytes; an error text is shown in /health, so only its start.
_MAX_ANSWER_BYTES = 64 * 1024
_REASON_CHARS = 200


class Token(msgspec.Struct, frozen=True):
    access_token: str
    expires_at: float          # time.time() seconds

    def expires_within(self, seconds: float, now: float | None = None) -> bool:
        return (time.time() if now is None else now) + seconds >= self.expires_at

    def __repr__(self) -> str:  # a token never reaches a log line through repr()
        return f"Token(expires_at={self.expires_at:.0f})"


class _TokenResponse(msgspec.Struct):
    access_token: str
    expires_in: float = 3600.0
    token_type: str = "bearer"


class _OAuthError(msgspec.Struct):
    error: str = ""
    error_description: str = ""


class TokenClient:
    """POSTs `grant_type=client_credentials` to the token URL; every error names the URL, never the secret."""

    def __init__(self, token_url: str, client_id: str, client_secret: str, *, scope: str = "",
                 auth_method: str = "client_secret_basic", timeout: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl_context = ssl_context       # aitp/transport/tls.py: the one TLS policy
        self.token_url = token_url
        self._client_id, self._secret = client_id, client_secret
        self._scope, self._auth_method, self._timeout = scope, auth_method, timeout
        self._session = None        # made on the first fetch: a service without OAuth2 never imports requests

    def fetch(self) -> Token:
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        auth = None
        if self._auth_method == "client_secret_post":
            form.update(client_id=self._client_id, client_secret=self._secret)
        else:   # RFC 6749 2.3.1: form-encode both before Basic, as Hydra expects
            auth = (quote_plus(self._client_id), quote_plus(self._secret))
        import requests     # about 70 ms and some MB at start-up, for a call made once an hour
        if self._session is None:
            self._session = requests_session(self._ssl_context)
        started = time.time()
        try:
            # Never redirected: a 307 would send the form, the secret in it, somewhere else.
            with self._session.post(self.token_url, data=form, auth=auth, timeout=self._timeout, stream=True,
                                    allow_redirects=False, headers={"Accept": "application/json"}) as response:
                content = self._read_capped(response, started)
        except requests.Timeout:
            raise AuthError(f"token endpoint {self.token_url} did not answer within {self._timeout} s") from None
        except requests.RequestException as exc:
            raise AuthError(f"token endpoint {self.token_url} unreachable: {type(exc).__name__}") from None
        if response.status_code != 200:
            try:
                problem = msgspec.json.decode(content, type=_OAuthError)
                reason = problem.error + (f" ({problem.error_description})" if problem.error_description else "")
            except msgspec.DecodeError:
                reason = "non-JSON answer"
            # The server's words go to /health and the status file: a few of them, printable only.
            reason = "".join(ch if ch.isprintable() else "?" for ch in reason[:_REASON_CHARS])
            raise AuthError(f"token endpoint {self.token_url} answered {response.status_code}: "
                            f"{reason or 'no error given'}")
        try:
            body = msgspec.json.decode(content, type=_TokenResponse)
        except msgspec.DecodeError:
            raise AuthError(f"token endpoint {self.token_url} answered 200 without a token in JSON") from None
        return Token(access_token=body.access_token, expires_at=started + body.expires_in)

    def _read_capped(self, response, started: float) -> bytes:
        """The answer's body, at most _MAX_ANSWER_BYTES of it, within the timeout as a whole."""
        import requests
        body = bytearray()
        for piece in response.iter_content(16 * 1024):
            body += piece
            if len(body) > _MAX_ANSWER_BYTES:
                raise AuthError(f"token endpoint {self.token_url} answered more than {_MAX_ANSWER_BYTES} bytes")
            if time.time() - started > self._timeout:
                raise requests.Timeout()
        return bytes(body)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


class AuthStatus(msgspec.Struct, frozen=True):
    """What `aitp config show` can tell of the running service's token: never the token itself."""

    token_url: str
    token_held: bool
    expires_at: float | None      # time.time() seconds
    last_error: str | None
    updated_at: float


def write_auth_status(path: Path, status: AuthStatus) -> None:
    """Atomically, so that a reader never sees half a file."""
    partial = private_file(path.with_suffix(".tmp"))      # 0600, like every file in the data directory
    partial.write_bytes(msgspec.json.encode(status))
    os.replace(partial, path)


def read_auth_status(path: Path) -> AuthStatus | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=AuthStatus)
    except (OSError, msgspec.DecodeError):
        return None
