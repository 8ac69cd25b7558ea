"""Every setting's dotted key with its declared type, and the environment names each key answers to.

The tables are built once, by pure functions, when the module is imported; nothing changes them afterwards.
"""

from __future__ import annotations

from typing import Any, Iterable

import msgspec

from aitp.config.schema import Settings

# Names of the original service's .env, plus the new ones; each maps to a dotted key.
ORIGINAL_NAMES: dict[str, str] = {
    "API_BASE_URL": "api.base_url",
    "REQUEST_TIMEOUT": "api.request_timeout",
    "ORY_PROJECT_SLUG": "auth.ory_project_slug",
    "OAUTH2_TOKEN_URL": "auth.token_url",
    "OAUTH2_CLIENT_ID": "auth.client_id",
    "OAUTH2_CLIENT_SECRET": "auth.client_secret",
    "OAUTH2_SCOPE": "auth.scope",
    "PROCESSING_MODE": "processing.mode",
    "SUPPORTED_MODELS": "processing.supported_models",
    "CONCURRENCY_LIMIT": "processing.concurrency_limit",
    "MAX_RETRIES": "processing.max_retries",
    "RETRY_BACKOFF_FACTOR": "processing.retry_backoff_factor",
    "POLLING_INTERVAL_SECONDS": "polling.interval_seconds",
    "OPENAI_API_KEY": "openai.api_key",
    "OPENAI_BASE_URL": "openai.base_url",
    "OPENAI_TIMEOUT": "openai.timeout",
    "OLLAMA_BASE_URL": "ollama.base_url",
    "OLLAMA_TIMEOUT": "ollama.timeout",
    "OLLAMA_MAX_RETRIES": "ollama.max_retries",
    "OLLAMA_MODEL_DOWNLOAD_TIMEOUT": "ollama.model_download_timeout",
    "CIRCUIT_BREAKER_THRESHOLD": "resilience.circuit_breaker_threshold",
    "RATE_LIMIT_ENABLED": "rate_limit.enabled",
    "RATE_LIMIT_PER_MINUTE": "rate_limit.per_minute",
    "RATE_LIMIT_PER_HOUR": "rate_limit.per_hour",
    "RATE_LIMIT_PER_DAY": "rate_limit.per_day",
    "RATE_LIMIT_PER_WEEK": "rate_limit.per_week",
    "RATE_LIMIT_PER_MONTH": "rate_limit.per_month",
    "RATE_LIMIT_STRATEGY": "rate_limit.strategy",
    "RATE_LIMIT_STORAGE_PATH": "rate_limit.storage_path",
    "METRICS_HOST": "monitoring.host",
    "METRICS_PORT": "monitoring.metrics_port",
    "LOG_LEVEL": "monitoring.log_level",
    "LOG_FORMAT": "monitoring.log_format",
    "AITP_DATA_DIR": "storage.data_dir",
    "REDIS_URL": "coordination.redis_url",
}


def leaf_types(struct_type: type = Settings, prefix: str = "") -> dict[str, Any]:
    """Every dotted key of the settings with its declared type (tables like dimensions are leaves)."""
    out: dict[str, Any] = {}
    for field in msgspec.structs.fields(struct_type):
        key = f"{prefix}{field.name}"
        if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):
            out.update(leaf_types(field.type, key + "."))
        else:
            out[key] = field.type
    return out


def generic_env_name(key: str) -> str:
    """`batching.max_items` -> `AITP_BATCHING__MAX_ITEMS`: every setting can come from the environment
    (Docker, Kubernetes); the original service's names (ORIGINAL_NAMES) take precedence where they exist."""
    return "AITP_" + key.upper().replace(".", "__")


def with_generic_names(original: dict[str, str], keys: Iterable[str]) -> dict[str, str]:
    """Environment name -> dotted key: the original names first, then the generic name of every key
    that has no original one, in the order of `keys`."""
    named = set(original.values())
    return {**original, **{generic_env_name(key): key for key in keys if key not in named}}


def generic_names_of_named_keys(original: dict[str, str], keys: Iterable[str]) -> dict[str, str]:
    """The generic names of the keys that have an original name too, in the order of `keys`."""
    named = set(original.values())
    return {generic_env_name(key): key for key in keys if key in named}


LEAF_TYPES: dict[str, Any] = leaf_types()
ENV_NAMES: dict[str, str] = with_generic_names(ORIGINAL_NAMES, LEAF_TYPES)
KEY_TO_ENV: dict[str, str] = {key: env for env, key in ENV_NAMES.items()}
# Keys that have an original name answer to their generic name too (the original wins).
GENERIC_ONLY_NAMES: dict[str, str] = generic_names_of_named_keys(ORIGINAL_NAMES, LEAF_TYPES)
