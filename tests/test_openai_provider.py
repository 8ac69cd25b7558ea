"""The OpenAI provider through the official SDK, against the stub endpoint on 127.0.0.1."""

import base64
import threading

import msgspec
import numpy as np
import pytest

from aitp.config import load_config
from aitp.errors import ConfigError, ProviderError, RowContractError, VectorContractError
from aitp.providers.openai_api import OpenAIProvider
from aitp.transport.retry_after import parse_duration, retry_after_seconds
from aitp.sandbox.ollama_stub import POISON
from aitp.sandbox.openai_stub import STUB_KEY, Injected, openai_stub_vector
from aitp.tokens import estimate_tokens
from aitp.vectors.work import process_job
from aitp.vectors.checks import VectorJob, checked_unit_vectors

SECRET_KEY = "sk-live-do-not-print-this-key-9876"


def provider_for(stub, key=STUB_KEY, **env) -> OpenAIProvider:
    settings = load_config(environ={"OPENAI_API_KEY": key, "OPENAI_BASE_URL": stub.url, **env},
                           dotenv_dir="/nonexistent").settings
    return OpenAIProvider(settings, "environment OPENAI_API_KEY")


def vectors_of(raw, model, count, dimension=None):
    job = VectorJob(raw.decoder, raw.payload, model, [str(i) for i in range(count)], dimension, 100_000)
    return [np.asarray(msgspec.json.decode(r.body)["result"], dtype=np.float32) for r in process_job(job).results]


def unit(vector) -> np.ndarray:
    return checked_unit_vectors(np.asarray(vector, dtype=np.float64)[None, :], 1, None)[0]


def test_base64_vectors_come_back_in_input_order(openai_stub):
    stub = openai_stub(models={"custom-model": 12})
    texts = ["first", "second", "third"]
    raw = provider_for(stub).embed("custom-model", texts)
    assert stub.requests[-1]["encoding_format"] == "base64"
    assert raw.tokens == sum(len(t) // 4 + 1 for t in texts)
    got = vectors_of(raw, "custom-model", 3)
    for text, vector in zip(texts, got):   # the stub lists the data in reverse: `index` decides
        assert np.array_equal(vector, unit(openai_stub_vector("custom-model", text, 12)))


def test_dimensions_are_sent_only_to_models_that_take_them(openai_stub, tmp_path):
    stub = openai_stub(models={"text-embedding-3-small": 1536, "text-embedding-ada-002": 1536})
    provider = provider_for(stub)   # the built-in TOML dimensions pin both models at 1536
    provider.embed("text-embedding-3-small", ["a"])
    provider.embed("text-embedding-ada-002", ["a"])
    assert [r["dimensions"] for r in stub.requests] == [1536, None]
    settings = load_config(environ={"OPENAI_API_KEY": STUB_KEY, "OPENAI_BASE_URL": stub.url},
                           dotenv_dir="/nonexistent").settings
    shortened = msgspec.structs.replace(settings, models=msgspec.structs.replace(
        settings.models, dimensions={"text-embedding-3-small": 256}))
    raw = OpenAIProvider(shortened).embed("text-embedding-3-small", ["a"])
    assert stub.requests[-1]["dimensions"] == 256
    assert vectors_of(raw, "text-embedding-3-small", 1, 256)[0].shape == (256,)


def test_a_refused_key_names_its_source_and_never_the_key(openai_stub):
    stub = openai_stub()
    provider = provider_for(stub, key=SECRET_KEY)
    with pytest.raises(ConfigError) as at_startup:
        provider.prepare()
    with pytest.raises(ProviderError) as mid_run:
        provider.embed("text-embedding-3-small", ["a"])
    for error in (at_startup.value, mid_run.value):
        text = str(error)
        assert "environment OPENAI_API_KEY" in text and "401" in text
        assert SECRET_KEY not in text and SECRET_KEY[:8] not in text and SECRET_KEY[-4:] not in text
    assert mid_run.value.counts_as_outage and mid_run.value.retryable


def test_the_sdk_does_not_retry_behind_our_back(openai_stub):
    stub = openai_stub()
    stub.fail_next.append(Injected(500))
    with pytest.raises(ProviderError) as caught:
        provider_for(stub).embed("text-embedding-3-small", ["a"])
    assert len(stub.requests) == 1
    assert caught.value.status == 500 and caught.value.retryable and caught.value.counts_as_outage


def test_a_429_carries_the_wait_the_api_asked_for(openai_stub):
    stub = openai_stub()
    stub.fail_next.append(Injected(429, headers={"retry-after": "7"}))
    stub.fail_next.append(Injected(429, headers={"x-ratelimit-remaining-tokens": "0",
                                                  "x-ratelimit-reset-tokens": "1m30s"}))
    provider = provider_for(stub)
    waits = []
    for _ in range(2):
        with pytest.raises(ProviderError) as caught:
            provider.embed("text-embedding-3-small", ["a"])
        assert caught.value.retryable and not caught.value.counts_as_outage
        waits.append(caught.value.retry_after)
    assert waits == [7.0, 90.0]


def test_a_400_about_an_input_splits_the_batch_and_one_about_dimensions_does_not(openai_stub, tmp_path):
    stub = openai_stub(models={"text-embedding-ada-002": 8}, context_chars=50)
    with pytest.raises(ProviderError) as too_long:
        provider_for(stub).embed("text-embedding-ada-002", ["short", "x" * 51])
    assert too_long.value.input_specific and not too_long.value.retryable
    assert "maximum context length" in str(too_long.value)
    # An operator who lists ada-002 as taking `dimensions` gets a 400 no split can mend.
    config = tmp_path / "aitp.toml"
    config.write_text('[openai]\ndimensions_model_prefixes = ["text-embedding-"]\n')
    settings = load_config(config, environ={"OPENAI_API_KEY": STUB_KEY, "OPENAI_BASE_URL": stub.url},
                           dotenv_dir=tmp_path).settings
    with pytest.raises(ProviderError) as about_dimensions:
        OpenAIProvider(settings).embed("text-embedding-ada-002", ["a", "b"])
    assert stub.requests[-1]["dimensions"] == 1536
    assert not about_dimensions.value.input_specific and not about_dimensions.value.retryable


def test_a_slow_endpoint_times_out_at_openai_timeout(openai_stub):
    stub = openai_stub()
    stub.gate.clear()   # hold every call
    with pytest.raises(ProviderError) as caught:
        provider_for(stub, OPENAI_TIMEOUT="0.3").embed("text-embedding-3-small", ["a"])
    assert "did not answer within 0.3 s" in str(caught.value) and caught.value.retryable
    assert len(stub.requests) == 1


def test_unknown_model_is_not_retried(openai_stub):
    with pytest.raises(ProviderError) as caught:
        provider_for(openai_stub()).embed("no-such-model", ["a"])
    assert caught.value.status == 404 and not caught.value.retryable and "no-such-model" in str(caught.value)


def test_a_nan_vector_is_a_row_error_and_garbage_a_batch_error(openai_stub):
    stub = openai_stub(models={"m": 4})
    raw = provider_for(stub).embed("m", ["fine", f"bad {POISON}"])
    with pytest.raises(RowContractError, match="vector 1 of 2"):
        vectors_of(raw, "m", 2)
    for payload in (b"not json", b'{"data":[{"index":0,"embedding":"@@@"}]}',
                    b'{"data":[{"index":1,"embedding":[1.0]}]}',
                    b'{"data":[{"index":0,"embedding":"' + base64.b64encode(b"12345") + b'"}]}'):
        job = VectorJob("openai", payload, "m", ["0"], None, 100_000)
        with pytest.raises(VectorContractError) as caught:
            process_job(job)
        assert not isinstance(caught.value, RowContractError)


def test_float_lists_from_servers_that_ignore_base64_are_read_too():
    payload = b'{"data":[{"index":0,"embedding":[3.0,4.0]}]}'
    result = process_job(VectorJob("openai", payload, "m", ["t"], 2, 100_000))
    assert msgspec.json.decode(result.results[0].body)["result"] == [0.6, 0.8]


def test_too_long_inputs_are_refused_before_sending():
    settings = load_config(environ={"OPENAI_API_KEY": STUB_KEY}, dotenv_dir="/nonexistent").settings
    provider = OpenAIProvider(settings)
    assert provider.input_refusal("word " * 1000) is None
    assert "exceeds the OpenAI limit of 8192 tokens" in provider.input_refusal("word " * 20_000)
    assert estimate_tokens("日本語" * 3000) > estimate_tokens("abc" * 3000)


@pytest.mark.parametrize("headers, expected", [
    ({"retry-after": "3"}, 3.0),
    ({"retry-after-ms": "250"}, 0.25),
    ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),     # a date in the past: no wait
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}, 360.0),
    ({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "6m0s"}, None),
    ({"retry-after": "2", "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20ms"}, 2.0),
    ({"retry-after": "soon"}, None),
    ({"retry-after": "999999"}, 3600.0),
])
def test_retry_after_headers(headers, expected):
    assert retry_after_seconds(headers) == expected


def test_durations():
    assert parse_duration("1h2m3.5s") == 3723.5
    assert parse_duration("20ms") == 0.02
    assert parse_duration("soon") is None and parse_duration("5x") is None


@pytest.mark.parametrize("answer", ["huge", "dripping"])
def test_an_answer_too_large_or_too_slow_in_total_is_a_provider_error_not_a_hang(scripted, answer):
    stop = threading.Event()

    def script(peer, number):
        peer.read_request()
        if answer == "huge":       # refused on its Content-Length: nothing of it is read
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000000000\r\n\r\n{")
            stop.wait(30)
            return
        peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n")
        for _ in range(400):       # a byte every 50 ms: each read is quick, the whole takes 20 s
            if stop.wait(0.05):
                return
            peer.send(b" ")
    server = scripted(script)
    provider = OpenAIProvider(load_config(environ={"OPENAI_API_KEY": STUB_KEY, "OPENAI_BASE_URL": server.url,
                                                   "OPENAI_TIMEOUT": "1"}, dotenv_dir="/x").settings)
    try:
        with pytest.raises(ProviderError) as caught:
            provider.embed("text-embedding-3-small", ["a"])
        assert caught.value.counts_as_outage
    finally:
        stop.set()
        provider.close()
