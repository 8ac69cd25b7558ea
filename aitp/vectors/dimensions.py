"""The pinned dimension of each model: from the settings, else from the first vector (kept in the journal).

The task API never checks dimensions, and its similarity search silently truncates the longer of
two vectors, so a change of dimension must be caught here, before anything is reported.
"""

from __future__ import annotations

import threading

from aitp.storage.journal import Journal


class DimensionPins:
    def __init__(self, configured: dict[str, int], journal: Journal) -> None:
        self._lock = threading.Lock()
        self._journal = journal
        self._pins = {**journal.pinned_dimensions(), **configured}

    def expected(self, model: str) -> int | None:
        """The model's pin; None until its first vector pins it."""
        with self._lock:
            return self._pins.get(model)

    def confirm(self, model: str, dimension: int) -> bool:
        """True when `dimension` is the model's pin, pinning it now if the model had none."""
        with self._lock:
            if model not in self._pins:
                self._pins[model] = self._journal.pin_dimension(model, dimension)
            return self._pins[model] == dimension

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._pins)
