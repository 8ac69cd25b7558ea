"""LeaseKeeper: what the Poller does with leases, as a plain object over a LeaseBook.

Tasks taken from a pending list are kept only where this service got their lease; every third of a
lease the held ones are renewed, and the leases of services that died are taken over: their tasks
are resumed from the JSON the lease holds, or their paid results sent as they are.
"""

from __future__ import annotations

import logging
import math
from typing import Any, NamedTuple

import msgspec

from aitp.errors import CoordinationError
from aitp.intake.reader import TakenTask
from aitp.storage.journal import Claim, OutboxEntry
from aitp.tasks import ChatJob, EmbeddingJob, TaskHandler
from aitp.tasks.resume import resume

log = logging.getLogger("aitp.poller")


class Adoption(NamedTuple):
    """Tasks taken over from a service whose leases ran out."""

    task_ids: list[str]                      # all of them: in flight here from now on
    jobs: list[EmbeddingJob | ChatJob]       # to compute again (their claims journaled first)
    claims: list[Claim]
    entries: list[OutboxEntry]               # paid results (or answers) to report as they are


class _Body(msgspec.Struct):
    state: str
    result: Any = None


_body_decoder = msgspec.json.Decoder(_Body)


def shared_result_problem(job: EmbeddingJob | ChatJob | OutboxEntry, body: bytes, state: str,
                          dimensions: dict[str, int]) -> str | None:
    """Why a paid result read back from Redis must not be reported as it is (None: it may). Redis is
    trusted with results, so what comes back is checked as a fresh one would be: a report body of
    the state it claims; for an embedding, a vector of finite numbers of the model's dimension."""
    try:
        decoded = _body_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return f"not a report body: {exc}"[:200]
    if decoded.state != state or state not in ("succeeded", "failed"):
        return f"state {decoded.state!r} where {state!r} was written"
    if state == "failed" or not isinstance(job, EmbeddingJob):
        return None if state == "failed" or decoded.result is not None else "a success without a result"
    vector = decoded.result
    if not isinstance(vector, list) or not vector or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in vector):
        return "not a vector of finite numbers"
    wanted = dimensions.get(job.model)
    if wanted is not None and len(vector) != wanted:
        return f"{len(vector)} dimensions where {job.model} has {wanted}"
    return None


class LeaseKeeper:
    def __init__(self, leases, handlers: dict[str, TaskHandler], lease_seconds: float,
                 dimensions: dict[str, int] | None = None) -> None:
        self.leases, self.handlers = leases, handlers
        self.dimensions = dimensions or {}        # [models.dimensions]: what a shared vector must have
        self.tick_seconds = lease_seconds / 3     # renewals per lease: two may be missed
        self.leased_elsewhere = 0                 # tasks another service held a lease for
        self.adopted_total = 0                    # tasks taken over from services whose leases ran out

    @property
    def available(self) -> bool:
        return self.leases.available

    def acquire(self, taken: list[TakenTask]) -> tuple[list[TakenTask], list[str], bool]:
        """(the tasks this service got leases for, the ids left to another service, whether Redis
        answered). The others are another service's (or were settled by one lately); when Redis
        does not answer, none is kept."""
        answered = True
        try:
            got = self.leases.acquire([(task.job.task_id, bytes(task.raw)) for task in taken])
        except CoordinationError:
            got, answered = set(), False
        theirs = [task.job.task_id for task in taken if task.job.task_id not in got]
        self.leased_elsewhere += len(theirs)
        return [task for task in taken if task.job.task_id in got], theirs, answered

    def keep(self, adopt: bool) -> Adoption | None:
        """Renew the leases held, send the finishes Redis missed and, with `adopt`, take over the
        leases that ran out. None when Redis does not answer."""
        try:
            lost = self.leases.renew()
            adopted = self.leases.take_over() if adopt else []
        except CoordinationError:
            return None
        if lost:
            log.warning("leases taken over by another service while this one stalled; its results may "
                        "be reported twice", extra={"fields": {"tasks": len(lost)}})
        return self._adoption(adopted)

    def _adoption(self, adopted: list) -> Adoption:
        jobs, entries = [], []
        for task in adopted:
            outcome = resume(self.handlers, task.task_id, task.task_json)
            if task.result is not None:
                problem = shared_result_problem(outcome, task.result, task.state or "succeeded", self.dimensions)
                if problem is None:
                    entries.append(OutboxEntry(task.task_id, task.result, task.state or "succeeded"))
                    continue
                log.warning("a paid result read back from Redis fails its checks: the task is computed again",
                            extra={"fields": {"task_id": task.task_id, "problem": problem}})
            (entries if isinstance(outcome, OutboxEntry) else jobs).append(outcome)
        if adopted:
            log.warning("tasks taken over from a service whose leases ran out", extra={"fields": {
                "tasks": len(adopted), "with_paid_results": sum(task.result is not None for task in adopted),
                "from": sorted({task.previous_owner for task in adopted})[:5]}})
        self.adopted_total += len(adopted)
        json_of = {task.task_id: task.task_json for task in adopted}
        claims = [Claim(job.task_id, json_of[job.task_id], 0) for job in jobs]
        return Adoption([task.task_id for task in adopted], jobs, claims, entries)

    def status(self) -> dict:
        return {"leased_elsewhere": self.leased_elsewhere, "adopted": self.adopted_total}

    def finish(self, task_ids: list[str], final: bool) -> None:
        self.leases.finish(task_ids, final=final)
