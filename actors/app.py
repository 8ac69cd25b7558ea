"""Entry point of the `aitp` command: the CLI of `aitp` with the pipeline of `actors` plugged in."""

from __future__ import annotations

import sys

from aitp.cli import main as cli_main
from actors.pipeline import Pipeline


def main(argv: list[str] | None = None) -> int:
    return cli_main(argv, Pipeline)


if __name__ == "__main__":
    sys.exit(main())
