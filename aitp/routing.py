"""Which provider embeds a model: the order PROCESSING_MODE gives, minus those whose breaker is open.

- `ollama`: Ollama, for the models in SUPPORTED_MODELS only.
- `openai`: the OpenAI endpoint (the mock while the key is the placeholder), for any model.
- `hybrid`: a model in SUPPORTED_MODELS goes to Ollama first and then to the OpenAI endpoint with the
  same model name; other models go to the OpenAI endpoint directly. A model is never swapped for
  another: two models' vectors live in different spaces.
"""

from __future__ import annotations

from aitp.breakers import ProviderBreaker
from aitp.providers import Provider


class Router:
    def __init__(self, mode: str, providers: dict[str, Provider], breakers: dict[str, ProviderBreaker]) -> None:
        self.mode = mode
        self.providers = providers
        self.breakers = breakers
        self._local = providers.get("ollama")
        self._remote = next((p for name, p in providers.items() if name != "ollama"), None)

    def candidates(self, model: str) -> list[str]:
        """Every provider that may embed `model`, in order of preference, whatever their breakers say."""
        order = []
        if self._local is not None and (self.mode == "ollama" or self._local.refusal(model) is None):
            order.append(self._local.name)
        if self._remote is not None:
            order.append(self._remote.name)
        return order

    def route(self, model: str) -> list[str]:
        """The candidates that can take a call now (an open breaker is routed around, not called)."""
        return [name for name in self.candidates(model) if self.breakers[name].available()]

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
