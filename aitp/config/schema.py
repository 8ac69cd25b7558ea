"""The settings' shape and built-in defaults: one frozen msgspec struct per section of `config/aitp.toml`.

These structs are the one place defaults live; `config/aitp.toml` mirrors them with a comment per
key (a test keeps the two equal). `Settings` also derives the values no stage should re-derive.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import platformdirs

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
    negative_ttl_seconds: Seconds = 86_400.0
    when_down: Literal["hold", "unenriched"] = "hold"
    hold_seconds: Seconds = 600.0
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
    circuit_breaker_reset_seconds: Seconds = 10.0
    outage_backoff_max_seconds: Seconds = 2.0


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
    heartbeat_seconds: NonNegativeSeconds = 60.0


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
    done_seconds: Seconds = 604_800.0
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

