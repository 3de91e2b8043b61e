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
import contextlib
import re
import threading
from collections.abc import Callable, Iterable, Sequence
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

_IS_PARAM = re.compile(r"\bIS \?")
_ERRORS = (*CONNECTION_ERRORS, asyncpg.PostgresError, TimeoutError, asyncpg.InterfaceError)


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
    work function on a worker thread: each statement runs on the store's loop thread."""

    def __init__(self, thread: _LoopThread, conn: Any, timeout: float) -> None:
        self._thread = thread
        self._conn = conn
        self._timeout = timeout

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> _Cursor:
        return self._thread.run_sync(self._execute(to_postgres_sql(sql), params), self._timeout)

    async def _execute(self, sql: str, params: Sequence[Any]) -> _Cursor:
        statement = await self._conn.prepare(sql)
        rows = await statement.fetch(*params)
        return _Cursor([tuple(r) for r in rows], _status_count(statement.get_statusmsg()))

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]], /) -> None:
        args = [tuple(p) for p in seq]
        self._thread.run_sync(self._conn.executemany(to_postgres_sql(sql), args), self._timeout)


async def _open_pool(dsn: str, seconds: float) -> Any:
    return await asyncpg.create_pool(dsn, min_size=1, max_size=POOL_SIZE, timeout=seconds)


async def _acquire(pool: Any) -> Any:
    return await pool.acquire()


class PostgresReviewStore(SqlReviewStore):
    """Reviews in the PostgreSQL database at ``dsn`` (already migrated by the store)."""

    def __init__(self, dsn: str, *, url: str, timeout: float) -> None:
        self._url = url
        self._timeout = timeout
        self._thread = _LoopThread("callgate-review-store")
        try:
            self._pool: Any = self._thread.run_sync(_open_pool(dsn, timeout), timeout * 2)
        except _ERRORS as exc:
            self._thread.stop()
            raise StoreUnavailable(f"cannot open the review store {url}: {exc}") from exc
        self._write_lock = threading.Lock()
        self._closed = False

    async def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        if self._closed:
            raise StoreUnavailable("the review store is closed")

        async def fetch() -> list[tuple[Any, ...]]:
            rows = await self._pool.fetch(to_postgres_sql(sql), *params)
            return [tuple(r) for r in rows]

        try:
            return await self._thread.run(fetch())
        except _ERRORS as exc:
            raise StoreUnavailable(f"store read failed: {exc}") from exc

    async def _write(self, work: Callable[[Conn], T]) -> T:
        if self._closed:
            raise StoreUnavailable("the review store is closed")
        return await asyncio.to_thread(self._transaction, work)

    def _transaction(self, work: Callable[[Conn], T]) -> T:
        def run(coro: Any) -> Any:
            return self._thread.run_sync(coro, self._timeout)

        with self._write_lock:
            try:
                conn = run(_acquire(self._pool))
            except _ERRORS as exc:
                raise StoreUnavailable(f"store write failed: {exc}") from exc
            try:
                tx = conn.transaction()
                try:
                    run(tx.start())
                    run(conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_REVIEWS))
                except _ERRORS as exc:
                    raise StoreUnavailable(f"store write failed: {exc}") from exc
                try:
                    result = work(_PgConn(self._thread, conn, self._timeout))
                    run(tx.commit())
                except asyncpg.IntegrityConstraintViolationError as exc:
                    self._rollback(tx)
                    raise StoreConflict(f"store write refused: {exc}") from exc
                except _ERRORS as exc:
                    self._rollback(tx)
                    raise StoreUnavailable(f"store write failed: {exc}") from exc
                except BaseException:
                    self._rollback(tx)
                    raise
                return result
            finally:
                # (the pool drops a connection it cannot reset)
                with contextlib.suppress(*_ERRORS):
                    run(self._pool.release(conn))

    def _rollback(self, tx: Any) -> None:
        # (when the connection is gone, the server rolls the transaction back)
        with contextlib.suppress(*_ERRORS):
            self._thread.run_sync(tx.rollback(), self._timeout)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._write_lock:
            try:
                await self._thread.run(self._pool.close())
            finally:
                await asyncio.to_thread(self._thread.stop)
