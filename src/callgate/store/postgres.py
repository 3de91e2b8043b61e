"""The PostgreSQL backend (asyncpg): the same schema and migrations as SQLite, for several gateway
replicas sharing one store (``gateway.store: postgresql://…``).

Writes go through the same group-commit writer thread as SQLite (:mod:`.postgres_sink`). Reads
run on a second thread with its own event loop and a small connection pool, so callers on any
event loop (the gateway's, or a CLI's ``asyncio.run``) can await them without sharing asyncpg
connections across loops.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

from callgate.store.audit_records import CheckpointRecord, OutboxStatus
from callgate.store.base import Store
from callgate.store.checkpoints import AuditWriterSettings
from callgate.store.errors import StoreError, StoreUnavailable
from callgate.store.pg_schema import CREATE_MIGRATIONS_TABLE, LOCK_MIGRATE, postgres_migrations
from callgate.store.postgres_sink import CONNECTION_ERRORS, PgSink
from callgate.store.records import (
    ApiKeyRecord,
    EventRecord,
    SessionRecord,
    SessionTokenRecord,
    WriteOp,
)
from callgate.store.sqlite_audit import CHECKPOINT_COLUMNS, checkpoint_from_row
from callgate.store.writer import MAX_BATCH_ITEMS, GroupCommitWriter

if TYPE_CHECKING:
    from callgate.store.reviews import ReviewStore

T = TypeVar("T")

#: Seconds to connect (and to run the migrations) before the store counts as unavailable.
CONNECT_TIMEOUT = 10.0
#: Read connections (reads are small; the CLI and the exporter use them).
READ_POOL_SIZE = 4

_SESSION_COLUMNS = (
    "id, subject, groups, auth_method, credential_id, issuer, connection, protocol, client_addr,"
    " client_user, application_name, tls, started_at, ended_at, end_reason, bytes_from_client,"
    " bytes_to_client, statements, gateway_id"
)
_EVENT_COLUMNS = "id, session_id, seq, ts, type, payload, prev_hash, hash"
_API_KEY_COLUMNS = (
    "name, key_id, key_hash, groups, created_at, expires_at, revoked_at, last_used_at, created_by"
)
_CGT_COLUMNS = (
    "id, token_hash, subject, groups, issuer, created_at, expires_at, revoked_at, last_used_at"
)


def redact_url(url: str) -> str:
    """The URL without its password (for messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, f"{user}{host}", parts.path, parts.query, parts.fragment))


def _groups(text: str) -> tuple[str, ...]:
    value = json.loads(text)
    return tuple(str(g) for g in value) if isinstance(value, list) else ()


async def migrate(conn: Any) -> int:
    """Bring the schema to the latest version; return the version found. Safe to race."""
    migrations = postgres_migrations()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_MIGRATE)
        await conn.execute(CREATE_MIGRATIONS_TABLE)
        current = int(
            await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        )
        latest = migrations[-1].version
        if current > latest:
            raise StoreError(
                f"the store's schema version {current} is newer than this callgate ({latest});"
                " upgrade callgate"
            )
        for migration in migrations:
            if migration.version <= current:
                continue
            for statement in migration.statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, description, applied_at)"
                " VALUES ($1, $2, $3)",
                migration.version,
                migration.description,
                time.time(),
            )
    return current


class _LoopThread:
    """An event loop on its own thread; coroutines are submitted from any thread or loop."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run_sync(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class PostgresStore(Store):
    """A PostgreSQL store at ``dsn``; migrates and starts the writer on construction."""

    def __init__(
        self,
        dsn: str,
        *,
        max_batch: int = MAX_BATCH_ITEMS,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self._dsn = dsn
        self._url = redact_url(dsn)
        self._connect_timeout = connect_timeout
        self._reads = _LoopThread("callgate-store-reads")
        try:
            self._pool: Any = self._reads.run_sync(
                self._open_pool(connect_timeout), connect_timeout * 2
            )
        except StoreError:
            self._reads.stop()
            raise
        except (*CONNECTION_ERRORS, asyncpg.PostgresError, TimeoutError) as exc:
            self._reads.stop()
            raise StoreUnavailable(f"cannot open store {self._url}: {exc}") from exc
        self._sink = PgSink(dsn, connect_timeout=connect_timeout)
        self._writer = GroupCommitWriter(self._sink, max_batch=max_batch)
        try:
            self._writer.start()
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            self._reads.run_sync(self._pool.close(), connect_timeout)
            self._reads.stop()
            raise StoreUnavailable(f"cannot open store {self._url}: {exc}") from exc
        self._closed = False

    async def _open_pool(self, seconds: float) -> Any:
        conn = await asyncpg.connect(self._dsn, timeout=seconds)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        return await asyncpg.create_pool(
            self._dsn, min_size=1, max_size=READ_POOL_SIZE, timeout=seconds
        )

    @property
    def url(self) -> str:
        return self._url

    @property
    def healthy(self) -> bool:
        return self._writer.healthy

    @property
    def write_batches(self) -> int:
        return self._writer.batches

    # --- writes ---------------------------------------------------------------------------------

    def submit(self, ops: Sequence[WriteOp]) -> None:
        self._writer.put(ops, None)

    async def commit(self, ops: Sequence[WriteOp]) -> tuple[object, ...]:
        waiter: asyncio.Future[tuple[object, ...]] = asyncio.get_running_loop().create_future()
        self._writer.put(ops, waiter)
        return await waiter

    def configure_audit(self, settings: AuditWriterSettings) -> None:
        self._sink.settings = settings

    # --- reads ----------------------------------------------------------------------------------

    async def _fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        async def work() -> list[tuple[Any, ...]]:
            rows = await self._pool.fetch(sql, *args)
            return [tuple(r) for r in rows]

        try:
            return await self._reads.run(work())
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"store read failed: {exc}") from exc

    @staticmethod
    def _session(row: tuple[Any, ...]) -> SessionRecord:
        return SessionRecord(
            id=row[0],
            subject=row[1],
            groups=_groups(row[2]),
            auth_method=row[3],
            credential_id=row[4],
            issuer=row[5],
            connection=row[6],
            protocol=row[7],
            client_addr=row[8],
            client_user=row[9],
            application_name=row[10],
            tls=bool(row[11]),
            started_at=row[12],
            ended_at=row[13],
            end_reason=row[14],
            bytes_from_client=row[15],
            bytes_to_client=row[16],
            statements=row[17],
            gateway_id=row[18],
        )

    @staticmethod
    def _api_key(row: tuple[Any, ...]) -> ApiKeyRecord:
        return ApiKeyRecord(
            name=row[0],
            key_id=row[1],
            key_hash=row[2],
            groups=_groups(row[3]),
            created_at=row[4],
            expires_at=row[5],
            revoked_at=row[6],
            last_used_at=row[7],
            created_by=row[8],
        )

    @staticmethod
    def _session_token(row: tuple[Any, ...]) -> SessionTokenRecord:
        return SessionTokenRecord(
            id=row[0],
            token_hash=row[1],
            subject=row[2],
            groups=_groups(row[3]),
            issuer=row[4],
            created_at=row[5],
            expires_at=row[6],
            revoked_at=row[7],
            last_used_at=row[8],
        )

    async def get_session(self, session_id: str) -> SessionRecord | None:
        rows = await self._fetch(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = $1", session_id
        )
        return self._session(rows[0]) if rows else None

    async def list_sessions(self, *, limit: int = 100) -> list[SessionRecord]:
        rows = await self._fetch(
            f"SELECT {_SESSION_COLUMNS} FROM sessions ORDER BY started_at DESC, id LIMIT $1",
            limit,
        )
        return [self._session(r) for r in rows]

    async def session_events(self, session_id: str | None) -> list[EventRecord]:
        if session_id is None:
            rows = await self._fetch(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE session_id IS NULL ORDER BY seq"
            )
        else:
            rows = await self._fetch(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE session_id = $1 ORDER BY seq",
                session_id,
            )
        return [EventRecord(*r) for r in rows]

    async def api_key_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        rows = await self._fetch(
            f"SELECT {_API_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1", key_hash
        )
        return self._api_key(rows[0]) if rows else None

    async def api_key_by_name(self, name: str) -> ApiKeyRecord | None:
        rows = await self._fetch(f"SELECT {_API_KEY_COLUMNS} FROM api_keys WHERE name = $1", name)
        return self._api_key(rows[0]) if rows else None

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        rows = await self._fetch(f"SELECT {_API_KEY_COLUMNS} FROM api_keys ORDER BY name")
        return [self._api_key(r) for r in rows]

    async def session_token_by_hash(self, token_hash: str) -> SessionTokenRecord | None:
        rows = await self._fetch(
            f"SELECT {_CGT_COLUMNS} FROM session_tokens WHERE token_hash = $1", token_hash
        )
        return self._session_token(rows[0]) if rows else None

    async def session_token_by_id(self, token_id: str) -> SessionTokenRecord | None:
        rows = await self._fetch(
            f"SELECT {_CGT_COLUMNS} FROM session_tokens WHERE id = $1", token_id
        )
        return self._session_token(rows[0]) if rows else None

    async def list_session_tokens(
        self, *, live_at: float | None = None, limit: int = 1000
    ) -> list[SessionTokenRecord]:
        if live_at is None:
            rows = await self._fetch(
                f"SELECT {_CGT_COLUMNS} FROM session_tokens ORDER BY created_at DESC, id LIMIT $1",
                limit,
            )
        else:
            rows = await self._fetch(
                f"SELECT {_CGT_COLUMNS} FROM session_tokens"
                " WHERE revoked_at IS NULL AND expires_at > $1"
                " ORDER BY created_at DESC, id LIMIT $2",
                live_at,
                limit,
            )
        return [self._session_token(r) for r in rows]

    # --- audit reads ----------------------------------------------------------------------------

    async def checkpoints(self) -> list[CheckpointRecord]:
        rows = await self._fetch(f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY id")
        return [checkpoint_from_row(r) for r in rows]

    async def chain_ids(self) -> list[str | None]:
        rows = await self._fetch(
            "SELECT id FROM sessions UNION SELECT DISTINCT session_id FROM events"
            " WHERE session_id IS NOT NULL ORDER BY 1"
        )
        chains: list[str | None] = [str(r[0]) for r in rows]
        if await self._fetch("SELECT 1 FROM events WHERE session_id IS NULL LIMIT 1"):
            chains.append(None)
        return chains

    async def events_by_ids(self, ids: Sequence[int]) -> list[EventRecord]:
        rows = await self._fetch(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE id = ANY($1::bigint[]) ORDER BY id",
            list(ids),
        )
        return [EventRecord(*r) for r in rows]

    async def events_page(
        self,
        after_id: int,
        limit: int,
        *,
        session_id: str | None = None,
        since: float | None = None,
    ) -> list[EventRecord]:
        sql = f"SELECT {_EVENT_COLUMNS} FROM events WHERE id > $1"
        args: list[object] = [after_id]
        if session_id is not None:
            args.append(session_id)
            sql += f" AND session_id = ${len(args)}"
        if since is not None:
            args.append(since)
            sql += f" AND ts >= ${len(args)}"
        args.append(limit)
        rows = await self._fetch(sql + f" ORDER BY id LIMIT ${len(args)}", *args)
        return [EventRecord(*r) for r in rows]

    async def outbox_status(self) -> list[OutboxStatus]:
        rows = await self._fetch(
            "SELECT sink, COUNT(*), MIN(created_at), MAX(attempts),"
            " (SELECT last_error FROM outbox o2 WHERE o2.sink = o.sink"
            "  AND last_error IS NOT NULL ORDER BY id DESC LIMIT 1)"
            " FROM outbox o GROUP BY sink ORDER BY sink"
        )
        return [OutboxStatus(str(r[0]), int(r[1]), r[2], int(r[3]), r[4]) for r in rows]

    def review_store(self) -> ReviewStore:
        """The review store in this database (its own small pool; close it on its own)."""
        from callgate.store.pg_reviews import PostgresReviewStore

        return PostgresReviewStore(self._dsn, url=self._url, timeout=self._connect_timeout)

    # --- lifecycle ------------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._writer.stop)
        try:
            await self._reads.run(self._pool.close())
        finally:
            await asyncio.to_thread(self._reads.stop)
