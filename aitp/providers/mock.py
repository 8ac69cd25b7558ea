"""The mock provider: deterministic vectors and chat answers at no cost, for demos and tests (only
when asked for: PROCESSING_MODE=mock, or the placeholder OpenAI key)."""

from __future__ import annotations

import hashlib
import random

import msgspec

from aitp.config import Settings
from aitp.providers.base import ChatAnswer, Provider, RawEmbedding
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

    def chat(self, model: str, system: str, user: str, schema_name: str, schema: dict) -> ChatAnswer:
        return ChatAnswer(content=schema_answer(f"{model}\0{schema_name}", user, schema), tokens=len(user) // 4)


def schema_answer(seed: str, text: str, schema: dict) -> str:
    """A JSON answer that follows `schema`, the same for the same question: names taken from the
    text itself (words that start with a capital), numbers in range, enums picked by hash."""
    rng = random.Random(hashlib.sha256(f"{seed}\0{text}".encode("utf-8", "replace")).digest())
    names = [word.strip(".,;:!?()\"'") for word in text.split() if word[:1].isupper() and len(word) > 3]
    return msgspec.json.encode(_fake(schema, schema.get("$defs", {}), rng, names or ["Brasil"])).decode()


def _fake(schema: dict, defs: dict, rng: random.Random, names: list[str]):
    """A value that `schema` accepts (the subset structured outputs use: objects, arrays, strings,
    numbers with bounds, enums, anyOf, $ref)."""
    if "$ref" in schema:
        return _fake(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, rng, names)
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if "anyOf" in schema:
        options = [option for option in schema["anyOf"] if option.get("type") != "null"] or schema["anyOf"]
        return _fake(options[0], defs, rng, names)
    kind = schema.get("type")
    if kind == "object":
        return {name: _fake(sub, defs, rng, names) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        count = min(schema.get("maxItems", 2), max(schema.get("minItems", 1), 1 + rng.randrange(2)))
        return [_fake(schema.get("items", {}), defs, rng, names) for _ in range(count)]
    if kind in ("number", "integer"):
        low, high = schema.get("minimum", 0), schema.get("maximum", 1)
        value = low + (high - low) * (0.5 + rng.random() / 2)
        return round(value, 2) if kind == "number" else int(value)
    if kind == "boolean":
        return rng.random() < 0.5
    return rng.choice(names)
