"""The composition root: builds the shared objects, recovers the last run's journal, starts the
supervised stages, and shuts them down gracefully."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import pykka

from aitp.transport.auth import TokenClient
from aitp import __version__
from aitp.config import Settings
from aitp.contract import RELEASE_BODY
from aitp.errors import ConfigError, CoordinationError, ProviderError
from aitp.observability.metrics import Metrics
from aitp.observability.monitoring import MonitoringServer
from aitp.storage.journal import Journal, OutboxEntry
from aitp.storage.files import private_directory
from aitp.breakers import ProviderBreaker
from aitp.coordination.breakers import shared_breaker_storage
from aitp.coordination.leases import connect, key_prefix, lease_book_for
from aitp.coordination.rate_limits import shared_rate_limits_for
from aitp.providers import Provider, providers_for
from aitp.storage.rate_limits import rate_limits_for
from aitp.routing import ChatRouter, Router, is_local
from aitp.transport.task_api import NoCredentials, PatchOutcome, TaskApiClient
from aitp.transport.tls import client_context
from aitp.transport.wikidata import wikidata_client_for
from aitp.tasks import HANDLERS
from aitp.timers import Scheduler
from aitp.vectors.pool import VectorPool
from actors.authenticator import ActorCredentials, Authenticator, TokenCell
from actors.dispatcher import Dispatcher
from actors.llm_workers import LlmWorkers
from aitp.tasks.resume import resume
from actors.messages import BatchEmbedded, TasksSettled
from actors.poller import Poller
from actors.provider_workers import ProviderWorkers
from actors.rate_limiter import RateLimiter
from actors.reporter import Reporter, result_entry
from actors.stage import PipelineContext, Stage, StageDirectory
from actors.supervisor import ChildSpec, Supervisor

log = logging.getLogger("aitp.pipeline")

# How long /health and /metrics wait for the stages' answers together; a stage that takes longer is
# shown as busy with its last answer (Docker's health check gives a probe 4 s, the first poll 5 s).
_STATUS_SECONDS = 1.0

_MOCK_WARNING_SECONDS = 600.0     # how often the mock provider's warning is repeated

# Started downstream first, so that nothing a stage sends has to wait for its receiver.
STAGES = (("authenticator", Authenticator), ("reporter", Reporter), ("provider_workers", ProviderWorkers),
          ("llm_workers", LlmWorkers),
          ("dispatcher", Dispatcher), ("rate_limiter", RateLimiter), ("poller", Poller))


class Pipeline:
    def __init__(self, settings: Settings, stop: threading.Event | None = None,
                 sources: dict[str, str] | None = None,
                 before_message: Callable[[Stage, Any], None] | None = None) -> None:
        self.settings = settings
        self.before_message = before_message   # PipelineContext.before_message
        self.sources = sources or {}
        self.stop_requested = stop or threading.Event()
        self.fatal_reason: str | None = None
        self.ctx: PipelineContext | None = None
        self.supervisor: pykka.ActorRef | None = None
        self.started_at = 0.0
        self.created_at = time.monotonic()
        self.phase = "starting"          # starting, preparing providers, running, stopping
        self.metrics = Metrics(known_models=_known_models(settings), known_types=set(HANDLERS))
        self.monitor: MonitoringServer | None = None
        self.specs: list[ChildSpec] = []
        self.last_status: dict[str, dict] = {}   # each stage's last answer, shown while it is busy

    # --- startup ---
    def start(self) -> bool:
        """Build and start everything; False when a stop came before the provider was ready."""
        settings = self.settings
        self._start_monitoring()
        providers = providers_for(settings, self.sources.get("openai.api_key", "default"))
        self.phase = "preparing providers"
        if not self._prepare(providers):
            return False
        resilience = settings.resilience
        # With REDIS_URL, several services share leases, paid results, rate limits and breakers.
        redis_client = connect(settings.coordination.redis_url) if settings.coordination.redis_url else None
        prefix = key_prefix(settings.coordination.key_prefix, settings.api.base_url)

        def storage(name: str, endpoint: str):
            return shared_breaker_storage(redis_client, prefix, name, endpoint) if redis_client else None

        breakers = {name: ProviderBreaker(name, resilience.circuit_breaker_threshold,
                                          resilience.circuit_breaker_reset_seconds,
                                          storage=storage(name, provider.endpoint))
                    for name, provider in providers.items()}
        router = Router(settings.processing.mode, providers, breakers)
        private_directory(settings.data_dir)     # 0700: task texts and vectors live there
        wikidata = wikidata_client_for(settings, ProviderBreaker("wikidata", resilience.circuit_breaker_threshold,
                                                                 resilience.circuit_breaker_reset_seconds))
        journal = Journal(settings.journal_path)
        directory, cell = StageDirectory(), TokenCell()
        tls = client_context(settings)          # one TLS policy for every client (aitp/transport/tls.py)
        directory.undeliverable = self._keep_late_results
        token_client = None
        if settings.uses_oauth2:
            token_client = TokenClient(settings.token_url, settings.auth.client_id, settings.auth.client_secret,
                                       scope=settings.auth.scope, auth_method=settings.auth.client_auth_method,
                                       timeout=settings.api.request_timeout, ssl_context=tls)
        credentials = ActorCredentials(cell, directory, settings.api.request_timeout) if token_client \
            else NoCredentials()
        workers = settings.workers
        task_api = TaskApiClient(settings.api.base_url, timeout=settings.api.request_timeout,
                                 credentials=credentials, observer=self.metrics.api_request,
                                 pool_size=workers.reporter_concurrency + workers.claim_concurrency + 2,
                                 pipelining=settings.api.pipelining, max_answer_bytes=settings.api.max_answer_bytes,
                                 ssl_context=tls)
        vector_pool = VectorPool(workers.process_workers, workers.process_answer_timeout)
        vector_pool.warm_up()
        rate_limits = (redis_client and shared_rate_limits_for(settings, redis_client)) or rate_limits_for(settings)
        self.ctx = ctx = PipelineContext(
            settings=settings, directory=directory, scheduler=Scheduler(), journal=journal, task_api=task_api,
            router=router, vector_pool=vector_pool, rate_limits=rate_limits, metrics=self.metrics,
            chat_router=ChatRouter(providers, breakers, settings.models.chat), wikidata=wikidata,
            handlers={name: handler(settings) for name, handler in HANDLERS.items()},
            before_message=self.before_message, leases=lease_book_for(settings, redis_client))
        extra: dict[str, dict] = {"authenticator": {"client": token_client, "cell": cell}}
        policies = settings.supervision

        def starter(name: str, stage_class) -> Callable[[list], pykka.ActorRef]:
            return lambda work: stage_class.start(ctx, work, **extra.get(name, {}))

        self.specs = specs = [ChildSpec(name, starter(name, stage_class), getattr(policies, name))
                              for name, stage_class in STAGES]
        self.supervisor = Supervisor.start(directory, specs, self._recover(), self._fatal,
                                           ctx.scheduler.call_later)
        ctx.supervisor = self.supervisor
        self.started_at = time.monotonic()
        self.phase = "running"
        log.info("pipeline started", extra={"fields": {"mode": settings.processing.mode, "providers": list(providers),
                                                        "api": settings.api.base_url}})
        if settings.uses_mock_provider:
            self._warn_mock()
        return True

    def _start_monitoring(self) -> None:
        """First of all, so that /ready answers 503 (and /health says why) while models download."""
        port = self.settings.monitoring.metrics_port
        try:
            self.monitor = MonitoringServer(port, health=self.health, ready=self.ready, metrics=self.metrics.expose,
                                            host=self.settings.monitoring.host)
        except OSError as exc:
            raise ConfigError("monitoring.metrics_port", port, f"a free TCP port ({exc.strerror})",
                              self.sources.get("monitoring.metrics_port", "default")) from None
        self.metrics.watch(self.status)
        self.monitor.start()

    def _prepare(self, providers: dict[str, Provider]) -> bool:
        """Provider startup (Ollama: list and pull models; OpenAI: check the key), retried with backoff
        until it works. In hybrid mode Ollama may be down at startup: the OpenAI endpoint serves meanwhile."""
        hosts = [name for name in providers if is_local(name)]
        for name, provider in providers.items():
            # In hybrid mode the OpenAI endpoint serves while Ollama is down; with several Ollama
            # hosts, the others do (a host that is not ready pulls its models at its first batch).
            optional = is_local(name) and (self.settings.processing.mode == "hybrid" or len(hosts) > 1)
            attempt = 0
            while True:
                if self.stop_requested.is_set():
                    return False
                try:
                    provider.prepare()
                    break
                except ProviderError as exc:
                    if not exc.retryable:
                        raise
                    if optional:
                        log.error("Ollama not ready; its batches go to the other providers until it is",
                                  extra={"fields": {"provider": name, "error": str(exc)}})
                        break
                    attempt += 1
                    delay = min(30.0, self.settings.processing.retry_backoff_factor * 2 ** attempt)
                    log.error("provider not ready", extra={"fields": {"provider": name, "error": str(exc),
                                                                       "retry_in_s": delay}})
                    self.stop_requested.wait(delay)
        return True

    def _recover(self) -> dict[str, list]:
        """What the last run left: claimed tasks are resumed (or dropped when claiming is off, as they
        are still pending on the server), and the outbox is sent again by the Reporter on start. A
        claim that can no longer be resumed still gets an answer through the outbox, since its task
        is `in_progress` on the server: `failed` with the reason when it is malformed, `pending`
        when no handler takes its type any more (another worker may)."""
        assert self.ctx is not None
        journal, handlers = self.ctx.journal, self.ctx.handlers
        resumed, answered = [], []
        claims = journal.claims()
        if not self.settings.api.claim_tasks:
            journal.drop_claims([claim.task_id for claim in claims])
            claims = []
        claims = self._still_ours(claims)
        for claim in claims:
            outcome = resume(handlers, claim.task_id, claim.task_json)
            (answered if isinstance(outcome, OutboxEntry) else resumed).append(outcome)
        journal.add_results(answered)     # and retires their claims, in one transaction
        in_flight = [entry.task_id for entry in journal.outbox()] + [job.task_id for job in resumed]
        if resumed or in_flight:
            log.info("resuming the last run", extra={"fields": {"claims": len(resumed),
                                                                 "outbox": len(in_flight) - len(resumed)}})
        return {"dispatcher": resumed, "poller": in_flight}

    def _still_ours(self, claims: list) -> list:
        """With several services on one API, the claims of the last run whose leases another service
        took over meanwhile (this one was down longer than a lease) are that service's now: dropped
        here. When Redis does not answer, they are resumed: they were this service's last."""
        leases = self.ctx.leases if self.ctx else None
        if leases is None or not claims:
            return claims
        try:
            ours = leases.acquire([(claim.task_id, bytes(claim.task_json)) for claim in claims])
        except CoordinationError as exc:
            log.warning("Redis does not answer at start: resuming the last run's claims without leases",
                        extra={"fields": {"error": str(exc), "claims": len(claims)}})
            return claims
        theirs = [claim.task_id for claim in claims if claim.task_id not in ours]
        if theirs:
            log.info("claims of the last run taken over by another service meanwhile: left to it",
                     extra={"fields": {"claims": len(theirs)}})
            self.ctx.journal.drop_claims(theirs)
        return [claim for claim in claims if claim.task_id in ours]

    def _warn_mock(self) -> None:
        """Said at start and every few minutes while it lasts: the mock's vectors are not embeddings."""
        if self.phase in ("stopping", "stopped") or self.ctx is None:
            return
        log.warning("the mock provider is in use: its vectors are deterministic stand-ins, not embeddings; "
                    "never point this service at a production task API",
                    extra={"fields": {"mode": self.settings.processing.mode}})
        self.ctx.scheduler.call_later(_MOCK_WARNING_SECONDS, self._warn_mock)

    def _keep_late_results(self, stage: str, message: object) -> None:
        """A batch's paid results that reached the Reporter after it stopped (a provider call that
        ran past the shutdown deadline) go to the outbox, for the next start to send. Unpaid ones
        are dropped: their claims go back to pending, to be computed again."""
        if not isinstance(message, BatchEmbedded) or self.ctx is None:
            return
        if message.paid or self.settings.storage.journal_unpaid_results:
            entries = [result_entry(result) for result in message.results]
            self.ctx.journal.add_results(entries)
            log.info("results that came back after the stop were journaled for the next start",
                     extra={"fields": {"batch_id": message.batch_id, "results": len(entries)}})

    def _fatal(self, reason: str) -> None:
        self.fatal_reason = reason
        self.stop_requested.set()

    # --- running ---
    def wait(self) -> None:
        # Wake up now and then: a signal that the kernel delivers to another thread runs its Python
        # handler only when the main thread next runs bytecode, and a bare wait() may never return.
        while not self.stop_requested.wait(0.25):
            pass

    def stage(self, name: str):
        assert self.ctx is not None
        ref = self.ctx.directory.ref(name)
        return ref.proxy() if ref is not None and ref.is_alive() else None

    def status(self) -> dict:
        """Every stage's status and the shared objects' state; what /health and /metrics show."""
        if self.ctx is None:
            return {"stages": {}}
        ctx = self.ctx
        stages: dict = {}
        asked = {}
        for name, _ in STAGES:       # asked all at once: one stage inside a long call delays none of the others
            proxy = self.stage(name)
            try:
                asked[name] = proxy.status() if proxy else None
            except pykka.ActorDeadError:
                asked[name] = None
        deadline = time.monotonic() + _STATUS_SECONDS
        for name, answer in asked.items():
            try:
                stages[name] = {"state": "down"} if answer is None else \
                    answer.get(timeout=max(0.0, deadline - time.monotonic()))
                self.last_status[name] = stages[name]
            except pykka.ActorDeadError:
                stages[name] = {"state": "down"}
            except pykka.Timeout:   # alive but inside a long call (a slow poll or token fetch): its last answer
                stages[name] = {**self.last_status.get(name, {}), "state": "busy"}
        # Results waiting for the API: the Reporter holds them all, unpaid ones in memory only.
        reporter = stages.get("reporter", {})
        outbox = reporter["outbox"] if "outbox" in reporter else ctx.journal.counts()["outbox"]
        wikidata = ctx.wikidata.status() if ctx.wikidata is not None else {}
        breakers = {**ctx.router.status(), **({"wikidata": wikidata.pop("breaker")} if "breaker" in wikidata else {})}
        out: dict = {"stages": stages, "breakers": breakers, "outbox": outbox, "wikidata": wikidata,
                     "process_worker_restarts": ctx.vector_pool.restarts}
        if ctx.leases is not None:
            out["coordination"] = ctx.leases.status()
        if self.specs:     # read, not asked: the supervisor may be busy handing a stage over
            out["restarts"] = {spec.name: spec.total_restarts for spec in self.specs}
        limiter = stages.get("rate_limiter", {})
        out["rate_limits"] = {"tiers": limiter.get("limits", []), "exceeded": limiter.get("exceeded", {})}
        return out

    def ready(self) -> tuple[bool, str]:
        if self.phase != "running":
            return False, self.phase
        if self.ctx is not None and self.ctx.leases is not None and not self.ctx.leases.available:
            return False, "Redis does not answer: no new task is taken (held ones are finished)"
        if self.settings.uses_oauth2 and (self.ctx is None or self.ctx.task_api.credentials.current() is None):
            return False, "no token yet"
        return True, "running"

    def health(self) -> tuple[int, dict]:
        status = self.status()
        restarts = status.get("restarts", {})
        stages = {name: {"state": stage.get("state") if stage.get("state") in ("down", "busy") else "running",
                         "restarts": restarts.get(name, 0)} for name, stage in status["stages"].items()}
        authenticator = status["stages"].get("authenticator", {})
        failing = self.fatal_reason is not None
        body = {
            "status": "failing" if failing else ("stopping" if self.phase == "stopping" else
                                                 "ok" if self.phase == "running" else "starting"),
            "version": __version__, "mode": self.settings.processing.mode, "phase": self.phase,
            "mock": self.settings.uses_mock_provider,
            "uptime_s": round(time.monotonic() - self.created_at, 1),
            "stages": stages,
            "breakers": {name: breaker["state"] for name, breaker in status.get("breakers", {}).items()},
            "token": {"configured": self.settings.uses_oauth2,
                      "held": bool(authenticator.get("token_held")),
                      "expires_at": authenticator.get("expires_at"), "last_error": authenticator.get("last_error")},
            "rate_limits": status.get("rate_limits", {}),
            "in_flight": status["stages"].get("poller", {}).get("in_flight", 0),
            "window": status["stages"].get("poller", {}).get("window"),     # tasks it may hold in flight
            "outbox": status.get("outbox", 0),
            "coordination": status.get("coordination"),
            "process_worker_restarts": status.get("process_worker_restarts", 0),
        }
        if failing:
            body["reason"] = self.fatal_reason
        return (503 if failing or self.phase == "stopping" else 200), body

    def in_flight(self) -> int:
        poller = self.stage("poller")
        return poller.status().get(timeout=5)["in_flight"] if poller else 0

    # --- shutdown ---
    def shutdown(self) -> None:
        """Stop polling, let in-flight work finish until the deadline, release what is left."""
        if self.ctx is None:
            self._stop_monitoring()
            return
        self.phase = "stopping"
        ctx, deadline = self.ctx, time.monotonic() + self.settings.shutdown.deadline_seconds
        poller = self.stage("poller")
        if poller:
            poller.stop_polling().get(timeout=5)
        released = []
        for name in ("dispatcher", "provider_workers", "llm_workers"):   # work no provider has seen yet
            stage = self.stage(name)
            if stage:
                released += stage.release_queued().get(timeout=5)
        if released:
            ctx.directory.tell("poller", TasksSettled([job.task_id for job in released], released=True))
        while time.monotonic() < deadline and not self.fatal_reason:
            try:
                if self.in_flight() == 0:
                    break
            except (pykka.ActorDeadError, pykka.Timeout):
                break
            time.sleep(0.05)
        if self.supervisor is not None and self.supervisor.is_alive():
            # A stage stops once its calls in flight return, which the request timeout bounds.
            stop_timeout = self.settings.api.request_timeout + 5
            supervisor = self.supervisor.proxy()
            supervisor.stop_timeout = stop_timeout
            supervisor.stop_children().get(timeout=stop_timeout * len(STAGES))
            self.supervisor.stop()
        # Answers that came back past the deadline are checked and journaled (_keep_late_results)
        # before any claim is released: releasing them would have them paid for again.
        ctx.vector_pool.close(finish_queued=True)
        self._release_claims()
        left = ctx.journal.counts()
        log.info("pipeline stopped", extra={"fields": {"claims_released_or_kept": left["claims"],
                                                        "outbox_kept": left["outbox"]}})
        ctx.scheduler.stop()
        ctx.task_api.close()
        ctx.router.close()
        if ctx.wikidata is not None:
            ctx.wikidata.close()
        ctx.rate_limits.close()
        ctx.journal.close()
        self._stop_monitoring()

    def _stop_monitoring(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None

    def _release_claims(self) -> None:
        """Every claim not finished goes back to `pending`; a claim the API does not take stays in the
        journal and is resumed at the next start. A released task that no provider saw gets its
        rate-limit unit back."""
        assert self.ctx is not None
        journal, api = self.ctx.journal, self.ctx.task_api
        claims = journal.claims()
        if not claims:
            return
        released = [claim.task_id for claim in claims]
        if self.settings.api.claim_tasks:
            # Pipelined: with the window grown for a far API, a release a round trip each would
            # outlast the shutdown deadline.
            results = api.patch_in_order([(task_id, RELEASE_BODY, False) for task_id in released])
            released = []
            for claim, result in zip(claims, results):
                if result.outcome in (PatchOutcome.DONE, PatchOutcome.GONE):
                    released.append(claim.task_id)
                else:
                    log.warning("claim kept for the next start", extra={"fields": {
                        "task_id": claim.task_id, "status": result.status, "detail": result.detail}})
        released_set = set(released)
        for claim in claims:
            if claim.task_id in released_set and not claim.sent:
                self.ctx.rate_limits.refund(claim.reservation, 1)
        journal.drop_claims(released)
        if self.ctx.leases is not None:
            self.ctx.leases.finish(released, final=False)     # pending again: any service may take them


def _known_models(settings: Settings) -> set[str]:
    """The model names the configuration names: metric labels are kept to these."""
    supported = settings.processing.supported_models
    return {*settings.models.dimensions, *supported, *(model.removesuffix(":latest") for model in supported),
            settings.models.default_chat_model, *settings.models.chat, "o3", "o3-mini"}
