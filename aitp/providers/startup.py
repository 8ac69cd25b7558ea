"""Provider startup (Ollama: list and pull models; OpenAI: check the key), retried with backoff
until it works."""

from __future__ import annotations

import logging
import threading

from aitp.errors import ProviderError
from aitp.providers.base import Provider
from aitp.routing import is_local

log = logging.getLogger("aitp.pipeline")

_MAX_DELAY_SECONDS = 30.0


def prepare_providers(providers: dict[str, Provider], mode: str, backoff_factor: float,
                      stop: threading.Event) -> bool:
    """Prepare every provider; False when `stop` came first. An error that is not retryable is
    raised. In hybrid mode Ollama may be down at startup: the OpenAI endpoint serves meanwhile;
    with several Ollama hosts, the others do (a host that is not ready pulls its models at its
    first batch)."""
    hosts = [name for name in providers if is_local(name)]
    for name, provider in providers.items():
        optional = is_local(name) and (mode == "hybrid" or len(hosts) > 1)
        if not _prepare_one(name, provider, optional, backoff_factor, stop):
            return False
    return True


def _prepare_one(name: str, provider: Provider, optional: bool, backoff_factor: float,
                 stop: threading.Event) -> bool:
    attempt = 0
    while not stop.is_set():
        try:
            provider.prepare()
            return True
        except ProviderError as exc:
            if not exc.retryable:
                raise
            if optional:
                log.error("Ollama not ready; its batches go to the other providers until it is",
                          extra={"fields": {"provider": name, "error": str(exc)}})
                return True
            attempt += 1
            delay = min(_MAX_DELAY_SECONDS, backoff_factor * 2 ** attempt)
            log.error("provider not ready", extra={"fields": {"provider": name, "error": str(exc),
                                                               "retry_in_s": delay}})
            stop.wait(delay)
    return False
