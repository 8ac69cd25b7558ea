"""Which settings are secret, and the configuration with secrets and URL passwords blanked for people and logs."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from aitp.config.env_names import LEAF_TYPES
from aitp.config.schema import PLACEHOLDER_OPENAI_KEY, Settings

if TYPE_CHECKING:
    from aitp.config.loading import LoadedConfig

SECRET_KEYS = frozenset({"auth.client_secret", "openai.api_key"})
REDACTED = "***"
REDIS_URL_KEYS = ("coordination.redis_url",)
URL_KEYS = ("api.base_url", "ollama.base_url", "openai.base_url", "auth.token_url", "wikidata.api_url",
            "wikidata.sparql_url", "wikidata.pageviews_url")


def redacted_items(loaded: LoadedConfig) -> list[tuple[str, Any, str]]:
    """(key, value, source) for every key, with secrets replaced: for `aitp config show`."""
    tree = msgspec.to_builtins(loaded.settings)
    rows = []
    for key in LEAF_TYPES:
        value = _value_at(tree, key)
        if key in SECRET_KEYS and value:
            value = REDACTED if value != PLACEHOLDER_OPENAI_KEY else value
        elif key in URL_KEYS + REDIS_URL_KEYS and isinstance(value, str):
            value = without_passwords(value)
        rows.append((key, value, loaded.sources.get(key, "default")))
    return rows


def _value_at(tree: dict[str, Any], key: str) -> Any:
    """The value at a dotted key (`models.dimensions`) of the settings as builtins (walked here rather
    than with loading.flatten: loading imports this module)."""
    for part in key.split("."):
        tree = tree[part]
    return tree


def without_password(url: str) -> str:
    password = urlsplit(url).password
    return url.replace(f":{password}@", f":{REDACTED}@", 1) if password else url


def without_passwords(text: str) -> str:
    """Every URL's password blanked in a value that may list several (OLLAMA_BASE_URL)."""
    return re.sub(r"[^\s,]+", lambda url: without_password(url.group(0)), text)


def secret_values(settings: Settings) -> list[str]:
    """The secret strings in force, so the log redactor can blank them wherever they appear: the
    client secret, the API key, and any password in a configured URL's userinfo."""
    values = [settings.auth.client_secret, settings.openai.api_key]
    for key in URL_KEYS + REDIS_URL_KEYS:
        section, name = key.split(".")
        urls = re.split(r"[\s,]+", getattr(getattr(settings, section), name))     # OLLAMA_BASE_URL may list several
        values += [urlsplit(url).password or "" for url in urls]
    return [value for value in values if value and value != PLACEHOLDER_OPENAI_KEY]
