"""Admission of tasks against rate limits. A unit is one task sent to a provider."""

from __future__ import annotations

import abc

import msgspec


class Admission(msgspec.Struct, frozen=True):
    granted: int                 # how many of the asked units were reserved
    not_before: float | None     # when more may be asked for (time.time()), if any were refused


class RateLimitBackend(abc.ABC):
    @abc.abstractmethod
    def reserve(self, units: int) -> Admission:
        """Reserve up to `units` atomically."""

    @abc.abstractmethod
    def refund(self, units: int) -> None:
        """Give back units for tasks that never reached a provider."""


class AdmitAll(RateLimitBackend):
    """No limits configured (the tiered SQLite backend replaces this when limits are set)."""

    def reserve(self, units: int) -> Admission:
        return Admission(granted=units, not_before=None)

    def refund(self, units: int) -> None:
        pass
