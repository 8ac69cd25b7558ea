"""Shared fixtures: every peer a test talks to is started here, on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aitp.sandbox import SandboxServer
from aitp.sandbox.ollama_stub import OllamaStub

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


@pytest.fixture
def sandbox():
    servers = []

    def make(tasks=None, **kwargs) -> SandboxServer:
        server = SandboxServer(tasks or [], **kwargs)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def ollama():
    stubs = []

    def make(**kwargs) -> OllamaStub:
        stub = OllamaStub(**kwargs)
        stub.start()
        stubs.append(stub)
        return stub

    yield make
    for stub in stubs:
        stub.stop()


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
def service(tmp_path):
    started = []

    def start(env: dict[str, str]) -> ServiceProcess:
        base = {"AITP_DATA_DIR": str(tmp_path / "data"), "POLLING_INTERVAL_SECONDS": "0.2",
                "LOG_LEVEL": "INFO", "LOG_FORMAT": "json", "METRICS_PORT": "0"}
        process = ServiceProcess({**base, **env}, tmp_path / f"service-{len(started)}.log", tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()
