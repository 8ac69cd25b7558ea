"""What a start takes over from the last run's journal, and what a stop gives back."""

from __future__ import annotations

import logging

from aitp.contract import RELEASE_BODY
from aitp.coordination.leases import LeaseBook
from aitp.errors import CoordinationError
from aitp.storage.journal import Claim, Journal, OutboxEntry
from aitp.storage.rate_limits import RateLimitBackend
from aitp.tasks import TaskHandler
from aitp.tasks.answers import ANSWERS_KEPT_SECONDS
from aitp.tasks.resume import resume
from aitp.transport.task_api import PatchOutcome, TaskApiClient

log = logging.getLogger("aitp.pipeline")


def recover(journal: Journal, handlers: dict[str, TaskHandler], claiming: bool,
            leases: LeaseBook | None) -> tuple[list, list[str]]:
    """What the last run left: (the jobs to resume, the ids of every task in flight). Claimed tasks
    are resumed (or dropped when claiming is off, as they are still pending on the server); the
    outbox is sent again by the Reporter on start. A claim that can no longer be resumed still gets
    an answer through the outbox, since its task is `in_progress` on the server: `failed` with the
    reason when it is malformed, `pending` when no handler takes its type any more."""
    resumed, answered = [], []
    journal.purge_answers(ANSWERS_KEPT_SECONDS)
    claims = journal.claims()
    if not claiming:
        journal.drop_claims([claim.task_id for claim in claims])
        claims = []
    for claim in still_ours(claims, journal, leases):
        outcome = resume(handlers, claim.task_id, claim.task_json)
        (answered if isinstance(outcome, OutboxEntry) else resumed).append(outcome)
    journal.add_results(answered)     # and retires their claims, in one transaction
    in_flight = [entry.task_id for entry in journal.outbox()] + [job.task_id for job in resumed]
    if resumed or in_flight:
        log.info("resuming the last run", extra={"fields": {"claims": len(resumed),
                                                             "outbox": len(in_flight) - len(resumed)}})
    return resumed, in_flight


def still_ours(claims: list[Claim], journal: Journal, leases: LeaseBook | None) -> list[Claim]:
    """With several services on one API, the claims of the last run whose leases another service
    took over meanwhile (this one was down longer than a lease) are that service's now: dropped
    here. When Redis does not answer, they are resumed: they were this service's last."""
    if leases is None or not claims:
        return claims
    try:
        # Reported by another service since (it took them over while this one was down): gone from
        # the journal without a provider call, however long ago the short settled mark ran out.
        done = leases.finished_elsewhere([claim.task_id for claim in claims])
        if done:
            log.info("claims of the last run another service finished meanwhile: dropped",
                     extra={"fields": {"claims": len(done)}})
            journal.drop_claims(sorted(done))
            journal.drop_answers(sorted(done))
            claims = [claim for claim in claims if claim.task_id not in done]
        ours = leases.acquire([(claim.task_id, bytes(claim.task_json)) for claim in claims])
    except CoordinationError as exc:
        log.warning("Redis does not answer at start: resuming the last run's claims without leases",
                    extra={"fields": {"error": str(exc), "claims": len(claims)}})
        return claims
    theirs = [claim.task_id for claim in claims if claim.task_id not in ours]
    if theirs:
        log.info("claims of the last run taken over by another service meanwhile: left to it",
                 extra={"fields": {"claims": len(theirs)}})
        journal.drop_claims(theirs)
        journal.drop_answers(theirs)
    return [claim for claim in claims if claim.task_id in ours]


def release_claims(journal: Journal, api: TaskApiClient, rate_limits: RateLimitBackend,
                   leases: LeaseBook | None, claiming: bool) -> None:
    """Every claim not finished goes back to `pending`; a claim the API does not take stays in the
    journal and is resumed at the next start. A released task that no provider saw gets its
    rate-limit unit back."""
    claims = journal.claims()
    if not claims:
        return
    released = [claim.task_id for claim in claims]
    if claiming:
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
            rate_limits.refund(claim.reservation, 1)
    journal.drop_claims(released)
    if leases is not None:
        leases.finish(released, final=False)     # pending again: any service may take them
