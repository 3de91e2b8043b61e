"""The SQLite writer's audit work: event ids and outbox rows, checkpoints, crash recovery,
retention and outbox bookkeeping. Runs on the writer thread, inside the writer's transaction.

Event ids are given by the writer (one writer per SQLite file), from the highest id ever given
(``store_meta.last_event_id`` keeps it once retention removed the newest rows), so an exported
event's id is never reused and receivers can deduplicate by it.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from callgate.store.audit_records import (
    Checkpoint,
    CheckpointRecord,
    ClaimOutbox,
    CloseInterrupted,
    Heartbeat,
    OutboxDelivered,
    OutboxFailed,
    OutboxItem,
    OutboxStatus,
    PurgeSessions,
    TrimOutbox,
)
from callgate.store.chain import ZERO_HASH, ChainBatch, canonical_json
from callgate.store.checkpoints import (
    AuditWriterSettings,
    CheckpointTracker,
    digest_of,
    heads_json,
    parse_heads,
    parse_purged,
)
from callgate.store.records import AppendEvent, EventRecord, WriteOp

log = logging.getLogger("callgate.store")

#: ``session.end`` as the audit service writes it (callgate.audit.events); duplicated here because
#: the store may not import the audit layer.
SESSION_END = "session.end"
#: ``end_reason`` of a session closed on restart because the gateway serving it died
CRASH_REASON = "ended by crash"

#: ids per ``IN (...)`` list (SQLite's variable limit is far higher; this keeps statements small)
CHUNK = 500

_INSERT_EVENT = (
    "INSERT INTO events (id, session_id, seq, ts, type, payload, prev_hash, hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_OUTBOX = (
    "INSERT INTO outbox (sink, event_id, created_at, next_attempt_at) VALUES (?, ?, ?, ?)"
)
_INSERT_CHECKPOINT = (
    "INSERT INTO checkpoints (id, ts, kind, heads, purged, prev, public_key, signature)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_HEARTBEAT = (
    "INSERT INTO gateways (id, started_at, seen_at) VALUES (?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at"
)
CHECKPOINT_COLUMNS = "id, ts, kind, heads, purged, prev, public_key, signature"


def checkpoint_from_row(row: Sequence[object]) -> CheckpointRecord:
    return CheckpointRecord(
        id=int(str(row[0])),
        ts=float(str(row[1])),
        kind=str(row[2]),
        heads=parse_heads(str(row[3])),
        purged=parse_purged(None if row[4] is None else str(row[4])),
        prev=str(row[5]),
        public_key=str(row[6]),
        signature=str(row[7]),
    )


def chunks(ids: Sequence[int] | Sequence[str], size: int = CHUNK) -> Iterable[Sequence[object]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def due_prefix(op: ClaimOutbox, rows: Sequence[Sequence[Any]]) -> tuple[OutboxItem, ...]:
    """The oldest rows up to the first one not due yet: a sink gets its events in id order, so
    rows waiting for a retry hold back the newer ones behind them."""
    items: list[OutboxItem] = []
    for row in rows:
        if float(row[3]) > op.now:
            break
        items.append(OutboxItem(int(row[0]), op.sink, int(row[1]), int(row[2])))
    return tuple(items)


def marks(n: int) -> str:
    return ",".join("?" * n)


def session_end_payload(reason: str, bytes_in: int, bytes_out: int, statements: int) -> str:
    return canonical_json(
        {
            "reason": reason,
            "bytes_from_client": bytes_in,
            "bytes_to_client": bytes_out,
            "statements": statements,
        }
    )


@dataclass
class TxState:
    """What one transaction's audit operations asked for."""

    checkpoint_kind: str | None = None
    purged: list[str] = field(default_factory=list)
    #: results of Checkpoint ops, filled in once the checkpoint is written: (results list, index)
    checkpoint_slots: list[tuple[list[object], int]] = field(default_factory=list)

    def force(self, kind: str) -> None:
        # a purge checkpoint must say so even when a session also ended in the same transaction
        if self.checkpoint_kind is None or kind == "purge":
            self.checkpoint_kind = kind


class SqliteAudit:
    """Audit state held by the writer thread (next event id, checkpoint tracker, settings)."""

    def __init__(self) -> None:
        self.settings = AuditWriterSettings()
        self.tracker = CheckpointTracker()
        self.next_id = 1
        self._last_heartbeat = 0.0

    def open(self, conn: sqlite3.Connection) -> None:
        (max_id,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        row = conn.execute("SELECT value FROM store_meta WHERE key = 'last_event_id'").fetchone()
        kept = int(row[0]) if row is not None else 0
        self.next_id = max(int(max_id), kept) + 1
        last = conn.execute(
            f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if last is not None:
            record = checkpoint_from_row(last)
            self.tracker.last_id = record.id
            self.tracker.last_digest = digest_of(record)

    # --- inside a transaction -------------------------------------------------------------------

    def insert_events(
        self, conn: sqlite3.Connection, chain: ChainBatch, events: list[AppendEvent], now: float
    ) -> None:
        first = self.next_id
        rows = chain.rows(events)
        conn.executemany(_INSERT_EVENT, [(first + i, *row) for i, row in enumerate(rows)])
        sinks = self.settings.sinks
        if sinks:
            conn.executemany(
                _INSERT_OUTBOX,
                [(sink, first + i, now, now) for sink in sinks for i in range(len(rows))],
            )

    def apply(
        self,
        conn: sqlite3.Connection,
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
            return self._close_interrupted(conn, op, chain, events, tx)
        if isinstance(op, PurgeSessions):
            return self._purge(conn, op, tx)
        if isinstance(op, Heartbeat):
            conn.execute(_HEARTBEAT, (op.gateway_id, op.ts, op.ts))
            return None
        if isinstance(op, ClaimOutbox):
            found = conn.execute(
                "SELECT id, event_id, attempts, next_attempt_at FROM outbox WHERE sink = ?"
                " ORDER BY id LIMIT ?",
                (op.sink, op.limit),
            ).fetchall()
            items = due_prefix(op, found)
            for part in chunks([i.id for i in items]):
                conn.execute(
                    f"UPDATE outbox SET next_attempt_at = ? WHERE id IN ({marks(len(part))})",
                    (op.lease_until, *part),
                )
            return items
        if isinstance(op, OutboxDelivered):
            for part in chunks(op.ids):
                conn.execute(f"DELETE FROM outbox WHERE id IN ({marks(len(part))})", tuple(part))
            return None
        if isinstance(op, OutboxFailed):
            for part in chunks(op.ids):
                conn.execute(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?,"
                    f" last_error = ? WHERE id IN ({marks(len(part))})",
                    (op.next_attempt_at, op.error[:500], *part),
                )
            return None
        if isinstance(op, TrimOutbox):
            return self._trim(conn, op)
        raise TypeError(f"unknown write operation {type(op).__name__}")

    def _close_interrupted(
        self,
        conn: sqlite3.Connection,
        op: CloseInterrupted,
        chain: ChainBatch,
        events: list[AppendEvent],
        tx: TxState,
    ) -> tuple[str, ...]:
        sql = (
            "SELECT id, bytes_from_client, bytes_to_client FROM sessions"
            " WHERE ended_at IS NULL AND (gateway_id IS NULL OR gateway_id = ?"
        )
        params: list[object] = [op.gateway_id]
        if op.stale_before is not None:
            sql += " OR gateway_id IN (SELECT id FROM gateways WHERE seen_at < ?)"
            params.append(op.stale_before)
        found = conn.execute(sql + ") ORDER BY started_at", params).fetchall()
        closed: list[str] = []
        for sid, bytes_in, bytes_out in found:
            if chain.holds(sid):  # open in this gateway: alive, not interrupted
                continue
            last = conn.execute(
                "SELECT seq, hash FROM events WHERE session_id = ? ORDER BY seq DESC LIMIT 1",
                (sid,),
            ).fetchone()
            (statements,) = conn.execute(
                "SELECT COUNT(*) FROM events WHERE session_id = ?"
                " AND type IN ('query', 'http.request')",
                (sid,),
            ).fetchone()
            seq, digest = (int(last[0]), str(last[1])) if last is not None else (0, ZERO_HASH)
            chain.set_head(sid, seq, digest)
            payload = session_end_payload(op.reason, bytes_in, bytes_out, statements)
            events.append(AppendEvent(sid, seq + 1, op.ended_at, SESSION_END, payload))
            chain.close(sid)
            conn.execute(
                "UPDATE sessions SET ended_at = ?, end_reason = ?, statements = ? WHERE id = ?",
                (op.ended_at, op.reason, statements, sid),
            )
            closed.append(sid)
        if closed:
            tx.force("session_end")
        return tuple(closed)

    def _purge(self, conn: sqlite3.Connection, op: PurgeSessions, tx: TxState) -> tuple[str, ...]:
        ids = [
            str(r[0])
            for r in conn.execute(
                "SELECT id FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ?"
                " ORDER BY ended_at LIMIT ?",
                (op.ended_before, op.limit),
            )
        ]
        if not ids:
            return ()
        for part in chunks(ids):
            m = marks(len(part))
            conn.execute(
                f"DELETE FROM outbox WHERE event_id IN (SELECT id FROM events WHERE session_id IN"
                f" ({m}))",
                tuple(part),
            )
            conn.execute(f"DELETE FROM events WHERE session_id IN ({m})", tuple(part))
            conn.execute(f"DELETE FROM sessions WHERE id IN ({m})", tuple(part))
        conn.execute(
            "INSERT INTO store_meta (key, value) VALUES ('last_event_id', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(self.next_id - 1),),
        )
        tx.force("purge")
        tx.purged.extend(ids)
        for sid in ids:
            self.tracker.dirty.pop(sid, None)
        return tuple(ids)

    @staticmethod
    def _trim(conn: sqlite3.Connection, op: TrimOutbox) -> tuple[int, int | None, int | None]:
        (count,) = conn.execute("SELECT COUNT(*) FROM outbox WHERE sink = ?", (op.sink,)).fetchone()
        excess = int(count) - op.max_rows
        if excess <= 0:
            return (0, None, None)
        rows = conn.execute(
            "SELECT id, event_id FROM outbox WHERE sink = ? ORDER BY id LIMIT ?", (op.sink, excess)
        ).fetchall()
        for part in chunks([int(r[0]) for r in rows]):
            conn.execute(f"DELETE FROM outbox WHERE id IN ({marks(len(part))})", tuple(part))
        event_ids = [int(r[1]) for r in rows]
        return (len(rows), min(event_ids), max(event_ids))

    def finish(
        self, conn: sqlite3.Connection, chain: ChainBatch, tx: TxState, now: float
    ) -> tuple[CheckpointRecord | None, dict[str | None, tuple[int, str]]]:
        """Write the checkpoint (when due) and the heartbeat; before COMMIT."""
        settings = self.settings
        pending = chain.pending_heads()
        written: CheckpointRecord | None = None
        forced = tx.checkpoint_kind is not None
        if settings.signer is not None and self.tracker.due(settings, now, pending, forced=forced):
            written = self.tracker.make(
                settings.signer,
                id_=self.tracker.last_id + 1,
                prev=self.tracker.last_digest,
                ts=now,
                kind=tx.checkpoint_kind or "interval",
                pending=pending,
                purged=tx.purged,
            )
            conn.execute(
                _INSERT_CHECKPOINT,
                (
                    written.id,
                    written.ts,
                    written.kind,
                    heads_json(written.heads),
                    canonical_json(list(written.purged)),
                    written.prev,
                    written.public_key,
                    written.signature,
                ),
            )
        for results, index in tx.checkpoint_slots:
            results[index] = None if written is None else written.id
        if settings.gateway_id is not None and now - self._last_heartbeat >= (
            settings.heartbeat_interval
        ):
            conn.execute(_HEARTBEAT, (settings.gateway_id, now, now))
            self._last_heartbeat = now
        return written, pending

    def committed(
        self,
        events: int,
        written: CheckpointRecord | None,
        pending: dict[str | None, tuple[int, str]],
        now: float,
    ) -> None:
        self.next_id += events
        self.tracker.committed(pending, written, now)

    def rolled_back(self) -> None:
        # the heartbeat may not have been written; try again with the next transaction
        self._last_heartbeat = 0.0

    def idle_due(self, now: float) -> bool:
        settings = self.settings
        checkpoint = self.tracker.due(settings, now, {}, forced=False)
        heartbeat = settings.gateway_id is not None and (
            now - self._last_heartbeat >= settings.heartbeat_interval
        )
        return checkpoint or heartbeat


def wall_clock() -> float:
    return time.time()


_EVENT_COLUMNS = "id, session_id, seq, ts, type, payload, prev_hash, hash"


class SqliteAuditReads:
    """The audit reads of :class:`callgate.store.sqlite.SqliteStore` (mixed into it)."""

    audit_state: SqliteAudit

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def configure_audit(self, settings: AuditWriterSettings) -> None:
        self.audit_state.settings = settings

    async def checkpoints(self) -> list[CheckpointRecord]:
        rows = self._rows(f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY id")
        return [checkpoint_from_row(r) for r in rows]

    async def chain_ids(self) -> list[str | None]:
        rows = self._rows(
            "SELECT id FROM sessions UNION SELECT DISTINCT session_id FROM events"
            " WHERE session_id IS NOT NULL ORDER BY 1"
        )
        chains: list[str | None] = [str(r[0]) for r in rows]
        if self._rows("SELECT 1 FROM events WHERE session_id IS NULL LIMIT 1"):
            chains.append(None)
        return chains

    async def events_by_ids(self, ids: Sequence[int]) -> list[EventRecord]:
        found: list[EventRecord] = []
        for part in chunks(list(ids)):
            rows = self._rows(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE id IN ({marks(len(part))})",
                tuple(part),
            )
            found.extend(EventRecord(*r) for r in rows)
        found.sort(key=lambda e: e.id)
        return found

    async def events_page(
        self,
        after_id: int,
        limit: int,
        *,
        session_id: str | None = None,
        since: float | None = None,
    ) -> list[EventRecord]:
        sql = f"SELECT {_EVENT_COLUMNS} FROM events WHERE id > ?"
        params: list[object] = [after_id]
        if session_id is not None:
            sql += " AND session_id = ?"
            params.append(session_id)
        if since is not None:
            sql += " AND ts >= ?"
            params.append(since)
        rows = self._rows(sql + " ORDER BY id LIMIT ?", (*params, limit))
        return [EventRecord(*r) for r in rows]

    async def outbox_status(self) -> list[OutboxStatus]:
        rows = self._rows(
            "SELECT sink, COUNT(*), MIN(created_at), MAX(attempts),"
            " (SELECT last_error FROM outbox o2 WHERE o2.sink = o.sink"
            "  AND last_error IS NOT NULL ORDER BY id DESC LIMIT 1)"
            " FROM outbox o GROUP BY sink ORDER BY sink"
        )
        return [OutboxStatus(str(r[0]), int(r[1]), r[2], int(r[3]), r[4]) for r in rows]
