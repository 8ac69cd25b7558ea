"""`defining_severity`: one of ten levels, read from a structured answer (an enum), never searched for
in free text; the context is what Wikidata knows of the people, area and topics involved."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from aitp.tasks.base import TaskRejected
from aitp.tasks.chat import ChatJob, LlmHandler

LEVELS = ("critical", "high_3", "high_2", "high_1", "medium_3", "medium_2", "medium_1", "low_3", "low_2", "low_1")
Level = Literal["critical", "high_3", "high_2", "high_1", "medium_3", "medium_2", "medium_1", "low_3", "low_2",
                "low_1"]


class Severity(msgspec.Struct, forbid_unknown_fields=True):
    severity: Level


def _items(content: dict) -> list[tuple[str, str, str | None]]:
    """(role, name, wikidata id) of every item the task names, in the new form or the old id-only one."""
    out = []

    def add(role: str, item: Any) -> None:
        if isinstance(item, dict):
            name, entity_id = item.get("name"), item.get("wikidataId")
            if not isinstance(name, str) and not isinstance(entity_id, str):
                raise TaskRejected(f"content.{role} entries need a name or a wikidataId")
            out.append((role, name if isinstance(name, str) else "", entity_id if isinstance(entity_id, str) else None))
        elif isinstance(item, str):             # the old form: ids only
            out.append((role, "", item))
        elif item is not None:
            raise TaskRejected(f"content.{role} is malformed")

    add("impactArea", content.get("impactArea"))
    for role in ("topics", "personalities"):
        items = content.get(role) or []
        if not isinstance(items, list):
            raise TaskRejected(f"content.{role} must be a list")
        for item in items:
            add(role, item)
    add("impactArea", content.get("impactAreaWikidataId"))
    for entity_id in content.get("topicsWikidataIds") or []:
        add("topics", entity_id)
    add("personalities", content.get("personalityWikidataId"))
    return out


class DefiningSeverityHandler(LlmHandler):
    type_name = "defining_severity"
    answer_type = Severity
    prompt_name = "defining_severity.v1.txt"
    bare_text_allowed = False

    def check_content(self, content: dict) -> None:
        _items(content)

    def question(self, job: ChatJob, wikidata) -> str:
        items = _items(msgspec.json.decode(job.content))
        return f"Text:\n{job.text}\n\nContext:\n" + (context_lines(items, wikidata) or "(none)")

    def result(self, job: ChatJob, answer: Severity, wikidata) -> dict:
        return {"severity": answer.severity}


def context_lines(items: list[tuple[str, str, str | None]], wikidata) -> str:
    """One line per item: its name, and for one with an id what Wikidata says of its prominence. A
    name given with an id that does not resolve keeps its name."""
    entities = wikidata.entities([entity_id for _, _, entity_id in items if entity_id])
    lines = []
    for role, name, entity_id in items:
        entity = entities.get(entity_id) if entity_id else None
        if entity is None:
            lines.append(f"- {role}: {name or entity_id or 'unnamed'}")
            continue
        facts = [f"{entity.label or name}", entity.description or "", f"sitelinks {entity.sitelinks}",
                 f"claims {entity.claims}", f"inbound links {wikidata.inbound_links(entity.id)}"]
        if entity.enwiki:
            facts.append(f"Wikipedia views (30 days) {wikidata.page_views(entity.enwiki)}")
        if "Q5" in entity.instance_of:
            facts += [f"followers {entity.followers}", f"occupations {', '.join(entity.occupations) or '-'}",
                      f"positions held {', '.join(entity.positions) or '-'}", f"awards {len(entity.awards)}"]
        lines.append(f"- {role}: " + "; ".join(fact for fact in facts if fact))
    return "\n".join(lines)
