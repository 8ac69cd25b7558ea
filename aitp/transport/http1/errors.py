"""What a request without a complete answer raises."""

from __future__ import annotations


class HttpTransportError(Exception):
    """No complete answer: refused, reset, timed out or malformed. `kind` names which, for logs."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class _ClosedBeforeAnswer(HttpTransportError):
    """The server closed the connection before sending a byte of the answer."""
