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
        assert breaker.begin()
        try:
            both_inside.wait()   # breaks (BrokenBarrierError) unless the other call is inside too
            outcomes.append("ran together")
        except threading.BrokenBarrierError:
            outcomes.append("serialised")
        finally:
            breaker.end(failed=False)

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
        assert breaker.begin()
        breaker.end(failed=True)
    assert breaker.state == "closed" and breaker.available()
    assert breaker.begin()
    breaker.end(failed=True)
    assert breaker.state == "open" and breaker.opened_total == 1
    assert not breaker.available() and not breaker.begin()
    assert 29 < breaker.seconds_until_trial() <= 30

    let_reset_time_pass(breaker)
    assert breaker.available()
    assert breaker.begin()                     # the trial
    assert breaker.state == "half-open"
    assert not breaker.begin()                 # one trial at a time
    breaker.end(failed=False)
    assert breaker.state == "closed" and breaker.begin()
    breaker.end(failed=False)


def test_a_failed_trial_opens_it_again():
    breaker = ProviderBreaker("openai", threshold=1, reset_seconds=30)
    assert breaker.begin()
    breaker.end(failed=True)
    let_reset_time_pass(breaker)
    assert breaker.begin()
    breaker.end(failed=True)
    assert breaker.state == "open" and breaker.opened_total == 2


def test_a_success_resets_the_count_of_failures():
    breaker = ProviderBreaker("ollama", threshold=2, reset_seconds=30)
    for failed in (True, False, True, False, True):
        assert breaker.begin()
        breaker.end(failed=failed)
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
    assert breakers["ollama"].begin()
    breakers["ollama"].end(failed=True)
    assert router.route("nomic-embed-text") == [name for name in expected if name != "ollama"]
    assert router.candidates("nomic-embed-text") == expected     # still a candidate once it recovers
    if mode == "ollama":
        assert router.seconds_until_available() > 0
        assert "not supported" in router.refusal("other-model", "text")
    else:
        assert router.seconds_until_available() == 0
        assert router.refusal("other-model", "text") is None
