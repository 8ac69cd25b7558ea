"""The four LLM task types: exact result shapes (../shared/LLM-TASKS.md), structured outputs as
OpenAI and Ollama receive them, schema failures, outages back to pending, and the pipeline."""

from __future__ import annotations

import json

import msgspec
import pytest

from aitp.config import load_config
from aitp.errors import ProviderError
from aitp.providers.base import ChatAnswer
from aitp.sandbox.seed import LLM_TYPES, llm_task, llm_tasks, object_id
from aitp.sandbox.wikidata_stub import WikidataStub
from aitp.storage.cache import TtlCache
from aitp.tasks import HANDLERS, TaskRejected
from aitp.transport.wikidata import WikidataClient
from conftest import settings_for, wait_until

SETTINGS = load_config(environ={"PROCESSING_MODE": "mock"}, dotenv_dir="/x").settings


@pytest.fixture
def wikidata(tmp_path):
    stub = WikidataStub()
    stub.start()
    client = WikidataClient(api_url=f"{stub.url}/w/api.php", sparql_url=f"{stub.url}/sparql",
                            pageviews_url=f"{stub.url}/pageviews", user_agent="aitp-tests", timeout=5,
                            cache=TtlCache(tmp_path / "wd.sqlite3", 3600))
    client.stub = stub
    yield client
    client.close()
    stub.stop()


class Scripted:
    """A chat that answers with the given JSON texts in turn, and records what it was asked."""

    def __init__(self, *answers: object) -> None:
        self.answers = [a if isinstance(a, str) else json.dumps(a) for a in answers]
        self.asked: list[dict] = []

    def __call__(self, model, system, user, schema_name, schema):
        self.asked.append({"model": model, "system": system, "user": user, "name": schema_name, "schema": schema})
        return ChatAnswer(self.answers.pop(0), tokens=10), "openai", True


def run(task_type: str, content: object, chat: Scripted, wikidata) -> object:
    handler = HANDLERS[task_type](SETTINGS)
    raw = msgspec.json.encode({"_id": object_id(1), "type": task_type, "content": content})
    result = handler.run(handler.parse(object_id(1), raw), chat, wikidata)
    body = msgspec.json.decode(result.body)
    assert body["state"] == "succeeded" and result.paid
    return body["result"]


def test_identifying_data_keeps_people_and_organisations_wikidata_knows(wikidata):
    chat = Scripted({"people": [
        {"name": "Luiz Inácio Lula da Silva", "mentioned_as": "Lula", "confidence": 0.95, "context": "speaker"},
        {"name": "Petrobras", "mentioned_as": "a Petrobras", "confidence": 0.8, "context": "the company"},
        {"name": "Fulano de Tal", "mentioned_as": "Fulano", "confidence": 0.3, "context": "unknown"}]})
    result = run("identifying_data", {"text": "Lula e a Petrobras", "model": "o3"}, chat, wikidata)
    assert result == {"personalities": [
        {"name": "Luiz Inácio Lula da Silva", "mentioned_as": "Lula", "confidence": 0.95, "context": "speaker",
         "wikidata": {"id": "Q37181", "url": "https://www.wikidata.org/wiki/Q37181",
                      "label": "Luiz Inácio Lula da Silva", "description": "President of Brazil",
                      "aliases": ["Lula"]}},
        {"name": "Petrobras", "mentioned_as": "a Petrobras", "confidence": 0.8, "context": "the company",
         "wikidata": {"id": "Q208146", "url": "https://www.wikidata.org/wiki/Q208146", "label": "Petrobras",
                      "description": "Brazilian petroleum company", "aliases": []}}]}
    # One wbgetentities call for every candidate of every person.
    assert len(wikidata.stub.calls("wbgetentities")) == 1
    schema = chat.asked[0]["schema"]
    assert schema["type"] == "object" and schema["additionalProperties"] is False and chat.asked[0]["model"] == "o3"


def test_defining_topics_is_a_bare_list_in_portuguese_with_ids_or_null(wikidata):
    chat = Scripted({"topics": [{"name": "Política"}, {"name": "COP30"}, {"name": "Xyzzy"}]})
    result = run("defining_topics", "A COP30 em Belém e a política", chat, wikidata)   # a bare string content
    assert result == [{"name": "Política", "wikidataId": "Q7163", "language": "pt"},
                      {"name": "COP30", "wikidataId": "Q115323194", "language": "pt"},
                      {"name": "Xyzzy", "wikidataId": None, "language": "pt"}]
    assert chat.asked[0]["model"] == SETTINGS.models.default_chat_model
    search = wikidata.stub.calls("wbsearchentities")[0]["params"]
    assert (search["language"], search["limit"]) == ("pt", "10")


def test_defining_impact_area_with_options_must_answer_one_of_them(wikidata):
    content = {"text": "Fake news sobre vacinas", "model": "o3", "options": ["Saúde", "Economia"]}
    chat = Scripted({"name": "Política", "description": "fora das opções"},          # refused, asked again
                    {"name": "Saúde", "description": "Vacinas e saúde pública."})
    result = run("defining_impact_area", content, chat, wikidata)
    assert result == {"name": "Saúde", "description": "Vacinas e saúde pública.", "wikidataId": "Q12147",
                      "language": "pt"}
    assert chat.asked[0]["schema"]["properties"]["name"] == {"enum": ["Saúde", "Economia"]}
    assert "Saúde; Economia" in chat.asked[0]["user"]


def test_defining_severity_reads_the_level_from_the_structured_answer_with_wikidata_context(wikidata):
    content = {"text": "Lula e a COP30", "model": "o3",
               "impactArea": {"name": "Meio ambiente", "language": "pt", "wikidataId": "Q2249676"},
               "topics": [{"name": "COP30", "language": "pt", "wikidataId": "Q115323194"}],
               "personalities": [{"name": "Lula", "wikidataId": "Q37181"}, {"name": "Ninguém", "wikidataId": "Q0"}],
               "personalityWikidataId": "Q467478"}
    chat = Scripted({"severity": "high_2"})
    assert run("defining_severity", content, chat, wikidata) == {"severity": "high_2"}
    asked = chat.asked[0]
    assert asked["schema"]["properties"]["severity"]["enum"][0] == "critical"
    assert "sitelinks" in asked["user"] and "inbound links" in asked["user"] and "followers" in asked["user"]
    assert "- personalities: Ninguém" in asked["user"]          # an id that does not resolve keeps its name


def test_an_answer_that_fails_the_schema_twice_fails_the_task_with_the_reason(wikidata):
    handler = HANDLERS["defining_severity"](SETTINGS)
    job = handler.parse(object_id(1), msgspec.json.encode({"content": {"text": "t", "model": "o3"}}))
    chat = Scripted('{"severity": "not critical, high_2"}', '{"severity": "very bad"}')
    with pytest.raises(TaskRejected, match="failed the schema twice"):
        handler.run(job, chat, wikidata)
    assert len(chat.asked) == 2


@pytest.mark.parametrize("task_type, content, why", [
    ("identifying_data", {"model": "o3"}, "content.text"),
    ("defining_topics", {"text": "t"}, "content.model"),
    ("defining_severity", "bare text", "content must be an object"),
    ("defining_impact_area", {"text": "t", "model": "o3", "options": []}, "content.options"),
    ("defining_severity", {"text": "t", "model": "o3", "topics": "Política"}, "content.topics"),
])
def test_malformed_llm_tasks_are_rejected_with_a_reason(task_type, content, why):
    with pytest.raises(TaskRejected, match=why):
        HANDLERS[task_type](SETTINGS).parse(object_id(1), msgspec.json.encode({"content": content}))


def test_openai_chat_uses_structured_outputs_and_temperature_1_for_reasoning_models(openai_stub):
    from aitp.providers.openai_api import OpenAIProvider
    from aitp.sandbox.openai_stub import STUB_KEY
    stub = openai_stub()
    provider = OpenAIProvider(load_config(environ={"OPENAI_API_KEY": STUB_KEY, "OPENAI_BASE_URL": stub.url},
                                          dotenv_dir="/x").settings)
    schema = {"type": "object", "properties": {"severity": {"enum": ["low_1", "high_2"]}}, "required": ["severity"],
              "additionalProperties": False}
    answer = provider.chat("o3", "system text", "user text", "defining_severity", schema)
    assert json.loads(answer.content)["severity"] in ("low_1", "high_2") and answer.tokens > 0
    provider.chat("gpt-4o-mini", "s", "u", "defining_severity", schema)
    first, second = stub.chat_requests
    assert first["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "defining_severity", "strict": True, "schema": schema}}
    assert first["temperature"] == 1 and second["temperature"] != 1
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    provider.close()


def test_ollama_chat_sends_the_schema_as_format_without_streaming(ollama):
    from aitp.providers.ollama import OllamaProvider
    stub = ollama(models={"nomic-embed-text": 8, "qwen2.5:7b-instruct": 0})
    settings = load_config(environ={"PROCESSING_MODE": "ollama", "OLLAMA_BASE_URL": stub.url,
                                    "AITP_MODELS__CHAT": '{"o3": "qwen2.5:7b-instruct"}'}, dotenv_dir="/x").settings
    stub.installed.discard("qwen2.5:7b-instruct")
    provider = OllamaProvider(settings)
    provider.prepare()                                    # mapped chat models are pulled like embedding ones
    assert "qwen2.5:7b-instruct" in stub.pulls
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
              "additionalProperties": False}
    answer = provider.chat("qwen2.5:7b-instruct", "sys", "Texto sobre Belém", "defining_topics", schema)
    assert isinstance(json.loads(answer.content)["name"], str)
    request = stub.chat_requests[0]
    assert (request["format"], request["stream"], request["model"]) == (schema, False, "qwen2.5:7b-instruct")
    provider.close()


def test_ollama_mode_without_a_mapping_fails_the_task_naming_the_setting():
    from aitp.routing import ChatRouter
    router = ChatRouter({"ollama": object()}, {}, {})
    assert "[models.chat]" in router.refusal("o3")


def test_a_chat_outage_is_an_outage_never_an_empty_success():
    from aitp.breakers import ProviderBreaker
    from aitp.routing import ChatRouter

    class Down:
        paid = True

        def chat(self, *args):
            raise ProviderError("unreachable", provider="openai")
    router = ChatRouter({"openai": Down()}, {"openai": ProviderBreaker("openai", 5, 30)}, {})
    with pytest.raises(ProviderError) as caught:
        router.chat("o3", "s", "u", "n", {})
    assert caught.value.retryable and caught.value.counts_as_outage


class _Host:
    """An Ollama host whose chat calls wait at a gate, or fail as one that is down."""

    paid = False

    def __init__(self, down: bool = False) -> None:
        import threading
        self.down, self.models = down, []
        self.entered, self.gate = threading.Semaphore(0), threading.Event()

    def chat(self, model, system, user, schema_name, schema):
        self.models.append(model)
        if self.down:
            raise ProviderError("connection refused", provider="ollama")
        self.entered.release()
        assert self.gate.wait(10)
        return ChatAnswer("{}", 1)


def _hosts_router(*hosts):
    from aitp.breakers import ProviderBreaker
    from aitp.routing import ChatRouter
    names = ["ollama"] + [f"ollama@{n}" for n in range(2, len(hosts) + 1)]
    return ChatRouter(dict(zip(names, hosts)), {name: ProviderBreaker(name, 5, 30) for name in names},
                      {"o3": "qwen2.5:7b-instruct"})


@pytest.mark.timeout(30)
def test_chat_calls_spread_over_every_ollama_host_the_least_busy_first():
    import threading
    first, second = _Host(), _Host()
    router = _hosts_router(first, second)
    answers = []
    calls = [threading.Thread(target=lambda: answers.append(router.chat("o3", "s", "u", "n", {}))) for _ in range(2)]
    calls[0].start()
    assert first.entered.acquire(timeout=10)          # the first call holds the first host...
    calls[1].start()
    assert second.entered.acquire(timeout=10)         # ...so the second goes to the other one
    first.gate.set()
    second.gate.set()
    for call in calls:
        call.join(10)
    assert first.models == second.models == ["qwen2.5:7b-instruct"]
    assert sorted(provider for _, provider, _ in answers) == ["ollama", "ollama@2"]
    assert router.candidates("o3")[0][0] == "ollama"  # none under way again: OLLAMA_BASE_URL's order


@pytest.mark.timeout(30)
def test_a_chat_call_goes_on_to_the_next_ollama_host_when_one_is_down():
    down, up = _Host(down=True), _Host()
    up.gate.set()
    answer, provider, paid = _hosts_router(down, up).chat("o3", "s", "u", "n", {})
    assert (provider, paid, down.models, up.models) == ("ollama@2", False, ["qwen2.5:7b-instruct"],
                                                        ["qwen2.5:7b-instruct"])


def test_the_pipeline_drains_every_llm_type_and_each_patch_body_has_the_contract_shape(
        sandbox, run_pipeline, tmp_path):
    wikidata = WikidataStub()
    wikidata.start()
    try:
        tasks = llm_tasks(3)
        server = sandbox(tasks)
        pipeline = run_pipeline(settings_for(server, tmp_path, PROCESSING_MODE="mock", **wikidata.settings_env()))
        wait_until(lambda: server.counts() == {"succeeded": len(tasks)}, message="every LLM task to succeed")
        metrics = pipeline.metrics.expose().decode()
    finally:
        wikidata.stop()
    # The same names and ids come back in every task: most look-ups are answered by the cache.
    hits = float(next(line.split()[-1] for line in metrics.splitlines()
                      if line.startswith("aitp_wikidata_cache_hits_total")))
    assert hits > 0 and len(wikidata.calls()) < 4 * len(tasks)
    by_type: dict[str, list] = {}
    for task in tasks:
        by_type.setdefault(task["type"], []).append(server.result(task["_id"]))
    assert set(by_type) == set(LLM_TYPES)
    for result in by_type["identifying_data"]:
        assert set(result) == {"personalities"}
        for person in result["personalities"]:
            assert set(person) == {"name", "mentioned_as", "confidence", "context", "wikidata"}
            assert set(person["wikidata"]) == {"id", "url", "label", "description", "aliases"}
    for result in by_type["defining_topics"]:
        assert result and all(set(t) == {"name", "wikidataId", "language"} and t["language"] == "pt" for t in result)
    for result in by_type["defining_impact_area"]:
        assert set(result) == {"name", "description", "wikidataId", "language"} and result["language"] == "pt"
    for result in by_type["defining_severity"]:
        assert set(result) == {"severity"} and result["severity"] in (
            "critical", "high_3", "high_2", "high_1", "medium_3", "medium_2", "medium_1", "low_3", "low_2", "low_1")


def test_llm_tasks_go_back_to_pending_while_the_openai_endpoint_is_down(sandbox, run_pipeline, tmp_path):
    import socket
    with socket.create_server(("127.0.0.1", 0)) as placeholder:       # a port nobody listens on
        down = f"http://127.0.0.1:{placeholder.getsockname()[1]}/v1"
    wikidata = WikidataStub()
    wikidata.start()
    try:
        tasks = [llm_task(object_id(i, prefix=0x22), "defining_topics", "A COP30 em Belém") for i in range(3)]
        server = sandbox(tasks)
        settings = settings_for(server, tmp_path, OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=down, MAX_RETRIES="1",
                                **wikidata.settings_env())
        run_pipeline(settings)
        wait_until(lambda: all(server.history(t["_id"])[-2:] == ["in_progress", "pending"] for t in tasks),
                   message="the tasks released to pending")
    finally:
        wikidata.stop()
    assert not server.counts().get("succeeded")


def test_kill_9_with_a_paid_chat_answer_in_the_outbox_never_pays_for_it_again(sandbox, openai_stub, service,
                                                                              tmp_path):
    from aitp.sandbox.openai_stub import STUB_KEY
    from aitp.storage.journal import Journal
    stub = openai_stub()
    wikidata = WikidataStub()
    wikidata.start()
    try:
        tasks = [llm_task(object_id(i, prefix=0x33), "defining_topics", f"A COP30 em Belém, parte {i}")
                 for i in range(2)]
        server = sandbox(tasks)
        env = {"API_BASE_URL": server.url, "OPENAI_API_KEY": STUB_KEY, "OPENAI_BASE_URL": stub.url,
               "REQUEST_TIMEOUT": "1", **wikidata.settings_env()}
        stub.gate.clear()                                 # the chat calls wait until the API hangs
        first = service(env)
        wait_until(lambda: stub.chats_at_gate == 2, message="both chat calls under way")
        server.start_outage("hang")                       # the paid answers cannot be reported
        stub.gate.set()
        journal_path = tmp_path / "data" / "journal.sqlite3"
        wait_until(lambda: Journal(journal_path).counts()["outbox"] == 2, message="the paid answers journaled")
        first.signal(9)
        first.wait(10)
        server.end_outage()
        paid_calls = len(stub.chat_requests)
        second = service(env)
        wait_until(lambda: server.counts() == {"succeeded": 2}, message="both reported after the restart")
        second.signal(15)
        assert second.wait(60) == 0
    finally:
        wikidata.stop()
    assert len(stub.chat_requests) == paid_calls == 2      # sent from the outbox, not asked again
    for task in tasks:
        assert all(topic["language"] == "pt" for topic in server.result(task["_id"]))
