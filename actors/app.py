"""Entry point of the `aitp` command: the CLI of `aitp` with the pipeline of `actors` plugged in.

The imports are inside `main`: the vector worker processes are started with `spawn`, which
imports the script that started the service (the `aitp` console script imports this module) in
each worker. Importing the whole application there would cost each worker about 15 MB and a
third of a second of CPU for nothing.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from aitp.cli import main as cli_main
    from actors.pipeline import Pipeline

    return cli_main(argv, Pipeline)


if __name__ == "__main__":
    sys.exit(main())
