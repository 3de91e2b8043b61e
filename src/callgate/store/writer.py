"""The writer thread: one connection, group commit, asyncio waiters woken once per loop per batch.

Callers on any event loop put ``(ops, future)`` items on a queue. The thread takes everything
queued, hands it to the backend's :class:`BatchSink` as one transaction, and then, for each event
loop that has waiters in the batch, schedules one callback that settles all of that loop's futures.
Concurrent sessions therefore share one commit, and a caller waits only for the commit that carries
its own operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from callgate.store.errors import StoreBusy, StoreClosed, StoreError, StoreUnavailable
from callgate.store.records import WriteOp

log = logging.getLogger("callgate.store")

#: Items per transaction at most. Bounds how long the first waiter of a large burst waits for the
#: commit (and the size of one rollback); at ~5 µs per event this is a few tens of milliseconds.
MAX_BATCH_ITEMS = 5000

#: Seconds between two warnings about failed un-awaited writes, so a dead disk does not flood logs.
FAILURE_LOG_INTERVAL = 10.0

Outcome = tuple[object, ...] | StoreError
Waiter = asyncio.Future[tuple[object, ...]]
_Item = tuple[Sequence[WriteOp], Waiter | None]


class BatchSink(Protocol):
    """What a backend gives the writer. Every method is called on the writer thread."""

    def open(self) -> None: ...

    def write(self, batch: Sequence[Sequence[WriteOp]]) -> list[Outcome]:
        """Apply the items in one transaction if possible; one outcome per item, never raises."""
        ...

    def close(self) -> None: ...

    def idle(self) -> None:
        """Called when nothing was queued for :data:`IDLE_TICK` seconds (time-based work such as
        an interval checkpoint that no write came along to carry). Never raises."""
        ...


#: Seconds the writer waits for work before calling :meth:`BatchSink.idle`.
IDLE_TICK = 0.5


def _settle(pairs: list[tuple[Waiter, Outcome]]) -> None:
    """Runs on the waiters' event loop."""
    for future, outcome in pairs:
        if future.done():  # the waiting task was cancelled
            continue
        if isinstance(outcome, StoreError):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _wake(by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Waiter, Outcome]]]) -> None:
    """One thread-safe callback per event loop, however many waiters it has in the batch."""
    for loop, pairs in by_loop.items():
        # A closed loop raises RuntimeError: nobody is waiting there any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, pairs)


class _WriterState:
    """Health, batch count and rate-limited reports of lost writes, shared by both writers."""

    def __init__(self) -> None:
        self._healthy = True
        self._batches = 0
        self._lost = 0
        self._last_warning = -FAILURE_LOG_INTERVAL

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def batches(self) -> int:
        """Batches handed to the sink so far (one transaction each unless one was isolated)."""
        return self._batches

    def _note_lost(self, error: StoreError) -> None:
        self._lost += 1
        now = time.monotonic()
        if now - self._last_warning >= FAILURE_LOG_INTERVAL:
            log.warning("store write failed, %d queued write(s) lost: %s", self._lost, error)
            self._lost = 0
            self._last_warning = now


class GroupCommitWriter(_WriterState):
    def __init__(
        self,
        sink: BatchSink,
        *,
        name: str = "callgate-store-writer",
        max_batch: int = MAX_BATCH_ITEMS,
    ) -> None:
        super().__init__()
        self._sink = sink
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = threading.Event()
        self._open_error: BaseException | None = None

    def start(self) -> None:
        """Start the thread and wait until the backend connection is open (or raise its error)."""
        self._thread.start()
        self._started.wait()
        if self._open_error is not None:
            self._thread.join()
            raise self._open_error

    def put(self, ops: Sequence[WriteOp], waiter: Waiter | None) -> None:
        if self._closed:
            raise StoreClosed()
        self._queue.put((ops, waiter))

    def stop(self) -> None:
        """Write what is queued, then stop. Blocks until the thread has ended. Idempotent."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join()

    # --- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._sink.open()
        except BaseException as exc:
            self._open_error = exc
            self._started.set()
            return
        self._started.set()
        get, get_nowait = self._queue.get, self._queue.get_nowait
        stopping = False
        try:
            while not stopping:
                try:
                    first = get(timeout=IDLE_TICK)
                except queue.Empty:
                    self._idle()
                    continue
                if first is None:
                    break
                batch = [first]
                try:
                    while len(batch) < self._max_batch:
                        item = get_nowait()
                        if item is None:
                            stopping = True
                            break
                        batch.append(item)
                except queue.Empty:
                    pass
                self._write(batch)
        finally:
            self._fail_leftovers()
            self._sink.close()

    def _idle(self) -> None:
        try:
            self._sink.idle()
        except Exception:
            log.exception("store writer: unexpected error in idle work")

    def _write(self, batch: list[_Item]) -> None:
        try:
            outcomes = self._sink.write([ops for ops, _ in batch])
        except Exception:
            # A bug, not a store condition; the thread must live on, or every waiter hangs.
            log.exception("store writer: unexpected error; failing %d write(s)", len(batch))
            error = StoreUnavailable("store write failed: internal error (see the gateway log)")
            outcomes = [error] * len(batch)
        self._batches += 1
        unavailable = False
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Waiter, Outcome]]] = {}
        for (_, waiter), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, StoreError):
                unavailable = unavailable or isinstance(outcome, StoreUnavailable)
                if waiter is None:
                    self._note_lost(outcome)
            if waiter is not None:
                by_loop.setdefault(waiter.get_loop(), []).append((waiter, outcome))
        self._healthy = not unavailable
        _wake(by_loop)

    def _fail_leftovers(self) -> None:
        """Items queued after the stop marker (a race with :meth:`stop`) fail instead of hanging."""
        pairs: dict[asyncio.AbstractEventLoop, list[tuple[Waiter, Outcome]]] = {}
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None and item[1] is not None:
                pairs.setdefault(item[1].get_loop(), []).append((item[1], StoreClosed()))
        _wake(pairs)


#: Longest a write nobody waits for (a statement's result, an async-durability event) stays
#: queued before it is committed on its own. Until then it rides along with the next commit
#: somebody waits for, so a strict session pays one commit per statement, not two.
UNWAITED_DELAY = 0.005

#: First and longest pause between attempts while another process holds the SQLite write lock.
BUSY_RETRY_FIRST = 0.001
BUSY_RETRY_MAX = 0.05


class LoopWriter(_WriterState):
    """Group commit on the event loop's own thread.

    Everything queued during one turn of the loop is written in one transaction when that turn
    ends (``call_soon``), so concurrent sessions share a commit exactly as with the writer thread,
    without two thread hand-offs per commit (each costing tens to hundreds of microseconds on a
    busy machine). With WAL and ``synchronous=NORMAL`` a commit is a write to the log, not an
    fsync, so the loop is held for tens of microseconds per batch.

    The sink's connection must not wait on SQLite's lock (``busy_timeout`` 0): when another
    process (a CLI command) holds it, the batch is retried from the loop with growing pauses for up
    to ``busy_timeout`` seconds, and other sessions keep being served meanwhile. Past that, the
    batch fails with :class:`StoreUnavailable` as with the thread writer.
    """

    def __init__(
        self, sink: BatchSink, *, max_batch: int = MAX_BATCH_ITEMS, busy_timeout: float = 5.0
    ) -> None:
        super().__init__()
        self._sink = sink
        self._max_batch = max_batch
        self._busy_timeout = busy_timeout
        self._pending: list[_Item] = []
        self._scheduled = False
        self._retry: tuple[float, float] | None = None  # (first failure time, next pause)
        self._closed = False
        self._last_write = time.monotonic()
        self._idle_handle: asyncio.TimerHandle | None = None
        self._delayed: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._sink.open()

    def put(self, ops: Sequence[WriteOp], waiter: Waiter | None) -> None:
        if self._closed:
            raise StoreClosed()
        self._pending.append((ops, waiter))
        if self._scheduled or self._retry is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): write now
            self._flush()
            return
        if self._loop is not loop:
            self._loop = loop
            self._arm_idle()
        if waiter is None:
            if self._delayed is None:
                self._delayed = loop.call_later(UNWAITED_DELAY, self._flush_delayed)
            return
        self._scheduled = True
        loop.call_soon(self._flush)

    def _flush_delayed(self) -> None:
        self._delayed = None
        if not self._scheduled and self._retry is None and not self._closed:
            self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        if self._delayed is not None:
            self._delayed.cancel()
            self._delayed = None
        while self._pending:
            batch = self._pending[: self._max_batch]
            try:
                outcomes = self._sink.write([ops for ops, _ in batch])
            except Exception:
                log.exception("store writer: unexpected error; failing %d write(s)", len(batch))
                error = StoreUnavailable("store write failed: internal error (see the gateway log)")
                outcomes = [error] * len(batch)
            if outcomes and all(isinstance(o, StoreBusy) for o in outcomes):
                if self._retry_later():
                    return  # the batch stays queued, in order, ahead of later items
            else:
                self._retry = None
            del self._pending[: len(batch)]
            self._batches += 1
            self._last_write = time.monotonic()
            self._settle(batch, outcomes)

    def _retry_later(self) -> bool:
        now = time.monotonic()
        first, pause = self._retry if self._retry is not None else (now, BUSY_RETRY_FIRST)
        if now - first >= self._busy_timeout:
            self._retry = None
            return False
        self._retry = (first, min(pause * 2, BUSY_RETRY_MAX))
        loop = self._loop or asyncio.get_event_loop()
        loop.call_later(pause, self._resume)
        return True

    def _resume(self) -> None:
        if not self._closed:
            self._flush()

    def _settle(self, batch: list[_Item], outcomes: Sequence[Outcome]) -> None:
        unavailable = False
        for (_, waiter), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, StoreError):
                unavailable = unavailable or isinstance(outcome, StoreUnavailable)
                if waiter is None:
                    self._note_lost(outcome)
            if waiter is not None and not waiter.done():
                if isinstance(outcome, StoreError):
                    waiter.set_exception(outcome)
                else:
                    waiter.set_result(outcome)
        self._healthy = not unavailable

    def _arm_idle(self) -> None:
        if self._loop is None or self._closed:
            return
        self._idle_handle = self._loop.call_later(IDLE_TICK, self._on_idle_tick)

    def _on_idle_tick(self) -> None:
        if self._closed:
            return
        if not self._pending and time.monotonic() - self._last_write >= IDLE_TICK:
            try:
                self._sink.idle()
            except Exception:
                log.exception("store writer: unexpected error in idle work")
        self._arm_idle()

    def stop(self) -> None:
        """Write what is queued (without waiting on a busy lock any longer), then close."""
        if self._closed:
            return
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        if self._delayed is not None:
            self._delayed.cancel()
            self._delayed = None
        self._retry = None
        if self._pending:
            batch, self._pending = self._pending, []
            try:
                outcomes = self._sink.write([ops for ops, _ in batch])
            except Exception:
                outcomes = [StoreClosed()] * len(batch)
            self._settle(batch, outcomes)
        self._closed = True
        self._sink.close()
