"""`defining_impact_area`: the one primary impact area, in Portuguese, with its Wikidata item."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from aitp.tasks.base import TaskRejected
from aitp.tasks.chat import ChatJob, LlmHandler, strict_schema
from aitp.tasks.defining_topics import first_pt_item


class ImpactArea(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=80)]
    description: Annotated[str, msgspec.Meta(min_length=1, max_length=600)]


def options_of(content: dict) -> list[str]:
    options = content.get("options")
    if options is None:
        return []
    if not isinstance(options, list) or not options or not all(isinstance(o, str) and o.strip() for o in options):
        raise TaskRejected("content.options must be a non-empty list of area names")
    return list(dict.fromkeys(options))


class DefiningImpactAreaHandler(LlmHandler):
    type_name = "defining_impact_area"
    answer_type = ImpactArea
    prompt_name = "defining_impact_area.v1.txt"

    def check_content(self, content: dict) -> None:
        options_of(content)

    def question(self, job: ChatJob, wikidata) -> str:
        options = options_of(msgspec.json.decode(job.content))
        if not options:
            return job.text
        return job.text + "\n\nÁreas permitidas (responda com exatamente uma): " + "; ".join(options)

    def schema_for(self, job: ChatJob) -> tuple[type[msgspec.Struct], dict]:
        options = options_of(msgspec.json.decode(job.content))
        schema = strict_schema(ImpactArea)
        if options:       # the answer must be one of them: said in the schema itself
            schema = {**schema, "properties": {**schema["properties"], "name": {"enum": options}}}
        return ImpactArea, schema

    def check_answer(self, job: ChatJob, answer: ImpactArea) -> None:
        options = options_of(msgspec.json.decode(job.content))
        if options and answer.name not in options:
            raise ValueError(f"{answer.name!r} is not one of the allowed areas")

    def result(self, job: ChatJob, answer: ImpactArea, wikidata) -> dict[str, Any]:
        return {"name": answer.name, "description": answer.description,
                "wikidataId": first_pt_item(wikidata, answer.name), "language": "pt"}
