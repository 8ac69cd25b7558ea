"""What the CLI needs of a running service; the pipeline in `actors` provides it.

This keeps `aitp` (the domain) free of imports from `actors` (the pipeline): the composition root
`actors.app` hands its Pipeline class to `aitp.cli.main`.
"""

from __future__ import annotations

import threading
from typing import Protocol

from aitp.config import Settings


class Service(Protocol):
    stop_requested: threading.Event
    fatal_reason: str | None

    def start(self) -> bool: ...

    def wait(self) -> None: ...

    def shutdown(self) -> None: ...

    def status(self) -> dict: ...

    def in_flight(self) -> int: ...


class ServiceFactory(Protocol):
    def __call__(self, settings: Settings, stop: threading.Event | None = None,
                 sources: dict[str, str] | None = None) -> Service: ...
