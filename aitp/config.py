"""Effective configuration: built-in defaults < TOML file < `.env` in the working directory < environment.

The structs below are the one place defaults live; `config/aitp.toml` mirrors them with a comment per
key (a test keeps the two equal). Environment variables keep the names of the original service.
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
import platformdirs

from aitp.errors import ConfigError

PLACEHOLDER_OPENAI_KEY = "your_openai_api_key_here"

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
NonNegativeSeconds = Annotated[float, msgspec.Meta(ge=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class ApiSettings(_Section):
    base_url: str = "http://localhost:3000"
    request_timeout: Seconds = 30.0
    claim_tasks: bool = True
    max_body_bytes: Positive = 100_000
    max_answer_bytes: Positive = 16_000_000
    pipelining: bool = True


class AuthSettings(_Section):
    ory_project_slug: str = ""
    token_url: str = ""
    client_id: str = ""
    client_secret: str = ""
    scope: str = ""
    client_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    allow_plain_http_token_url: bool = False
    refresh_margin_seconds: NonNegativeSeconds = 60.0


class ProcessingSettings(_Section):
    mode: Literal["openai", "ollama", "hybrid", "mock"] = "openai"
    supported_models: list[str] = msgspec.field(default_factory=lambda: ["nomic-embed-text"])
    concurrency_limit: Positive = 2
    min_in_flight: Positive = 256
    max_in_flight: Positive = 2048
    max_text_chars: Positive = 1_000_000
    max_retries: NonNegative = 3
    retry_backoff_factor: NonNegativeSeconds = 1.0
    retry_backoff_max_seconds: NonNegativeSeconds = 60.0


class PollingSettings(_Section):
    interval_seconds: Seconds = 10.0
    list_reuse_seconds: NonNegativeSeconds = 5.0


class OpenAISettings(_Section):
    api_key: str = ""
    base_url: str = ""
    timeout: Seconds = 30.0
    max_batch_inputs: Annotated[int, msgspec.Meta(ge=1, le=2048)] = 2048
    max_batch_tokens: Positive = 300_000
    max_input_tokens: Positive = 8192
    max_answer_bytes: Positive = 256_000_000
    dimensions_model_prefixes: list[str] = msgspec.field(default_factory=lambda: ["text-embedding-3"])


class OllamaSettings(_Section):
    base_url: str = "http://localhost:11434"
    timeout: Seconds = 60.0
    max_retries: NonNegative = 3
    model_download_timeout: Seconds = 1800.0
    chat_timeout: Seconds = 300.0
    pull_missing_models: bool = True
    max_answer_bytes: Positive = 64_000_000


class TlsSettings(_Section):
    ca_bundle: str = ""
    client_cert: str = ""
    client_key: str = ""


class WikidataSettings(_Section):
    api_url: str = "https://www.wikidata.org/w/api.php"
    sparql_url: str = "https://query.wikidata.org/sparql"
    pageviews_url: str = "https://wikimedia.org/api/rest_v1/metrics/pageviews/per-article"
    user_agent: str = "aitp/0.1 (AI Task Processor; https://github.com/aitp/aitp) python-requests"
    timeout: Seconds = 10.0
    cache_ttl_seconds: Seconds = 604_800.0
    max_attempts: Positive = 4
    max_wait_seconds: NonNegativeSeconds = 30.0
    concurrency: Positive = 2


class ModelSettings(_Section):
    dimensions: dict[str, Positive] = msgspec.field(default_factory=lambda: {
        "nomic-embed-text": 768,
        "mxbai-embed-large": 1024,
        "all-minilm": 384,
        "text-embedding-3-small": 1536,
        "text-embedding-3-large": 3072,
        "text-embedding-ada-002": 1536,
    })
    mock_default_dimension: Positive = 768
    # The chat model a task names (OpenAI's, e.g. "o3") -> the local model Ollama runs in its place.
    chat: dict[str, str] = msgspec.field(default_factory=dict)
    default_chat_model: str = "o3"


class BatchingSettings(_Section):
    max_items: Positive = 15
    max_text_chars: Positive = 64_000
    linger_ms: NonNegativeSeconds = 5.0


class WorkerSettings(_Section):
    provider_threads: Positive = 4
    process_workers: NonNegative = 1
    reporter_concurrency: Positive = 8
    claim_concurrency: Positive = 8
    process_answer_timeout: Seconds = 60.0
    llm_concurrency: Positive = 4


class ResilienceSettings(_Section):
    circuit_breaker_threshold: Positive = 5
    circuit_breaker_reset_seconds: Seconds = 30.0


class RateLimitSettings(_Section):
    enabled: bool = True
    per_minute: NonNegative = 0
    per_hour: NonNegative = 0
    per_day: NonNegative = 0
    per_week: NonNegative = 0
    per_month: NonNegative = 0
    strategy: Literal["rolling", "fixed"] = "rolling"
    storage_path: str = ""


class MonitoringSettings(_Section):
    host: str = "127.0.0.1"
    metrics_port: Port = 8001
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "text"] = "json"


class StorageSettings(_Section):
    data_dir: str = ""
    journal_unpaid_results: bool = False


class ChildPolicy(_Section):
    restart: Literal["permanent", "transient", "temporary"] = "permanent"
    strategy: Literal["one_for_one", "rest_for_one"] = "one_for_one"
    intensity: NonNegative = 5
    period_seconds: Seconds = 60.0
    backoff_seconds: NonNegativeSeconds = 0.1
    backoff_max_seconds: NonNegativeSeconds = 5.0


class SupervisionSettings(_Section):
    poller: ChildPolicy = ChildPolicy()
    authenticator: ChildPolicy = ChildPolicy()
    rate_limiter: ChildPolicy = ChildPolicy()
    dispatcher: ChildPolicy = ChildPolicy()
    provider_workers: ChildPolicy = ChildPolicy()
    reporter: ChildPolicy = ChildPolicy()
    llm_workers: ChildPolicy = ChildPolicy()


class CoordinationSettings(_Section):
    redis_url: str = ""
    lease_seconds: Seconds = 30.0
    settled_seconds: Seconds = 120.0
    key_prefix: str = ""


class ShutdownSettings(_Section):
    deadline_seconds: Seconds = 20.0


class Settings(_Section):
    api: ApiSettings = ApiSettings()
    auth: AuthSettings = AuthSettings()
    tls: TlsSettings = TlsSettings()
    processing: ProcessingSettings = ProcessingSettings()
    polling: PollingSettings = PollingSettings()
    openai: OpenAISettings = OpenAISettings()
    ollama: OllamaSettings = OllamaSettings()
    models: ModelSettings = ModelSettings()
    wikidata: WikidataSettings = WikidataSettings()
    batching: BatchingSettings = BatchingSettings()
    workers: WorkerSettings = WorkerSettings()
    resilience: ResilienceSettings = ResilienceSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    storage: StorageSettings = StorageSettings()
    supervision: SupervisionSettings = SupervisionSettings()
    coordination: CoordinationSettings = CoordinationSettings()
    shutdown: ShutdownSettings = ShutdownSettings()

    # --- derived values, so that no stage re-derives them its own way ---
    @property
    def uses_mock_provider(self) -> bool:
        """Only when asked for: PROCESSING_MODE=mock, or the placeholder key set on purpose (as the
        original service's development setup does). A missing key is an error, never the mock."""
        mode = self.processing.mode
        return mode == "mock" or (mode in ("openai", "hybrid") and self.openai.api_key == PLACEHOLDER_OPENAI_KEY)

    @property
    def ollama_base_urls(self) -> list[str]:
        """OLLAMA_BASE_URL, which may name several hosts (comma- or space-separated): each is a
        provider of its own, with its own breaker; batches go to the least busy (README "Scaling out")."""
        return [url for url in re.split(r"[\s,]+", self.ollama.base_url) if url]

    @property
    def uses_oauth2(self) -> bool:
        """A client id is configured: every task API call needs a bearer token."""
        return bool(self.auth.client_id)

    @property
    def token_url(self) -> str:
        if self.auth.token_url:
            return self.auth.token_url
        if self.auth.ory_project_slug:
            return f"https://{self.auth.ory_project_slug}.projects.oryapis.com/oauth2/token"
        return ""

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir or platformdirs.user_data_dir("aitp"))

    @property
    def journal_path(self) -> Path:
        return self.data_dir / "journal.sqlite3"

    @property
    def rate_limit_path(self) -> Path:
        configured = self.rate_limit.storage_path
        return Path(configured) if configured else self.data_dir / "rate_limits.sqlite3"

    @property
    def wikidata_cache_path(self) -> Path:
        return self.data_dir / "wikidata-cache.sqlite3"

    @property
    def auth_status_path(self) -> Path:
        return self.data_dir / "auth-status.json"


# Names of the original service's .env, plus the new ones; each maps to a dotted key.
ENV_NAMES: dict[str, str] = {
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
KEY_TO_ENV = {key: env for env, key in ENV_NAMES.items()}
SECRET_KEYS = frozenset({"auth.client_secret", "openai.api_key"})
REDACTED = "***"


class LoadedConfig(msgspec.Struct, frozen=True):
    """The settings plus, for every dotted key, where its value came from."""

    settings: Settings
    sources: dict[str, str]


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


LEAF_TYPES = leaf_types()


def generic_env_name(key: str) -> str:
    """`batching.max_items` -> `AITP_BATCHING__MAX_ITEMS`: every setting can come from the environment
    (Docker, Kubernetes); the original service's names above take precedence where they exist."""
    return "AITP_" + key.upper().replace(".", "__")


# Keys that have an original name answer to their generic name too (the original wins).
GENERIC_ONLY_NAMES: dict[str, str] = {generic_env_name(key): key for key in LEAF_TYPES if key in KEY_TO_ENV}
for _key in LEAF_TYPES:
    if _key not in KEY_TO_ENV:
        ENV_NAMES[generic_env_name(_key)] = _key
        KEY_TO_ENV[_key] = generic_env_name(_key)
del _key


def env_example() -> str:
    """The text of `.env.example`: every setting by its environment name, with its default."""
    defaults = _flatten(msgspec.to_builtins(Settings()))
    lines = ["# Every aitp setting by its environment name, with its default (`aitp config env-example` writes",
             "# this file). Copy it to .env and keep only what you change; the environment overrides .env,",
             "# which overrides a TOML file (AITP_CONFIG), which overrides these defaults.", ""]
    section = None
    for key in LEAF_TYPES:
        head = key.split(".")[0]
        if head != section:
            lines += ([""] if section else []) + [f"# [{head}]"]
            section = head
        value = defaults[key]
        text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) \
            else str(value).lower() if isinstance(value, bool) else str(value)
        if isinstance(value, (list, dict)):
            text = f"'{text}'"
        lines.append(f"{KEY_TO_ENV[key]}={text}")
    lines += ["", "# [docker compose] not an aitp setting: the Grafana admin password docker-compose.yml requires",
              "GRAFANA_ADMIN_PASSWORD="]
    return "\n".join(lines) + "\n"


def load_config(
    config_file: str | os.PathLike[str] | None = None,
    *,
    environ: dict[str, str] | None = None,
    dotenv_dir: str | os.PathLike[str] | None = None,
) -> LoadedConfig:
    """Build the effective configuration; raises ConfigError naming the key, value and expectation."""
    environ = dict(os.environ) if environ is None else environ
    values: dict[str, Any] = _flatten(msgspec.to_builtins(Settings()))
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
    settings = msgspec.convert(_unflatten(converted), Settings)
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
    flat = _flatten(data)
    for key in flat:
        if key not in LEAF_TYPES:
            raise ConfigError(key, flat[key], "a known key (see config/aitp.toml)", f"file {path}")
    return flat


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and key not in LEAF_TYPES:
            out.update(_flatten(value, key + "."))
        else:
            out[key] = value
    return out


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
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
        raise ConfigError("coordination.redis_url", _without_password(redis_url),
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


def redacted_items(loaded: LoadedConfig) -> list[tuple[str, Any, str]]:
    """(key, value, source) for every key, with secrets replaced: for `aitp config show`."""
    flat = _flatten(msgspec.to_builtins(loaded.settings))
    rows = []
    for key in LEAF_TYPES:
        value = flat[key]
        if key in SECRET_KEYS and value:
            value = REDACTED if value != PLACEHOLDER_OPENAI_KEY else value
        elif key in URL_KEYS + REDIS_URL_KEYS and isinstance(value, str):
            value = _without_passwords(value)
        rows.append((key, value, loaded.sources.get(key, "default")))
    return rows


REDIS_URL_KEYS = ("coordination.redis_url",)
URL_KEYS = ("api.base_url", "ollama.base_url", "openai.base_url", "auth.token_url", "wikidata.api_url",
            "wikidata.sparql_url", "wikidata.pageviews_url")


def _without_password(url: str) -> str:
    password = urlsplit(url).password
    return url.replace(f":{password}@", f":{REDACTED}@", 1) if password else url


def _without_passwords(text: str) -> str:
    """Every URL's password blanked in a value that may list several (OLLAMA_BASE_URL)."""
    return re.sub(r"[^\s,]+", lambda url: _without_password(url.group(0)), text)


def secret_values(settings: Settings) -> list[str]:
    """The secret strings in force, so the log redactor can blank them wherever they appear: the
    client secret, the API key, and any password in a configured URL's userinfo."""
    values = [settings.auth.client_secret, settings.openai.api_key]
    for key in URL_KEYS + REDIS_URL_KEYS:
        section, name = key.split(".")
        urls = re.split(r"[\s,]+", getattr(getattr(settings, section), name))     # OLLAMA_BASE_URL may list several
        values += [urlsplit(url).password or "" for url in urls]
    return [value for value in values if value and value != PLACEHOLDER_OPENAI_KEY]
