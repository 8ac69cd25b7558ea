"""Effective configuration: built-in defaults < TOML file < `.env` in the working directory < environment.

Each layer's values are read as dotted keys, converted to their declared types, checked against each
other, and kept with where they came from. Environment variables keep the names of the original service.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from pathlib import Path
from urllib.parse import urlsplit
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec

from aitp.config.env_names import ENV_NAMES, GENERIC_ONLY_NAMES, LEAF_TYPES
from aitp.config.redaction import REDACTED, SECRET_KEYS, URL_KEYS, without_password
from aitp.config.schema import Settings
from aitp.errors import ConfigError


class LoadedConfig(msgspec.Struct, frozen=True):
    """The settings plus, for every dotted key, where its value came from."""

    settings: Settings
    sources: dict[str, str]


def load_config(
    config_file: str | os.PathLike[str] | None = None,
    *,
    environ: dict[str, str] | None = None,
    dotenv_dir: str | os.PathLike[str] | None = None,
) -> LoadedConfig:
    """Build the effective configuration; raises ConfigError naming the key, value and expectation."""
    environ = dict(os.environ) if environ is None else environ
    values: dict[str, Any] = flatten(msgspec.to_builtins(Settings()))
    sources = {key: "default" for key in values}

    config_file = config_file or environ.get("AITP_CONFIG") or None
    if config_file:
        for key, value in _read_toml(Path(config_file)).items():
            values[key], sources[key] = value, f"file {config_file}"

    dotenv_path = Path(dotenv_dir if dotenv_dir is not None else Path.cwd()) / ".env"
    layers = [(parse_dotenv(dotenv_path) if dotenv_path.is_file() else {}, ".env"), (environ, "environment")]
    for layer, source in layers:
        # The generic AITP_<SECTION>__<KEY> name works for every key; where the original service's
        # name is set too, it wins (it is applied after).
        for names in (GENERIC_ONLY_NAMES, ENV_NAMES):
            for env_name, key in names.items():
                if env_name in layer:
                    values[key], sources[key] = layer[env_name], f"{source} {env_name}"

    converted = {key: _convert(key, value, sources[key]) for key, value in values.items()}
    settings = msgspec.convert(unflatten(converted), Settings)
    _check_cross_field(settings, sources)
    return LoadedConfig(settings=settings, sources=sources)


def parse_dotenv(path: Path) -> dict[str, str]:
    """A `.env` file as python-dotenv reads it (quotes, `export`, comments after a quoted value,
    escapes, multi-line values), without expanding ${VARIABLES}; a name with no `=` is skipped."""
    from dotenv import dotenv_values
    return {name: value for name, value in dotenv_values(path, interpolate=False).items() if value is not None}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("--config", str(path), "an existing TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", str(path), f"valid TOML ({exc})") from None
    flat = flatten(data)
    for key in flat:
        if key not in LEAF_TYPES:
            raise ConfigError(key, flat[key], "a known key (see config/aitp.toml)", f"file {path}")
    return flat


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A settings tree as {dotted key: value}; tables that are settings of their own (dimensions) stay whole."""
    out: dict[str, Any] = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and key not in LEAF_TYPES:
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """{dotted key: value} back to a nested tree, as `msgspec.convert(..., Settings)` takes it."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _convert(key: str, value: Any, source: str) -> Any:
    """Coerce one value (strings from the environment included) to its declared type."""
    declared = LEAF_TYPES[key]
    base = get_args(declared)[0] if get_origin(declared) is Annotated else declared
    shown = REDACTED if key in SECRET_KEYS and value else value
    if isinstance(value, str) and base is not str:
        text = value.strip()
        if base is bool:
            if text.lower() not in _TRUE | _FALSE:
                raise ConfigError(key, shown, "true or false", source)
            value = text.lower() in _TRUE
        elif get_origin(base) is list:
            value = _parse_list(key, text, source)
        elif base in (int, float):
            try:
                value = base(text)
            except ValueError:
                raise ConfigError(key, shown, f"a number ({base.__name__})", source) from None
        elif get_origin(base) is dict:
            try:
                value = json.loads(text)
            except ValueError:
                raise ConfigError(key, shown, "a JSON object", source) from None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    try:
        return msgspec.convert(value, declared)
    except msgspec.ValidationError as exc:
        raise ConfigError(key, shown, _expectation(declared, exc), source) from None


def _parse_list(key: str, text: str, source: str) -> list[str]:
    """SUPPORTED_MODELS may be a JSON list or comma-separated, as in the original."""
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            raise ConfigError(key, text, "a JSON list of strings or comma-separated names", source) from None
        return items
    return [part.strip() for part in text.split(",") if part.strip()]


def _expectation(declared: Any, exc: msgspec.ValidationError) -> str:
    if get_origin(declared) is Literal:
        return "one of " + ", ".join(repr(choice) for choice in get_args(declared))
    return str(exc).split(" - at ")[0].replace("Expected", "").strip() or str(exc)


def _check_cross_field(settings: Settings, sources: dict[str, str]) -> None:
    redis_url = settings.coordination.redis_url
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("coordination.redis_url", without_password(redis_url),
                          "a redis://, rediss:// or unix:// URL", sources["coordination.redis_url"])
    for url in settings.ollama_base_urls[1:]:
        if not url.startswith(("http://", "https://")):
            raise ConfigError("ollama.base_url", settings.ollama.base_url, "http:// or https:// URLs, separated by "
                              "commas", sources["ollama.base_url"])
    for key in URL_KEYS:
        section, name = key.split(".")
        url = getattr(getattr(settings, section), name)
        if url and not url.startswith(("http://", "https://")):
            raise ConfigError(key, url, "an http:// or https:// URL", sources[key])
    if settings.processing.mode in ("ollama", "hybrid") and not settings.processing.supported_models:
        raise ConfigError("processing.supported_models", [], "at least one model for Ollama",
                          sources["processing.supported_models"])
    if bool(settings.auth.client_id) != bool(settings.auth.client_secret):
        raise ConfigError("auth.client_id", settings.auth.client_id or "",
                          "OAUTH2_CLIENT_ID and OAUTH2_CLIENT_SECRET set together", sources["auth.client_id"])
    for key in ("tls.ca_bundle", "tls.client_cert", "tls.client_key"):
        path = getattr(settings.tls, key.split(".")[1])
        if path and not Path(path).is_file():
            raise ConfigError(key, path, "a readable PEM file", sources[key])
    if bool(settings.tls.client_cert) != bool(settings.tls.client_key):
        raise ConfigError("tls.client_cert", settings.tls.client_cert, "tls.client_cert and tls.client_key together",
                          sources["tls.client_cert"])
    if settings.auth.client_id and not settings.token_url:
        raise ConfigError("auth.token_url", "", "OAUTH2_TOKEN_URL or ORY_PROJECT_SLUG when a client id is set",
                          sources["auth.token_url"])
    slug = settings.auth.ory_project_slug
    if slug and not _HOSTNAME_LABEL.fullmatch(slug):
        # Pasted into a hostname: "evil.example#" would send the client secret elsewhere.
        raise ConfigError("auth.ory_project_slug", slug, "an Ory project slug: letters, digits and hyphens "
                          "(one hostname label)", sources["auth.ory_project_slug"])
    token_url = urlsplit(settings.token_url)
    if (settings.uses_oauth2 and token_url.scheme == "http" and not is_loopback(token_url.hostname or "")
            and not settings.auth.allow_plain_http_token_url):
        raise ConfigError("auth.token_url", settings.token_url, "an https:// URL: the client secret would travel in "
                          "clear (plain http only to a loopback host, or with "
                          "AITP_AUTH__ALLOW_PLAIN_HTTP_TOKEN_URL=true)", sources["auth.token_url"])


_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def is_loopback(host: str) -> bool:
    """localhost, or an address in 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
