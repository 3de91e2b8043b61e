"""Failure throttling with a fake clock: delays, doubling, cap, lockout, reset."""

from __future__ import annotations

from datetime import timedelta

import pytest

from callgate.errors import TooManyFailures
from callgate.identity import FailureThrottle


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _throttle(clock: _Clock) -> FailureThrottle:
    return FailureThrottle(
        slow_after=3,
        delay=timedelta(seconds=1),
        max_delay=timedelta(seconds=5),
        lockout_after=10,
        window=timedelta(seconds=60),
        lockout=timedelta(seconds=300),
        clock=clock,
    )


def test_delays_double_up_to_the_cap_then_lockout() -> None:
    clock = _Clock()
    t = _throttle(clock)
    delays = []
    for _ in range(10):
        delays.append(t.before_attempt("1.2.3.4"))
        locked = t.failure("1.2.3.4")
        clock.now += 1
    assert delays == [0, 0, 0, 1, 2, 4, 5, 5, 5, 5]
    assert locked
    with pytest.raises(TooManyFailures):
        t.before_attempt("1.2.3.4")
    assert t.before_attempt("5.6.7.8") == 0  # other sources are unaffected


def test_lockout_lasts_its_time_and_then_the_slate_is_clean() -> None:
    clock = _Clock()
    t = _throttle(clock)
    for _ in range(10):
        t.failure("src")
    clock.now += 299
    with pytest.raises(TooManyFailures):
        t.before_attempt("src")
    clock.now += 1
    assert t.before_attempt("src") == 0
    assert t.failures("src") == 0


def test_failures_older_than_the_window_are_forgotten() -> None:
    clock = _Clock()
    t = _throttle(clock)
    for _ in range(3):
        t.failure("src")
    assert t.before_attempt("src") == 1
    clock.now += 60
    assert t.before_attempt("src") == 0


def test_success_resets() -> None:
    clock = _Clock()
    t = _throttle(clock)
    for _ in range(5):
        t.failure("src")
    t.success("src")
    assert t.before_attempt("src") == 0 and t.failures("src") == 0


def test_memory_is_bounded() -> None:
    clock = _Clock()
    t = FailureThrottle(clock=clock, max_sources=100)
    for i in range(1000):
        t.failure(f"10.0.{i // 256}.{i % 256}")
    assert len(t._sources) <= 100


def test_from_config() -> None:
    from pathlib import Path

    from callgate.config import parse_config

    config = parse_config(
        {"identity": {"failures": {"slow_after": 2, "delay": "500ms", "lockout_after": 4}}},
        Path("."),
    )
    t = FailureThrottle.from_config(config)
    assert (t.slow_after, t.delay, t.lockout_after, t.max_delay) == (2, 0.5, 4, 5.0)
