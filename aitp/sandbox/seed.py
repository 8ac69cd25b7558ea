"""Sample tasks for the sandbox: well-formed ones plus the malformed and foreign ones a real queue holds."""

from __future__ import annotations

import random

_WORDS = ("verification request for the invoice of march", "address changed after the onboarding call",
          "customer reports a duplicate payment", "passport scan is blurred on page two",
          "utility bill older than three months", "name differs from the bank statement",
          "héllo wörld ✓ 你好 مرحبا", "an emoji 🚀 and a quote \" in the text")


def object_id(index: int, prefix: int = 0x68B89107) -> str:
    """A deterministic, valid 24-hex-character ObjectId."""
    return f"{prefix:08x}{index:016x}"


def embedding_task(task_id: str, text: object, model: object = "nomic-embed-text", **extra) -> dict:
    return {"_id": task_id, "type": "text_embedding", "state": "pending",
            "content": {"text": text, "model": model},
            "callbackRoute": "verification_update_embedding",
            "callbackParams": {"targetId": task_id, "field": "embedding"},
            "createdAt": "2024-01-01T00:00:00.000Z", "updatedAt": "2024-01-01T00:00:00.000Z", "__v": 0, **extra}


def generated_tasks(count: int, *, seed: int = 7, models: tuple[str, ...] = ("nomic-embed-text",),
                    start: int = 0) -> list[dict]:
    """`count` well-formed text_embedding tasks with varied texts."""
    rng = random.Random(seed)
    return [embedding_task(object_id(start + i), f"{rng.choice(_WORDS)} #{start + i}", models[i % len(models)])
            for i in range(count)]


def hostile_tasks(start: int, max_text_chars: int = 1_000_000) -> list[dict]:
    """What a real pending list may hold besides good tasks; keyed by what each one tests."""
    ids = iter(object_id(start + i, prefix=0x0BADBAD0) for i in range(100))
    return [
        # malformed text_embedding tasks: reported failed, with the reason logged
        {"_id": next(ids), "type": "text_embedding", "state": "pending", "content": {"model": "nomic-embed-text"}},
        embedding_task(next(ids), ""),
        embedding_task(next(ids), 12345),
        embedding_task(next(ids), "no model given", model=""),
        embedding_task(next(ids), "x" * (max_text_chars + 1)),
        {"_id": next(ids), "type": "text_embedding", "state": "pending", "content": "not an object"},
        # types this service does not handle: left pending for a newer worker
        {"_id": next(ids), "type": "summarizing", "state": "pending", "content": {"text": "summary"}},
        {"_id": next(ids), "type": "translating", "state": "pending", "content": {"text": "tradução"}},
        # ids that must never reach a URL: left alone
        embedding_task("../../etc/passwd", "hostile id"),
        embedding_task("68b89107952364b0aad89c1d%2F", "hostile id"),
        embedding_task("68b89107952364b0aad89c1dA", "25 characters"),
    ]


LLM_TYPES = ("identifying_data", "defining_topics", "defining_impact_area", "defining_severity")
_CALLBACKS = {"identifying_data": "identifiedData", "defining_topics": "topics", "defining_impact_area": "impactArea",
              "defining_severity": "severity"}
# Fact-check requests as a Brazilian platform receives them, some about COP30.
FACT_CHECK_TEXTS = (
    "Lula disse em Belém que a COP30 vai zerar o desmatamento da Amazônia até 2026.",
    "Marina Silva afirmou que a Petrobras vai parar de explorar petróleo na foz do Amazonas.",
    "Greta Thunberg was banned from entering Brazil before COP30, a viral post claims.",
    "Folha de S.Paulo publicou que a vacina contra a gripe causa infertilidade.",
    "A COP30 em Belém custou mais do que todas as conferências do clima anteriores somadas.",
    "Petrobras will sell all its refineries to a foreign company next month, says a message on WhatsApp.",
    "Lula assinou um decreto que proíbe o uso de carros a gasolina a partir de 2030.",
    "Mensagem diz que a água da chuva em Belém está contaminada por causa da conferência do clima.",
)


def llm_task(task_id: str, task_type: str, text: str, model: str = "o3", **content) -> dict:
    """An LLM task as the API lists it (../shared/LLM-TASKS.md)."""
    return {"_id": task_id, "type": task_type, "state": "pending", "content": {"text": text, "model": model, **content},
            "callbackRoute": f"verification_update_{task_type}",
            "callbackParams": {"targetId": task_id, "field": _CALLBACKS[task_type]},
            "createdAt": "2024-01-01T00:00:00.000Z", "updatedAt": "2024-01-01T00:00:00.000Z", "__v": 0}


def llm_tasks(count: int, start: int = 0, model: str = "o3") -> list[dict]:
    """`count` tasks of each of the four LLM types, with fact-check texts (severity with context)."""
    tasks = []
    for i in range(count):
        text = FACT_CHECK_TEXTS[i % len(FACT_CHECK_TEXTS)]
        for offset, task_type in enumerate(LLM_TYPES):
            task_id = object_id(start + 4 * i + offset, prefix=0x11A11A11)
            extra = {}
            if task_type == "defining_severity":
                extra = {"impactArea": {"name": "Meio ambiente", "language": "pt", "wikidataId": "Q2249676"},
                         "topics": [{"name": "COP30", "language": "pt", "wikidataId": "Q115323194"}],
                         "personalities": [{"name": "Luiz Inácio Lula da Silva", "wikidataId": "Q37181"}]}
            tasks.append(llm_task(task_id, task_type, text, model, **extra))
    return tasks


def demo_tasks(count: int = 200, llm_count: int = 0) -> list[dict]:
    """The demo's queue: `count` good embedding tasks and `llm_count` of each LLM type, with the
    hostile ones shuffled in."""
    tasks = generated_tasks(count) + llm_tasks(llm_count) + hostile_tasks(count)
    random.Random(3).shuffle(tasks)
    return tasks
