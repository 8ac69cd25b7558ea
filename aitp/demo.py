"""`aitp demo`: the sandbox task API with sample tasks, the real pipeline with the mock provider,
progress while it drains, and a summary. Needs no NestJS, no Ollama and no key."""

from __future__ import annotations

import secrets
import sys
import tempfile
import time
from typing import TextIO

from aitp.config import Settings, load_config
from aitp.contract import is_object_id
from aitp.sandbox import SandboxServer, demo_tasks
from aitp.sandbox.wikidata_stub import WikidataStub
from aitp.tasks import HANDLERS
from aitp.service import ServiceFactory


def run_demo(make_service: ServiceFactory, *, tasks: int = 200, timeout: float = 120.0,
             out: TextIO = sys.stdout) -> int:
    per_llm_type = max(1, tasks // 5)
    queue = demo_tasks(tasks, llm_count=per_llm_type)
    left_alone = sum(1 for t in queue if t.get("type") not in HANDLERS or not is_object_id(t.get("_id")))
    sandbox = SandboxServer(queue, client_id="aitp-demo", client_secret=secrets.token_urlsafe(16),
                            token_lifetime=600)
    sandbox.start()
    wikidata = WikidataStub()                  # the LLM task types' look-ups, answered locally
    wikidata.start()
    with tempfile.TemporaryDirectory(prefix="aitp-demo-") as data_dir:
        settings = _demo_settings(sandbox, wikidata, data_dir)
        _print_seeded(sandbox, len(queue), tasks, per_llm_type, left_alone, out)
        service = make_service(settings)
        started = time.monotonic()
        try:
            if not service.start():
                return 1
            monitor = getattr(service, "monitor", None)
            if monitor is not None:
                print(f"  health, readiness and metrics: http://127.0.0.1:{monitor.port}/health /ready /metrics",
                      file=out, flush=True)
            drained = _show_progress(sandbox, service, left_alone, started + timeout, out)
        finally:
            service.shutdown()
            sandbox.stop()
            wikidata.stop()
        elapsed = time.monotonic() - started
    _print_summary(sandbox, elapsed, out)
    if service.fatal_reason:
        print(f"the service stopped: {service.fatal_reason}", file=out)
        return 1
    if not drained:
        print(f"the queue did not drain within {timeout:g}s", file=out)
        return 1
    return 0


def _demo_settings(sandbox: SandboxServer, wikidata: WikidataStub, data_dir: str) -> Settings:
    """The service's settings for the demo: the sandbox and the local Wikidata, the mock provider."""
    return load_config(dotenv_dir=data_dir, environ={
        "API_BASE_URL": sandbox.url, "OAUTH2_TOKEN_URL": sandbox.token_url,
        "OAUTH2_CLIENT_ID": "aitp-demo", "OAUTH2_CLIENT_SECRET": sandbox.client_secret or "",
        "PROCESSING_MODE": "mock",
        "AITP_DATA_DIR": data_dir, "POLLING_INTERVAL_SECONDS": "0.5",
        "METRICS_PORT": "0",   # any free port: the demo must not collide with a running service
        **wikidata.settings_env(),
    }).settings


def _print_seeded(sandbox: SandboxServer, queued: int, tasks: int, per_llm_type: int, left_alone: int,
                  out: TextIO) -> None:
    good = tasks + 4 * per_llm_type
    print(f"aitp demo: sandbox task API at {sandbox.url} with {queued} tasks "
          f"({good} good: {tasks} embeddings and {per_llm_type} of each LLM type; "
          f"{queued - good - left_alone} malformed, {left_alone} to leave alone); mock provider and a "
          "local Wikidata", file=out, flush=True)


def _print_summary(sandbox: SandboxServer, elapsed: float, out: TextIO) -> None:
    counts = sandbox.counts()
    done = counts.get("succeeded", 0) + counts.get("failed", 0)
    print(f"\nsummary: {counts.get('succeeded', 0)} succeeded, {counts.get('failed', 0)} failed, "
          f"{counts.get('pending', 0)} left pending (types not handled or unusable ids), "
          f"{counts.get('in_progress', 0)} in progress; {done / elapsed:.1f} tasks/s over {elapsed:.2f}s",
          file=out, flush=True)
    for task_type, by_state in sorted(sandbox.counts_by_type().items()):
        if task_type in HANDLERS:
            print(f"  {task_type:<22} {by_state.get('succeeded', 0):4d} succeeded "
                  f"{by_state.get('failed', 0):4d} failed {by_state.get('pending', 0):4d} pending",
                  file=out, flush=True)


def _show_progress(sandbox: SandboxServer, service, left_alone: int, deadline: float, out: TextIO) -> bool:
    last_line = ""
    while time.monotonic() < deadline and not service.stop_requested.is_set():
        counts = sandbox.counts()
        line = (f"  succeeded {counts.get('succeeded', 0):5d}  failed {counts.get('failed', 0):3d}  "
                f"in progress {counts.get('in_progress', 0):4d}  pending {counts.get('pending', 0):5d}")
        if line != last_line:
            print(line, file=out, flush=True)
            last_line = line
        if counts.get("pending", 0) <= left_alone and not counts.get("in_progress") and service.in_flight() == 0:
            return True
        time.sleep(0.2)
    return False
