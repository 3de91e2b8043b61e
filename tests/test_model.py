"""Session ids: unique, 32 hex digits, ordered by start time."""

from __future__ import annotations

import re
import time

from callgate.model import new_session_id


def test_session_ids_are_hex_unique_and_time_ordered() -> None:
    ids = [new_session_id() for _ in range(2000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    # the first 12 digits are the millisecond clock: never decreasing, and the current time
    stamps = [int(i[:12], 16) for i in ids]
    assert stamps == sorted(stamps)
    assert abs(stamps[-1] - time.time() * 1000) < 5_000
    # ids of different milliseconds sort in start order whatever their random part
    first = new_session_id()
    time.sleep(0.002)
    assert new_session_id() > first
