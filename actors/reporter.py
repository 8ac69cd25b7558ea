"""Reporter: journals results in the outbox, then PATCHes them, retrying until the API takes them.

A computed vector is never dropped: only an answer from the API (taken, gone, or refused for
good) removes it. Paid-for results (OpenAI's) are journaled in the outbox before they are sent, so
that no crash makes aitp pay for one twice. Results that cost nothing to compute again (Ollama,
the mock) are held here only, unless storage.journal_unpaid_results says otherwise: writing each
vector to SQLite was the largest CPU cost per task left (benchmarks/README.md). Their claims stay
in the journal until the API takes the result, so a crash has them computed again; a restarted
Reporter inherits them from the one that failed, and a graceful stop journals them.

While the API is down, results are parked and one is sent as a probe per backoff period (aitp/transport/
outage_gate.py): an outage costs a request every few seconds; the first answer sends every parked result again.
"""

from __future__ import annotations

import logging
from collections import Counter

import msgspec

from aitp.contract import RELEASE_BODY, state_body
from aitp.coordination.leases import LeaseBook
from aitp.storage.journal import Journal, OutboxEntry, result_entry
from aitp.vectors.jobs import TaskVector
from aitp.transport.task_api import PatchOutcome, PatchResult, TaskApiClient
from actors.messages import (BatchEmbedded, PatchesAnswered, ResultsAdopted, SlowStartChanged, TasksRejected,
                             TasksReleased, TasksSettled, computed_in_all, released_to_pending)
from aitp.transport.outage_gate import OutageGate
from actors.stage import PipelineContext, Stage

log = logging.getLogger("aitp.reporter")


class ReportDue(msgspec.Struct, frozen=True):
    """The Reporter's timer: (re)send these journaled outbox entries, as the probe of an outage."""

    task_ids: list[str]
    attempt: int = 1

    def carried(self) -> list[str]:
        return list(self.task_ids)


BARE_FAILURE = state_body("failed")     # what a server that refuses a reason or a release still takes


# Results stored while more messages wait are sent together once the inbox is empty, or at this many.
_SEND_TOGETHER = 64


class Reporter(Stage):
    name = "reporter"

    def __init__(self, ctx: PipelineContext, orphans: list | None = None, *, task_api: TaskApiClient,
                 journal: Journal, leases: LeaseBook | None = None) -> None:
        super().__init__(ctx, orphans, task_api)
        self.journal, self.leases = journal, leases
        self.entries: dict[str, OutboxEntry] = {}   # results the API has not taken yet (journaled or not)
        self.unjournaled: set[str] = set()          # entries held only here (their claims are journaled)
        self.batch_of: dict[str, str] = {}          # task id -> batch id, for the log lines of its report
        self.gate: OutageGate[str] = OutageGate(ctx.probe_backoff)   # API down: park task ids, probe, resend
        self.outcomes: Counter[tuple[str, PatchOutcome]] = Counter()   # (state sent, outcome)
        # While the Poller's window is in its slow start (SlowStartChanged), which sizes it from the
        # pace of results computed, each batch is told to it (TasksComputed).
        self.window_starting = True
        self.unsent: list[OutboxEntry] = []          # stored, to be sent once the inbox is empty (_store)

    def setup(self) -> None:
        self.start_pool(self.settings.workers.reporter_concurrency)
        # Whatever the outbox holds (from the last run, or an earlier instance) is sent again: a
        # repeated PATCH of the same result is harmless, a lost one is not.
        replayed = self.journal.outbox()
        for entry in replayed:
            self.entries[entry.task_id] = entry
        for entry in self.inherited:     # unjournaled results a failed instance held
            if entry.task_id not in self.entries:
                self.entries[entry.task_id] = entry
                self.unjournaled.add(entry.task_id)
                replayed.append(entry)
        if replayed:
            self._send(replayed, 1)

    def receive(self, message) -> None:
        if isinstance(message, BatchEmbedded):
            if message.paid and self.leases is not None:
                self._share_paid(message.results)
            self.batch_of.update((r.task_id, message.batch_id) for r in message.results)
            self._store([result_entry(r) if r.body is not None
                         else self._failure(r.task_id, r.error or "no vector", message.batch_id)
                         for r in message.results],
                        journaled=message.paid or self.settings.storage.journal_unpaid_results)
            if self.window_starting:
                self.tell_soon("poller", computed_in_all, [len(message.results)], repeat_safe=True)
        elif isinstance(message, SlowStartChanged):
            self.window_starting = message.starting
        elif isinstance(message, ResultsAdopted):
            self._store(message.entries)      # journaled: paid for by the service that died
        elif isinstance(message, TasksRejected):
            self.batch_of.update((r.task_id, r.batch_id) for r in message.rejections if r.batch_id)
            self._store([self._failure(r.task_id, r.reason, r.batch_id) for r in message.rejections])
        elif isinstance(message, TasksReleased):
            self.batch_of.update((task_id, message.batch_id) for task_id in message.task_ids if message.batch_id)
            self._store([OutboxEntry(task_id, RELEASE_BODY, "pending") for task_id in message.task_ids])
        elif isinstance(message, PatchesAnswered):
            self._answered(message)
        elif isinstance(message, ReportDue):
            for task_id in message.task_ids:
                self.gate.probing(task_id)
            self._send([self.entries[task_id] for task_id in message.task_ids if task_id in self.entries],
                       message.attempt)

    def _share_paid(self, results: list[TaskVector]) -> None:
        """Paid results go to Redis before they are reported: should this service die for good, the
        one taking its tasks over sends them instead of paying again. While Redis is away they wait
        in the LeaseBook and go before anything else when it answers (aitp/coordination/leases.py)."""
        self.leases.keep_results([(entry.task_id, entry.body, entry.state) for entry in map(result_entry, results)])

    def _failure(self, task_id: str, reason: str, batch_id: str) -> OutboxEntry:
        # The server keeps no error text, so the reason is logged here as well as sent.
        fields = {"task_id": task_id, "batch_id": batch_id, "reason": reason} if batch_id \
            else {"task_id": task_id, "reason": reason}   # rejected before it joined a batch
        log.warning("task failed", extra={"fields": fields})
        return OutboxEntry(task_id, state_body("failed", reason), "failed")

    def _store(self, entries: list[OutboxEntry], journaled: bool = True) -> None:
        if journaled:
            self.journal.add_results(entries)
        else:
            self.unjournaled.update(entry.task_id for entry in entries)
        for entry in entries:
            self.entries[entry.task_id] = entry
        self.unsent.extend(entries)
        if len(self.unsent) >= _SEND_TOGETHER:
            self._send_unsent()
        else:
            self.when_idle(self._send_unsent)

    def _send_unsent(self) -> None:
        """What was stored while more messages waited goes out together: fewer chunks, each one
        answer (PatchesAnswered) and one TasksSettled."""
        entries, self.unsent = [entry for entry in self.unsent if entry.task_id in self.entries], []
        if self.gate.down:    # wait with the others for the probe to get through
            for entry in entries:
                self.gate.park(entry.task_id, entry.task_id)
        elif entries:
            self._send(entries, 1)

    def _send(self, entries: list[OutboxEntry], attempt: int) -> None:
        self.patch_in_chunks(entries, lambda e: (e.task_id, e.body, e.state == "succeeded"),
                             lambda pairs: PatchesAnswered([(e.task_id, r) for e, r in pairs], attempt))

    def _answered(self, message: PatchesAnswered) -> None:
        settled: list[str] = []
        released: list[str] = []
        waiting: list[str] = []
        bare: list[OutboxEntry] = []
        for task_id, result in message.answers:
            entry = self.entries.get(task_id)
            if self._answered_one(task_id, result, message.attempt, waiting, bare):
                (released if entry is not None and entry.state == "pending" else settled).append(task_id)
        if bare:
            self._send(bare, 1)
        if settled or released:
            self.journal.acknowledge(settled + released)   # outbox rows, or claims of unjournaled ones
        if settled:
            self.tell_soon("poller", TasksSettled, settled, repeat_safe=True)   # its entries are gone
        if released:
            self.tell_soon("poller", released_to_pending, released, repeat_safe=True)
        if waiting:
            log.info("task API answers again; sending parked results", extra={"fields": {"results": len(waiting)}})
            self._send([self.entries[task_id] for task_id in waiting if task_id in self.entries], 1)

    def _answered_one(self, task_id: str, result: PatchResult, attempt: int, waiting: list[str],
                      bare: list[OutboxEntry]) -> bool:
        """Handle one answer; True when the task left the outbox. A refused release or failure
        report goes into `bare` as the plainest body there is, `{"state":"failed"}`: a task left
        in_progress would be stranded."""
        entry = self.entries.get(task_id)
        if entry is None:
            return False   # answered twice (sent again after a restart): already settled
        if result.outcome is PatchOutcome.INVALID and entry.body != BARE_FAILURE:
            # A refused result (413, 422: not the contract's 400 after success) fails its task with
            # the reason; a refused failure or release goes as the barest failure. Never in_progress.
            log.error("task API refused the report; sending a failure instead", extra={"fields": {
                **self._fields(entry, result), "detail": result.detail}})
            fallback = OutboxEntry(task_id, state_body("failed", f"the task API refused the result: "
                                                        f"{result.status} {result.detail}"[:500]), "failed") \
                if entry.state == "succeeded" else OutboxEntry(task_id, BARE_FAILURE, "failed")
            if task_id not in self.unjournaled:
                self.journal.add_results([fallback])
            self.entries[task_id] = fallback
            bare.append(fallback)
            return False
        if result.outcome is PatchOutcome.RETRY:
            probe = self.gate.failed(task_id, task_id, result.retry_after)
            if probe is not None:
                probe_id, delay = probe
                log.warning("report failed, results kept until the API takes them", extra={"fields": {
                    **self._fields(entry, result), "detail": result.detail, "parked": len(self.gate.parked),
                    "retry_in_s": round(delay, 2)}})
                self.later(delay, ReportDue([probe_id], attempt + 1))
            return False
        if self.gate.down or self.gate.parked:   # the API answers again: send what waited for it
            waiting += self.gate.answered(task_id)
        if result.outcome is PatchOutcome.GONE:
            log.warning("task disappeared before its result was reported",
                        extra={"fields": self._fields(entry, result)})
        elif result.outcome is PatchOutcome.REJECTED_AFTER_SUCCESS:
            log.warning("callback rejected the result; the task stays succeeded",
                        extra={"fields": {**self._fields(entry, result), "detail": result.detail}})
        elif result.outcome is PatchOutcome.INVALID:
            log.error("task API refused the report: a bug on our side",
                      extra={"fields": {**self._fields(entry, result), "detail": result.detail}})
        elif log.isEnabledFor(logging.DEBUG):     # one line per task: its fields only built when shown
            log.debug("task reported", extra={"fields": self._fields(entry, result)})
        self.outcomes[entry.state, result.outcome] += 1
        del self.entries[task_id]
        self.unjournaled.discard(task_id)
        self.batch_of.pop(task_id, None)
        return True

    def _fields(self, entry: OutboxEntry, result: PatchResult) -> dict:
        fields = {"task_id": entry.task_id, "state": entry.state, "status": result.status}
        if entry.task_id in self.batch_of:
            fields["batch_id"] = self.batch_of[entry.task_id]
        return fields

    def on_stop(self) -> None:
        super().on_stop()        # the PATCHes in flight are answered (or given up) first
        held = [] if self.handing_over else self.orphans()
        if held:
            # A graceful stop keeps what the API did not take for the next start, as if journaled
            # all along: releasing these claims instead would throw the vectors away.
            self.journal.add_results(held)

    def orphans(self) -> list:
        """Results held nowhere else: the next instance sends them (journaled ones it reads back)."""
        return [self.entries[task_id] for task_id in self.unjournaled if task_id in self.entries]

    def status(self) -> dict:
        return {"outbox": len(self.entries), "parked": len(self.gate.parked),
                "outcomes": {f"{state}:{outcome.value}": count for (state, outcome), count in self.outcomes.items()}}
