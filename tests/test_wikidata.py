"""The Wikidata client against a local stand-in: batching, caching, etiquette, and 429/maxlag/outages."""

import pytest

from aitp.breakers import ProviderBreaker
from aitp.errors import ProviderError
from aitp.sandbox.wikidata_stub import HUMAN, WikidataStub
from aitp.storage.cache import TtlCache
from aitp.transport.wikidata import WikidataClient
from conftest import wait_until

USER_AGENT = "aitp-tests/1.0 (https://example.org/aitp; ops@example.org)"


@pytest.fixture
def stub():
    server = WikidataStub()
    server.start()
    yield server
    server.stop()


def client_for(stub, tmp_path, clock=None, **options):
    cache = TtlCache(tmp_path / "cache.sqlite3", 3600.0, **({"clock": clock} if clock else {}))
    waits = []
    client = WikidataClient(api_url=f"{stub.url}/w/api.php", sparql_url=f"{stub.url}/sparql",
                            pageviews_url=f"{stub.url}/pageviews", user_agent=USER_AGENT, timeout=5, cache=cache,
                            sleep=waits.append, **options)
    return client, cache, waits


def test_search_and_entities_follow_the_etiquette_and_read_what_the_tasks_need(stub, tmp_path):
    client, _, _ = client_for(stub, tmp_path)
    ids = client.search("Lula", "en", 5)
    assert ids[:2] == ["Q37181", "Q1190"]                    # the person first, then a namesake squid
    entities = client.entities(ids)
    lula = entities["Q37181"]
    assert (lula.label, lula.description) == ("Luiz Inácio Lula da Silva", "President of Brazil")
    assert lula.aliases == ["Lula"]
    assert HUMAN in lula.instance_of and lula.enwiki and lula.sitelinks > 100 and lula.followers
    assert HUMAN not in entities["Q1190"].instance_of
    assert client.inbound_links("Q37181") > 0 and client.page_views(lula.enwiki) == 30 * (1000 + len(lula.enwiki))
    api_calls = [r for r in stub.calls() if r["path"] == "/w/api.php"]
    assert all(r["params"]["maxlag"] == "5" for r in api_calls)
    assert {r["user_agent"] for r in stub.calls()} == {USER_AGENT}
    search = stub.calls("wbsearchentities")[0]["params"]
    assert (search["search"], search["language"], search["type"], search["limit"]) == ("Lula", "en", "item", "5")


def test_entities_are_fetched_50_ids_a_call_and_each_once_a_ttl(stub, tmp_path):
    now = [1000.0]
    client, cache, _ = client_for(stub, tmp_path, clock=lambda: now[0])
    ids = [f"Q{900000 + i}" for i in range(120)] + ["Q37181"]
    client.entities(ids)
    assert [len(call["params"]["ids"].split("|")) for call in stub.calls("wbgetentities")] == [50, 50, 21]
    client.entities(["Q37181", "Q37181"])
    client.search("Marina Silva", "pt", 10)
    client.search("Marina Silva", "pt", 10)
    assert len(stub.calls("wbgetentities")) == 3 and len(stub.calls("wbsearchentities")) == 1   # cached
    assert cache.hits >= 2
    now[0] += 3600.0                                         # a week later (the TTL here is an hour)
    client.search("Marina Silva", "pt", 10)
    assert len(stub.calls("wbsearchentities")) == 2


def test_429_and_maxlag_are_waited_out_as_told_then_an_outage_raises(stub, tmp_path):
    client, _, waits = client_for(stub, tmp_path, max_attempts=3)
    stub.fail_next.append((429, {"Retry-After": "7"}))
    stub.maxlag_next = 1
    assert client.search("Petrobras", "en", 5) == ["Q208146"]
    assert waits == [7.0, 0.0]                               # Retry-After of the 429, then of the maxlag answer
    stub.fail_next.extend([(503, {})] * 3)
    with pytest.raises(ProviderError) as caught:
        client.search("Greta Thunberg", "en", 5)
    assert caught.value.provider == "wikidata" and caught.value.counts_as_outage


def test_its_own_breaker_opens_and_spares_wikidata_the_calls(stub, tmp_path):
    breaker = ProviderBreaker("wikidata", threshold=2, reset_seconds=60)
    client, _, _ = client_for(stub, tmp_path, max_attempts=1, breaker=breaker)
    stub.fail_next.extend([(500, {})] * 2)
    for name in ("a", "b"):
        with pytest.raises(ProviderError):
            client.search(name, "en", 5)
    calls = len(stub.calls())
    with pytest.raises(ProviderError, match="breaker is open"):
        client.search("c", "en", 5)
    assert len(stub.calls()) == calls and breaker.state == "open"


def test_a_service_that_never_looks_anything_up_creates_no_cache_file(tmp_path):
    cache = TtlCache(tmp_path / "cache.sqlite3", 3600.0)
    client = WikidataClient(api_url="http://127.0.0.1:9/w/api.php", sparql_url="", pageviews_url="",
                            user_agent=USER_AGENT, timeout=5, cache=cache)
    client.close()
    assert not (tmp_path / "cache.sqlite3").exists()


@pytest.mark.parametrize("agent, warned", [(None, True), ("newsroom-bot/2 (ops@example.org)", False)])
def test_the_shipped_user_agent_is_warned_about_at_the_first_look_up_only(tmp_path, caplog, agent, warned):
    # Wikimedia asks for the operator's contact in the User-Agent. Said when Wikidata is first
    # used (its session made), not at every start: an embedding-only service never looks anything up.
    import logging

    from aitp.config import load_config
    from aitp.transport.wikidata import wikidata_client_for
    environ = {"AITP_DATA_DIR": str(tmp_path), **({"AITP_WIKIDATA__USER_AGENT": agent} if agent else {})}
    settings = load_config(environ=environ, dotenv_dir=tmp_path).settings
    with caplog.at_level(logging.WARNING, logger="aitp.wikidata"):
        client = wikidata_client_for(settings)
        assert not caplog.records
        client._http()                 # what the first look-up does (no request is made here)
        client._http()
        client.close()
    said = [r for r in caplog.records if "user_agent" in r.getMessage()]
    assert len(said) == (1 if warned else 0)


def test_an_id_wikidata_does_not_have_and_a_name_with_no_hit_are_asked_again_only_after_the_negative_ttl(
        stub, tmp_path):
    """Issue 28: an id Wikidata does not have was never cached, so it was looked up at every task."""
    now = [1000.0]
    client, _, _ = client_for(stub, tmp_path, clock=lambda: now[0], negative_ttl_seconds=60.0)
    for _ in range(3):
        assert client.entities(["Q999999999"]) == {}
        assert client.search("no such name at all", "en", 5) == []
    assert len(stub.calls("wbgetentities")) == 1 and len(stub.calls("wbsearchentities")) == 1
    now[0] += 61.0                       # past the negative TTL, well inside the cache's hour
    client.entities(["Q999999999", "Q37181"])
    client.search("no such name at all", "en", 5)
    assert len(stub.calls("wbgetentities")) == 2 and len(stub.calls("wbsearchentities")) == 2
    now[0] += 61.0
    assert "Q37181" in client.entities(["Q37181"])           # a found item keeps the full TTL: no call
    assert len(stub.calls("wbgetentities")) == 2


def test_concurrent_look_ups_of_one_key_share_one_call(stub, tmp_path):
    import threading
    client, _, _ = client_for(stub, tmp_path)
    stub.gate.clear()
    answers: list = []
    threads = [threading.Thread(target=lambda: answers.append(client.search("Lula", "en", 5))) for _ in range(5)]
    for thread in threads:
        thread.start()
    wait_until(lambda: stub.calls("wbsearchentities") and client._flights.shared == 4,
               message="one call under way and four look-ups waiting for it")
    stub.gate.set()
    for thread in threads:
        thread.join(10)
    assert len(answers) == 5 and all(answer == answers[0] and answer for answer in answers)
    assert len(stub.calls("wbsearchentities")) == 1


def test_expired_rows_are_purged_so_the_cache_file_does_not_grow_without_bound(tmp_path):
    import sqlite3
    now = [1000.0]
    cache = TtlCache(tmp_path / "cache.sqlite3", 3600.0, clock=lambda: now[0])
    for number in range(10):
        cache.put(f"name {number}", b"[]", ttl_seconds=60.0 if number % 2 else None)
    cache.close()
    now[0] += 120.0                  # the five negative rows have expired
    cache = TtlCache(tmp_path / "cache.sqlite3", 3600.0, clock=lambda: now[0])
    assert cache.get("name 0") == b"[]" and cache.get("name 1") is None
    assert cache.purged == 5
    cache.close()
    rows = sqlite3.connect(tmp_path / "cache.sqlite3").execute("SELECT count(*) FROM cache").fetchone()[0]
    assert rows == 5
