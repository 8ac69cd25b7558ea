"""Structured logs: one JSON object per line (or readable text), secrets blanked wherever they appear.

Pass correlation fields as `extra={"fields": {"task_id": ..., "batch_id": ...}}`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque

import msgspec

_encoder = msgspec.json.Encoder()
REDACTED = "***"


class _Redactor(logging.Filter):
    """Replaces every known secret in the rendered message and fields."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [secret for secret in secrets if secret]
        self.tokens: deque[str] = deque(maxlen=8)   # recent bearer tokens; older ones have expired

    def add(self, secret: str) -> None:
        if secret and secret not in self.secrets:
            self.secrets.append(secret)

    def add_token(self, token: str) -> None:
        if token and token not in self.tokens:
            self.tokens.append(token)

    def scrub(self, text: str) -> str:
        for secret in (*self.secrets, *self.tokens):
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


def _fields(record: logging.LogRecord) -> dict:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    def __init__(self, redactor: _Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self.redactor.scrub(_encoder.encode(entry).decode())


class TextFormatter(logging.Formatter):
    def __init__(self, redactor: _Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if fields:
            text += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return self.redactor.scrub(text)


_redactor = _Redactor([])


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
    # urllib3 logs every new connection at DEBUG, with URLs: keep it to warnings.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def add_secret(secret: str) -> None:
    """Blank a secret learned at run time (a bearer token) in every later line."""
    _redactor.add_token(secret)
