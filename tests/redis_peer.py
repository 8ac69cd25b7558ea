"""A real redis-server (Debian's package; tests/install-peers.sh installs it as root) on a Unix
socket in the test's own directory: no port to race for, and a restart finds the same address.

Started with AOF (`appendfsync always`), as README "Scaling out" asks of operators, so that a
restart in the middle of a test keeps what was written; `persistent=False` starts one that forgets.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisPeer:
    def __init__(self, directory: Path, persistent: bool = True) -> None:
        if not Path(REDIS_SERVER).exists():
            pytest.skip("redis-server is not installed (tests/install-peers.sh installs it as root)")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        # A Unix socket path is at most 107 bytes: pytest's directories can be longer.
        self.socket = Path(tempfile.mkdtemp(prefix="aitp-redis-")) / "sock"
        self.persistent = persistent
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> "RedisPeer":
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent \
            else ["--appendonly", "no"]
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
             "--dir", str(self.directory), "--save", "", *persistence],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.ping():
                    return self
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
            time.sleep(0.02)

    def client(self):
        import redis

        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()
