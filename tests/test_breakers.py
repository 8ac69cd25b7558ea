"""Circuit breakers: pybreaker's states, without serialising the calls they guard."""

import threading
from datetime import timedelta

import pytest

from aitp.breakers import ProviderBreaker
from aitp.config import load_config
from aitp.providers import MockProvider
from aitp.routing import Router


def let_reset_time_pass(breaker: ProviderBreaker) -> None:
    """Move the moment the breaker opened into the past (instead of sleeping through its reset)."""
    breaker.storage.opened_at = breaker.storage.opened_at - timedelta(seconds=breaker.reset_seconds)


def test_concurrent_calls_through_one_breaker_run_in_parallel():
    breaker = ProviderBreaker("ollama", threshold=5, reset_seconds=30)
    both_inside = threading.Barrier(2, timeout=10)
    outcomes = []

    def call():
        assert (permit := breaker.begin())
        try:
            both_inside.wait()   # breaks (BrokenBarrierError) unless the other call is inside too
            outcomes.append("ran together")
        except threading.BrokenBarrierError:
            outcomes.append("serialised")
        finally:
            breaker.end(permit, failed=False)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert outcomes == ["ran together", "ran together"]
    assert breaker.state == "closed"


def test_opens_at_the_threshold_and_lets_one_trial_through_after_the_reset():
    breaker = ProviderBreaker("openai", threshold=3, reset_seconds=30)
    for _ in range(2):
        assert (permit := breaker.begin())
        breaker.end(permit, failed=True)
    assert breaker.state == "closed" and breaker.available()
    assert (permit := breaker.begin())
    breaker.end(permit, failed=True)
    assert breaker.state == "open" and breaker.opened_total == 1
    assert not breaker.available() and not breaker.begin()
    assert 29 < breaker.seconds_until_trial() <= 30

    let_reset_time_pass(breaker)
    assert breaker.available()
    assert (permit := breaker.begin())                     # the trial
    assert breaker.state == "half-open"
    assert not breaker.begin()                 # one trial at a time
    breaker.end(permit, failed=False)
    assert breaker.state == "closed" and (permit := breaker.begin())
    breaker.end(permit, failed=False)


def test_a_failed_trial_opens_it_again():
    breaker = ProviderBreaker("openai", threshold=1, reset_seconds=30)
    assert (permit := breaker.begin())
    breaker.end(permit, failed=True)
    let_reset_time_pass(breaker)
    assert (permit := breaker.begin())
    breaker.end(permit, failed=True)
    assert breaker.state == "open" and breaker.opened_total == 2


def test_a_success_resets_the_count_of_failures():
    breaker = ProviderBreaker("ollama", threshold=2, reset_seconds=30)
    for failed in (True, False, True, False, True):
        assert (permit := breaker.begin())
        breaker.end(permit, failed=failed)
    assert breaker.state == "closed"


@pytest.mark.parametrize("mode, supported, expected", [
    ("hybrid", "nomic-embed-text", ["ollama", "mock"]),
    ("hybrid", "all-minilm", ["mock"]),
    ("ollama", "nomic-embed-text", ["ollama"]),
])
def test_routes_follow_the_mode_and_skip_open_breakers(mode, supported, expected):
    settings = load_config(environ={"PROCESSING_MODE": mode, "SUPPORTED_MODELS": supported}, dotenv_dir="/x").settings

    class Local(MockProvider):
        name = "ollama"

        def refusal(self, model):
            return None if model in settings.processing.supported_models else f"{model} not supported"

    providers = {"ollama": Local(settings)}
    if mode == "hybrid":
        providers["mock"] = MockProvider(settings)
    breakers = {name: ProviderBreaker(name, 1, 30) for name in providers}
    router = Router(mode, providers, breakers)
    assert router.route("nomic-embed-text") == expected
    assert (permit := breakers["ollama"].begin())
    breakers["ollama"].end(permit, failed=True)
    assert router.route("nomic-embed-text") == [name for name in expected if name != "ollama"]
    assert router.candidates("nomic-embed-text") == expected     # still a candidate once it recovers
    if mode == "ollama":
        assert router.seconds_until_available() > 0
        assert "not supported" in router.refusal("other-model", "text")
    else:
        assert router.seconds_until_available() == 0
        assert router.refusal("other-model", "text") is None


def test_a_call_from_before_the_breaker_opened_neither_frees_nor_decides_the_trial():
    breaker = ProviderBreaker("ollama", threshold=2, reset_seconds=30)
    stale = breaker.begin()                   # a slow call, begun while closed
    for _ in range(2):
        failing = breaker.begin()
        breaker.end(failing, failed=True)
    assert breaker.state == "open"
    let_reset_time_pass(breaker)
    trial = breaker.begin()
    assert trial and trial.trial and breaker.state == "half-open"
    breaker.end(stale, failed=False)          # the slow call ends now
    assert breaker.state == "half-open"       # it did not close the breaker...
    assert breaker.begin() is None            # ...nor let a second trial through
    breaker.end(trial, failed=False)
    assert breaker.state == "closed"
