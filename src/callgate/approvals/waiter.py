"""How a held statement learns that its review was decided: the one wake-up interface.

:class:`ReviewWaiter` is all the approvals service uses. :class:`PollingReviewWaiter` serves the
SQLite store: a decision made in this process wakes the waiter at once (:meth:`decided`), and one
made elsewhere (``callgate reviews approve`` in another process, another gateway sharing the store)
is found by polling. A PostgreSQL store can implement the same interface with LISTEN/NOTIFY.

The poll is cheap: one task per process, only while someone waits, reading the newest review-log id
every :data:`POLL_INTERVAL`; only when it moved does it read the waited-for reviews (one query for
all of them, however many sessions hold a statement).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from typing import Final

from callgate.store.errors import StoreError
from callgate.store.reviews import ReviewRecord, ReviewStore

log = logging.getLogger("callgate.approvals")

#: Seconds between two looks at the store while statements are held. A decision made in another
#: process reaches the session after half of this on average (the target is well under 200 ms).
POLL_INTERVAL: Final = 0.05


class ReviewWaiter(ABC):
    @abstractmethod
    async def wait(self, review_id: str, within: float) -> ReviewRecord | None:
        """The review once it is no longer pending, or ``None`` after ``within`` seconds."""

    @abstractmethod
    def decided(self, review: ReviewRecord) -> None:
        """A decision made in this process: wake its waiters now. Never blocks."""

    @abstractmethod
    async def close(self) -> None:
        """Stop watching; pending waits end with ``None``."""


class PollingReviewWaiter(ReviewWaiter):
    def __init__(self, reviews: ReviewStore, *, interval: float = POLL_INTERVAL) -> None:
        self._reviews = reviews
        self._interval = interval
        self._waiting: dict[str, set[asyncio.Future[ReviewRecord | None]]] = {}
        self._task: asyncio.Task[None] | None = None
        #: a waiter joined since the last look: look again even if the log did not move
        self._fresh = False
        self._closed = False

    @property
    def waiting(self) -> int:
        """Reviews being waited for (for tests and metrics)."""
        return len(self._waiting)

    async def wait(self, review_id: str, within: float) -> ReviewRecord | None:
        if self._closed:
            return None
        future: asyncio.Future[ReviewRecord | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(review_id, set()).add(future)
        self._fresh = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll(), name="callgate-review-poll")
        try:
            async with asyncio.timeout(max(0.0, within)):
                return await future
        except TimeoutError:
            return None
        finally:
            futures = self._waiting.get(review_id)
            if futures is not None:
                futures.discard(future)
                if not futures:
                    del self._waiting[review_id]

    def decided(self, review: ReviewRecord) -> None:
        if review.pending:
            return
        for future in self._waiting.get(review.id, ()):
            if not future.done():
                future.set_result(review)

    async def _poll(self) -> None:
        last_head = -1
        while self._waiting and not self._closed:
            try:
                head = await self._reviews.log_head()
                if head != last_head or self._fresh:
                    self._fresh = False
                    found = await self._reviews.decided(list(self._waiting))
                    last_head = head
                    for review in found.values():
                        self.decided(review)
            except StoreError as exc:
                log.warning("cannot read reviews (will retry): %s", exc.message)
            await asyncio.sleep(self._interval)

    async def close(self) -> None:
        self._closed = True
        for futures in self._waiting.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
