"""Failed authentication attempts per source address: slow down, then lock out.

After ``slow_after`` failures within ``window``, every attempt from that source waits before it
is answered (``delay``, doubling with each further failure, at most ``max_delay``), whether or not
its credential is good, so timing says nothing about it. After ``lockout_after`` failures the
source is refused outright for ``lockout`` without its credential being checked. A success
forgets the source's failures.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from callgate.errors import TooManyFailures
from callgate.services import Clock

if TYPE_CHECKING:
    from callgate.config import Config

#: Sources tracked at most. Past this, sources with no recent failure are forgotten first; an
#: attacker spraying from many addresses cannot grow memory without bound.
MAX_TRACKED_SOURCES = 100_000

TOO_MANY_MESSAGE = "too many failed authentication attempts; try again later"


@dataclass(slots=True)
class _Source:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


def _seconds(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class FailureThrottle:
    def __init__(
        self,
        *,
        slow_after: int = 3,
        delay: timedelta | float = 1.0,
        max_delay: timedelta | float = 5.0,
        lockout_after: int = 10,
        window: timedelta | float = 60.0,
        lockout: timedelta | float = 300.0,
        clock: Clock = time.monotonic,
        max_sources: int = MAX_TRACKED_SOURCES,
    ) -> None:
        if slow_after < 1 or lockout_after < slow_after:
            raise ValueError("need 1 <= slow_after <= lockout_after")
        self.slow_after = slow_after
        self.delay = _seconds(delay)
        self.max_delay = _seconds(max_delay)
        self.lockout_after = lockout_after
        self.window = _seconds(window)
        self.lockout = _seconds(lockout)
        self._clock = clock
        self._max_sources = max_sources
        self._sources: dict[str, _Source] = {}

    def _recent(self, source: str, now: float) -> _Source | None:
        state = self._sources.get(source)
        if state is None:
            return None
        if state.locked_until and now >= state.locked_until:
            # A lockout served wipes the slate; otherwise one more failure would re-lock at once.
            state.locked_until = 0.0
            state.failures.clear()
        cutoff = now - self.window
        while state.failures and state.failures[0] <= cutoff:
            state.failures.popleft()
        return state

    def before_attempt(self, source: str) -> float:
        """Seconds to wait before answering this attempt (0.0: none).

        Raises :class:`~callgate.errors.TooManyFailures` while the source is locked out.
        """
        now = self._clock()
        state = self._recent(source, now)
        if state is None:
            return 0.0
        if state.locked_until:
            raise TooManyFailures(TOO_MANY_MESSAGE)
        return self.delay_for(len(state.failures))

    def delay_for(self, failures: int) -> float:
        if failures < self.slow_after:
            return 0.0
        doublings = min(failures - self.slow_after, 32)  # 2**32 s is far past any cap
        return min(self.delay * (1 << doublings), self.max_delay)

    def failure(self, source: str) -> bool:
        """Count a failure; ``True`` if it locked the source out."""
        now = self._clock()
        state = self._recent(source, now)
        if state is None:
            if len(self._sources) >= self._max_sources:
                self._prune(now)
            state = self._sources[source] = _Source()
        state.failures.append(now)
        if not state.locked_until and len(state.failures) >= self.lockout_after:
            state.locked_until = now + self.lockout
            return True
        return False

    def success(self, source: str) -> None:
        self._sources.pop(source, None)

    def failures(self, source: str) -> int:
        """Recent failures from ``source`` (for tests and metrics)."""
        state = self._recent(source, self._clock())
        return 0 if state is None else len(state.failures)

    def _prune(self, now: float) -> None:
        for source in list(self._sources):
            state = self._recent(source, now)
            if state is not None and not state.failures and not state.locked_until:
                del self._sources[source]
        # Still full: drop the oldest entries (dicts keep insertion order) rather than grow.
        excess = len(self._sources) - self._max_sources + 1
        for source in list(self._sources)[: max(excess, 0)]:
            del self._sources[source]

    @classmethod
    def from_config(cls, config: Config, *, clock: Clock = time.monotonic) -> FailureThrottle:
        f = config.identity.failures
        return cls(
            slow_after=f.slow_after,
            delay=f.delay,
            max_delay=f.max_delay,
            lockout_after=f.lockout_after,
            window=f.window,
            lockout=f.lockout,
            clock=clock,
        )
