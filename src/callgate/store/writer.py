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
from typing import Protocol, cast

from callgate.store.errors import (
    StoreBusy,
    StoreClosed,
    StoreConflict,
    StoreError,
    StoreUnavailable,
)
from callgate.store.filewatch import FileWatch
from callgate.store.journal import TRUNCATE_BYTES, EventJournal, JournalItem
from callgate.store.records import AppendEvent, EndSession, InsertSession, JournalMark, WriteOp

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


class JournaledSink(BatchSink, Protocol):
    """What a backend gives a :class:`LoopWriter` that keeps an audit journal."""

    def journal_applied(self) -> int:
        """The highest journal sequence number the store has applied (0 if none)."""
        ...

    def watched_file(self) -> tuple[int, str]:
        """An open descriptor of the store's file and its path, watched for losing its name."""
        ...


#: Seconds the writer waits for work before calling :meth:`BatchSink.idle`.
IDLE_TICK = 0.5


def _journalable(op: WriteOp) -> bool:
    """Whether the audit journal can carry ``op``: a session's event, or its row's start or end
    (:mod:`callgate.store.journal`)."""
    kind = type(op)
    if kind is AppendEvent:
        return op.session_id is not None and op.seq is not None  # type: ignore[union-attr]
    return kind is InsertSession or kind is EndSession


def _journaled(ops: Sequence[WriteOp]) -> bool:
    return bool(ops) and type(ops[-1]) is JournalMark


def _replayed(ops: Sequence[WriteOp]) -> bool:
    return bool(ops) and type(ops[-1]) is JournalMark and ops[-1].replay


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

    With a ``journal`` (:mod:`callgate.store.journal`), :meth:`journaled` acknowledges a strict
    write of session events once it is appended to the journal, together with every unwaited item
    queued before it, and the events are applied in the next group commit. A journaled item is
    never dropped: when its transaction fails it is held, nothing queued after it is written
    (waiters get the error), and every later flush writes the held items first.
    """

    def __init__(
        self,
        sink: BatchSink,
        *,
        max_batch: int = MAX_BATCH_ITEMS,
        busy_timeout: float = 5.0,
        journal: EventJournal | None = None,
    ) -> None:
        super().__init__()
        self._sink = sink
        self._journal = journal
        #: journaled items a failed write left over (or a previous process's, to replay): first
        self._held: list[_Item] = []
        self._held_error: StoreError | None = None
        self._files: FileWatch | None = None
        self._journaling = journal is not None
        self._replaying = False
        self._journal_applied = 0
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
        journal = self._journal
        if journal is None:
            return
        sink = cast(JournaledSink, self._sink)
        db_fd, db_path = sink.watched_file()
        if db_fd >= 0:
            self._files = FileWatch([(db_fd, db_path), (journal.fd, str(journal.path))])
        applied = sink.journal_applied()
        self._journal_applied = applied
        records = journal.recover(applied)
        if records:
            log.warning(
                "audit journal: %d record(s) of a previous run not yet in the store; replaying",
                len(records),
            )
            self._held = [
                ((*events, JournalMark(seq, replay=True)), None) for seq, events in records
            ]
            self._replaying = True
        elif journal.size:
            journal.truncate()  # everything in it is applied (or torn)

    def replay_journal(self) -> int:
        """Apply what a previous process left in the journal, now, in one transaction; raise
        :class:`StoreUnavailable` if it cannot be. Returns the number of records applied."""
        if not self._replaying:
            return 0
        batch = self._held
        self._held = []
        deadline = time.monotonic() + self._busy_timeout
        pause = BUSY_RETRY_FIRST
        while True:
            try:
                outcomes = self._sink.write([ops for ops, _ in batch])
            except Exception:
                log.exception("store writer: unexpected error replaying the audit journal")
                outcomes = [StoreUnavailable("internal error (see the gateway log)")] * len(batch)
            if not all(isinstance(o, StoreBusy) for o in outcomes) or time.monotonic() > deadline:
                break
            time.sleep(pause)  # at start, before serving: another process holds the lock
            pause = min(pause * 2, BUSY_RETRY_MAX)
        failed = [
            o for o in outcomes if isinstance(o, StoreError) and not isinstance(o, StoreConflict)
        ]
        if failed:
            self._held = batch
            raise StoreUnavailable(f"cannot apply the audit journal: {failed[0].message}")
        self._replaying = False
        self._batches += 1
        self._settle(batch, outcomes)
        self._maybe_truncate(force=True)
        return len(batch)

    def journaled(self, ops: Sequence[WriteOp]) -> tuple[object, ...] | None:
        """Acknowledge ``ops`` (session events with their ``seq``) once they are in the journal;
        ``None`` when they must instead wait for the store's commit (no journal, the store or the
        journal unhealthy, a held or replaying item, or an item queued before them that is not
        events). Must be called on the event loop's thread, with the loop running."""
        journal = self._journal
        if (
            journal is None
            or not self._journaling
            or not ops
            or self._held
            or self._replaying
            or not self._healthy
            or self._retry is not None
            or self._closed
        ):
            return None
        for op in ops:
            if not _journalable(op):
                return None
        # Everything queued before these events must be as durable as they are: the unwaited
        # items since the last journaled one go into the same record.
        pending = self._pending
        start = len(pending)
        while start:
            before, waiter = pending[start - 1]
            if _journaled(before):
                break
            if waiter is not None or not before:
                return None
            for op in before:
                if not _journalable(op):
                    return None
            start -= 1
        if self._files is None or not self._files.ok():
            log.error(
                "the store's file or its audit journal %s was removed or replaced; strict writes"
                " wait for the store now",
                journal.path,
            )
            self._stop_journal()
            return None
        events = [op for item, _ in pending[start:] for op in item]
        events.extend(ops)
        try:
            seq = journal.append(cast(list[JournalItem], events))
        except OSError as exc:
            log.error("audit journal write failed (%s); strict writes wait for the store now", exc)
            self._stop_journal()
            return None
        mark = JournalMark(seq)
        for i in range(start, len(pending)):
            before, waiter = pending[i]
            pending[i] = ((*before, mark), waiter)
        self.put((*ops, mark), None)
        return (None,) * len(ops)

    def put(self, ops: Sequence[WriteOp], waiter: Waiter | None) -> None:
        if self._closed:
            raise StoreClosed()
        self._pending.append((ops, waiter))
        if self._scheduled or self._retry is not None:
            return
        if waiter is None and self._delayed is not None:
            return  # rides along with the delayed flush already armed
        loop = self._loop
        # (asyncio.get_running_loop() costs a getpid() system call on every call)
        if loop is None or not loop.is_running():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a synchronous caller): write now
                self._flush()
                return
            if self._loop is not loop:
                self._loop = loop
                self._arm_idle()
        if waiter is None:
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
        if self._held:
            self._pending[:0] = self._held
            self._held = []
        while self._pending:
            batch = self._pending[: self._max_batch]
            if self._replaying:
                # a previous process's events, in a transaction of their own: a CloseInterrupted
                # queued after them must see them in the store
                n = 0
                while n < len(batch) and _replayed(batch[n][0]):
                    n += 1
                if n:
                    batch = batch[:n]
                else:
                    self._replaying = False
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
            if self._held:
                # A journaled item failed: nothing queued after it may be written past it.
                self._fail_pending()
                return
            if self._replaying and batch and _replayed(batch[0][0]):
                self._replaying = False
                self._maybe_truncate(force=True)
        if self._journal is not None:
            self._maybe_truncate()

    def _stop_journal(self) -> None:
        """Strict writes wait for the store's commit from now on; the file stays, with what is
        in it (a restart replays what the store lacks)."""
        if self._files is not None:
            self._files.close()
            self._files = None
        self._journaling = False

    def _fail_pending(self) -> None:
        error = self._held_error or StoreUnavailable("store write failed")
        rest, self._pending = self._pending, []
        self._settle(rest, [error] * len(rest))

    def _maybe_truncate(self, *, force: bool = False) -> None:
        journal = self._journal
        if (
            journal is not None
            and not self._held
            and self._journal_applied >= journal.last_seq
            and journal.size > (0 if force else TRUNCATE_BYTES)
        ):
            try:
                journal.truncate()
            except OSError as exc:
                log.error("audit journal truncate failed (%s); strict writes wait for commits", exc)
                self._stop_journal()

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
        applied = self._journal_applied
        for item, outcome in zip(batch, outcomes, strict=True):
            ops, waiter = item
            if ops and type(ops[-1]) is JournalMark:
                if isinstance(outcome, StoreError) and not isinstance(outcome, StoreConflict):
                    # in the journal, acknowledged: kept, and written before anything else
                    self._held.append(item)
                    self._held_error = outcome
                    unavailable = True
                    continue
                applied = max(applied, ops[-1].seq)
            if isinstance(outcome, StoreError):
                unavailable = unavailable or isinstance(outcome, StoreUnavailable)
                if waiter is None:
                    self._note_lost(outcome)
            if waiter is not None and not waiter.done():
                if isinstance(outcome, StoreError):
                    waiter.set_exception(outcome)
                else:
                    waiter.set_result(outcome)
        self._journal_applied = applied
        # acknowledged events not yet in the store: unhealthy until they are
        self._healthy = not unavailable and not self._held

    def _arm_idle(self) -> None:
        if self._loop is None or self._closed:
            return
        self._idle_handle = self._loop.call_later(IDLE_TICK, self._on_idle_tick)

    def _on_idle_tick(self) -> None:
        if self._closed:
            return
        if self._held and not self._pending and not self._scheduled and self._retry is None:
            self._flush()  # retry the journaled items a failed write left over
        elif not self._pending and time.monotonic() - self._last_write >= IDLE_TICK:
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
        if self._held:
            self._pending[:0] = self._held
            self._held = []
        if self._pending:
            batch, self._pending = self._pending, []
            try:
                outcomes = self._sink.write([ops for ops, _ in batch])
            except Exception:
                outcomes = [StoreClosed()] * len(batch)
            self._settle(batch, outcomes)
        self._closed = True
        if self._files is not None:
            self._files.close()
        if self._journal is not None:
            # what a failed last write held stays in the journal for the next start
            self._maybe_truncate(force=True)
            self._journal.close()
        self._sink.close()
