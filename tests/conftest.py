"""Shared fixtures: every peer a test talks to is started here, on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from actors.pipeline import Pipeline
from aitp.config import PLACEHOLDER_OPENAI_KEY, load_config
from aitp.sandbox import SandboxServer
from aitp.sandbox.ollama_stub import OllamaStub
from aitp.sandbox.openai_stub import OpenAIStub
from aitp.sandbox.wikidata_stub import WikidataStub
from aitp.vectors.checks import checked_unit_vectors
from oauth2_peer import OAuth2Peer
from redis_peer import RedisPeer

ROOT = Path(__file__).resolve().parent.parent


def wait_until(condition, timeout: float = 30.0, interval: float = 0.02, message: str = "condition"):
    """Wait for a condition (never a fixed sleep standing in for one); fail with `message` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def _peers(start_one):
    """A fixture body: a factory that starts peers on 127.0.0.1, each stopped after the test."""
    started = []

    def make(*args, **kwargs):
        peer = start_one(*args, **kwargs)
        peer.start()
        started.append(peer)
        return peer

    yield make
    for peer in started:
        peer.stop()


@pytest.fixture
def sandbox():
    """`sandbox(tasks, **options)`: a task API serving `tasks`."""
    yield from _peers(lambda tasks=None, **kwargs: SandboxServer(tasks or [], **kwargs))


@pytest.fixture
def ollama():
    """`ollama(**options)`: the Ollama stub."""
    yield from _peers(OllamaStub)


@pytest.fixture
def openai_stub():
    """`openai_stub(**options)`: the OpenAI-compatible stub; its `url` goes in OPENAI_BASE_URL."""
    yield from _peers(OpenAIStub)


@pytest.fixture
def wikidata_stub():
    """`wikidata_stub()`: the Wikidata stand-in; `settings_env()` points aitp at it."""
    yield from _peers(WikidataStub)


@pytest.fixture
def oauth2_server():
    """`oauth2_server(client_id=, client_secret=, lifetime=)`: a real OAuth2 server (oauth2-mock-server)."""
    yield from _peers(OAuth2Peer)


class ServiceProcess:
    """`aitp run` as a real subprocess, logging JSON to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, cwd: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OAUTH2_", "OPENAI_", "OLLAMA_"))}
        full_env.update(env)
        self.proc = subprocess.Popen([sys.executable, "-m", "actors", "run"], env=full_env, cwd=cwd,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server for the test (skipped where Debian's package is not installed)."""
    started = []

    def start(persistent: bool = True) -> RedisPeer:
        peer = RedisPeer(tmp_path / f"redis-{len(started)}", persistent).start()
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


@pytest.fixture
def service(tmp_path):
    started = []

    def start(env: dict[str, str]) -> ServiceProcess:
        base = {"AITP_DATA_DIR": str(tmp_path / "data"), "POLLING_INTERVAL_SECONDS": "0.2",
                "LOG_LEVEL": "INFO", "LOG_FORMAT": "json", "METRICS_PORT": "0",
                "OPENAI_API_KEY": PLACEHOLDER_OPENAI_KEY}      # the mock, unless a test says otherwise
        process = ServiceProcess({**base, **env}, tmp_path / f"service-{len(started)}.log", tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


def monitoring_port(process) -> int | None:
    """The port a service process logged for /health, /ready and /metrics (None before it did)."""
    for line in process.logs().splitlines():
        if '"monitoring listening"' in line:
            return json.loads(line)["port"]
    return None


# --- the pipeline in this process ---
def settings_for(server, tmp_path, toml: str = "", **env):
    base = {"API_BASE_URL": server.url, "AITP_DATA_DIR": str(tmp_path / "data"), "POLLING_INTERVAL_SECONDS": "0.1",
            "METRICS_PORT": "0", "OPENAI_API_KEY": PLACEHOLDER_OPENAI_KEY,    # the mock, unless a test says otherwise
            "RETRY_BACKOFF_FACTOR": "0.05"}
    config = None
    if toml:
        config = tmp_path / "aitp.toml"
        config.write_text(toml)
    return load_config(config, environ={**base, **env}, dotenv_dir=tmp_path).settings


@pytest.fixture
def run_pipeline():
    pipelines = []

    def start(settings, before_message=None) -> Pipeline:
        pipeline = Pipeline(settings, before_message=before_message)
        assert pipeline.start()
        pipelines.append(pipeline)
        return pipeline

    yield start
    for pipeline in pipelines:
        pipeline.shutdown()


def expected_unit(vector) -> np.ndarray:
    return checked_unit_vectors(np.asarray(vector)[None, :], 1, len(vector))[0]


def drained(server, left_alone=0):
    counts = server.counts()
    return counts.get("pending", 0) == left_alone and not counts.get("in_progress")


class FailOnce:
    """A `before_message` hook (actors/stage.py) that makes stage `stage` raise once, on the first
    message for which `when(stage, message)` holds. `failures` records what it failed on."""

    def __init__(self, stage: str, when) -> None:
        self.stage, self.when = stage, when
        self.failures: list[str] = []

    def __call__(self, stage, message) -> None:
        if stage.name == self.stage and not self.failures and self.when(stage, message):
            self.failures.append(type(message).__name__)
            raise RuntimeError(f"injected {stage.name} fault")


def dispatcher_fails_on_its_first_claimed_tasks() -> FailOnce:
    """The Dispatcher raises once, on the first tasks it is given: the restart must hand that
    message to its successor, and whatever else was waiting, or those tasks would be stranded."""
    from actors.messages import TasksClaimed
    return FailOnce("dispatcher", lambda stage, message: isinstance(message, TasksClaimed))


@pytest.fixture
def scripted():
    """Start a ScriptedServer (tests/scripted.py) running `script(peer, connection_number)`."""
    from scripted import ScriptedServer
    servers = []

    def start(script, ssl_context=None):
        servers.append(ScriptedServer(script, ssl_context))
        return servers[-1]

    yield start
    for server in servers:
        server.close()
