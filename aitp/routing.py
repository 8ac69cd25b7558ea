"""Which provider embeds a model: the order PROCESSING_MODE gives, minus those whose breaker is open.

- `ollama`: Ollama, for the models in SUPPORTED_MODELS only.
- `openai`: the OpenAI endpoint (the mock while the key is the placeholder), for any model.
- `hybrid`: a model in SUPPORTED_MODELS goes to Ollama first and then to the OpenAI endpoint with the
  same model name; other models go to the OpenAI endpoint directly. A model is never swapped for
  another: two models' vectors live in different spaces.

ChatRouter does the same for the LLM task types' chat models.
"""

from __future__ import annotations

import threading
from collections import Counter

from aitp.breakers import ProviderBreaker
from aitp.errors import ProviderError
from aitp.providers import Provider


def chat_breaker_name(provider: str) -> str:
    """The name of a provider's chat breaker (its embeddings breaker is named as the provider)."""
    return f"{provider}:chat"


def is_local(name: str) -> bool:
    """An Ollama host: "ollama", or "ollama@2" and on when OLLAMA_BASE_URL names several."""
    return name == "ollama" or name.startswith("ollama@")


class Router:
    def __init__(self, mode: str, providers: dict[str, Provider], breakers: dict[str, ProviderBreaker]) -> None:
        self.mode = mode
        self.providers = providers
        self.breakers = breakers
        self._locals = [provider for name, provider in providers.items() if is_local(name)]
        self._remote = next((p for name, p in providers.items() if not is_local(name)), None)

    def candidates(self, model: str) -> list[str]:
        """Every provider that may embed `model`, in order of preference, whatever their breakers say:
        the Ollama hosts (ProviderWorkers picks the least busy of them), then the OpenAI endpoint."""
        order = [local.name for local in self._locals if self.mode == "ollama" or local.refusal(model) is None]
        if self._remote is not None:
            order.append(self._remote.name)
        return order

    def route(self, model: str) -> list[str]:
        """The candidates that can take a call now (an open breaker is routed around, not called)."""
        return [name for name in self.candidates(model) if self.breakers[name].available()]

    @staticmethod
    def least_busy_host(route: list[str], step: int, busy: Counter) -> list[str]:
        """With several Ollama hosts, work whose turn is an Ollama host goes to the least busy of the
        hosts left on its route (the one it leaves takes its place, so a failure still tries it)."""
        if step >= len(route) or not is_local(route[step]):
            return route
        hosts = [index for index in range(step, len(route)) if is_local(route[index])]
        best = min(hosts, key=lambda index: (busy[route[index]], index))
        if best == step:
            return route
        swapped = list(route)
        swapped[step], swapped[best] = swapped[best], swapped[step]
        return swapped

    def seconds_until_available(self, model: str | None = None) -> float:
        """How long until some provider (for `model`, or for any model) lets a call through."""
        names = self.candidates(model) if model is not None else list(self.providers)
        return min((self.breakers[name].seconds_until_trial() for name in names), default=0.0)

    def refusal(self, model: str, text: str) -> str | None:
        """Why no provider of this mode will embed `text` with `model`, or None."""
        names = self.candidates(model)
        reasons = []
        for name in names:
            provider = self.providers[name]
            reason = provider.refusal(model) or provider.input_refusal(text)
            if reason is None:
                return None
            reasons.append(reason)
        return "; ".join(reasons) if reasons else f"no provider serves model {model!r}"

    def batch_limits(self, model: str) -> tuple[int | None, int | None]:
        """The tightest inputs-per-call and tokens-per-call limits of the providers `model` may go to."""
        inputs = [p.max_batch_inputs for p in self._of(model) if p.max_batch_inputs]
        tokens = [p.max_batch_tokens for p in self._of(model) if p.max_batch_tokens]
        return (min(inputs) if inputs else None, min(tokens) if tokens else None)

    def _of(self, model: str) -> list[Provider]:
        return [self.providers[name] for name in self.candidates(model)]

    def status(self) -> dict:
        return {name: breaker.status() for name, breaker in self.breakers.items()}

    def close(self) -> None:
        for provider in self.providers.values():
            provider.close()


class ChatRouter:
    """Which provider runs an LLM task's chat model, in PROCESSING_MODE's order: the Ollama hosts
    (only for a model the operator mapped to a local one in [models.chat]; the host with the fewest
    chat calls under way first), then the OpenAI endpoint (or the mock) with the model the task
    names. An open breaker is passed over; a provider that fails for want of health hands the call
    to the next one. When none answers, the call is an outage. Called from LlmWorkers' threads."""

    def __init__(self, providers: dict[str, Provider], breakers: dict[str, ProviderBreaker],
                 local_models: dict[str, str]) -> None:
        self.providers, self.breakers, self.local_models = providers, breakers, local_models
        self._hosts = [name for name in providers if is_local(name)]
        self._lock = threading.Lock()
        self._under_way: Counter[str] = Counter()      # chat calls each provider is making now

    def candidates(self, model: str) -> list[tuple[str, str]]:
        """(provider, the model it runs) in order of preference."""
        order = []
        if model in self.local_models:
            with self._lock:        # the least busy host first; a tie keeps OLLAMA_BASE_URL's order
                hosts = sorted(self._hosts, key=lambda name: self._under_way[name])
            order += [(name, self.local_models[model]) for name in hosts]
        order += [(name, model) for name in self.providers if not is_local(name)]
        return order

    def status(self) -> dict:
        return {breaker.name: breaker.status() for breaker in self.breakers.values()}

    def seconds_until_available(self, model: str | None = None) -> float:
        """How long until some chat provider (for `model`, or for any) lets a call through."""
        names = [name for name, _ in self.candidates(model)] if model is not None else list(self.providers)
        return min((self.breakers[name].seconds_until_trial() for name in names if name in self.breakers),
                   default=0.0)

    def refusal(self, model: str) -> str | None:
        if self.candidates(model):
            return None
        return (f"chat model {model!r} has no local model in [models.chat] (AITP_MODELS__CHAT), and Ollama "
                f"runs only the chat models mapped there")

    def chat(self, model: str, system: str, user: str, schema_name: str, schema: dict):
        """(ChatAnswer, provider name, paid). Raises the provider's error when it is about this
        task (not retryable), or an outage when no provider could answer."""
        failures = []
        for name, local_model in self.candidates(model):
            breaker = self.breakers[name]
            permit = breaker.begin()
            if permit is None:
                failures.append(f"{name}: circuit breaker open")
                continue
            with self._lock:
                self._under_way[name] += 1
            try:
                answer = self.providers[name].chat(local_model, system, user, schema_name, schema)
            except ProviderError as exc:
                breaker.end(permit, failed=exc.counts_as_outage)
                if not exc.retryable:
                    raise
                failures.append(f"{name}: {exc}")
                continue
            finally:
                with self._lock:
                    self._under_way[name] -= 1
            breaker.end(permit, failed=False)
            return answer, name, self.providers[name].paid
        raise ProviderError("; ".join(failures) or f"no provider for chat model {model!r}", provider="router",
                            counts_as_outage=True, retry_after=min(
                                (self.breakers[name].seconds_until_trial() for name, _ in self.candidates(model)),
                                default=None) or None)
