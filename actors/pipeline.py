"""The composition root: builds the shared objects, recovers the last run's journal, starts the
supervised stages, and shuts them down gracefully."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import pykka

from aitp.config import Settings
from aitp.errors import ConfigError
from aitp.observability.health import health_body
from aitp.observability.metrics import Metrics
from aitp.observability.monitoring import MonitoringServer
from aitp.providers import providers_for
from aitp.providers.startup import prepare_providers
from aitp.storage.journal import result_entry
from aitp.storage.recovery import recover, release_claims
from aitp.tasks import HANDLERS
from aitp.timers import Scheduler
from actors.authenticator import Authenticator
from actors.directory import StageDirectory
from actors.dispatcher import Dispatcher
from actors.llm_workers import LlmWorkers
from actors.messages import BatchEmbedded, TasksSettled
from actors.parts import Parts, build_parts
from actors.poller import Poller
from actors.provider_workers import ProviderWorkers
from actors.rate_limiter import RateLimiter
from actors.reporter import Reporter
from actors.stage import PipelineContext, Stage
from actors.supervisor import ChildSpec, Supervisor
from actors.watch import Watch

log = logging.getLogger("aitp.pipeline")

# How long /health and /metrics wait for the stages' answers together; a stage that takes longer is
# shown as busy with its last answer (Docker's health check gives a probe 4 s, the first poll 5 s).
_STATUS_SECONDS = 1.0

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
        self.parts: Parts | None = None
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
        if not prepare_providers(providers, settings.processing.mode, settings.processing.retry_backoff_factor,
                                 self.stop_requested):
            return False
        directory = StageDirectory()
        directory.undeliverable = self._keep_late_results
        self.parts = parts = build_parts(settings, providers, self.metrics, directory)
        self.ctx = ctx = PipelineContext(settings=settings, directory=directory, scheduler=Scheduler(),
                                         metrics=self.metrics, before_message=self.before_message)
        policies = settings.supervision

        def starter(name: str, stage_class) -> Callable[[list], pykka.ActorRef]:
            return lambda work: stage_class.start(ctx, work, **parts.for_stage(name))

        self.specs = specs = [ChildSpec(name, starter(name, stage_class), getattr(policies, name))
                              for name, stage_class in STAGES]
        resumed, in_flight = recover(parts.journal, parts.handlers, settings.api.claim_tasks, parts.leases)
        # The Poller stops after the stages whose calls may still run: it renews their leases (an
        # Ollama call may outlast one) and finishes those of the tasks they report.
        self.supervisor = Supervisor.start(directory, specs, {"dispatcher": resumed, "poller": in_flight},
                                           self._fatal, ctx.scheduler.call_later, stop_last=("poller",))
        ctx.supervisor = self.supervisor
        self.started_at = time.monotonic()
        self.phase = "running"
        log.info("pipeline started", extra={"fields": {"mode": settings.processing.mode, "providers": list(providers),
                                                        "api": settings.api.base_url}})
        self.watch = Watch(settings, parts, self.metrics, ctx.scheduler, running=lambda: self.phase == "running",
                           poller_status=lambda: self.stage("poller").status().get(timeout=5))
        self.watch.start()
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

    def _keep_late_results(self, stage: str, message: object) -> None:
        """A batch's paid results that reached the Reporter after it stopped (a provider call that
        ran past the shutdown deadline) go to the outbox, for the next start to send. Unpaid ones
        are dropped: their claims go back to pending, to be computed again."""
        if not isinstance(message, BatchEmbedded) or self.parts is None:
            return
        if message.paid or self.settings.storage.journal_unpaid_results:
            entries = [result_entry(result) for result in message.results]
            self.parts.journal.add_results(entries)
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
        if self.ctx is None or self.parts is None:
            return {"stages": {}}
        stages = self.ctx.directory.statuses([name for name, _ in STAGES], _STATUS_SECONDS, self.last_status)
        out = {"stages": stages, **self.parts.status(stages.get("reporter", {}).get("outbox"))}
        if self.specs:     # read, not asked: the supervisor may be busy handing a stage over
            out["restarts"] = {spec.name: spec.total_restarts for spec in self.specs}
        limiter = stages.get("rate_limiter", {})
        out["rate_limits"] = {"tiers": limiter.get("limits", []), "exceeded": limiter.get("exceeded", {})}
        return out

    def ready(self) -> tuple[bool, str]:
        if self.phase != "running":
            return False, self.phase
        leases = self.parts.leases if self.parts is not None else None
        if leases is not None and not leases.available:
            return False, "Redis does not answer: no new task is taken (held ones are finished)"
        if self.settings.uses_oauth2 and (self.parts is None or self.parts.task_api.credentials.current() is None):
            return False, "no token yet"
        return True, "running"

    def health(self) -> tuple[int, dict]:
        return health_body(self.status(), self.settings, self.phase, time.monotonic() - self.created_at,
                           self.fatal_reason, self.parts.dependencies.snapshot() if self.parts else None)

    def in_flight(self) -> int:
        poller = self.stage("poller")
        return poller.status().get(timeout=5)["in_flight"] if poller else 0

    # --- shutdown ---
    def shutdown(self) -> None:
        """Stop polling, let in-flight work finish until the deadline, release what is left."""
        if self.ctx is None or self.parts is None:
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
        parts = self.parts
        parts.vector_pool.close(finish_queued=True)
        release_claims(parts.journal, parts.task_api, parts.rate_limits, parts.leases, self.settings.api.claim_tasks)
        left = parts.journal.counts()
        log.info("pipeline stopped", extra={"fields": {"claims_released_or_kept": left["claims"],
                                                        "outbox_kept": left["outbox"]}})
        ctx.scheduler.stop()
        parts.close()
        self._stop_monitoring()

    def _stop_monitoring(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None


def _known_models(settings: Settings) -> set[str]:
    """The model names the configuration names: metric labels are kept to these."""
    supported = settings.processing.supported_models
    return {*settings.models.dimensions, *supported, *(model.removesuffix(":latest") for model in supported),
            settings.models.default_chat_model, *settings.models.chat, "o3", "o3-mini"}
