"""Reviews, grants and the review log in the PostgreSQL store (see :mod:`callgate.store.reviews`).

The logic is :class:`~callgate.store.reviews.SqlReviewStore`'s, shared with SQLite; this module
gives it PostgreSQL's reads and write transactions. Every write transaction first takes one
transaction-scoped advisory lock, so review writes from every gateway and CLI on the database run
one at a time, as ``BEGIN IMMEDIATE`` makes them on SQLite: a check (the review still pending, the
approver not counted yet) and the change it allows are atomic across processes.

asyncpg runs on an event loop of its own thread (as the store's reads do). A write's work
function is synchronous (the same function runs on SQLite), so it runs on a worker thread and
each statement is handed to that loop and waited for; reviews are rare (one write per human
decision or held statement), so the hops cost nothing that matters.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]

from callgate.store.errors import StoreConflict, StoreUnavailable
from callgate.store.pg_schema import LOCK_REVIEWS
from callgate.store.postgres import _LoopThread
from callgate.store.postgres_sink import CONNECTION_ERRORS
from callgate.store.reviews import Conn, SqlReviewStore

T = TypeVar("T")

#: Connections of the review store's own pool (one writer, one reader at a time is the norm).
POOL_SIZE = 2

_IS_PARAM = re.compile(r"\bIS \?", re.IGNORECASE)
_ERRORS = (
    *CONNECTION_ERRORS,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    TimeoutError,
)


@lru_cache(maxsize=256)
def to_postgres_sql(sql: str) -> str:
    """``?`` placeholders as ``$1``, ``$2``…; ``x IS ?`` (SQLite's null-safe equality) as
    ``x IS NOT DISTINCT FROM $n``. The review store's SQL has no ``?`` inside a literal."""
    sql = _IS_PARAM.sub("IS NOT DISTINCT FROM ?", sql)
    parts = sql.split("?")
    out = [parts[0]]
    for n, part in enumerate(parts[1:], start=1):
        out.append(f"${n}")
        out.append(part)
    return "".join(out)


class _Cursor:
    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows


def _status_count(status: str | None) -> int:
    """The row count of a command tag (``UPDATE 1``, ``INSERT 0 1``)."""
    if not status:
        return -1
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else -1


class _PgConn:
    """:class:`~callgate.store.reviews.Conn` over an asyncpg connection in a transaction, for a
    work function on a worker thread: ``run`` hands each statement to the store's loop thread and
    waits (bounded) for it."""

    def __init__(self, run: Callable[[Coroutine[Any, Any, Any]], Any], conn: Any) -> None:
        self._run = run
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> _Cursor:
        cursor: _Cursor = self._run(self._execute(to_postgres_sql(sql), params))
        return cursor

    async def _execute(self, sql: str, params: Sequence[Any]) -> _Cursor:
        statement = await self._conn.prepare(sql)
        rows = await statement.fetch(*params)
        return _Cursor([tuple(r) for r in rows], _status_count(statement.get_statusmsg()))

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]], /) -> None:
        args = [tuple(p) for p in seq]
        self._run(self._conn.executemany(to_postgres_sql(sql), args))


async def _open_pool(dsn: str, seconds: float) -> Any:
    return await asyncpg.create_pool(dsn, min_size=1, max_size=POOL_SIZE, timeout=seconds)


async def _acquire(pool: Any, seconds: float) -> Any:
    return await pool.acquire(timeout=seconds)


def _message(exc: BaseException) -> str:
    """An error's text for a store error; a timeout has none of its own."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "no answer from the database in time"
    return str(exc)


class PostgresReviewStore(SqlReviewStore):
    """Reviews in the PostgreSQL database at ``dsn`` (already migrated by the store).

    Every wait on the database is bounded by ``timeout``: a statement or connection that does not
    come in time is cancelled on the store's loop (not left running to leak a pooled connection)
    and the operation fails with :class:`StoreUnavailable`.
    """

    def __init__(self, dsn: str, *, url: str, timeout: float) -> None:
        self._url = url
        self._timeout = timeout
        self._thread = _LoopThread("callgate-review-store")
        try:
            self._pool: Any = self._thread.run_sync(_open_pool(dsn, timeout), timeout * 2)
        except _ERRORS as exc:
            self._thread.stop()
            raise StoreUnavailable(f"cannot open the review store {url}: {_message(exc)}") from exc
        self._write_lock = threading.Lock()
        self._closed = False

    def _run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the store's loop from a worker thread; cancel it if it takes longer
        than the timeout. Raises :class:`StoreUnavailable` once the store is closed."""
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._thread.loop)
        except RuntimeError:  # the loop is closed
            coro.close()
            raise StoreUnavailable("the review store is closed") from None
        try:
            return future.result(self._timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            if self._closed:
                raise StoreUnavailable("the review store is closed") from None
            raise

    async def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        if self._closed:
            raise StoreUnavailable("the review store is closed")

        async def fetch() -> list[tuple[Any, ...]]:
            async with asyncio.timeout(self._timeout):
                rows = await self._pool.fetch(to_postgres_sql(sql), *params)
            return [tuple(r) for r in rows]

        coro = fetch()
        try:
            return await self._thread.run(coro)
        except RuntimeError:  # the store's loop is closed
            coro.close()
            raise StoreUnavailable("the review store is closed") from None
        except _ERRORS as exc:
            raise StoreUnavailable(f"store read failed: {_message(exc)}") from exc

    async def _write(self, work: Callable[[Conn], T]) -> T:
        if self._closed:
            raise StoreUnavailable("the review store is closed")
        return await asyncio.to_thread(self._transaction, work)

    def _transaction(self, work: Callable[[Conn], T]) -> T:
        run = self._run_sync
        with self._write_lock:
            try:
                conn = run(_acquire(self._pool, self._timeout))
            except _ERRORS as exc:
                raise StoreUnavailable(f"store write failed: {_message(exc)}") from exc
            try:
                # READ COMMITTED whatever the server's default: each statement must see what the
                # writer that held the advisory lock before committed (under REPEATABLE READ the
                # snapshot would predate the lock, and two votes could both see the other missing)
                tx = conn.transaction(isolation="read_committed")
                try:
                    run(tx.start())
                    run(conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_REVIEWS))
                except _ERRORS as exc:
                    raise StoreUnavailable(f"store write failed: {_message(exc)}") from exc
                try:
                    result = work(_PgConn(run, conn))
                    run(tx.commit())
                except asyncpg.IntegrityConstraintViolationError as exc:
                    self._rollback(tx)
                    raise StoreConflict(f"store write refused: {exc}") from exc
                except _ERRORS as exc:
                    self._rollback(tx)
                    raise StoreUnavailable(f"store write failed: {_message(exc)}") from exc
                except BaseException:
                    self._rollback(tx)
                    raise
                return result
            finally:
                # (the pool drops a connection it cannot reset)
                with contextlib.suppress(*_ERRORS, StoreUnavailable):
                    run(self._pool.release(conn))

    def _rollback(self, tx: Any) -> None:
        # (when the connection is gone, the server rolls the transaction back)
        with contextlib.suppress(*_ERRORS, StoreUnavailable):
            self._run_sync(tx.rollback())

    async def close(self) -> None:
        """Close the pool (waiting at most the timeout for a write in progress, then
        terminating its connections) and the store's loop. Never blocks the caller's loop."""
        if self._closed:
            return
        self._closed = True
        pool, seconds = self._pool, self._timeout

        async def shut() -> None:
            try:
                await asyncio.wait_for(pool.close(), seconds)
            except (TimeoutError, *CONNECTION_ERRORS, asyncpg.PostgresError):
                pool.terminate()

        try:
            await self._thread.run(shut())
        finally:
            await asyncio.to_thread(self._thread.stop)
