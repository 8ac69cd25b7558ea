"""The pinned dimension of each model: from the settings, else from the first vector (kept in the journal).

The task API never checks dimensions, and its similarity search silently truncates the longer of
two vectors, so a change of dimension must be caught here, before anything is reported.
"""

from __future__ import annotations

import threading

from aitp.journal import Journal
from aitp.providers import Provider


class DimensionPins:
    def __init__(self, configured: dict[str, int], journal: Journal, provider: Provider) -> None:
        self._lock = threading.Lock()
        self._journal = journal
        self._pins = {**journal.pinned_dimensions(), **configured}
        self._provider = provider

    def expected(self, model: str) -> int | None:
        with self._lock:
            pinned = self._pins.get(model)
        return pinned if pinned is not None else self._provider.dimension(model)

    def confirm(self, model: str, dimension: int) -> bool:
        """True when `dimension` is the model's pin, pinning it now if the model had none."""
        with self._lock:
            if model not in self._pins:
                self._pins[model] = self._journal.pin_dimension(model, dimension)
            return self._pins[model] == dimension

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._pins)
