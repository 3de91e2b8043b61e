"""Byte sizes in the config: an integer number of bytes, or ``512KiB``, ``64MiB``, ``1GiB``."""

from __future__ import annotations

import re
from typing import Final

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB

_UNITS: Final[dict[str, int]] = {"": 1, "B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB}
_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB)?")

EXPECTED: Final = "expected a size in bytes: an integer, or a number with B, KiB, MiB or GiB"


class SizeError(ValueError):
    """The value is not a byte size; the message says what is expected."""


def parse_size(value: object) -> int:
    """Turn a config value into a number of bytes (at least 1)."""
    if isinstance(value, bool):
        raise SizeError(f"{EXPECTED}, got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        size = int(match.group(1)) * _UNITS[match.group(2) or ""]
    else:
        shown = repr(value) if isinstance(value, str | float) else type(value).__name__
        raise SizeError(f"{EXPECTED}, got {shown}")
    if size < 1:
        raise SizeError(f"{EXPECTED}; it must be at least 1 byte")
    return size
