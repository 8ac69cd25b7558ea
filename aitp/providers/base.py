"""The one base class every embedding provider implements."""

from __future__ import annotations

import abc

import msgspec


class RawEmbedding(msgspec.Struct, frozen=True):
    """A provider's answer for one batch, undecoded: `decoder` names the function in
    `aitp.vectors.checks.DECODERS` that a process worker uses to read `payload`."""

    decoder: str
    payload: bytes
    tokens: int = 0


class ChatAnswer(msgspec.Struct, frozen=True):
    """A chat model's answer: the JSON text it wrote (to be checked against the schema asked for)."""

    content: str
    tokens: int = 0


class Provider(abc.ABC):
    """An embedding backend. `embed` makes one HTTP call per batch and must not parse floats."""

    name: str
    # Are its vectors paid for? Those are journaled before they are sent, so that no crash makes
    # aitp pay for one twice; unpaid ones are computed again after a crash (storage.journal_unpaid_results).
    paid: bool = True
    max_batch_inputs: int | None = None     # the provider's own limits per call, if it has any
    max_batch_tokens: int | None = None
    # Where it is called: services calling the same endpoint share its breaker (through Redis).
    endpoint: str = "local"

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Startup work (check or download models). Raises ProviderError when it cannot be ready."""

    def refusal(self, model: str) -> str | None:
        """Why this provider will not embed with `model`, or None when it will."""
        return None

    def input_refusal(self, text: str) -> str | None:
        """Why this provider will not embed `text` (too long for it), or None when it will."""
        return None

    def dimension(self, model: str) -> int | None:
        """The dimension this provider is known to return for `model`, if any."""
        return None

    @abc.abstractmethod
    def embed(self, model: str, texts: list[str]) -> RawEmbedding:
        """Embed a batch in one call; raise ProviderError on failure."""

    def chat(self, model: str, system: str, user: str, schema_name: str, schema: dict) -> ChatAnswer:
        """One chat completion whose answer follows the JSON `schema` (structured outputs); raise
        ProviderError on failure. Providers that have no chat models keep this refusal."""
        from aitp.errors import ProviderError
        raise ProviderError(f"{self.name} has no chat models", provider=self.name, retryable=False,
                            counts_as_outage=False)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
