"""The PostgreSQL writer: the group-commit writer thread's sink, on asyncpg.

The writer thread owns a private event loop and one connection; each batch is one
``run_until_complete``. A batch holding only session events (the hot path) is one ``INSERT``
statement (atomic by itself, so no ``BEGIN``/``COMMIT`` round trips), which also writes the outbox
rows through a CTE; anything else runs in an explicit transaction.

Several gateways may share a PostgreSQL store. Each holds the heads of its own sessions' chains;
the two things they share are serialized with transaction-scoped advisory locks: the chain
outside sessions (its head is read under the lock whenever a batch appends to it) and the
checkpoint chain (read under the lock when a checkpoint is written).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from callgate.store.audit_records import (
    AUDIT_OPS,
    Checkpoint,
    CheckpointRecord,
    ClaimOutbox,
    CloseInterrupted,
    Heartbeat,
    OutboxDelivered,
    OutboxFailed,
    PurgeSessions,
    TrimOutbox,
)
from callgate.store.chain import ZERO_HASH, ChainBatch, ChainHeads, canonical_json
from callgate.store.checkpoints import (
    AuditWriterSettings,
    CheckpointTracker,
    digest_of,
    heads_json,
)
from callgate.store.errors import StoreConflict, StoreError, StoreUnavailable
from callgate.store.pg_schema import LOCK_CHAIN_NONE, LOCK_CHECKPOINTS
from callgate.store.records import (
    AppendEvent,
    EndSession,
    InsertApiKey,
    InsertSession,
    InsertSessionToken,
    RevokeApiKey,
    RevokeSessionToken,
    TouchApiKey,
    TouchSessionToken,
    WriteOp,
    session_row_params,
)
from callgate.store.sqlite_audit import (
    CHECKPOINT_COLUMNS,
    SESSION_END,
    TxState,
    checkpoint_from_row,
    due_prefix,
    session_end_payload,
)
from callgate.store.writer import Outcome

log = logging.getLogger("callgate.store")

#: asyncpg errors that mean the connection is gone (reconnect before the next batch)
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    OSError,
    asyncio.TimeoutError,
)

_ONE_NONE: tuple[object, ...] = (None,)

_EVENTS_UNNEST = (
    "SELECT * FROM unnest($1::text[], $2::bigint[], $3::float8[], $4::text[], $5::text[],"
    " $6::text[], $7::text[])"
)
_EVENT_FIELDS = ("session_id", "seq", "ts", "type", "payload", "prev_hash", "hash")
_INSERT_EVENTS_OUTBOX = (
    "WITH ins AS (INSERT INTO events (session_id, seq, ts, type, payload, prev_hash, hash) "
    + _EVENTS_UNNEST
    + " RETURNING id) INSERT INTO outbox (sink, event_id, created_at, next_attempt_at)"
    " SELECT s.sink, ins.id, $8, $8 FROM ins CROSS JOIN unnest($9::text[]) AS s(sink)"
)
_INSERT_SESSION = (
    "INSERT INTO sessions (id, subject, groups, auth_method, credential_id, issuer, connection,"
    " protocol, client_addr, client_user, application_name, tls, started_at, gateway_id)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
)
_HEARTBEAT = (
    "INSERT INTO gateways (id, started_at, seen_at) VALUES ($1, $2, $2)"
    " ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at"
)


def _groups(groups: Sequence[str]) -> str:
    return json.dumps(list(groups), separators=(",", ":"))


class PgSink:
    """Runs on the writer thread (see :class:`callgate.store.writer.GroupCommitWriter`)."""

    def __init__(self, dsn: str, *, connect_timeout: float) -> None:
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Any = None
        self._heads = ChainHeads()
        self.settings = AuditWriterSettings()
        self.tracker = CheckpointTracker()
        self._last_heartbeat = 0.0

    # --- lifecycle ------------------------------------------------------------------------------

    def open(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._connect())

    async def _connect(self) -> Any:
        self._conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
        return self._conn

    def close(self) -> None:
        loop = self._loop
        if loop is None:
            return
        if self._conn is not None:
            with contextlib.suppress(Exception):
                loop.run_until_complete(self._conn.close(timeout=5))
            self._conn = None
        loop.close()
        self._loop = None

    def idle(self) -> None:
        now = time.time()
        settings = self.settings
        heartbeat = settings.gateway_id is not None and (
            now - self._last_heartbeat >= settings.heartbeat_interval
        )
        if not (self.tracker.due(settings, now, {}, forced=False) or heartbeat):
            return
        outcome = self.write([()])[0]
        if isinstance(outcome, StoreError):
            log.debug("idle checkpoint failed: %s", outcome)

    # --- writing --------------------------------------------------------------------------------

    def write(self, batch: Sequence[Sequence[WriteOp]]) -> list[Outcome]:
        loop = self._loop
        if loop is None:
            return [StoreUnavailable("store write failed: not open")] * len(batch)
        try:
            return list(loop.run_until_complete(self._transaction(batch)))
        except StoreUnavailable as exc:
            return [exc] * len(batch)
        except asyncpg.IntegrityConstraintViolationError as exc:
            if len(batch) == 1:
                return [StoreConflict(f"store write refused: {exc}")]
            return [self.write([item])[0] for item in batch]
        except CONNECTION_ERRORS as exc:
            self._drop_connection()
            return [StoreUnavailable(f"store write failed: {exc}")] * len(batch)
        except asyncpg.PostgresError as exc:
            return [StoreUnavailable(f"store write failed: {exc}")] * len(batch)

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    async def _connection(self) -> Any:
        conn = self._conn
        if conn is None or conn.is_closed():
            conn = await self._connect()
        return conn

    async def _transaction(self, batch: Sequence[Sequence[WriteOp]]) -> list[tuple[object, ...]]:
        conn = await self._connection()
        now = time.time()
        chain = self._heads.batch()
        only_events = all(len(ops) == 1 and type(ops[0]) is AppendEvent for ops in batch)
        if only_events and batch:
            events = [op for ops in batch for op in ops if type(op) is AppendEvent]
            quick = not self._checkpoint_or_heartbeat_due(now, chain) and all(
                e.session_id is not None for e in events
            )
            if quick:
                await self._insert_events(conn, chain, events, now)
                chain.commit()
                self.tracker.committed(chain.pending_heads(), None, now)
                return [_ONE_NONE] * len(batch)
        return await self._full_transaction(conn, batch, chain, now)

    def _checkpoint_or_heartbeat_due(self, now: float, chain: ChainBatch) -> bool:
        settings = self.settings
        if settings.gateway_id is not None and (
            now - self._last_heartbeat >= settings.heartbeat_interval
        ):
            return True
        if settings.signer is None:
            return False
        # heads move in this batch; a due interval checkpoint needs the full transaction
        return now - self.tracker.last_at >= settings.checkpoint_interval

    async def _full_transaction(
        self, conn: Any, batch: Sequence[Sequence[WriteOp]], chain: ChainBatch, now: float
    ) -> list[tuple[object, ...]]:
        events: list[AppendEvent] = []
        results: list[Sequence[object]] = []
        tx = TxState()
        transaction = conn.transaction()
        await transaction.start()
        try:
            for ops in batch:
                if len(ops) == 1 and type(ops[0]) is AppendEvent:
                    events.append(ops[0])
                    results.append(_ONE_NONE)
                    continue
                item: list[object] = []
                for op in ops:
                    if isinstance(op, AUDIT_OPS):
                        item.append(await self._apply_audit(conn, op, chain, events, tx, item))
                    else:
                        if isinstance(op, EndSession):
                            tx.force("session_end")
                        item.append(await self._apply(conn, op, chain, events))
                results.append(item)
            if events:
                if any(e.session_id is None for e in events):
                    await self._lock_chain_none(conn, chain)
                await self._insert_events(conn, chain, events, now)
            written, pending = await self._finish(conn, chain, tx, now)
            await transaction.commit()
        except BaseException:
            if not conn.is_closed():
                with contextlib.suppress(Exception):
                    await transaction.rollback()
            self._last_heartbeat = 0.0
            raise
        chain.commit()
        self.tracker.committed(pending, written, now)
        return [tuple(r) for r in results]

    async def _lock_chain_none(self, conn: Any, chain: ChainBatch) -> None:
        """The chain outside sessions is shared by every gateway on the store: continue it from
        its head in the database, read under a lock held until COMMIT."""
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_CHAIN_NONE)
        row = await conn.fetchrow(
            "SELECT seq, hash FROM events WHERE session_id IS NULL ORDER BY seq DESC LIMIT 1"
        )
        if row is None:
            chain.set_head(None, 0, ZERO_HASH)
        else:
            chain.set_head(None, int(row[0]), str(row[1]))

    async def _insert_events(
        self, conn: Any, chain: ChainBatch, events: list[AppendEvent], now: float
    ) -> None:
        rows = chain.rows(events)
        sinks = self.settings.sinks
        if sinks:
            columns = [list(c) for c in zip(*rows, strict=True)]
            await conn.execute(_INSERT_EVENTS_OUTBOX, *columns, now, list(sinks))
        else:
            # binary COPY: a quarter less server time per event than INSERT ... unnest
            await conn.copy_records_to_table("events", records=rows, columns=_EVENT_FIELDS)

    async def _finish(
        self, conn: Any, chain: ChainBatch, tx: TxState, now: float
    ) -> tuple[CheckpointRecord | None, dict[str | None, tuple[int, str]]]:
        settings = self.settings
        pending = chain.pending_heads()
        written: CheckpointRecord | None = None
        forced = tx.checkpoint_kind is not None
        signer = settings.signer
        if signer is not None and self.tracker.due(settings, now, pending, forced=forced):
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_CHECKPOINTS)
            last = await conn.fetchrow(
                f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY id DESC LIMIT 1"
            )
            if last is not None:
                record = checkpoint_from_row(tuple(last))
                self.tracker.last_id, self.tracker.last_digest = record.id, digest_of(record)
            written = self.tracker.make(
                signer,
                id_=self.tracker.last_id + 1,
                prev=self.tracker.last_digest,
                ts=now,
                kind=tx.checkpoint_kind or "interval",
                pending=pending,
                purged=tx.purged,
            )
            await conn.execute(
                "INSERT INTO checkpoints (id, ts, kind, heads, purged, prev, public_key,"
                " signature) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                written.id,
                written.ts,
                written.kind,
                heads_json(written.heads),
                canonical_json(list(written.purged)),
                written.prev,
                written.public_key,
                written.signature,
            )
        for results, index in tx.checkpoint_slots:
            results[index] = None if written is None else written.id
        if settings.gateway_id is not None and (
            now - self._last_heartbeat >= settings.heartbeat_interval
        ):
            await conn.execute(_HEARTBEAT, settings.gateway_id, now)
            self._last_heartbeat = now
        return written, pending

    # --- operations -----------------------------------------------------------------------------

    @staticmethod
    async def _apply(
        conn: Any, op: WriteOp, chain: ChainBatch, events: list[AppendEvent]
    ) -> object:
        if type(op) is AppendEvent:
            events.append(op)
            return None
        if isinstance(op, InsertSession):
            await conn.execute(_INSERT_SESSION, *session_row_params(op.record))
            return None
        if isinstance(op, EndSession):
            chain.close(op.session_id)
            await conn.execute(
                "UPDATE sessions SET ended_at = $1, end_reason = $2, bytes_from_client = $3,"
                " bytes_to_client = $4, statements = $5 WHERE id = $6",
                op.ended_at,
                op.end_reason,
                op.bytes_from_client,
                op.bytes_to_client,
                op.statements,
                op.session_id,
            )
            return None
        if isinstance(op, InsertApiKey):
            k = op.record
            await conn.execute(
                "INSERT INTO api_keys (name, key_id, key_hash, groups, created_at, expires_at,"
                " revoked_at, last_used_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8,"
                " $9)",
                k.name,
                k.key_id,
                k.key_hash,
                _groups(k.groups),
                k.created_at,
                k.expires_at,
                k.revoked_at,
                k.last_used_at,
                k.created_by,
            )
            return None
        if isinstance(op, RevokeApiKey):
            status = await conn.execute(
                "UPDATE api_keys SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL",
                op.revoked_at,
                op.name,
            )
            return str(status) != "UPDATE 0"
        if isinstance(op, TouchApiKey):
            await conn.execute(
                "UPDATE api_keys SET last_used_at = GREATEST(COALESCE(last_used_at, 0), $1)"
                " WHERE name = $2",
                op.last_used_at,
                op.name,
            )
            return None
        if isinstance(op, InsertSessionToken):
            t = op.record
            await conn.execute(
                "INSERT INTO session_tokens (id, token_hash, subject, groups, issuer, created_at,"
                " expires_at, revoked_at, last_used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8,"
                " $9)",
                t.id,
                t.token_hash,
                t.subject,
                _groups(t.groups),
                t.issuer,
                t.created_at,
                t.expires_at,
                t.revoked_at,
                t.last_used_at,
            )
            return None
        if isinstance(op, RevokeSessionToken):
            status = await conn.execute(
                "UPDATE session_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                op.revoked_at,
                op.token_id,
            )
            return str(status) != "UPDATE 0"
        if isinstance(op, TouchSessionToken):
            await conn.execute(
                "UPDATE session_tokens SET last_used_at = GREATEST(COALESCE(last_used_at, 0), $1)"
                " WHERE id = $2",
                op.last_used_at,
                op.token_id,
            )
            return None
        raise TypeError(f"unknown write operation {type(op).__name__}")

    async def _apply_audit(
        self,
        conn: Any,
        op: WriteOp,
        chain: ChainBatch,
        events: list[AppendEvent],
        tx: TxState,
        results: list[object],
    ) -> object:
        if isinstance(op, Checkpoint):
            tx.force(op.kind)
            tx.checkpoint_slots.append((results, len(results)))
            return None
        if isinstance(op, CloseInterrupted):
            return await self._close_interrupted(conn, op, chain, events, tx)
        if isinstance(op, PurgeSessions):
            return await self._purge(conn, op, tx)
        if isinstance(op, Heartbeat):
            await conn.execute(_HEARTBEAT, op.gateway_id, op.ts)
            return None
        if isinstance(op, ClaimOutbox):
            # FOR UPDATE: a second exporter on the same sink waits here, then sees the rows
            # leased (not due) and takes nothing, so each sink gets its events in id order
            rows = await conn.fetch(
                "SELECT id, event_id, attempts, next_attempt_at FROM outbox WHERE sink = $1"
                " ORDER BY id LIMIT $2 FOR UPDATE",
                op.sink,
                op.limit,
            )
            items = due_prefix(op, [tuple(r) for r in rows])
            if items:
                await conn.execute(
                    "UPDATE outbox SET next_attempt_at = $1 WHERE id = ANY($2::bigint[])",
                    op.lease_until,
                    [i.id for i in items],
                )
            return items
        if isinstance(op, OutboxDelivered):
            await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", list(op.ids))
            return None
        if isinstance(op, OutboxFailed):
            await conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2"
                " WHERE id = ANY($3::bigint[])",
                op.next_attempt_at,
                op.error[:500],
                list(op.ids),
            )
            return None
        if isinstance(op, TrimOutbox):
            count = int(await conn.fetchval("SELECT COUNT(*) FROM outbox WHERE sink = $1", op.sink))
            excess = count - op.max_rows
            if excess <= 0:
                return (0, None, None)
            rows = await conn.fetch(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE sink = $1"
                " ORDER BY id LIMIT $2) RETURNING event_id",
                op.sink,
                excess,
            )
            ids = [int(r[0]) for r in rows]
            return (len(ids), min(ids), max(ids)) if ids else (0, None, None)
        raise TypeError(f"unknown write operation {type(op).__name__}")

    async def _close_interrupted(
        self,
        conn: Any,
        op: CloseInterrupted,
        chain: ChainBatch,
        events: list[AppendEvent],
        tx: TxState,
    ) -> tuple[str, ...]:
        sql = (
            "SELECT id, bytes_from_client, bytes_to_client FROM sessions WHERE ended_at IS NULL"
            " AND (gateway_id IS NULL OR gateway_id = $1"
        )
        args: list[object] = [op.gateway_id]
        if op.stale_before is not None:
            sql += " OR gateway_id IN (SELECT id FROM gateways WHERE seen_at < $2)"
            args.append(op.stale_before)
        found = await conn.fetch(sql + ") ORDER BY started_at FOR UPDATE", *args)
        closed: list[str] = []
        for sid, bytes_in, bytes_out in found:
            if chain.holds(sid):
                continue
            last = await conn.fetchrow(
                "SELECT seq, hash FROM events WHERE session_id = $1 ORDER BY seq DESC LIMIT 1", sid
            )
            statements = int(
                await conn.fetchval(
                    "SELECT COUNT(*) FROM events WHERE session_id = $1"
                    " AND type IN ('query', 'http.request')",
                    sid,
                )
            )
            seq, digest = (int(last[0]), str(last[1])) if last is not None else (0, ZERO_HASH)
            chain.set_head(sid, seq, digest)
            payload = session_end_payload(op.reason, int(bytes_in), int(bytes_out), statements)
            events.append(AppendEvent(sid, seq + 1, op.ended_at, SESSION_END, payload))
            chain.close(sid)
            await conn.execute(
                "UPDATE sessions SET ended_at = $1, end_reason = $2, statements = $3 WHERE id = $4",
                op.ended_at,
                op.reason,
                statements,
                sid,
            )
            closed.append(str(sid))
        if closed:
            tx.force("session_end")
        return tuple(closed)

    async def _purge(self, conn: Any, op: PurgeSessions, tx: TxState) -> tuple[str, ...]:
        rows = await conn.fetch(
            "SELECT id FROM sessions WHERE ended_at IS NOT NULL AND ended_at < $1"
            " ORDER BY ended_at LIMIT $2 FOR UPDATE",
            op.ended_before,
            op.limit,
        )
        ids = [str(r[0]) for r in rows]
        if not ids:
            return ()
        await conn.execute(
            "DELETE FROM outbox WHERE event_id IN (SELECT id FROM events"
            " WHERE session_id = ANY($1::text[]))",
            ids,
        )
        await conn.execute("DELETE FROM events WHERE session_id = ANY($1::text[])", ids)
        await conn.execute("DELETE FROM sessions WHERE id = ANY($1::text[])", ids)
        tx.force("purge")
        tx.purged.extend(ids)
        for sid in ids:
            self.tracker.dirty.pop(sid, None)
        return tuple(ids)
