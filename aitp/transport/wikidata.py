"""Wikidata look-ups for the LLM task types (../shared/LLM-TASKS.md), with the public service's
etiquette: a descriptive User-Agent, `maxlag=5`, `Retry-After` honoured, few calls at once, and
`wbgetentities` batched 50 ids a call. Every answer is cached (aitp/storage/cache.py) for
`wikidata.cache_ttl_seconds`, so a name or an id is looked up once a week, not once per task.

An outage (no answer, 429 or 5xx after the retries, the breaker open) raises ProviderError with
provider "wikidata": the task goes back to pending, it never succeeds with an empty answer.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from datetime import date, timedelta
from typing import Any, Callable
from urllib.parse import quote

import msgspec

from aitp.breakers import ProviderBreaker
from aitp.errors import ProviderError
from aitp.storage.cache import TtlCache
from aitp.transport.retry_after import retry_after_seconds
from aitp.transport.single_flight import SingleFlight
from aitp.transport.tls import client_context, requests_session

log = logging.getLogger("aitp.wikidata")

BATCH_IDS = 50          # wbgetentities takes at most 50 ids a call
_PROPS = "claims|labels|descriptions|aliases|sitelinks"


class Entity(msgspec.Struct, frozen=True):
    """What the task types read of one Wikidata item (English label and description)."""

    id: str
    label: str | None = None
    description: str | None = None
    aliases: list[str] = []
    instance_of: list[str] = []        # P31
    sitelinks: int = 0
    claims: int = 0
    enwiki: str | None = None          # the English Wikipedia page's title
    followers: int | None = None       # P8687, the latest count
    occupations: list[str] = []        # P106
    positions: list[str] = []          # P39
    awards: list[str] = []             # P166


_entity_decoder = msgspec.json.Decoder(Entity)
_ids_decoder = msgspec.json.Decoder(list[str])
_encoder = msgspec.json.Encoder()
_NOT_THERE = b'"not there"'     # cached for an id Wikidata does not have


class WikidataClient:
    def __init__(self, *, api_url: str, sparql_url: str, pageviews_url: str, user_agent: str, timeout: float,
                 cache: TtlCache | None = None, breaker: ProviderBreaker | None = None, max_attempts: int = 4,
                 max_wait_seconds: float = 30.0, concurrency: int = 2,
                 sleep: Callable[[float], None] = time.sleep, ssl_context: ssl.SSLContext | None = None,
                 default_agent: bool = False, negative_ttl_seconds: float | None = None) -> None:
        # requests, not http1: these few calls are not hot. The TLS policy is aitp/transport/tls.py's.
        # Made on the first look-up: a service that never runs an LLM task never imports requests
        # (about 70 ms and some MB at start-up).
        self._session = None
        self._ssl_context, self._user_agent = ssl_context, user_agent
        self._default_agent = default_agent   # the shipped User-Agent, with no contact of the operator's
        self._api, self._sparql, self._pageviews = api_url, sparql_url, pageviews_url.rstrip("/")
        self._timeout, self._cache, self._breaker = timeout, cache, breaker
        self._attempts, self._max_wait, self._sleep = max_attempts, max_wait_seconds, sleep
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self._flights = SingleFlight()       # concurrent misses of one key make one call
        self._negative_ttl = negative_ttl_seconds
        self.calls = 0

    def available(self) -> bool:
        """False while its breaker is open: the tasks that need it wait (aitp/intake/reader.py)."""
        return self.seconds_until_available() == 0

    def seconds_until_available(self) -> float:
        return self._breaker.seconds_until_trial() if self._breaker is not None else 0.0

    # --- what the task types ask ---
    def search(self, name: str, language: str, limit: int) -> list[str]:
        """Item ids for `name`, best match first (wbsearchentities)."""
        key = f"search\0{language}\0{limit}\0{name}"

        def call() -> bytes:
            answer = self._get(self._api, {"action": "wbsearchentities", "search": name, "language": language,
                                           "uselang": language, "type": "item", "limit": limit, "format": "json"})
            hits = answer.get("search") or []
            ids = [hit["id"] for hit in hits if isinstance(hit, dict) and isinstance(hit.get("id"), str)]
            return self._store(key, _encoder.encode(ids), negative=not ids)
        return _ids_decoder.decode(self._looked_up(key, call))

    def entities(self, ids: list[str]) -> dict[str, Entity]:
        """The items for `ids` (each looked up once a TTL, an id Wikidata does not have once a
        negative TTL; the rest in calls of at most 50 ids)."""
        found: dict[str, Entity] = {}
        missing = []
        for entity_id in dict.fromkeys(ids):
            if (cached := self._cached(f"entity\0{entity_id}")) is None:
                missing.append(entity_id)
            elif cached != _NOT_THERE:
                found[entity_id] = _entity_decoder.decode(cached)
        for start in range(0, len(missing), BATCH_IDS):
            batch = missing[start:start + BATCH_IDS]
            fetched = self._flights.do("entities\0" + "|".join(sorted(batch)), lambda batch=batch: self._fetch(batch))
            found.update(fetched)
        return found

    def _fetch(self, batch: list[str]) -> dict[str, Entity]:
        answer = self._get(self._api, {"action": "wbgetentities", "ids": "|".join(batch), "props": _PROPS,
                                       "languages": "en", "format": "json"})
        found = {}
        for entity_id, raw in (answer.get("entities") or {}).items():
            if isinstance(raw, dict) and "missing" not in raw:
                entity = entity_from_wikidata(entity_id, raw)
                found[entity_id] = entity
                self._store(f"entity\0{entity_id}", _encoder.encode(entity))
        for entity_id in batch:
            if entity_id not in found:       # no such item: not asked again for a negative TTL
                self._store(f"entity\0{entity_id}", _NOT_THERE, negative=True)
        return found

    def inbound_links(self, entity_id: str) -> int | None:
        """How many items point at `entity_id` (a SPARQL count)."""
        key = f"inbound\0{entity_id}"

        def call() -> bytes:
            query = f"SELECT (COUNT(?s) AS ?count) WHERE {{ ?s ?p wd:{entity_id} }}"
            answer = self._get(self._sparql, {"query": query, "format": "json"}, maxlag=False)
            try:
                count = int(answer["results"]["bindings"][0]["count"]["value"])
            except (KeyError, IndexError, TypeError, ValueError):
                count = None
            return self._store(key, _encoder.encode(count), negative=count is None)
        return msgspec.json.decode(self._looked_up(key, call))

    def page_views(self, enwiki_title: str, days: int = 30) -> int | None:
        """English Wikipedia page views of the last `days` days (Wikimedia REST)."""
        key = f"views\0{days}\0{enwiki_title}"

        def call() -> bytes:
            end = date.today() - timedelta(days=1)
            start = end - timedelta(days=days - 1)
            url = (f"{self._pageviews}/en.wikipedia/all-access/all-agents/"
                   f"{quote(enwiki_title.replace(' ', '_'), safe='')}/daily/{start:%Y%m%d}/{end:%Y%m%d}")
            answer = self._get(url, {}, maxlag=False, missing_ok=True)
            items = answer.get("items") if isinstance(answer, dict) else None
            views = sum(int(item.get("views", 0)) for item in items if isinstance(item, dict)) if items else None
            return self._store(key, _encoder.encode(views), negative=views is None)
        return msgspec.json.decode(self._looked_up(key, call))

    def _looked_up(self, key: str, call: Callable[[], bytes]) -> bytes:
        """The cached answer for `key`, or call()'s, made once for every look-up of it meanwhile."""
        if (cached := self._cached(key)) is not None:
            return cached
        return self._flights.do(key, call)

    def status(self) -> dict:
        cache = self._cache
        out = {"calls": self.calls, "cache_hits": cache.hits if cache else 0,
               "cache_misses": cache.misses if cache else 0, "shared_lookups": self._flights.shared}
        if self._breaker is not None:
            out["breaker"] = self._breaker.status()
        return out

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        if self._cache is not None:
            self._cache.close()

    # --- the etiquette ---
    def _http(self):
        with self._lock:
            if self._session is None:
                if self._default_agent and "wikidata.org" in self._api:
                    # Wikimedia's User-Agent policy asks for a way to reach the operator; an agent
                    # without one may be throttled or blocked (403s and 429s for the LLM task types).
                    log.warning("wikidata.user_agent is the default, with no contact of yours: Wikimedia asks "
                                "for one (a URL or an e-mail address) and may block agents without it",
                                extra={"fields": {"setting": "wikidata.user_agent (AITP_WIKIDATA__USER_AGENT)"}})
                self._session = requests_session(self._ssl_context)
                self._session.headers.update({"User-Agent": self._user_agent, "Accept": "application/json"})
            return self._session

    def _cached(self, key: str) -> bytes | None:
        return self._cache.get(key) if self._cache is not None else None

    def _store(self, key: str, value: bytes, negative: bool = False) -> bytes:
        """Cache `value` (a negative answer, nothing found, for the shorter negative TTL)."""
        if self._cache is not None:
            self._cache.put(key, value, self._negative_ttl if negative else None)
        return value

    def _get(self, url: str, params: dict[str, Any], *, maxlag: bool = True, missing_ok: bool = False) -> dict:
        import requests
        if maxlag:
            params = {**params, "maxlag": 5}      # back off while Wikidata's replicas lag
        permit = self._breaker.begin() if self._breaker is not None else None
        if self._breaker is not None and permit is None:
            raise ProviderError("the Wikidata circuit breaker is open", provider="wikidata", counts_as_outage=True)
        failed = True
        try:
            for attempt in range(1, self._attempts + 1):
                wait, why = None, ""
                try:
                    with self._slots:
                        self.calls += 1
                        response = self._http().get(url, params=params, timeout=self._timeout)
                except requests.RequestException as exc:
                    why = f"unreachable: {type(exc).__name__}"
                else:
                    if response.status_code == 404 and missing_ok:
                        failed = False
                        return {}
                    if response.status_code == 200:
                        try:
                            answer = response.json()
                        except ValueError:
                            answer = None
                        error = answer.get("error") if isinstance(answer, dict) else None
                        if isinstance(answer, dict) and not (isinstance(error, dict) and error.get("code") == "maxlag"):
                            failed = False
                            return answer
                        why = "lagging (maxlag)" if answer is not None else "answered 200 without JSON"
                        wait = retry_after_seconds(response.headers)
                    elif response.status_code == 429 or response.status_code >= 500:
                        why, wait = f"answered {response.status_code}", retry_after_seconds(response.headers)
                    else:
                        failed = False       # a refusal of this request, not an outage
                        raise ProviderError(f"Wikidata answered {response.status_code} for {url}",
                                            provider="wikidata", status=response.status_code, retryable=False,
                                            counts_as_outage=False)
                if attempt < self._attempts:
                    delay = min(self._max_wait, wait if wait is not None else 0.5 * 2 ** (attempt - 1))
                    log.info("Wikidata call retried", extra={"fields": {"why": why, "attempt": attempt,
                                                                          "retry_in_s": round(delay, 2)}})
                    self._sleep(delay)
            raise ProviderError(f"Wikidata {why} after {self._attempts} attempts", provider="wikidata",
                                counts_as_outage=True)
        finally:
            if self._breaker is not None and permit is not None:
                self._breaker.end(permit, failed=failed)


class NoWikidata:
    """What a task reported without enrichment asks instead of Wikidata (wikidata.when_down =
    "unenriched"): nothing is found, so each id is null and the severity context names only."""

    @staticmethod
    def search(name: str, language: str, limit: int) -> list[str]:
        return []

    @staticmethod
    def entities(ids: list[str]) -> dict[str, Entity]:
        return {}

    @staticmethod
    def inbound_links(entity_id: str) -> int | None:
        return None

    @staticmethod
    def page_views(enwiki_title: str, days: int = 30) -> int | None:
        return None


def entity_from_wikidata(entity_id: str, raw: dict) -> Entity:
    """One item of a wbgetentities answer, as the task types read it."""
    claims = raw.get("claims") or {}

    def text(field: str) -> str | None:
        value = (raw.get(field) or {}).get("en")
        return value.get("value") if isinstance(value, dict) else None

    def item_ids(prop: str) -> list[str]:
        out = []
        for claim in claims.get(prop, []) or []:
            value = (((claim or {}).get("mainsnak") or {}).get("datavalue") or {}).get("value")
            if isinstance(value, dict) and isinstance(value.get("id"), str):
                out.append(value["id"])
        return out

    followers = None
    for claim in claims.get("P8687", []) or []:
        value = (((claim or {}).get("mainsnak") or {}).get("datavalue") or {}).get("value")
        if isinstance(value, dict):
            try:
                followers = int(float(str(value.get("amount", "")).lstrip("+")))
            except ValueError:
                pass
    aliases = [alias.get("value") for alias in (raw.get("aliases") or {}).get("en", []) or []
               if isinstance(alias, dict) and isinstance(alias.get("value"), str)]
    sitelinks = raw.get("sitelinks") or {}
    enwiki = (sitelinks.get("enwiki") or {}).get("title") if isinstance(sitelinks, dict) else None
    return Entity(id=entity_id, label=text("labels"), description=text("descriptions"), aliases=aliases,
                  instance_of=item_ids("P31"), sitelinks=len(sitelinks) if isinstance(sitelinks, dict) else 0,
                  claims=sum(len(values or []) for values in claims.values()) if isinstance(claims, dict) else 0,
                  enwiki=enwiki if isinstance(enwiki, str) else None, followers=followers,
                  occupations=item_ids("P106"), positions=item_ids("P39"), awards=item_ids("P166"))


def wikidata_client_for(settings, breaker: ProviderBreaker | None = None) -> WikidataClient:
    """The client the settings describe, with its cache in the data directory."""
    config = settings.wikidata
    return WikidataClient(api_url=config.api_url, sparql_url=config.sparql_url, pageviews_url=config.pageviews_url,
                          user_agent=config.user_agent, timeout=config.timeout,
                          cache=TtlCache(settings.wikidata_cache_path, config.cache_ttl_seconds), breaker=breaker,
                          negative_ttl_seconds=config.negative_ttl_seconds,
                          max_attempts=config.max_attempts, max_wait_seconds=config.max_wait_seconds,
                          concurrency=config.concurrency, ssl_context=client_context(settings),
                          default_agent=config.user_agent == type(config)().user_agent)
