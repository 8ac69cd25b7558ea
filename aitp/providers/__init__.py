"""Embedding providers: one base class, one module per backend."""

from aitp.config import PLACEHOLDER_OPENAI_KEY, Settings
from aitp.errors import ConfigError
from aitp.providers.base import Provider, RawEmbedding
from aitp.providers.mock import MockProvider
from aitp.providers.ollama import OllamaProvider


def remote_provider(settings: Settings, key_source: str = "default") -> Provider:
    """The OpenAI endpoint, or the mock in its place when the key is the placeholder. No key at all
    stops startup: a service that quietly ran the mock would report random vectors as results."""
    if settings.uses_mock_provider:
        return MockProvider(settings)
    if not settings.openai.api_key:
        raise ConfigError("OPENAI_API_KEY", "", f"an API key for {settings.processing.mode} mode (or "
                          f"PROCESSING_MODE=mock, or OPENAI_API_KEY={PLACEHOLDER_OPENAI_KEY} for the mock provider)",
                          key_source)
    # Imported here: the SDK takes about half a second of CPU to import, which ollama mode never needs.
    from aitp.providers.openai_api import OpenAIProvider
    return OpenAIProvider(settings, key_source)


def providers_for(settings: Settings, key_source: str = "default") -> dict[str, Provider]:
    """The providers PROCESSING_MODE uses, by name, in order of preference."""
    mode = settings.processing.mode
    if mode == "mock":
        return {"mock": MockProvider(settings)}
    chosen: list[Provider] = []
    if mode in ("ollama", "hybrid"):
        chosen += [OllamaProvider(settings, url, "ollama" if index == 0 else f"ollama@{index + 1}")
                   for index, url in enumerate(settings.ollama_base_urls)]
    if mode in ("openai", "hybrid"):
        chosen.append(remote_provider(settings, key_source))
    return {provider.name: provider for provider in chosen}


__all__ = ["MockProvider", "OllamaProvider", "Provider", "RawEmbedding", "providers_for",
           "remote_provider"]
