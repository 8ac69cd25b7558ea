"""What failed work becomes (aitp/failures.py): one decision for embedding batches and LLM tasks,
tested with a table of cases; no actor, thread or socket."""

from __future__ import annotations

import pytest

from aitp.errors import DimensionMismatch, ProviderError, RowContractError, VectorContractError
from aitp.failures import (BACK_OFF, FAIL, NEXT_PROVIDER, RELEASE, SPLIT, Attempt, breaker_counts, decide, is_garbage,
                           is_outage, vector_failure)

pytestmark = pytest.mark.timeout(30)

MAX_RETRIES = 3


def error(**kwargs) -> ProviderError:
    return ProviderError("it failed", **{"provider": "ollama", **kwargs})


@pytest.mark.parametrize("work, failure, expected", [
    # One input can cause it: a batch of several is split, a lone task is not.
    (Attempt(tasks=8, attempt=1, providers_left=1), error(status=500, input_specific=True), SPLIT),
    (Attempt(tasks=1, attempt=1, providers_left=1), error(status=500, input_specific=True), NEXT_PROVIDER),
    # The route goes on before any backoff, whatever the error.
    (Attempt(4, 1, 1), error(status=503), NEXT_PROVIDER),
    (Attempt(4, 1, 1), error(status=400, retryable=False), NEXT_PROVIDER),
    # The route's end: back off while retries last.
    (Attempt(4, 1, 0), error(status=503), BACK_OFF),
    (Attempt(4, MAX_RETRIES, 0), error(status=None), BACK_OFF),
    (Attempt(1, 2, 0), error(provider="router", counts_as_outage=False), BACK_OFF),
    # Retries spent: an outage puts the tasks back to pending; their own fault fails them.
    (Attempt(4, MAX_RETRIES + 1, 0), error(status=503), RELEASE),
    (Attempt(4, MAX_RETRIES + 1, 0), error(status=429), RELEASE),
    (Attempt(4, MAX_RETRIES + 1, 0), error(status=401), RELEASE),
    (Attempt(1, MAX_RETRIES + 1, 0), error(provider="router", counts_as_outage=False), RELEASE),
    (Attempt(1, MAX_RETRIES + 1, 0), error(provider="wikidata", counts_as_outage=True), RELEASE),
    (Attempt(1, MAX_RETRIES + 1, 0), error(status=500, input_specific=True), FAIL),
    (Attempt(4, MAX_RETRIES + 1, 0), error(status=422, counts_as_outage=False), FAIL),
    # Not retryable: fails at once at the route's end, never released.
    (Attempt(4, 1, 0), error(status=400, retryable=False), FAIL),
    (Attempt(1, 1, 0), error(provider="openai", retryable=False, counts_as_outage=False), FAIL),
])
def test_what_failed_work_becomes(work, failure, expected):
    assert decide(work, failure, MAX_RETRIES) == expected


def test_an_outage_is_retryable_and_not_about_one_input():
    assert is_outage(error(status=503)) and is_outage(error(status=429))
    assert not is_outage(error(status=503, retryable=False))
    assert not is_outage(error(status=500, input_specific=True))


def test_a_failure_bisecting_will_pin_on_one_input_spares_the_breaker():
    assert not breaker_counts(error(status=500, input_specific=True), tasks=8)
    assert breaker_counts(error(status=500, input_specific=True), tasks=1)
    assert not breaker_counts(error(status=429), tasks=8)
    assert breaker_counts(error(status=None), tasks=8)


@pytest.mark.parametrize("cause, retryable, input_specific, garbage", [
    (DimensionMismatch(768, 1024), False, False, False),
    (RowContractError("a NaN in row 3"), True, True, False),
    (VectorContractError("12 vectors for 15 inputs"), True, False, True),
    (EOFError("the worker died"), True, False, False),
])
def test_a_refused_answer_becomes_the_providers_failure(cause, retryable, input_specific, garbage):
    failure = vector_failure("ollama", "nomic-embed-text", cause)
    assert failure.provider == "ollama" and str(cause) in str(failure)
    assert (failure.retryable, failure.input_specific, is_garbage(cause)) == (retryable, input_specific, garbage)
    assert failure.counts_as_outage is garbage      # only garbage speaks of the provider's health


@pytest.mark.parametrize("route, step, busy, expected", [
    (["ollama", "ollama@2", "openai"], 0, {"ollama": 2, "ollama@2": 0}, ["ollama@2", "ollama", "openai"]),
    (["ollama", "ollama@2", "openai"], 0, {"ollama": 1, "ollama@2": 1}, ["ollama", "ollama@2", "openai"]),  # a tie
    (["ollama", "ollama@2", "openai"], 1, {"ollama@2": 3}, ["ollama", "ollama@2", "openai"]),   # the only host left
    (["ollama", "ollama@2", "openai"], 2, {"openai": 9}, ["ollama", "ollama@2", "openai"]),     # not a host's turn
])
def test_work_whose_turn_is_an_ollama_host_goes_to_the_least_busy_one_left(route, step, busy, expected):
    from collections import Counter

    from aitp.routing import Router

    assert Router.least_busy_host(route, step, Counter(busy)) == expected
