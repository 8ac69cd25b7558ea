"""`identifying_data`: the people and organisations a text names, each matched to a Wikidata item."""

from __future__ import annotations

from typing import Annotated

import msgspec

from aitp.tasks.chat import ChatJob, LlmHandler

# A candidate is kept when it is an instance of one of these (human, public company, online newspaper).
KINDS_KEPT = ("Q5", "Q891723", "Q1153191")


class Person(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    mentioned_as: str
    confidence: Annotated[float, msgspec.Meta(ge=0, le=1)]
    context: str


class People(msgspec.Struct, forbid_unknown_fields=True):
    people: list[Person]


class IdentifyingDataHandler(LlmHandler):
    type_name = "identifying_data"
    answer_type = People
    prompt_name = "identifying_data.v1.txt"
    reportable_without_wikidata = False     # without Wikidata every person would be dropped

    def result(self, job: ChatJob, answer: People, wikidata) -> dict:
        candidates = {person.name: wikidata.search(person.name, "en", 5) for person in answer.people}
        entities = wikidata.entities([entity_id for ids in candidates.values() for entity_id in ids])
        personalities = []
        for person in answer.people:
            match = next((entities[entity_id] for entity_id in candidates[person.name] if entity_id in entities
                          and any(kind in entities[entity_id].instance_of for kind in KINDS_KEPT)), None)
            if match is None:
                continue            # no such person or organisation on Wikidata: dropped
            personalities.append({
                "name": person.name, "mentioned_as": person.mentioned_as, "confidence": person.confidence,
                "context": person.context,
                "wikidata": {"id": match.id, "url": f"https://www.wikidata.org/wiki/{match.id}",
                             "label": match.label or person.name, "description": match.description,
                             "aliases": match.aliases}})
        return {"personalities": personalities}
