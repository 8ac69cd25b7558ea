"""Files only their owner can read: the data directory holds task texts, vectors and token status."""

from __future__ import annotations

import os
from pathlib import Path


def private_directory(path: Path) -> Path:
    """`path` as a directory only its owner can enter (0700), whatever the umask: the data directory
    holds task texts and vectors."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def private_file(path: Path) -> Path:
    """Create `path` if missing, and make it readable and writable by its owner only (0600)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
    finally:
        os.close(descriptor)
    return path
