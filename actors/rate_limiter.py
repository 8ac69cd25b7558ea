"""RateLimiter: admits taken tasks against the rate limits, journals each claim with the reservation
its unit came from, PATCHes it `in_progress`, then passes it on. A task refused admission is handed
back untouched (still `pending` on the server); a claim abandoned before any provider saw its task
gets its unit refunded."""

from __future__ import annotations

import logging
from collections import Counter

import msgspec

from aitp.contract import CLAIM_BODY
from aitp.errors import CoordinationError
from aitp.storage.journal import Claim, Journal
from aitp.storage.rate_limits import RateLimitBackend
from aitp.transport.task_api import PatchOutcome, TaskApiClient
from actors.messages import ClaimsAnswered, TakenTask, TasksClaimed, TasksSettled, TasksTaken
from aitp.transport.outage_gate import OutageGate
from actors.stage import PipelineContext, Stage

log = logging.getLogger("aitp.rate_limiter")


class ClaimRetryDue(msgspec.Struct, frozen=True):
    """The RateLimiter's timer: send this parked claim again, as the probe of an outage."""

    task: TakenTask
    attempt: int

    def carried(self) -> list[str]:
        return [self.task.job.task_id]


class RateLimiter(Stage):
    name = "rate_limiter"

    def __init__(self, ctx: PipelineContext, orphans: list | None = None, *, task_api: TaskApiClient,
                 journal: Journal, rate_limits: RateLimitBackend) -> None:
        super().__init__(ctx, orphans, task_api)
        self.journal, self.backend = journal, rate_limits
        self.claiming = self.settings.api.claim_tasks
        self.claims_sent = 0
        self.gate: OutageGate[TakenTask] = OutageGate(ctx.probe_backoff)   # API down: park, probe, then resend

    def setup(self) -> None:
        # Claims in flight when an earlier instance died still answer through the directory; the
        # claims it had parked during an outage come back as orphans and are sent again.
        self.start_pool(self.settings.workers.claim_concurrency)
        if self.inherited:
            self._send_claims(self.inherited, 1)

    def receive(self, message) -> None:
        if isinstance(message, TasksTaken):
            self._admit(message.tasks)
        elif isinstance(message, ClaimsAnswered):
            self._claims_answered(message)
        elif isinstance(message, ClaimRetryDue):
            self.gate.probing(message.task.job.task_id)
            self._send_claims([message.task], message.attempt)

    def _admit(self, tasks: list[TakenTask]) -> None:
        try:
            with self.ctx.metrics.rate_limit_check.time():
                admission = self.backend.reserve(len(tasks))
        except CoordinationError as exc:
            # The limits live in Redis and it does not answer: nothing is admitted, nothing is lost
            # (the tasks stay pending and are polled again).
            log.warning("rate limits unreadable: tasks handed back", extra={"fields": {
                "error": str(exc), "tasks": len(tasks)}})
            self.tell("poller", TasksSettled([task.job.task_id for task in tasks], released=True))
            return
        admitted, refused = tasks[:admission.granted], tasks[admission.granted:]
        if refused:   # released untouched: they stay pending on the server and are polled again later
            log.info("rate limit reached", extra={"fields": {"admitted": len(admitted), "refused": len(refused)}})
            self.tell("poller", TasksSettled([task.job.task_id for task in refused], released=True))
        if not admitted:
            return
        self.journal.record_claims([Claim(task.job.task_id, task.raw, admission.reservation)
                                        for task in admitted])
        if not self.claiming:
            self.tell("dispatcher", TasksClaimed([task.job for task in admitted]))
            return
        if self.gate.down:   # wait for the probe to get through, with the others
            for task in admitted:
                self.gate.park(task.job.task_id, task)
        else:
            self._send_claims(admitted, 1)

    def _send_claims(self, tasks: list[TakenTask], attempt: int) -> None:
        self.claims_sent += len(tasks)
        self.patch_in_chunks(tasks, lambda task: (task.job.task_id, CLAIM_BODY, False),
                             lambda pairs: ClaimsAnswered(pairs, attempt))

    def _claims_answered(self, message: ClaimsAnswered) -> None:
        claimed, abandoned, waiting = [], [], []
        debug = log.isEnabledFor(logging.DEBUG)   # a line per task: its fields only built when shown
        for task, result in message.answers:
            task_id = task.job.task_id
            if result.outcome is PatchOutcome.RETRY:
                # The API is down or refusing us: never give a claim up for that (it may have landed and
                # only its answer been lost); one probe per backoff period until the API answers again.
                probe = self.gate.failed(task_id, task, result.retry_after)
                if probe is not None:
                    probe_task, delay = probe
                    log.warning("claim failed, retrying", extra={"fields": {
                        "task_id": task_id, "status": result.status, "detail": result.detail,
                        "parked": len(self.gate.parked), "retry_in_s": round(delay, 2)}})
                    self.later(delay, ClaimRetryDue(probe_task, message.attempt + 1))
                continue
            if self.gate.down or self.gate.parked:   # the API answers again: claim what waited for it
                waiting += self.gate.answered(task_id)
            if result.outcome is PatchOutcome.DONE:
                if debug:
                    log.debug("task claimed", extra={"fields": {"task_id": task_id}})
                claimed.append(task.job)
                continue
            log.warning("claim abandoned", extra={"fields": {"task_id": task_id, "outcome": result.outcome.value,
                                                              "status": result.status, "detail": result.detail}})
            abandoned.append(task_id)
        if claimed:     # with those of the other answers waiting: fewer, fuller batches
            self.tell_soon("dispatcher", TasksClaimed, claimed)
        if abandoned:   # gone or refused: nothing reached a provider, so the units go back
            for reservation, units in Counter(self.journal.reservations_of(abandoned).values()).items():
                self.backend.refund(reservation, units)
            self.journal.drop_claims(abandoned)
            self.tell("poller", TasksSettled(abandoned))
        if waiting:
            self._send_claims(waiting, 1)

    def orphans(self) -> list:
        return list(self.gate.parked.values())

    def _usage(self) -> list[dict]:
        try:
            return [msgspec.structs.asdict(tier) for tier in self.backend.usage()]
        except CoordinationError:
            return []

    def status(self) -> dict:
        return {"claims_sent": self.claims_sent, "claiming": self.claiming, "parked": len(self.gate.parked),
                "limits": self._usage(),
                "exceeded": dict(getattr(self.backend, "exceeded", {}))}
