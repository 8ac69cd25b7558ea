"""A stand-in for Wikidata's API, its SPARQL endpoint and Wikimedia's page views, for tests and the
demo: a few dozen items about Brazilian politics, the climate and COP30, answered in Wikidata's
own JSON shapes. Faults can be injected (429 with Retry-After, 500, maxlag), and every request
is recorded with its headers, so tests can check the etiquette."""

from __future__ import annotations

import threading
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec

from aitp.sandbox.stand_in import JsonHandler, StandIn

HUMAN, PUBLIC_COMPANY, ONLINE_NEWSPAPER, CONFERENCE, TOPIC = "Q5", "Q891723", "Q1153191", "Q2020153", "Q1969448"

# id -> (English label, Portuguese label, description, aliases, instance of, sitelinks, enwiki title)
ITEMS: dict[str, tuple[str, str, str | None, list[str], list[str], int, str | None]] = {
    "Q37181": ("Luiz Inácio Lula da Silva", "Luiz Inácio Lula da Silva", "President of Brazil", ["Lula"], [HUMAN], 210,
               "Luiz Inácio Lula da Silva"),
    "Q1190": ("Lula", "Lula", "genus of squid", [], ["Q16521"], 40, "Loligo"),       # a namesake that is no person
    "Q467478": ("Marina Silva", "Marina Silva", "Brazilian politician and environmentalist", [], [HUMAN], 80,
                "Marina Silva"),
    "Q56434717": ("Greta Thunberg", "Greta Thunberg", "Swedish climate activist", ["Greta"], [HUMAN], 150,
                  "Greta Thunberg"),
    "Q208146": ("Petrobras", "Petrobras", "Brazilian petroleum company", [], [PUBLIC_COMPANY], 90, "Petrobras"),
    "Q1062939": ("Folha de S.Paulo", "Folha de S.Paulo", "Brazilian newspaper", ["Folha"], [ONLINE_NEWSPAPER], 30,
                 "Folha de S.Paulo"),
    "Q7163": ("politics", "Política", "activities associated with governance", [], [TOPIC], 250, "Politics"),
    "Q8134": ("economics", "Economia", "social science", [], [TOPIC], 240, "Economics"),
    "Q12147": ("health", "Saúde", "state of well-being", [], [TOPIC], 200, "Health"),
    "Q2249676": ("environment", "Meio ambiente", "surroundings of living beings", [], [TOPIC], 120,
                 "Natural environment"),
    "Q125928": ("climate change", "Mudança climática", "change in the statistical distribution of weather",
                ["Mudanças climáticas"], [TOPIC], 180, "Climate change"),
    "Q83267": ("crime", "Crime", "unlawful act", [], [TOPIC], 150, "Crime"),
    "Q115323194": ("2025 United Nations Climate Change Conference", "COP30", "climate conference in Belém, Brazil",
                   ["COP30", "COP 30"], [CONFERENCE], 45, "2025 United Nations Climate Change Conference"),
    "Q7240": ("disinformation", "Desinformação", "false information spread deliberately", ["Fake news"], [TOPIC], 70,
              "Disinformation"),
    "Q1473": ("Belém", "Belém", "capital of Pará, Brazil", [], ["Q515"], 100, "Belém"),
}


class WikidataStub(StandIn):
    thread_name = "wikidata-stub"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict] = []       # path, params and User-Agent of every request
        self.fail_next: list[tuple[int, dict[str, str]]] = []    # (status, headers) for the next calls
        self.maxlag_next = 0                 # answer the next N API calls with a maxlag error
        self.outage: int | None = None       # answer every call with this status until set back to None
        self.gate = threading.Event()        # cleared: calls wait here (after being recorded) until it is set
        self.gate.set()
        super().__init__(host, port, _handler(self))

    def settings_env(self) -> dict[str, str]:
        """The environment that points aitp at this stand-in."""
        return {"AITP_WIKIDATA__API_URL": f"{self.url}/w/api.php", "AITP_WIKIDATA__SPARQL_URL": f"{self.url}/sparql",
                "AITP_WIKIDATA__PAGEVIEWS_URL": f"{self.url}/pageviews"}

    def calls(self, action: str | None = None) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if action is None or r["params"].get("action") == action]

    # --- answers ---
    def search(self, text: str, language: str, limit: int) -> dict:
        wanted = text.strip().lower()
        hits = [entity_id for entity_id, (en, pt, _, aliases, *_) in ITEMS.items()
                if wanted and any(wanted == name.lower() or wanted in name.lower().split()
                                  for name in (en, pt, *aliases))]
        return {"search": [{"id": entity_id, "label": ITEMS[entity_id][0 if language == "en" else 1]}
                           for entity_id in hits[:limit]], "success": 1}

    def entities(self, ids: list[str]) -> dict:
        out = {}
        for entity_id in ids:
            if entity_id not in ITEMS:
                out[entity_id] = {"id": entity_id, "missing": ""}
                continue
            en, _, description, aliases, instance_of, sitelinks, enwiki = ITEMS[entity_id]
            claims = {"P31": [{"mainsnak": {"datavalue": {"value": {"id": kind}}}} for kind in instance_of]}
            if HUMAN in instance_of:
                claims["P106"] = [{"mainsnak": {"datavalue": {"value": {"id": "Q82955"}}}}]       # politician
                claims["P8687"] = [{"mainsnak": {"datavalue": {"value": {"amount": f"+{sitelinks * 10_000}"}}}}]
            links = {f"site{n}": {"title": en} for n in range(sitelinks - 1)}
            links["enwiki"] = {"title": enwiki}
            out[entity_id] = {"id": entity_id, "labels": {"en": {"language": "en", "value": en}},
                              "descriptions": {"en": {"language": "en", "value": description}} if description else {},
                              "aliases": {"en": [{"language": "en", "value": a} for a in aliases]},
                              "claims": claims, "sitelinks": links}
        return {"entities": out, "success": 1}


def _handler(stub: WikidataStub) -> type[JsonHandler]:
    class Handler(JsonHandler):
        def _answer(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
            self._reply(status, msgspec.json.encode(body), headers)

        def do_GET(self) -> None:  # noqa: N802
            parts = urlsplit(self.path)
            params = {name: values[-1] for name, values in parse_qs(parts.query).items()}
            with stub.lock:
                stub.requests.append({"path": parts.path, "params": params,
                                      "user_agent": self.headers.get("User-Agent", "")})
                injected = (stub.outage, {}) if stub.outage is not None else \
                    stub.fail_next.pop(0) if stub.fail_next else None
                lagging = injected is None and parts.path == "/w/api.php" and stub.maxlag_next > 0
                if lagging:
                    stub.maxlag_next -= 1
            stub.gate.wait(30)
            if injected is not None:
                return self._answer(injected[0], {"error": "injected"}, injected[1])
            if lagging:
                return self._answer(200, {"error": {"code": "maxlag", "info": "Waiting for a replica: 6 s lagged"}},
                                   {"Retry-After": "0"})
            if parts.path == "/w/api.php" and params.get("action") == "wbsearchentities":
                return self._answer(200, stub.search(params.get("search", ""), params.get("language", "en"),
                                                    int(params.get("limit", "7"))))
            if parts.path == "/w/api.php" and params.get("action") == "wbgetentities":
                ids = [i for i in params.get("ids", "").split("|") if i]
                if len(ids) > 50:
                    return self._answer(200, {"error": {"code": "toomanyvalues", "info": "limit is 50"}})
                return self._answer(200, stub.entities(ids))
            if parts.path == "/sparql":
                entity_id = params.get("query", "").rsplit("wd:", 1)[-1].split()[0] if "wd:" in params.get(
                    "query", "") else ""
                count = ITEMS[entity_id][5] * 37 if entity_id in ITEMS else 0
                return self._answer(200, {"results": {"bindings": [{"count": {"value": str(count)}}]}})
            if parts.path.startswith("/pageviews/"):
                title = unquote(parts.path.split("/")[5]).replace("_", " ")
                known = {item[6] for item in ITEMS.values()}
                if title not in known:
                    return self._answer(404, {"type": "not found"})
                return self._answer(200, {"items": [{"views": 1000 + len(title)} for _ in range(30)]})
            self._answer(404, {"error": "not found"})

    return Handler
