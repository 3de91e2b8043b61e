"""Durations in the config: ``90d``, ``30m``, ``120s``, ``500ms``, ``1h30m`` or seconds."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Final

#: seconds in each unit a duration string may use
UNIT_SECONDS: Final[dict[str, float]] = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}

# "ms" must be tried before "m" and "s".
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|d|h|m|s))+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

EXPECTED: Final = "expected a duration such as 30s, 5m, 1h30m, 90d, 500ms or a number of seconds"


class DurationError(ValueError):
    """The value is not a duration; the message says what is expected."""


def parse_duration(value: object) -> timedelta:
    """Turn a config value into a non-negative :class:`timedelta`.

    Accepts a ``timedelta``, a number of seconds (int or float, not a bool) or a string of one
    or more ``<number><unit>`` parts with units ``d h m s ms``, each unit at most once.
    """
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise DurationError(f"{EXPECTED}; got a negative duration")
        return value
    if isinstance(value, bool):
        raise DurationError(f"{EXPECTED}, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise DurationError(f"{EXPECTED}, got {value!r}")
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise DurationError(f"{EXPECTED}, got {type(value).__name__}")
    text = value.strip()
    if _NUMBER.fullmatch(text):
        return timedelta(seconds=float(text))
    if not _WHOLE.fullmatch(text):
        raise DurationError(f"{EXPECTED}, got {value!r}")
    seen: set[str] = set()
    total = 0.0
    for number, unit in _PART.findall(text):
        if unit in seen:
            raise DurationError(f"{EXPECTED}; unit '{unit}' appears twice in {value!r}")
        seen.add(unit)
        total += float(number) * UNIT_SECONDS[unit]
    return timedelta(seconds=total)


def format_duration(value: timedelta) -> str:
    """The shortest config spelling of ``value``, e.g. ``1h30m`` or ``500ms``."""
    millis = round(value.total_seconds() * 1000)
    if millis == 0:
        return "0s"
    sign = "-" if millis < 0 else ""
    millis = abs(millis)
    parts: list[str] = []
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, millis = divmod(millis, seconds * 1000)
        if count:
            parts.append(f"{count}{unit}")
    if millis:
        parts.append(f"{millis}ms")
    return sign + "".join(parts)
