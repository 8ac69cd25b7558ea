"""`defining_topics`: broad topics in Brazilian Portuguese, each with its Wikidata item when it has one."""

from __future__ import annotations

from typing import Annotated

import msgspec

from aitp.tasks.chat import ChatJob, LlmHandler


class Topic(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=60)]


class Topics(msgspec.Struct, forbid_unknown_fields=True):
    topics: Annotated[list[Topic], msgspec.Meta(min_length=1, max_length=5)]


def first_pt_item(wikidata, name: str, limit: int = 10) -> str | None:
    """The first Portuguese search hit's id, or None (the name is kept either way)."""
    ids = wikidata.search(name, "pt", limit)
    return ids[0] if ids else None


class DefiningTopicsHandler(LlmHandler):
    type_name = "defining_topics"
    answer_type = Topics
    prompt_name = "defining_topics.v1.txt"

    def result(self, job: ChatJob, answer: Topics, wikidata) -> list:
        names = list(dict.fromkeys(topic.name.strip() for topic in answer.topics))
        return [{"name": name, "wikidataId": first_pt_item(wikidata, name), "language": "pt"} for name in names]
