"""Issue 28's cases, measured: one dependency's fault against the same run without it.

    python3 benchmarks/faults.py                 # every case
    python3 benchmarks/faults.py --case api      # the task API down for 8 s in a 1,500-task drain
    python3 benchmarks/faults.py --case wikidata # Wikidata answering 503 for 320 LLM tasks ahead of 600 embeddings
    python3 benchmarks/faults.py --case chat     # OpenAI chat answering 503 while embeddings work
    python3 benchmarks/faults.py --small         # a tenth of each (the test that keeps this from rotting)

The pipeline runs in this process against the sandbox task API and the stand-ins (the Ollama stub
with a GPU-like cost, the OpenAI stub, the Wikidata stub), as the tests run it; /health is read
every 0.1 s to see when it names the dependency and when it is ok again. It prints numbers and
asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from actors.pipeline import Pipeline  # noqa: E402
from aitp.config import load_config  # noqa: E402
from aitp.sandbox import SandboxServer  # noqa: E402
from aitp.sandbox.ollama_stub import OllamaStub  # noqa: E402
from aitp.sandbox.openai_stub import STUB_KEY, Injected, OpenAIStub  # noqa: E402
from aitp.sandbox.seed import generated_tasks, llm_tasks  # noqa: E402
from aitp.sandbox.wikidata_stub import WikidataStub  # noqa: E402


class HealthWatch:
    """Reads /health's body (in process) every 0.1 s: when `dependency` first is not ok, and when
    it is ok again after that."""

    def __init__(self, pipeline: Pipeline, dependency: str) -> None:
        self.pipeline, self.dependency = pipeline, dependency
        self.named_at: float | None = None
        self.ok_again_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            state = self.pipeline.health()[1].get("dependencies", {}).get(self.dependency, {}).get("state", "ok")
            now = time.monotonic()
            if state != "ok" and self.named_at is None:
                self.named_at = now
            elif state == "ok" and self.named_at is not None and self.ok_again_at is None:
                self.ok_again_at = now

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def settings(server: SandboxServer, data: Path, **env: str):
    base = {"API_BASE_URL": server.url, "AITP_DATA_DIR": str(data), "POLLING_INTERVAL_SECONDS": "0.5",
            "METRICS_PORT": "0", "LOG_LEVEL": "ERROR"}
    return load_config(None, environ={**base, **env}, dotenv_dir=data).settings


def wait(condition, timeout: float = 300.0) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError("the run did not end")
        time.sleep(0.02)
    return time.monotonic()


SCALE = 1.0      # --small: a tenth of the tasks, a quarter of the outage


def api_case(outage: bool) -> float:
    stub = OllamaStub(models={"nomic-embed-text": 768}, call_cost=0.010, input_cost=0.002)
    stub.start()
    tasks = generated_tasks(int(1500 * SCALE))
    outage_seconds = 8.0 if SCALE == 1.0 else 2.0
    server = SandboxServer(tasks)
    server.start()
    with tempfile.TemporaryDirectory() as data:
        pipeline = Pipeline(settings(server, Path(data), PROCESSING_MODE="ollama", OLLAMA_BASE_URL=stub.url,
                                     SUPPORTED_MODELS="nomic-embed-text"))
        pipeline.start()
        watch = HealthWatch(pipeline, "task API")
        try:
            started = time.monotonic()
            wait(lambda: server.counts().get("succeeded", 0) >= len(tasks) // 3)
            down_at = None
            if outage:
                server.start_outage("503")
                down_at = time.monotonic()
                time.sleep(outage_seconds)
                server.end_outage()
                up_at = time.monotonic()
            ended = wait(lambda: server.counts().get("succeeded", 0) == len(tasks))
        finally:
            watch.stop()
            pipeline.shutdown()
            server.stop()
            stub.stop()
    line = f"task API {f'down {outage_seconds:.0f} s' if outage else 'up'}: {len(tasks)} tasks drained in " \
           f"{ended - started:.1f} s"
    if outage:
        line += (f"; /health named it {watch.named_at - down_at:.1f} s after it went down, ok "
                 f"{(watch.ok_again_at or ended) - up_at:.1f} s after it came back") if watch.named_at else ""
    print(line, flush=True)
    return ended - started


def llm_case(fault: str | None) -> float:
    """320 LLM tasks (80 of each type) ahead of 600 embeddings in the pending list, openai mode."""
    openai = OpenAIStub(models={"text-embedding-3-small": 256})
    wikidata = WikidataStub()
    openai.start()
    wikidata.start()
    if fault == "wikidata":
        wikidata.outage = 503
    elif fault == "chat":
        openai.chat_outage = Injected(503)
    llm = llm_tasks(int(80 * SCALE))
    embeddings = generated_tasks(int(600 * SCALE), models=("text-embedding-3-small",))
    server = SandboxServer(llm + embeddings)
    server.start()
    with tempfile.TemporaryDirectory() as data:
        pipeline = Pipeline(settings(server, Path(data), OPENAI_API_KEY=STUB_KEY, OPENAI_BASE_URL=openai.url,
                                     AITP_MODELS__DIMENSIONS='{"text-embedding-3-small": 256}',
                                     **wikidata.settings_env()))
        pipeline.start()
        watch = HealthWatch(pipeline, {"wikidata": "wikidata", "chat": "openai:chat"}.get(fault or "", "-"))
        try:
            started = time.monotonic()
            ended = wait(lambda: all(server.state_of(task["_id"]) == "succeeded" for task in embeddings))
            if fault is None:
                wait(lambda: all(server.state_of(task["_id"]) == "succeeded" for task in llm))
            else:
                time.sleep(10.0 * SCALE)       # the LLM tasks tried again meanwhile
        finally:
            watch.stop()
            pipeline.shutdown()
            server.stop()
            openai.stop()
            wikidata.stop()
    states: dict[str, int] = {}
    for task in llm:
        states[server.state_of(task["_id"])] = states.get(server.state_of(task["_id"]), 0) + 1
    named = f"; /health named it {watch.named_at - started:.1f} s into the run" if watch.named_at else ""
    print(f"{fault or 'no fault'}: {len(embeddings)} embeddings in {ended - started:.2f} s "
          f"({len(embeddings) / (ended - started):.0f} a second); "
          f"LLM tasks {states}; chat calls {len(openai.chat_requests)} for {len(llm)} LLM tasks "
          f"({len(openai.chat_requests) / len(llm):.2f} each){named}", flush=True)
    return len(embeddings) / (ended - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=("api", "wikidata", "chat"), action="append")
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    cases = args.case or ["api", "wikidata", "chat"]
    global SCALE
    SCALE = 0.1 if args.small else 1.0
    logging.basicConfig(level=logging.ERROR)
    if "api" in cases:
        clean, faulty = api_case(False), api_case(True)
        outage = 8.0 if SCALE == 1.0 else 2.0
        print(f"the outage cost {faulty - clean - outage:+.1f} s beyond its own {outage:.0f} s "
              f"(issue 28 asks at most 3)")
    for fault in ("wikidata", "chat"):
        if fault in cases:
            clean, faulty = llm_case(None), llm_case(fault)
            print(f"with {fault} failing the embeddings drained at {faulty / clean:.0%} of their rate without "
                  f"(issue 28 asks at least 90 %)")


if __name__ == "__main__":
    main()
