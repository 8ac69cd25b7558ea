"""`python -m actors` runs the `aitp` command."""

from actors.app import console

console()
