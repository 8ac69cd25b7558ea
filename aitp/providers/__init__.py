"""Embedding providers: one base class, one module per backend."""

from aitp.config import Settings
from aitp.errors import ConfigError
from aitp.providers.base import Provider, RawEmbedding
from aitp.providers.mock import MockProvider
from aitp.providers.ollama import OllamaProvider


def provider_for(settings: Settings) -> Provider:
    """The provider PROCESSING_MODE asks for."""
    mode = settings.processing.mode
    if mode == "ollama":
        return OllamaProvider(settings)
    if mode == "openai" and settings.uses_mock_provider:
        return MockProvider(settings)
    # The OpenAI provider and hybrid routing arrive with their own module; until then say so at startup.
    raise ConfigError("processing.mode", mode, "'ollama', or 'openai' with the placeholder OPENAI_API_KEY "
                      "(mock); the OpenAI provider and hybrid mode are not available in this version")


__all__ = ["MockProvider", "OllamaProvider", "Provider", "RawEmbedding", "provider_for"]
