"""Entry point of the `aitp` command: the CLI of `aitp` with the pipeline of `actors` plugged in."""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

from aitp.cli import main as cli_main
from actors.pipeline import Pipeline


def main(argv: list[str] | None = None) -> int:
    return cli_main(argv, Pipeline)


def console() -> NoReturn:
    """The `aitp` command (and `python -m actors`): main(), then leave without tearing down the
    interpreter. By then every stage has stopped and the journal is closed (what a graceful stop
    leaves undone, a crash would too, and the journal is built for that); Python's teardown of
    modules and objects cost some 40 ms of CPU and 70 ms of each stop (benchmarks/README.md)."""
    code = main()
    logging.shutdown()          # what the interpreter's exit would still have flushed
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console()
