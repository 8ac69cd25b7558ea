"""The mock provider: deterministic vectors at no cost, used while the OpenAI key is the placeholder."""

from __future__ import annotations

import msgspec

from aitp.config import Settings
from aitp.providers.base import Provider, RawEmbedding
from aitp.vectors.jobs import MockRecipe

_encoder = msgspec.msgpack.Encoder()


class MockProvider(Provider):
    name = "mock"
    paid = False

    def __init__(self, settings: Settings) -> None:
        self._dimensions = settings.models.dimensions
        self._default_dimension = settings.models.mock_default_dimension

    def dimension(self, model: str) -> int:
        return self._dimensions.get(model, self._default_dimension)

    def embed(self, model: str, texts: list[str]) -> RawEmbedding:
        # The vectors themselves are made in a process worker from this recipe.
        recipe = MockRecipe(model=model, texts=texts, dimension=self.dimension(model))
        return RawEmbedding(decoder="mock", payload=_encoder.encode(recipe),
                            tokens=sum(len(text) for text in texts) // 4)
