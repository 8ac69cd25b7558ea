import pytest

from aitp.config import PLACEHOLDER_OPENAI_KEY, load_config
from aitp.errors import ConfigError, ProviderError
from aitp.providers import providers_for
from aitp.providers.ollama import OllamaProvider
from aitp.sandbox.ollama_stub import POISON


def settings_for(url: str, **env):
    return load_config(environ={"PROCESSING_MODE": "ollama", "OLLAMA_BASE_URL": url, "OLLAMA_TIMEOUT": "5", **env},
                       dotenv_dir="/x").settings


def test_prepare_pulls_only_missing_models(ollama):
    stub = ollama(models={"nomic-embed-text": 8, "all-minilm": 4}, installed=["all-minilm"])
    provider = OllamaProvider(settings_for(stub.url, SUPPORTED_MODELS="nomic-embed-text,all-minilm:latest"))
    provider.prepare()
    assert stub.pulls == ["nomic-embed-text"]
    assert provider.installed_models() == {"nomic-embed-text:latest", "all-minilm:latest"}


def test_a_pull_error_is_not_retryable(ollama):
    stub = ollama(models={"nomic-embed-text": 8}, installed=[])
    provider = OllamaProvider(settings_for(stub.url, SUPPORTED_MODELS="no-such-model"))
    with pytest.raises(ProviderError, match="file does not exist") as caught:
        provider.prepare()
    assert caught.value.retryable is False


def test_missing_model_with_pulling_off_stops_startup(ollama, tmp_path):
    stub = ollama(installed=[])
    config = tmp_path / "c.toml"
    config.write_text("[ollama]\npull_missing_models = false\n")
    settings = load_config(config, environ={"PROCESSING_MODE": "ollama", "OLLAMA_BASE_URL": stub.url},
                           dotenv_dir=tmp_path).settings
    with pytest.raises(ProviderError, match="pulling is off"):
        OllamaProvider(settings).prepare()
    assert stub.pulls == []


def test_one_call_per_batch_with_a_list_input(ollama):
    stub = ollama(models={"nomic-embed-text": 8})
    raw = OllamaProvider(settings_for(stub.url)).embed("nomic-embed-text", ["a", "b", "c"])
    assert stub.batch_sizes == [3]
    assert raw.decoder == "ollama" and raw.tokens == sum(len(t) // 4 + 1 for t in ["a", "b", "c"])


@pytest.mark.parametrize("body, tokens", [
    (b'{"model":"m","embeddings":[[0.1,0.2]],"total_duration":14143917,"load_duration":1019500,'
     b'"prompt_eval_count":8}', 8),
    (b'{"model": "m", "embeddings": [[0.1]], "prompt_eval_count" : 12345 }\n', 12345),
    (b'{"model":"m","embeddings":[[0.1]]}', 0),                          # older servers send no count
    # A count before the vectors is not looked for.
    (b'{"model":"m","prompt_eval_count":7,"embeddings":[' + b"[0.5],".join([b""] * 400) + b'[0.5]]}', 0),
])
def test_prompt_tokens_come_from_the_tail_of_the_answer(body, tokens):
    from aitp.providers.ollama import prompt_tokens
    assert prompt_tokens(body) == tokens
    assert prompt_tokens(bytearray(body)) == tokens


@pytest.mark.parametrize("texts, status", [(["ok", f"bad {POISON}"], 500), (["ok", "x" * 100], 400)])
def test_input_specific_failures_are_marked_for_splitting(ollama, texts, status):
    stub = ollama(models={"nomic-embed-text": 8}, context_chars=50, honours_truncate=False)
    with pytest.raises(ProviderError) as caught:
        OllamaProvider(settings_for(stub.url)).embed("nomic-embed-text", texts)
    assert (caught.value.status, caught.value.input_specific) == (status, True)


def test_unreachable_ollama_is_a_retryable_provider_error():
    with pytest.raises(ProviderError, match="unreachable") as caught:
        OllamaProvider(settings_for("http://127.0.0.1:9")).embed("nomic-embed-text", ["a"])
    assert caught.value.retryable and not caught.value.input_specific


def test_only_supported_models_are_served(ollama):
    provider = OllamaProvider(settings_for("http://127.0.0.1:9", SUPPORTED_MODELS='["nomic-embed-text"]'))
    assert provider.refusal("nomic-embed-text") is None
    assert provider.refusal("nomic-embed-text:latest") is None
    assert "not in SUPPORTED_MODELS" in provider.refusal("text-embedding-3-small")


def test_mode_selects_the_providers_in_order():
    def names(**env):
        return list(providers_for(load_config(environ=env, dotenv_dir="/x").settings))

    assert names(PROCESSING_MODE="mock") == ["mock"]
    assert names(OPENAI_API_KEY=PLACEHOLDER_OPENAI_KEY) == ["mock"]          # the placeholder, set on purpose
    assert names(OPENAI_API_KEY="sk-test") == ["openai"]
    assert names(PROCESSING_MODE="ollama") == ["ollama"]
    assert names(PROCESSING_MODE="hybrid", OPENAI_API_KEY="sk-test") == ["ollama", "openai"]
    assert names(PROCESSING_MODE="hybrid", OPENAI_API_KEY=PLACEHOLDER_OPENAI_KEY) == ["ollama", "mock"]


@pytest.mark.parametrize("mode", ["openai", "hybrid"])
def test_no_key_in_a_mode_that_needs_one_stops_startup_naming_it_never_the_mock(mode):
    settings = load_config(environ={"PROCESSING_MODE": mode}, dotenv_dir="/x").settings
    with pytest.raises(ConfigError) as caught:
        providers_for(settings)
    assert caught.value.key == "OPENAI_API_KEY" and "PROCESSING_MODE=mock" in str(caught.value)


def test_a_model_list_that_is_not_an_answer_stops_the_provider_being_ready(scripted):
    def script(peer, number):
        while peer.read_request() is not None:
            peer.send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n" if number == 1
                      else b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!")
    server = scripted(script)
    provider = OllamaProvider(settings_for(server.url))
    with pytest.raises(ProviderError, match="cannot list Ollama models at .*: it answered 503") as caught:
        provider.prepare()
    assert caught.value.status == 503 and caught.value.retryable
    provider.close()
    with pytest.raises(ProviderError, match="cannot list Ollama models"):
        OllamaProvider(settings_for(server.url)).prepare()


def test_a_model_deleted_while_running_is_pulled_again_and_the_batch_embedded(ollama):
    stub = ollama(models={"nomic-embed-text": 8})
    provider = OllamaProvider(settings_for(stub.url))
    provider.prepare()
    stub.installed.clear()                      # `ollama rm nomic-embed-text` while aitp runs
    raw = provider.embed("nomic-embed-text", ["a", "b"])
    assert raw.decoder == "ollama" and stub.pulls == ["nomic-embed-text"]
    assert stub.embedded == ["a", "b"]


def test_a_chat_model_deleted_while_running_is_pulled_again_and_the_task_answered(ollama):
    stub = ollama(models={"nomic-embed-text": 8, "qwen2.5:7b-instruct": 0})
    provider = OllamaProvider(settings_for(stub.url, AITP_MODELS__CHAT='{"o3": "qwen2.5:7b-instruct"}'))
    provider.prepare()
    stub.installed.discard("qwen2.5:7b-instruct")    # `ollama rm` while aitp runs: chat answers 404
    schema = {"type": "object", "properties": {"level": {"type": "string"}}, "required": ["level"],
              "additionalProperties": False}
    answer = provider.chat("qwen2.5:7b-instruct", "sys", "user", "defining_severity", schema)
    assert "level" in answer.content and stub.pulls == ["qwen2.5:7b-instruct"]
    assert [request["model"] for request in stub.chat_requests] == ["qwen2.5:7b-instruct"] * 2
    stub.installed.discard("qwen2.5:7b-instruct")
    stub.models.pop("qwen2.5:7b-instruct")            # gone from the registry too: the pull fails
    with pytest.raises(ProviderError) as caught:
        provider.chat("qwen2.5:7b-instruct", "sys", "user", "defining_severity", schema)
    assert caught.value.retryable and caught.value.counts_as_outage      # back to pending, never failed


def test_a_model_that_cannot_be_pulled_again_is_an_outage_not_the_tasks_fault(ollama):
    stub = ollama(models={"nomic-embed-text": 8})
    provider = OllamaProvider(settings_for(stub.url, AITP_OLLAMA__PULL_MISSING_MODELS="false"))
    stub.installed.clear()
    with pytest.raises(ProviderError) as caught:
        provider.embed("nomic-embed-text", ["a"])
    error = caught.value
    assert error.retryable and error.counts_as_outage and not error.input_specific
    assert "pulling is off" in str(error)
