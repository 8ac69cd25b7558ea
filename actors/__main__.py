"""`python -m actors` runs the `aitp` command."""

import sys

from actors.app import main

sys.exit(main())
