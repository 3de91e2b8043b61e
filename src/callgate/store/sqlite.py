"""The SQLite backend: the embedded default (stdlib ``sqlite3``, WAL, ``synchronous=NORMAL``).

Two connections: the writer thread's (every write, group-committed) and one for reads, which WAL
lets run alongside the writer. ``synchronous=NORMAL`` in WAL mode means a commit survives a crash
of the process but the last commits may be lost on a power failure; the write-ahead log is synced
at checkpoints.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from callgate.store.audit_records import AUDIT_OPS
from callgate.store.base import Store
from callgate.store.chain import ZERO_HASH, ChainBatch, ChainHeads
from callgate.store.checkpoints import AuditWriterSettings
from callgate.store.errors import StoreBusy, StoreConflict, StoreError, StoreUnavailable
from callgate.store.journal import EventJournal, JournalBusy, journal_path
from callgate.store.journal import pending as journal_pending
from callgate.store.records import (
    ApiKeyRecord,
    AppendEvent,
    EndSession,
    EventRecord,
    InsertApiKey,
    InsertSession,
    InsertSessionToken,
    JournalMark,
    RevokeApiKey,
    RevokeSessionToken,
    SessionRecord,
    SessionTokenRecord,
    TouchApiKey,
    TouchSessionToken,
    WriteOp,
    session_row_params,
)
from callgate.store.schema import LATEST_VERSION, SQLITE_MIGRATIONS, Migration
from callgate.store.sqlite_audit import SqliteAudit, SqliteAuditReads, TxState
from callgate.store.writer import MAX_BATCH_ITEMS, GroupCommitWriter, LoopWriter, Outcome

# SQLite result codes: another connection holds the lock.
SQLITE_BUSY = 5
SQLITE_LOCKED = 6

log = logging.getLogger("callgate.store")

#: Seconds a connection waits for another process's lock (e.g. a CLI command writing while the
#: gateway runs) before the write fails as "database is locked".
DEFAULT_BUSY_TIMEOUT = 5.0

#: Seconds between two background checkpoints while the store is being written. Checkpoints copy
#: the WAL into the database file and fsync; run by the writer they cost a third of its time.
CHECKPOINT_INTERVAL = 1.0

#: WAL length (pages; 16384 pages of 4 KiB = 64 MiB) above which the checkpointer truncates the
#: WAL, briefly holding the writer back. Under sustained load passive checkpoints never catch up
#: with the end of the log, and the log would otherwise grow without bound.
WAL_TRUNCATE_PAGES = 16384

_ONE_NONE: tuple[object, ...] = (None,)

_INSERT_SESSION = (
    "INSERT INTO sessions (id, subject, groups, auth_method, credential_id, issuer, connection,"
    " protocol, client_addr, client_user, application_name, tls, started_at, gateway_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_END_SESSION = (
    "UPDATE sessions SET ended_at = ?, end_reason = ?, bytes_from_client = ?,"
    " bytes_to_client = ?, statements = ? WHERE id = ?"
)
_INSERT_API_KEY = (
    "INSERT INTO api_keys (name, key_id, key_hash, groups, created_at, expires_at, revoked_at,"
    " last_used_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# session tokens are "cgt" in these names (ruff takes any *_TOKEN string for a secret)
_INSERT_CGT = (
    "INSERT INTO session_tokens (id, token_hash, subject, groups, issuer, created_at, expires_at,"
    " revoked_at, last_used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
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


def connect(
    path: Path, *, busy_timeout: float, check_same_thread: bool = True
) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with our pragmas."""
    conn = sqlite3.connect(
        path,
        timeout=busy_timeout,
        isolation_level=None,
        check_same_thread=check_same_thread,
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = SQLITE_MIGRATIONS) -> int:
    """Bring the schema to the latest version; return the version found before. Safe to race."""
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        raise StoreUnavailable(f"cannot use WAL journal mode on this database (got {mode!r})")
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        (current,) = conn.execute(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
        ).fetchone()
        latest = migrations[-1].version if migrations else 0
        if current > latest:
            raise StoreError(
                f"the store's schema version {current} is newer than this callgate ({latest});"
                " upgrade callgate"
            )
        for migration in migrations:
            if migration.version <= current:
                continue
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.description, time.time()),
            )
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return int(current)


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is open; a failing rollback must not hide the first error."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.debug("rollback failed", exc_info=True)


def _groups(text: str) -> tuple[str, ...]:
    value = json.loads(text)
    return tuple(str(g) for g in value) if isinstance(value, list) else ()


def _dump_groups(groups: Sequence[str]) -> str:
    return json.dumps(list(groups), separators=(",", ":"))


class _Checkpointer:
    """Runs WAL checkpoints on its own thread and connection, off the writer's commit path.

    ``sqlite3`` releases the GIL while SQLite works, so the copy and fsync use another core.
    """

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self.dirty = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="callgate-store-checkpoint", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        try:
            conn = connect(self._path, busy_timeout=self._busy_timeout)
        except sqlite3.Error:
            log.warning("cannot open %s for checkpoints; the WAL will grow", self._path)
            return
        try:
            while not self._stop.wait(CHECKPOINT_INTERVAL):
                self.checkpoint(conn)
            self.checkpoint(conn)
        finally:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        if not self.dirty:
            return
        self.dirty = False
        try:
            _busy, wal_pages, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if wal_pages > WAL_TRUNCATE_PAGES:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            self.dirty = True
            log.debug("checkpoint of %s failed: %s", self._path, exc)


_JOURNAL_APPLIED = (
    "INSERT INTO store_meta (key, value) VALUES ('journal_applied', ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


def _insert_session(conn: sqlite3.Connection, r: SessionRecord) -> None:
    conn.execute(_INSERT_SESSION, session_row_params(r))


def _replay_head(
    conn: sqlite3.Connection, chain: ChainBatch, sid: str, heads: dict[str, int | None]
) -> None:
    """Continue a previous process's session ``sid`` from the store's last event of it."""
    known = conn.execute("SELECT 1 FROM sessions WHERE id = ?", (sid,)).fetchone()
    if known is None:
        log.warning("audit journal: events of unknown session %s not replayed", sid)
        heads[sid] = None
        return
    last = conn.execute(
        "SELECT seq, hash FROM events WHERE session_id = ? ORDER BY seq DESC LIMIT 1",
        (sid,),
    ).fetchone()
    seq, digest = (int(last[0]), str(last[1])) if last is not None else (0, ZERO_HASH)
    chain.set_head(sid, seq, digest)
    chain.close(sid)  # a previous process's session: not live here
    heads[sid] = seq


def _replay_events(
    conn: sqlite3.Connection,
    chain: ChainBatch,
    replay: Sequence[WriteOp],
    events: list[AppendEvent],
    heads: dict[str, int | None],
    tx: TxState,
) -> None:
    """Queue a previous process's journaled events: each session's chain continues from the
    store's last event; events the store already has are skipped (``heads``: session → last
    ``seq`` in the store, ``None`` for a session the store does not know). A journaled session
    row the store lacks is inserted, and all of that session's journaled events follow it."""
    for op in replay:
        if type(op) is InsertSession:
            sid = op.record.id
            if sid not in heads:
                known = conn.execute("SELECT 1 FROM sessions WHERE id = ?", (sid,)).fetchone()
                if known is None:
                    _insert_session(conn, op.record)
                    chain.set_head(sid, 0, ZERO_HASH)
                    chain.close(sid)  # a previous process's session: not live here
                    heads[sid] = 0
            continue
        if type(op) is EndSession:
            sid = op.session_id
            if sid not in heads:
                _replay_head(conn, chain, sid, heads)
            if heads[sid] is not None:
                tx.force("session_end")  # its final head is signed, as at a live session's end
                conn.execute(
                    _END_SESSION + " AND ended_at IS NULL",
                    (
                        op.ended_at,
                        op.end_reason,
                        op.bytes_from_client,
                        op.bytes_to_client,
                        op.statements,
                        sid,
                    ),
                )
            continue
        assert type(op) is AppendEvent and op.session_id is not None and op.seq is not None
        sid = op.session_id
        if sid not in heads:
            _replay_head(conn, chain, sid, heads)
        head = heads[sid]
        if head is None or op.seq <= head:
            continue
        events.append(op)
        heads[sid] = op.seq


class _SqliteSink:
    """The writer thread's side: applies batches of write operations in one transaction."""

    def __init__(self, path: Path, busy_timeout: float, checkpointer: _Checkpointer) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._checkpointer = checkpointer
        self._conn: sqlite3.Connection | None = None
        self._file_id: tuple[int, int] | None = None
        self._watch = -1  # a read-only descriptor of the database file (see file_ok)
        self._heads = ChainHeads()
        #: checkpoints, event ids, outbox rows (callgate.store.sqlite_audit)
        self.audit = SqliteAudit()

    def open(self) -> None:
        self._conn = connect(self._path, busy_timeout=self._busy_timeout)
        # The checkpointer thread does this work (see _Checkpointer).
        self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._file_id = self._identity()
        self._watch = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(self._watch)
        if (st.st_dev, st.st_ino) != self._file_id:  # replaced in between: no fast path
            os.close(self._watch)
            self._watch = -1
        row = self._conn.execute(
            "SELECT seq, hash FROM events WHERE session_id IS NULL ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row is not None:
            self._heads = ChainHeads([(None, int(row[0]), str(row[1]))])
        self.audit.open(self._conn)

    def idle(self) -> None:
        """An interval checkpoint or heartbeat that no write came along to carry."""
        if self._conn is None or not self.audit.idle_due(time.time()):
            return
        outcome = self.write([()])[0]
        if isinstance(outcome, StoreError):
            log.debug("idle checkpoint failed: %s", outcome)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._watch >= 0:
            os.close(self._watch)
            self._watch = -1

    def _identity(self) -> tuple[int, int]:
        st = os.stat(self._path)
        return st.st_dev, st.st_ino

    def watched_file(self) -> tuple[int, str]:
        """A read-only descriptor of the database file and its path, for
        :class:`callgate.store.filewatch.FileWatch` (-1 if the file was replaced at open)."""
        return self._watch, str(self._path)

    def journal_applied(self) -> int:
        if self._conn is None:
            raise StoreUnavailable("store write failed: not open")
        row = self._conn.execute(
            "SELECT value FROM store_meta WHERE key = 'journal_applied'"
        ).fetchone()
        return int(row[0]) if row is not None else 0

    def _check_file(self) -> None:
        """SQLite keeps writing to a database file that was deleted or replaced (it holds the open
        descriptor), which would silently lose every later event: refuse instead."""
        try:
            same = self._identity() == self._file_id
        except OSError:
            raise StoreUnavailable(f"store write failed: {self._path} was removed") from None
        if not same:
            raise StoreUnavailable(f"store write failed: {self._path} was replaced")

    def write(self, batch: Sequence[Sequence[WriteOp]]) -> list[Outcome]:
        try:
            self._check_file()
            return list(self._transaction(batch))
        except StoreUnavailable as exc:
            return [exc] * len(batch)
        except sqlite3.IntegrityError as exc:
            if len(batch) == 1:
                return [StoreConflict(f"store write refused: {exc}")]
            # One item broke a constraint: isolate it so the others still commit.
            return [self.write([item])[0] for item in batch]
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", None) in (SQLITE_BUSY, SQLITE_LOCKED)
            kind = StoreBusy if busy else StoreUnavailable
            return [kind(f"store write failed: {exc}")] * len(batch)
        except (sqlite3.Error, OSError) as exc:
            error = StoreUnavailable(f"store write failed: {exc}")
            return [error] * len(batch)

    def _transaction(self, batch: Sequence[Sequence[WriteOp]]) -> list[tuple[object, ...]]:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("store write failed: not open")
        chain = self._heads.batch()
        events: list[AppendEvent] = []
        results: list[Sequence[object]] = []
        slow = False
        audit = self.audit
        tx = TxState()
        now = time.time()
        journal_seq = 0
        replayed: dict[str, int | None] = {}
        conn.execute("BEGIN IMMEDIATE")
        try:
            for ops in batch:
                if len(ops) == 1 and type(ops[0]) is AppendEvent:  # the common item
                    events.append(ops[0])
                    results.append(_ONE_NONE)
                elif ops and type(ops[-1]) is JournalMark:  # events in the audit journal
                    mark = ops[-1]
                    if mark.replay:
                        _replay_events(conn, chain, ops[:-1], events, replayed, tx)
                    else:
                        for op in ops[:-1]:
                            if type(op) is AppendEvent:
                                events.append(op)
                            else:  # a session's row: its start or its end
                                if type(op) is EndSession:
                                    tx.force("session_end")
                                self._apply(conn, op, chain, events)
                    journal_seq = max(journal_seq, mark.seq)
                    results.append(_ONE_NONE)
                else:
                    slow = True
                    item: list[object] = []
                    for op in ops:
                        if isinstance(op, AUDIT_OPS):
                            item.append(audit.apply(conn, op, chain, events, tx, item))
                        else:
                            if isinstance(op, EndSession):
                                tx.force("session_end")
                            item.append(self._apply(conn, op, chain, events))
                    # a list until COMMIT: a Checkpoint op's result (its id) is known only then
                    results.append(item)
            if events:
                # Events are linked in queue order; other ops do not touch the events table.
                audit.insert_events(conn, chain, events, now)
            if journal_seq:
                conn.execute(_JOURNAL_APPLIED, (str(journal_seq),))
            written, pending = audit.finish(conn, chain, tx, now)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            audit.rolled_back()
            raise
        chain.commit()
        audit.committed(len(events), written, pending, now)
        self._checkpointer.dirty = True
        return [tuple(r) for r in results] if slow else results  # type: ignore[return-value]

    @staticmethod
    def _apply(
        conn: sqlite3.Connection, op: WriteOp, chain: ChainBatch, events: list[AppendEvent]
    ) -> object:
        if type(op) is AppendEvent:
            events.append(op)
            return None
        if isinstance(op, InsertSession):
            _insert_session(conn, op.record)
            # held by this writer from now on, even before its first event is linked at the end
            # of the transaction: a CloseInterrupted later in the batch must see it alive
            chain.set_head(op.record.id, 0, ZERO_HASH)
            return None
        if isinstance(op, EndSession):
            chain.close(op.session_id)
            conn.execute(
                _END_SESSION,
                (
                    op.ended_at,
                    op.end_reason,
                    op.bytes_from_client,
                    op.bytes_to_client,
                    op.statements,
                    op.session_id,
                ),
            )
            return None
        if isinstance(op, InsertApiKey):
            k = op.record
            conn.execute(
                _INSERT_API_KEY,
                (
                    k.name,
                    k.key_id,
                    k.key_hash,
                    _dump_groups(k.groups),
                    k.created_at,
                    k.expires_at,
                    k.revoked_at,
                    k.last_used_at,
                    k.created_by,
                ),
            )
            return None
        if isinstance(op, RevokeApiKey):
            cur = conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (op.revoked_at, op.name),
            )
            return cur.rowcount > 0
        if isinstance(op, TouchApiKey):
            conn.execute(
                "UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?)"
                " WHERE name = ?",
                (op.last_used_at, op.name),
            )
            return None
        if isinstance(op, InsertSessionToken):
            t = op.record
            conn.execute(
                _INSERT_CGT,
                (
                    t.id,
                    t.token_hash,
                    t.subject,
                    _dump_groups(t.groups),
                    t.issuer,
                    t.created_at,
                    t.expires_at,
                    t.revoked_at,
                    t.last_used_at,
                ),
            )
            return None
        if isinstance(op, RevokeSessionToken):
            cur = conn.execute(
                "UPDATE session_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (op.revoked_at, op.token_id),
            )
            return cur.rowcount > 0
        if isinstance(op, TouchSessionToken):
            conn.execute(
                "UPDATE session_tokens SET last_used_at = MAX(COALESCE(last_used_at, 0), ?)"
                " WHERE id = ?",
                (op.last_used_at, op.token_id),
            )
            return None
        raise TypeError(f"unknown write operation {type(op).__name__}")


class SqliteStore(SqliteAuditReads, Store):
    """A SQLite store at ``path``; migrates the schema and starts the writer on construction."""

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        max_batch: int = MAX_BATCH_ITEMS,
        writer: str = "loop",
        journal: bool = False,
    ) -> None:
        """``writer``: ``loop`` (group commit on the event loop's thread; the default) or
        ``thread`` (a writer thread of its own, for callers that write from several threads).

        ``journal``: keep an audit journal beside the database (:mod:`callgate.store.journal`;
        the serving gateway does, with the loop writer): strict writes of session events are
        acknowledged once appended to it. Journaled events a previous process left unapplied are
        replayed by :meth:`configure_audit` (or the first write). When another process holds the
        journal, this one runs without."""
        self._path = Path(path)
        if not self._path.parent.is_dir():
            raise StoreUnavailable(f"store directory {self._path.parent} does not exist")
        self._create_private()
        try:
            self._reader = connect(self._path, busy_timeout=busy_timeout, check_same_thread=False)
            migrate(self._reader)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open store {self._path}: {exc}") from exc
        self._read_lock = threading.Lock()
        self._checkpointer = _Checkpointer(self._path, busy_timeout)
        self._writer: GroupCommitWriter | LoopWriter
        event_journal: EventJournal | None = None
        if writer == "thread":
            if journal:
                raise ValueError("the audit journal needs the loop writer")
            sink = _SqliteSink(self._path, busy_timeout, self._checkpointer)
            self._writer = GroupCommitWriter(sink, max_batch=max_batch)
        else:
            # The loop must never sleep on SQLite's lock: the writer retries instead.
            sink = _SqliteSink(self._path, 0.0, self._checkpointer)
            event_journal = self._open_journal() if journal else None
            self._writer = LoopWriter(
                sink, max_batch=max_batch, busy_timeout=busy_timeout, journal=event_journal
            )
        self._journaled = isinstance(self._writer, LoopWriter) and event_journal is not None
        self.audit_state = sink.audit
        try:
            self._writer.start()
        except (sqlite3.Error, OSError, StoreUnavailable) as exc:
            self._reader.close()
            if event_journal is not None:
                event_journal.close()
            message = exc.message if isinstance(exc, StoreUnavailable) else str(exc)
            raise StoreUnavailable(f"cannot open store {self._path}: {message}") from exc
        self._checkpointer.start()
        self._closed = False

    def _open_journal(self) -> EventJournal | None:
        event_journal = EventJournal(journal_path(self._path))
        try:
            event_journal.open()
        except JournalBusy:
            log.info(
                "audit journal %s is held by another gateway: strict writes wait for the store",
                event_journal.path,
            )
            return None
        return event_journal

    def configure_audit(self, settings: AuditWriterSettings) -> None:
        super().configure_audit(settings)
        if isinstance(self._writer, LoopWriter):
            # the previous run's journaled events, with outbox rows for the configured sinks,
            # before anything else (a CloseInterrupted must find them in the store)
            applied = self._writer.replay_journal()
            if applied:
                log.warning("audit journal: %d record(s) replayed into the store", applied)

    def _create_private(self) -> None:
        """Create the database file readable by its owner only (it holds the audit trail); SQLite
        gives the -wal and -shm files the database file's permissions."""
        try:
            fd = os.open(self._path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return
        except OSError as exc:
            raise StoreUnavailable(f"cannot create store {self._path}: {exc.strerror}") from exc
        os.close(fd)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def url(self) -> str:
        return f"sqlite:///{self._path}"

    @property
    def healthy(self) -> bool:
        return self._writer.healthy

    @property
    def schema_version(self) -> int:
        return LATEST_VERSION

    @property
    def write_batches(self) -> int:
        """Group commits so far (for tests and metrics)."""
        return self._writer.batches

    # --- writes ---------------------------------------------------------------------------------

    def submit(self, ops: Sequence[WriteOp]) -> None:
        self._writer.put(ops, None)

    async def commit(self, ops: Sequence[WriteOp]) -> tuple[object, ...]:
        if self._journaled:
            done = cast(LoopWriter, self._writer).journaled(ops)
            if done is not None:
                return done
        waiter: asyncio.Future[tuple[object, ...]] = asyncio.get_running_loop().create_future()
        self._writer.put(ops, waiter)
        return await waiter

    # --- reads ----------------------------------------------------------------------------------

    async def journal_pending(self) -> tuple[int, int]:
        rows = self._rows("SELECT value FROM store_meta WHERE key = 'journal_applied'")
        applied = int(rows[0][0]) if rows else 0
        return journal_pending(journal_path(self._path), applied)

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._read_lock:
                return self._reader.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
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
        rows = self._rows(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,))
        return self._session(rows[0]) if rows else None

    async def list_sessions(self, *, limit: int = 100) -> list[SessionRecord]:
        rows = self._rows(
            f"SELECT {_SESSION_COLUMNS} FROM sessions ORDER BY started_at DESC, id LIMIT ?",
            (limit,),
        )
        return [self._session(r) for r in rows]

    async def session_events(self, session_id: str | None) -> list[EventRecord]:
        if session_id is None:
            rows = self._rows(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE session_id IS NULL ORDER BY seq"
            )
        else:
            rows = self._rows(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE session_id = ? ORDER BY seq",
                (session_id,),
            )
        return [EventRecord(*r) for r in rows]

    async def api_key_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        rows = self._rows(
            f"SELECT {_API_KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,)
        )
        return self._api_key(rows[0]) if rows else None

    async def api_key_by_name(self, name: str) -> ApiKeyRecord | None:
        rows = self._rows(f"SELECT {_API_KEY_COLUMNS} FROM api_keys WHERE name = ?", (name,))
        return self._api_key(rows[0]) if rows else None

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        rows = self._rows(f"SELECT {_API_KEY_COLUMNS} FROM api_keys ORDER BY name")
        return [self._api_key(r) for r in rows]

    async def session_token_by_hash(self, token_hash: str) -> SessionTokenRecord | None:
        rows = self._rows(
            f"SELECT {_CGT_COLUMNS} FROM session_tokens WHERE token_hash = ?",
            (token_hash,),
        )
        return self._session_token(rows[0]) if rows else None

    async def session_token_by_id(self, token_id: str) -> SessionTokenRecord | None:
        rows = self._rows(f"SELECT {_CGT_COLUMNS} FROM session_tokens WHERE id = ?", (token_id,))
        return self._session_token(rows[0]) if rows else None

    async def list_session_tokens(
        self, *, live_at: float | None = None, limit: int = 1000
    ) -> list[SessionTokenRecord]:
        if live_at is None:
            rows = self._rows(
                f"SELECT {_CGT_COLUMNS} FROM session_tokens ORDER BY created_at DESC, id LIMIT ?",
                (limit,),
            )
        else:
            rows = self._rows(
                f"SELECT {_CGT_COLUMNS} FROM session_tokens"
                " WHERE revoked_at IS NULL AND expires_at > ?"
                " ORDER BY created_at DESC, id LIMIT ?",
                (live_at, limit),
            )
        return [self._session_token(r) for r in rows]

    # --- lifecycle ------------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if isinstance(self._writer, LoopWriter):
            self._writer.stop()  # its connection belongs to this thread
        else:
            await asyncio.to_thread(self._writer.stop)
        await asyncio.to_thread(self._checkpointer.stop)
        with self._read_lock:
            self._reader.close()
