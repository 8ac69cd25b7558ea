"""How long a peer asked us to wait: `Retry-After` (seconds or an HTTP date), `retry-after-ms`, and
OpenAI's `x-ratelimit-reset-*` durations ("6m0s", "1.5s", "20ms") for a limit that is used up."""

from __future__ import annotations

import re
import time
from email.utils import parsedate_to_datetime
from typing import Mapping

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_LONGEST_WAIT = 3600.0   # a header asking for more is treated as an hour: we will look again by then


def parse_duration(text: str) -> float | None:
    """'6m0s' -> 360.0; None when `text` is not such a duration."""
    text = text.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def _retry_after_header(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError, IndexError):
        return None


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The longest wait the headers ask for, or None when they ask for none. Header names are
    looked up case-insensitively when `headers` is a requests/httpx header mapping."""
    waits: list[float] = []
    if (value := headers.get("retry-after-ms")) is not None:
        try:
            waits.append(float(value) / 1000)
        except ValueError:
            pass
    if (value := headers.get("retry-after")) is not None and (seconds := _retry_after_header(value)) is not None:
        waits.append(seconds)
    for limit in ("requests", "tokens"):
        if headers.get(f"x-ratelimit-remaining-{limit}") == "0":
            reset = parse_duration(headers.get(f"x-ratelimit-reset-{limit}") or "")
            if reset is not None:
                waits.append(reset)
    if not waits:
        return None
    return min(_LONGEST_WAIT, max(0.0, max(waits)))
