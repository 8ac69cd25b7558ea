"""Prometheus metrics: the original service's names (so dashboards keep working) and the pipeline's own.

Events are counted where they happen (a task decided, a request answered, a provider call made).
Levels (tasks in flight, queue depths, breaker states, rate-limit usage, restarts, outbox size)
are read from the pipeline's status at scrape time by `StatusCollector`, so they are never stale.
Process workers return the seconds they spent with each result; the parent records them here, so
no multiprocess mode is needed.
"""

from __future__ import annotations

from collections import Counter as Tally
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

BREAKER_STATE = {"closed": 0, "open": 1, "half-open": 2}
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


OTHER = "other"


class Metrics:
    """One registry per pipeline (tests run several in one process).

    Labels that come from task data (a model's name, a task's type) are kept to the ones the
    configuration knows (`known_models`, `known_types`); any other is counted as "other", so a
    hostile or careless task API cannot create series without bound."""

    def __init__(self, known_models: set[str] | frozenset[str] = frozenset(),
                 known_types: set[str] | frozenset[str] = frozenset()) -> None:
        self.known_models, self.known_types = frozenset(known_models), frozenset(known_types)
        self.registry = registry = CollectorRegistry()
        self.tasks_processed = Counter("ai_tasks_processed", "Tasks decided, by type and final state",
                                       ["task_type", "status"], registry=registry)
        self.tasks_released = Counter("aitp_tasks_released", "Tasks put back to pending because no provider "
                                      "could take them", registry=registry)
        self.task_duration = Histogram("ai_task_processing_duration_seconds", "From taking a task to its result",
                                       ["task_type"], buckets=_LATENCY, registry=registry)
        self.api_requests = Counter("api_requests", "Task API requests", ["endpoint", "method", "status_code"],
                                    registry=registry)
        self.api_duration = Histogram("api_request_duration_seconds", "Task API request time",
                                      ["endpoint", "method"], buckets=_LATENCY, registry=registry)
        self.provider_requests = {
            name: Counter(f"{name}_requests", f"{name} embedding calls", ["model", "status"], registry=registry)
            for name in ("openai", "ollama", "mock")}
        self.provider_tokens = {
            name: Counter(f"{name}_tokens_used", f"Tokens {name} reported, by model and task type", ["model", "type"],
                          registry=registry)
            for name in ("openai", "ollama", "mock")}
        self.batch_size = Histogram("aitp_batch_size", "Inputs per provider call", ["provider"], buckets=_BATCH,
                                    registry=registry)
        self.provider_latency = Histogram("aitp_provider_latency_seconds", "Provider call time", ["provider"],
                                          buckets=_LATENCY, registry=registry)
        self.vector_work = Histogram("aitp_vector_work_seconds",
                                     "Time a process worker spent decoding, checking and encoding one batch",
                                     buckets=_LATENCY, registry=registry)
        self._task_children: dict[tuple, tuple] = {}
        self.decided: Tally[tuple[str, str]] = Tally()   # (type, state) -> tasks decided
        self._request_children: dict[tuple, tuple] = {}
        self.rate_limit_check = Histogram("rate_limit_check_duration_seconds", "Time to reserve rate-limit units",
                                          buckets=_LATENCY, registry=registry)

    # --- recorders the stages call ---
    # Labelled children are kept: these two run for every task and every request, and `labels()`
    # takes a lock and builds its key each time.
    def task_decided(self, task_type: str, status: str, seconds: float | None = None) -> None:
        task_type = task_type if task_type in self.known_types else OTHER
        key = (task_type, status)
        self.decided[key] += 1          # for the heartbeat (actors/watch.py)
        if (children := self._task_children.get(key)) is None:
            children = self._task_children[key] = (self.tasks_processed.labels(task_type, status),
                                                   self.task_duration.labels(task_type))
        children[0].inc()
        if seconds is not None:
            children[1].observe(max(0.0, seconds))

    def api_request(self, endpoint: str, method: str, status: str, seconds: float) -> None:
        key = (endpoint, method, status)
        if (children := self._request_children.get(key)) is None:
            children = self._request_children[key] = (self.api_requests.labels(endpoint, method, status),
                                                      self.api_duration.labels(endpoint, method))
        children[0].inc()
        children[1].observe(seconds)

    def provider_call(self, provider: str, model: str, status: str, inputs: int, seconds: float,
                      tokens: int = 0, task_type: str = "text_embedding") -> None:
        model = model if model in self.known_models else OTHER
        task_type = task_type if task_type in self.known_types else OTHER
        family = provider.split("@", 1)[0]      # every Ollama host counts under ollama_requests_total
        if family in self.provider_requests:
            self.provider_requests[family].labels(model, status).inc()
            if tokens:
                self.provider_tokens[family].labels(model, task_type).inc(tokens)
        self.batch_size.labels(provider).observe(inputs)
        self.provider_latency.labels(provider).observe(seconds)

    def expose(self) -> bytes:
        return generate_latest(self.registry)

    def watch(self, status: Callable[[], dict]) -> None:
        """Report the levels in `status()` (the pipeline's status) at every scrape."""
        self.registry.register(StatusCollector(status))


class StatusCollector:
    def __init__(self, status: Callable[[], dict]) -> None:
        self._status = status

    def describe(self):
        return []   # not known before the first scrape; keeps registration from calling collect()

    def collect(self):
        try:
            status = self._status()
        except Exception:  # noqa: BLE001 - a scrape during shutdown gets the event metrics only
            return
        stages = status.get("stages", {})
        poller = stages.get("poller", {})
        yield from _poller_levels(poller)
        coordination = status.get("coordination")
        if coordination is not None:     # several services through Redis (REDIS_URL)
            yield from _coordination_levels(coordination, poller)
        yield from _stage_levels(status, stages, poller)
        yield from _wikidata_counts(status.get("wikidata", {}))
        yield from _rate_limit_levels(status.get("rate_limits", {}))


def _poller_levels(poller: dict):
    yield _one(GaugeMetricFamily, "ai_tasks_in_flight", "Tasks taken and not yet settled",
               poller.get("in_flight", 0))
    yield _one(GaugeMetricFamily, "aitp_poller_credit", "Tasks the poller may still take", poller.get("credit", 0))
    yield _one(GaugeMetricFamily, "aitp_poller_window", "Tasks the poller keeps in flight at most now "
               "(grows with the API's round trip)", poller.get("window", 0))


def _coordination_levels(coordination: dict, poller: dict):
    yield _one(GaugeMetricFamily, "aitp_redis_available", "1 while Redis answers (no task is taken "
               "without it)", 1 if coordination.get("available") else 0)
    yield _one(GaugeMetricFamily, "aitp_leases_held", "Task leases this service holds in Redis",
               coordination.get("held", 0))
    yield _one(CounterMetricFamily, "aitp_tasks_leased_elsewhere", "Tasks left to the service holding "
               "their lease", poller.get("leased_elsewhere", 0))
    yield _one(CounterMetricFamily, "aitp_tasks_taken_over", "Tasks taken over from services whose "
               "leases ran out", poller.get("adopted", 0))


def _stage_levels(status: dict, stages: dict, poller: dict):
    """The stages, their restarts and queues, the outbox, what the poller left alone and the breakers."""
    yield _by(GaugeMetricFamily, "aitp_stage_up", "1 while a stage runs", "stage",
              {name: 0 if stage.get("state") == "down" else 1 for name, stage in stages.items()})
    yield _by(GaugeMetricFamily, "aitp_stage_queue_depth", "Work a stage holds", "stage",
              {name: stage.get("queued", 0) + stage.get("active", 0) for name, stage in stages.items()})
    yield _by(CounterMetricFamily, "aitp_actor_restarts", "Stage restarts by the supervisor", "stage",
              status.get("restarts", {}))
    yield _one(CounterMetricFamily, "aitp_process_worker_restarts", "Vector worker processes restarted after dying",
               status.get("process_worker_restarts", 0))
    yield _one(GaugeMetricFamily, "aitp_outbox_size", "Results computed and not yet taken by the API "
               "(journaled, or held in memory when unpaid)",
               status.get("outbox", 0))
    yield _by(CounterMetricFamily, "aitp_tasks_left_alone", "Tasks not touched, by why (a fixed few reasons)",
              "reason",
              poller.get("left_alone", {}))
    yield _by(GaugeMetricFamily, "circuit_breaker_state", "0 closed, 1 open, 2 half-open", "service",
              {name: BREAKER_STATE.get(breaker.get("state"), 1)
               for name, breaker in status.get("breakers", {}).items()})


def _wikidata_counts(wikidata: dict):
    for key, name, text in (("calls", "aitp_wikidata_calls", "Calls made to Wikidata (cache misses only)"),
                            ("cache_hits", "aitp_wikidata_cache_hits", "Wikidata look-ups answered by the cache"),
                            ("cache_misses", "aitp_wikidata_cache_misses", "Wikidata look-ups not in the cache")):
        yield _one(CounterMetricFamily, name, text, wikidata.get(key, 0))


def _rate_limit_levels(limits: dict):
    for key, name, text in (("used", "rate_limit_current_usage", "Units used in the current window"),
                            ("limit", "rate_limit_max_allowed", "Units allowed per window"),
                            ("remaining", "rate_limit_remaining", "Units left in the current window")):
        yield _by(GaugeMetricFamily, name, text, "period",
                  {tier["period"]: tier[key] for tier in limits.get("tiers", [])})
    yield _by(CounterMetricFamily, "rate_limit_exceeded", "Reservations refused, by the tier that was full",
              "period", limits.get("exceeded", {}))


def _one(family_type, name: str, text: str, value: float):
    family = family_type(name, text)
    family.add_metric([], value)
    return family


def _by(family_type, name: str, text: str, label: str, values: dict):
    family = family_type(name, text, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family
