"""What happens to work whose provider call failed: one pure decision for embedding batches and LLM
tasks alike, from the error and where the work stands (as dramatiq's Retries decides a message's
fate in one place).

In order: a failure that one input can cause splits a batch of several in halves, so that only the
guilty task fails; another failure passes the work to the next provider of its route; at the end of
the route it is tried again after a backoff while retries last. Past them, work that failed only
because no provider could take it (down, overloaded, key refused) goes back to `pending`: a valid
task must not fail for that. Anything else fails, with the providers' words as the reason.
"""

from __future__ import annotations

from typing import NamedTuple

from aitp.errors import DimensionMismatch, ProviderError, RowContractError, VectorContractError

SPLIT, NEXT_PROVIDER, BACK_OFF, RELEASE, FAIL = "split", "next provider", "back off", "release", "fail"


class Attempt(NamedTuple):
    """Where the failed work stands."""

    tasks: int                   # in the batch (an LLM task runs alone: 1)
    attempt: int                 # 1 for the first try of the whole route
    providers_left: int = 0      # on its route after the one that failed


def decide(work: Attempt, error: ProviderError, max_retries: int) -> str:
    """SPLIT, NEXT_PROVIDER, BACK_OFF, RELEASE or FAIL."""
    if error.input_specific and work.tasks > 1:
        return SPLIT
    if work.providers_left > 0:
        return NEXT_PROVIDER
    if error.retryable and work.attempt <= max_retries:
        return BACK_OFF
    if is_outage(error):
        return RELEASE
    return FAIL


def is_outage(error: ProviderError) -> bool:
    """The providers are down or refusing us, not this input."""
    return error.retryable and not error.input_specific and (
        error.counts_as_outage or error.provider == "router" or error.status == 429)


def breaker_counts(error: ProviderError, tasks: int) -> bool:
    """Whether a failed call counts against its provider's breaker: a failure that bisecting will
    pin on one input says nothing about the provider's health."""
    return error.counts_as_outage and not (error.input_specific and tasks > 1)


def vector_failure(provider: str, model: str, error: BaseException) -> ProviderError:
    """A provider's answer that the vector work refused, as the provider's failure for the batch."""
    if isinstance(error, DimensionMismatch):
        # Another length would land in another vector space: fail (or try the next provider), never cut or pad.
        return ProviderError(f"{provider} {error} for model {model!r}", provider=provider, retryable=False,
                             counts_as_outage=False)
    if isinstance(error, RowContractError):
        return ProviderError(f"{provider} response broke the vector contract: {error}", provider=provider,
                             input_specific=True, counts_as_outage=False)
    if isinstance(error, VectorContractError):
        return ProviderError(f"{provider} response broke the vector contract: {error}", provider=provider)
    # A process worker died; the pool replaced it, and the batch is simply retried.
    return ProviderError(f"vector work failed: {error!r}", provider=provider, counts_as_outage=False)


def is_garbage(error: BaseException | None) -> bool:
    """An answer that broke the vector contract as a whole: the provider's breaker hears a failure."""
    return isinstance(error, VectorContractError) and not isinstance(error, (RowContractError, DimensionMismatch))
