"""The text of `.env.example` (`aitp config env-example`): every setting by its environment name, with its default."""

from __future__ import annotations

import json

import msgspec

from aitp.config.env_names import KEY_TO_ENV, LEAF_TYPES
from aitp.config.loading import flatten
from aitp.config.schema import Settings


def env_example() -> str:
    """The text of `.env.example`: every setting by its environment name, with its default."""
    defaults = flatten(msgspec.to_builtins(Settings()))
    lines = ["# Every aitp setting by its environment name, with its default (`aitp config env-example` writes",
             "# this file). Copy it to .env and keep only what you change; the environment overrides .env,",
             "# which overrides a TOML file (AITP_CONFIG), which overrides these defaults.", ""]
    section = None
    for key in LEAF_TYPES:
        head = key.split(".")[0]
        if head != section:
            lines += ([""] if section else []) + [f"# [{head}]"]
            section = head
        value = defaults[key]
        text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) \
            else str(value).lower() if isinstance(value, bool) else str(value)
        if isinstance(value, (list, dict)):
            text = f"'{text}'"
        lines.append(f"{KEY_TO_ENV[key]}={text}")
    lines += ["", "# [docker compose] not aitp settings: the Grafana admin password docker-compose.yml requires,",
              "# and the Redis password docker-compose.scale.yml requires (letters and digits)",
              "GRAFANA_ADMIN_PASSWORD=", "REDIS_PASSWORD="]
    return "\n".join(lines) + "\n"
