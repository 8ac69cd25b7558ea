"""Reporter: journals every result in the outbox, then PATCHes it, retrying until the API takes it.

A computed vector is never dropped: only an answer from the API (taken, gone, or refused for
good) removes it from the outbox. While the API is down, results are parked and one of them is
sent as a probe per backoff period (actors/outage_gate.py), so an outage costs a request every
few seconds, not one per result; the first answer sends every parked result again.
"""

from __future__ import annotations

import logging
from collections import Counter

from aitp.contract import RELEASE_BODY, state_body
from aitp.journal import OutboxEntry
from aitp.task_api import PatchOutcome
from actors.messages import (BatchEmbedded, PatchAnswered, ReportResults, TasksRejected, TasksReleased,
                             TasksSettled)
from actors.outage_gate import OutageGate
from actors.stage import PipelineContext, Stage

log = logging.getLogger("aitp.reporter")


class Reporter(Stage):
    name = "reporter"

    def __init__(self, ctx: PipelineContext, orphans: list | None = None) -> None:
        super().__init__(ctx, orphans)
        self.entries: dict[str, OutboxEntry] = {}   # in the outbox and not yet acknowledged
        self.batch_of: dict[str, str] = {}          # task id -> batch id, for the log lines of its report
        self.gate: OutageGate[str] = OutageGate(ctx.backoff)   # API down: park task ids, probe, resend
        self.outcomes: Counter[str] = Counter()

    def setup(self) -> None:
        self.start_pool(self.settings.workers.reporter_concurrency)
        # Whatever the outbox holds (from the last run, or an earlier instance) is sent again: a
        # repeated PATCH of the same result is harmless, a lost one is not.
        for entry in self.ctx.journal.outbox():
            self.entries[entry.task_id] = entry
            self._send(entry, 1)

    def on_receive(self, message) -> None:
        if isinstance(message, BatchEmbedded):
            self.batch_of.update((r.task_id, message.batch_id) for r in message.results)
            self._store([OutboxEntry(r.task_id, r.body, "succeeded") if r.body is not None
                         else self._failure(r.task_id, r.error or "no vector", message.batch_id)
                         for r in message.results])
        elif isinstance(message, TasksRejected):
            self.batch_of.update((r.task_id, r.batch_id) for r in message.rejections if r.batch_id)
            self._store([self._failure(r.task_id, r.reason, r.batch_id) for r in message.rejections])
        elif isinstance(message, TasksReleased):
            self.batch_of.update((task_id, message.batch_id) for task_id in message.task_ids if message.batch_id)
            self._store([OutboxEntry(task_id, RELEASE_BODY, "pending") for task_id in message.task_ids])
        elif isinstance(message, PatchAnswered):
            self._answered(message)
        elif isinstance(message, ReportResults):
            for task_id in message.task_ids:
                self.gate.probing(task_id)
                if task_id in self.entries:
                    self._send(self.entries[task_id], message.attempt)

    def _failure(self, task_id: str, reason: str, batch_id: str) -> OutboxEntry:
        # The server keeps no error text, so the reason is logged here as well as sent.
        fields = {"task_id": task_id, "batch_id": batch_id, "reason": reason} if batch_id \
            else {"task_id": task_id, "reason": reason}   # rejected before it joined a batch
        log.warning("task failed", extra={"fields": fields})
        return OutboxEntry(task_id, state_body("failed", reason), "failed")

    def _store(self, entries: list[OutboxEntry]) -> None:
        self.ctx.journal.add_results(entries)
        for entry in entries:
            self.entries[entry.task_id] = entry
            if self.gate.down:    # wait with the others for the probe to get through
                self.gate.park(entry.task_id, entry.task_id)
            else:
                self._send(entry, 1)

    def _send(self, entry: OutboxEntry, attempt: int) -> None:
        directory, api = self.ctx.directory, self.ctx.task_api

        def patch() -> None:
            result = api.patch(entry.task_id, entry.body, is_success=entry.state == "succeeded")
            directory.tell(Reporter.name, PatchAnswered(entry.task_id, result, attempt))

        assert self.pool is not None
        self.pool.submit(patch)

    def _answered(self, answer: PatchAnswered) -> None:
        entry = self.entries.get(answer.task_id)
        if entry is None:
            return   # answered twice (sent again after a restart): already settled
        result = answer.result
        fields = {"task_id": answer.task_id, "state": entry.state, "status": result.status}
        if answer.task_id in self.batch_of:
            fields["batch_id"] = self.batch_of[answer.task_id]
        if result.outcome is PatchOutcome.RETRY:
            probe = self.gate.failed(answer.task_id, answer.task_id, result.retry_after)
            if probe is not None:
                task_id, delay = probe
                log.warning("report failed, results kept in the outbox", extra={"fields": {
                    **fields, "detail": result.detail, "parked": len(self.gate.parked), "retry_in_s": round(delay, 2)}})
                self.later(delay, ReportResults([task_id], answer.attempt + 1))
            return
        if self.gate.down or self.gate.parked:   # the API answers again: send what waited for it
            waiting = self.gate.answered(answer.task_id)
            if waiting:
                log.info("task API answers again; sending parked results", extra={"fields": {"results": len(waiting)}})
            for task_id in waiting:
                if task_id in self.entries:
                    self._send(self.entries[task_id], 1)
        if result.outcome is PatchOutcome.GONE:
            log.warning("task disappeared before its result was reported", extra={"fields": fields})
        elif result.outcome is PatchOutcome.REJECTED_AFTER_SUCCESS:
            log.warning("callback rejected the result; the task stays succeeded",
                        extra={"fields": {**fields, "detail": result.detail}})
        elif result.outcome is PatchOutcome.INVALID:
            log.error("task API refused the report: a bug on our side",
                      extra={"fields": {**fields, "detail": result.detail}})
        else:
            log.debug("task reported", extra={"fields": fields})
        self.outcomes[f"{entry.state}:{result.outcome.value}"] += 1
        del self.entries[answer.task_id]
        self.batch_of.pop(answer.task_id, None)
        self.ctx.journal.acknowledge([answer.task_id])
        self.tell("poller", TasksSettled([answer.task_id]))

    def status(self) -> dict:
        return {"outbox": len(self.entries), "outcomes": dict(self.outcomes), "parked": len(self.gate.parked)}
