"""Breakers shared through Redis: pybreaker's own Redis state storage, so that one service learning
that a provider is down spares the others the failures. A breaker is shared by the services that
call the same endpoint (its URL is part of the key): each GPU box's Ollama keeps a breaker of its
own, while every service's OpenAI breaker is one."""

from __future__ import annotations

import hashlib
import logging

import pybreaker

log = logging.getLogger("aitp.breakers")


class _RedisStorage(pybreaker.CircuitRedisStorage):
    # pybreaker logs a traceback for every Redis error (several per provider call while Redis is
    # away) and falls back to "closed"; the lease keeper already says once that Redis is away.
    logger = logging.getLogger("aitp.breakers.redis")


logging.getLogger("aitp.breakers.redis").setLevel(logging.CRITICAL)


def shared_breaker_storage(client, prefix: str, name: str, endpoint: str) -> pybreaker.CircuitBreakerStorage | None:
    """Redis state storage for the breaker of `name` at `endpoint`; None (memory, this service's
    own) when Redis does not answer at start."""
    from redis.exceptions import RedisError

    digest = hashlib.sha1(endpoint.encode()).hexdigest()[:8]
    try:
        return _RedisStorage(pybreaker.STATE_CLOSED, client, namespace=f"{prefix}breaker:{name}:{digest}")
    except (RedisError, OSError) as exc:
        log.warning("breaker not shared: Redis does not answer at start", extra={"fields": {
            "breaker": name, "error": f"{type(exc).__name__}"}})
        return None
