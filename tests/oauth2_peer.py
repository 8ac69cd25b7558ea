"""The OAuth2 test peer: `tests/oauth2/server.mjs` (npm's oauth2-mock-server) as a child process.

Installed by the test command (`npm ci --prefix tests/oauth2`); a missing install fails the tests
that need it with the command to run, rather than skipping them.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path

PEER_DIR = Path(__file__).resolve().parent / "oauth2"


class OAuth2Peer:
    def __init__(self, *, client_id: str = "aitp-client", client_secret: str = "s3cret-for-tests",
                 lifetime: float = 3600, port: int = 0) -> None:
        if not (PEER_DIR / "node_modules" / "oauth2-mock-server").is_dir():
            raise RuntimeError(f"the OAuth2 test peer is not installed: run `npm ci --prefix {PEER_DIR}`")
        self.client_id, self.client_secret, self.lifetime = client_id, client_secret, lifetime
        self.port = port
        self.events: list[dict] = []
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None

    # --- life ---
    def start(self) -> "OAuth2Peer":
        env = {**os.environ, "CLIENT_ID": self.client_id, "CLIENT_SECRET": self.client_secret,
               "TOKEN_LIFETIME": str(self.lifetime), "PORT": str(self.port)}
        node = shutil.which("node") or "node"
        self._process = subprocess.Popen([node, str(PEER_DIR / "server.mjs")], cwd=PEER_DIR, env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        started: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._read, args=(self._process, started), daemon=True).start()
        try:
            self.port = started.get(timeout=30)["port"]
        except queue.Empty:
            self.stop()
            raise RuntimeError("the OAuth2 test peer did not start within 30 s") from None
        return self

    def _read(self, process: subprocess.Popen, started: queue.Queue) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            event = json.loads(line)
            if event.get("event") == "listening":
                started.put(event)
            with self._lock:
                self.events.append(event)

    def stop(self) -> None:
        """Down: the port refuses connections until `start()` again (same port, new keys, no tokens)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(10)
        if process is not None and process.stdin:
            process.stdin.close()

    def revoke_all(self) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write("revoke-all\n")
        self._process.stdin.flush()

    # --- looking inside ---
    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def introspection_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/introspect/strict"

    def token_requests(self, ok: bool | None = None) -> list[dict]:
        with self._lock:
            return [e for e in self.events if e.get("event") == "token" and (ok is None or e["ok"] is ok)]

    def saw(self, event: str) -> bool:
        with self._lock:
            return any(e.get("event") == event for e in self.events)
