"""The objects the stages use, built once per run (so that a stage's restart keeps connections,
pools and files), and which stage gets which: each stage takes its parts in its constructor."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from aitp.breakers import ProviderBreaker
from aitp.config import Settings
from aitp.coordination.breakers import SYNC_TIMEOUT_SECONDS, BreakerMirror, shared_breaker_storage
from aitp.coordination.leases import LeaseBook, connect, key_prefix, lease_book_for
from aitp.coordination.rate_limits import shared_rate_limits_for
from aitp.observability.dependencies import DOWN, OK, REDIS, Dependencies, api_observer, breaker_state
from aitp.observability.metrics import Metrics
from aitp.providers import Provider
from aitp.routing import ChatRouter, Router, chat_breaker_name
from aitp.storage.files import private_directory
from aitp.storage.journal import Journal
from aitp.storage.rate_limits import RateLimitBackend, rate_limits_for
from aitp.tasks import HANDLERS, TaskHandler
from aitp.tasks.answers import AnswerBook
from aitp.transport.auth import TokenClient
from aitp.transport.task_api import NoCredentials, TaskApiClient
from aitp.transport.tls import client_context
from aitp.transport.wikidata import WikidataClient, wikidata_client_for
from aitp.vectors.pool import VectorPool
from actors.authenticator import ActorCredentials, TokenCell
from actors.directory import StageDirectory

# Which parts each stage is built with (the names of its constructor's keyword arguments).
STAGE_PARTS: dict[str, tuple[str, ...]] = {
    "authenticator": ("token_client", "cell", "dependencies"),
    "reporter": ("task_api", "journal", "leases"),
    "provider_workers": ("router", "journal", "vector_pool", "rate_limits"),
    "llm_workers": ("handlers", "chat_router", "wikidata", "journal", "rate_limits", "answers"),
    "dispatcher": ("router",),
    "rate_limiter": ("task_api", "journal", "rate_limits"),
    "poller": ("task_api", "journal", "handlers", "router", "chat_router", "rate_limits", "leases", "wikidata"),
}


@dataclass
class Parts:
    journal: Journal
    task_api: TaskApiClient
    router: Router
    chat_router: ChatRouter
    vector_pool: VectorPool
    handlers: dict[str, TaskHandler]
    rate_limits: RateLimitBackend
    cell: TokenCell
    answers: AnswerBook
    dependencies: Dependencies
    token_client: TokenClient | None = None
    wikidata: WikidataClient | None = None
    leases: LeaseBook | None = None     # several services on one API (aitp/coordination/leases.py)
    breaker_mirror: BreakerMirror | None = None

    def for_stage(self, name: str) -> dict[str, Any]:
        return {part: getattr(self, part) for part in STAGE_PARTS.get(name, ())}

    def status(self, outbox: int | None) -> dict:
        """The shared objects' part of /health and /metrics. Results waiting for the API: the
        Reporter holds them all (`outbox`, unpaid ones in memory only), else the journal says."""
        wikidata = self.wikidata.status() if self.wikidata is not None else {}
        breakers = {**self.router.status(), **self.chat_router.status(),
                    **({"wikidata": wikidata.pop("breaker")} if "breaker" in wikidata else {})}
        out: dict = {"breakers": breakers, "outbox": self.journal.counts()["outbox"] if outbox is None else outbox,
                     "wikidata": wikidata, "process_worker_restarts": self.vector_pool.restarts}
        if self.leases is not None:
            out["coordination"] = self.leases.status()
        return out

    def refresh_dependencies(self) -> None:
        """What the breakers and Redis say now, into `dependencies` (the calls feed the rest)."""
        breakers = [*self.router.breakers.values(), *self.chat_router.breakers.values()]
        for breaker in breakers:
            self.dependencies.set(breaker.name, *breaker_state(breaker.status()))
        wikidata = self.wikidata.status().get("breaker") if self.wikidata is not None else None
        if wikidata is not None:
            self.dependencies.set("wikidata", *breaker_state(wikidata))
        if self.leases is not None:
            self.dependencies.set(REDIS, *((OK, None) if self.leases.available else (DOWN, "does not answer")))

    def close(self) -> None:
        if self.breaker_mirror is not None:
            self.breaker_mirror.stop()
        self.task_api.close()
        self.router.close()
        if self.wikidata is not None:
            self.wikidata.close()
        self.rate_limits.close()
        self.journal.close()


PART_NAMES = {field.name for field in fields(Parts)}


def build_parts(settings: Settings, providers: dict[str, Provider], metrics: Metrics,
                directory: StageDirectory) -> Parts:
    """Everything the stages use. With REDIS_URL, several services share leases, paid results,
    rate limits and breakers."""
    resilience = settings.resilience
    redis_client = connect(settings.coordination.redis_url) if settings.coordination.redis_url else None
    prefix = key_prefix(settings.coordination.key_prefix, settings.api.base_url)

    # The breakers meet Redis from one thread, with a short timeout (aitp/coordination/breakers.py).
    mirror = BreakerMirror(connect(settings.coordination.redis_url, SYNC_TIMEOUT_SECONDS)) if redis_client else None

    def breaker(name: str, endpoint: str | None = None) -> ProviderBreaker:
        storage = shared_breaker_storage(mirror, prefix, name, endpoint) \
            if mirror is not None and endpoint is not None else None
        return ProviderBreaker(name, resilience.circuit_breaker_threshold, resilience.circuit_breaker_reset_seconds,
                               storage=storage)

    # A breaker per endpoint and kind: a chat endpoint that fails opens only the chat breaker, and
    # embeddings through the same base URL go on (a bulkhead; issue 28).
    breakers = {name: breaker(name, provider.endpoint) for name, provider in providers.items()}
    chat_breakers = {name: breaker(chat_breaker_name(name), f"{provider.endpoint} chat")
                     for name, provider in providers.items()}
    private_directory(settings.data_dir)     # 0700: task texts and vectors live there
    journal = Journal(settings.journal_path)   # first: a bad data directory stops startup before any process
    wikidata = wikidata_client_for(settings, breaker("wikidata"))
    cell, tls = TokenCell(), client_context(settings)    # one TLS policy for every client (aitp/transport/tls.py)
    dependencies = Dependencies()
    token_client = _token_client(settings, tls)
    task_api = _task_api(settings, metrics, dependencies, tls,
                         ActorCredentials(cell, directory, settings.api.request_timeout) if token_client
                         else NoCredentials())
    workers = settings.workers
    rate_limits = (redis_client and shared_rate_limits_for(settings, redis_client)) or rate_limits_for(settings)
    leases = lease_book_for(settings, redis_client)
    handlers = {name: handler(settings) for name, handler in HANDLERS.items()}
    vector_pool = VectorPool(workers.process_workers, workers.process_answer_timeout)
    vector_pool.warm_up()     # last: nothing after it can fail and leave its processes running
    if mirror is not None:
        mirror.start()
    return Parts(journal=journal, task_api=task_api,
                 router=Router(settings.processing.mode, providers, breakers),
                 chat_router=ChatRouter(providers, chat_breakers, settings.models.chat), vector_pool=vector_pool,
                 handlers=handlers,
                 rate_limits=rate_limits, cell=cell, answers=AnswerBook(journal), dependencies=dependencies,
                 token_client=token_client,
                 wikidata=wikidata, leases=leases, breaker_mirror=mirror)


def _task_api(settings: Settings, metrics: Metrics, dependencies: Dependencies, tls, credentials) -> TaskApiClient:
    """The task API's client; each answer (or its absence) is counted and tells `dependencies`."""
    api_metrics, api_dependency = metrics.api_request, api_observer(dependencies)

    def observe(endpoint: str, method: str, status: str, seconds: float) -> None:
        api_metrics(endpoint, method, status, seconds)
        api_dependency(endpoint, method, status, seconds)

    workers = settings.workers
    return TaskApiClient(settings.api.base_url, timeout=settings.api.request_timeout, credentials=credentials,
                         observer=observe, pool_size=workers.reporter_concurrency + workers.claim_concurrency + 2,
                         pipelining=settings.api.pipelining, max_answer_bytes=settings.api.max_answer_bytes,
                         ssl_context=tls)


def _token_client(settings: Settings, tls) -> TokenClient | None:
    if not settings.uses_oauth2:
        return None
    auth = settings.auth
    return TokenClient(settings.token_url, auth.client_id, auth.client_secret, scope=auth.scope,
                       auth_method=auth.client_auth_method, timeout=settings.api.request_timeout, ssl_context=tls)
