"""Structured logs: one JSON object per line (or readable text), secrets blanked wherever they appear.

Pass correlation fields as `extra={"fields": {"task_id": ..., "batch_id": ...}}`.

Secrets are blanked in the values, before a line is encoded, in every form they take: as they
are, JSON-escaped, URL-encoded, cut short at the end of a truncated text, and as the password of
any URL's userinfo. The core keys (ts, level, logger, event, exception) cannot be overwritten by a
field, and text lines show control characters escaped, so a value cannot forge a line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections import deque
from urllib.parse import quote, quote_plus

import msgspec

_encoder = msgspec.json.Encoder(enc_hook=repr)
REDACTED = "***"
CORE_KEYS = frozenset({"ts", "level", "logger", "event", "exception"})
# A secret's start left at the end of a cut text is blanked from this many characters on.
_SHORTEST_PREFIX = 6
# user:password@ in any URL: the password goes, whatever it is.
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def redact_url_password(text: str) -> str:
    """`http://user:pass@host` -> `http://user:***@host`, anywhere in `text`."""
    return _URL_PASSWORD.sub(lambda match: f"{match.group('head')}{REDACTED}@", text)


class _Redactor(logging.Filter):
    """Knows the secrets in force and blanks them in any text."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets: list[str] = []
        self.tokens: deque[str] = deque(maxlen=8)   # recent bearer tokens; older ones have expired
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        if secret and secret not in self.secrets:
            self.secrets.append(secret)

    def add_token(self, token: str) -> None:
        if token and token not in self.tokens:
            self.tokens.append(token)

    def scrub(self, text: str) -> str:
        if "://" in text and "@" in text:
            text = redact_url_password(text)
        for secret in (*self.secrets, *self.tokens):
            for form in _forms(secret):
                if form in text:
                    text = text.replace(form, REDACTED)
            text = _cut_prefix(text, secret)
        return text

    def scrub_value(self, value):
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {key: self.scrub_value(item) for key, item in value.items()}
        if isinstance(value, (list, tuple, set)):
            return [self.scrub_value(item) for item in value]
        if value is None or isinstance(value, (bool, int, float)):
            return value
        return self.scrub(repr(value))


def _forms(secret: str) -> set[str]:
    """The ways a secret can be written in a line: as it is, JSON-escaped, URL-encoded."""
    return {secret, json.dumps(secret)[1:-1], quote(secret, safe=""), quote_plus(secret)}


def _cut_prefix(text: str, secret: str) -> str:
    """A text cut short (`[:200]`) may end with the first part of a secret."""
    for length in range(min(len(secret) - 1, len(text)), _SHORTEST_PREFIX - 1, -1):
        if text.endswith(secret[:length]):
            return text[:-length] + REDACTED
    return text


def _fields(record: logging.LogRecord) -> dict:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _own_keys(fields: dict) -> dict:
    """Fields renamed where they would overwrite a core key (`event` -> `event_`)."""
    return {(f"{key}_" if key in CORE_KEYS else key): value for key, value in fields.items()}


class JsonFormatter(logging.Formatter):
    def __init__(self, redactor: _Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        scrub = self.redactor.scrub_value
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": scrub(record.getMessage()),
        }
        entry.update(scrub(_own_keys(_fields(record))))
        if record.exc_info:
            entry["exception"] = scrub(self.formatException(record.exc_info))
        return _encoder.encode(entry).decode()


class TextFormatter(logging.Formatter):
    def __init__(self, redactor: _Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        head = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: "
        text = head + _escaped(self.redactor.scrub(record.getMessage()))
        fields = _fields(record)
        if fields:
            text += " " + " ".join(f"{key}={_escaped(str(self.redactor.scrub_value(value)))}"
                                   for key, value in _own_keys(fields).items())
        if record.exc_info:      # a traceback keeps its lines; each is scrubbed
            text += "\n" + self.redactor.scrub(self.formatException(record.exc_info))
        return text


def _escaped(text: str) -> str:
    """Control characters shown as escapes: a value holding a newline cannot start a forged line."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode(), text)


_redactor = _Redactor([])


QUIET_LIBRARIES = ("httpx", "httpcore", "openai", "urllib3")


def configure(level: str = "INFO", fmt: str = "json", secrets: list[str] | None = None, stream=None) -> None:
    """Install one handler on the root logger (replacing earlier ones from this function)."""
    for secret in secrets or []:
        _redactor.add(secret)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(_redactor) if fmt == "json" else TextFormatter(_redactor))
    handler._aitp = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_aitp", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries log every request at INFO (httpx under the OpenAI SDK: a line per call, half of a
    # drain's log) or every connection at DEBUG (urllib3): their warnings only, unless DEBUG is asked.
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if str(level).upper() == "DEBUG" else logging.WARNING)


def add_secret(secret: str) -> None:
    """Blank a secret learned at run time (a bearer token) in every later line."""
    _redactor.add_token(secret)


def scrub(text: str) -> str:
    """`text` with every secret in force blanked (for error texts shown outside the logs)."""
    return _redactor.scrub(text)
