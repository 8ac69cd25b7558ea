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
from aitp.task_api import PatchOutcome, PatchResult
from actors.messages import (BatchEmbedded, PatchesAnswered, ReportResults, TasksRejected, TasksReleased,
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
        replayed = self.ctx.journal.outbox()
        for entry in replayed:
            self.entries[entry.task_id] = entry
        if replayed:
            self._send(replayed, 1)

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
        elif isinstance(message, PatchesAnswered):
            self._answered(message)
        elif isinstance(message, ReportResults):
            for task_id in message.task_ids:
                self.gate.probing(task_id)
            self._send([self.entries[task_id] for task_id in message.task_ids if task_id in self.entries],
                       message.attempt)

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
            for entry in entries:
                self.gate.park(entry.task_id, entry.task_id)
        else:
            self._send(entries, 1)

    def _send(self, entries: list[OutboxEntry], attempt: int) -> None:
        self.patch_in_chunks(entries, lambda e: (e.task_id, e.body, e.state == "succeeded"),
                             lambda pairs: PatchesAnswered([(e.task_id, r) for e, r in pairs], attempt))

    def _answered(self, message: PatchesAnswered) -> None:
        settled: list[str] = []
        waiting: list[str] = []
        for task_id, result in message.answers:
            if self._answered_one(task_id, result, message.attempt, waiting):
                settled.append(task_id)
        if settled:
            self.ctx.journal.acknowledge(settled)
            self.tell("poller", TasksSettled(settled))
        if waiting:
            log.info("task API answers again; sending parked results", extra={"fields": {"results": len(waiting)}})
            self._send([self.entries[task_id] for task_id in waiting if task_id in self.entries], 1)

    def _answered_one(self, task_id: str, result: PatchResult, attempt: int, waiting: list[str]) -> bool:
        """Handle one answer; True when the task left the outbox."""
        entry = self.entries.get(task_id)
        if entry is None:
            return False   # answered twice (sent again after a restart): already settled
        fields = {"task_id": task_id, "state": entry.state, "status": result.status}
        if task_id in self.batch_of:
            fields["batch_id"] = self.batch_of[task_id]
        if result.outcome is PatchOutcome.RETRY:
            probe = self.gate.failed(task_id, task_id, result.retry_after)
            if probe is not None:
                probe_id, delay = probe
                log.warning("report failed, results kept in the outbox", extra={"fields": {
                    **fields, "detail": result.detail, "parked": len(self.gate.parked), "retry_in_s": round(delay, 2)}})
                self.later(delay, ReportResults([probe_id], attempt + 1))
            return False
        if self.gate.down or self.gate.parked:   # the API answers again: send what waited for it
            waiting += self.gate.answered(task_id)
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
        del self.entries[task_id]
        self.batch_of.pop(task_id, None)
        return True

    def status(self) -> dict:
        return {"outbox": len(self.entries), "outcomes": dict(self.outcomes), "parked": len(self.gate.parked)}
