"""The audit service: session recorders writing hash-chained events through the store.

Durability (``gateway.audit.durability``):

- ``strict``: :meth:`SessionRecorder.statement` and :meth:`AuditService.open_session` return once
  the transaction carrying their event committed (group commit: concurrent sessions share it).
- ``async``: they return as soon as the event is queued.

When the store cannot take an event (``gateway.audit.on_store_failure``):

- ``deny``: raise :class:`~callgate.errors.AuditUnavailable`, so the statement is not forwarded and
  the session is not opened. Under ``async``, once a queued write has failed, writes are awaited
  again until one commits, so ``deny`` bites from the next statement on.
- ``allow``: log a warning (at most every :data:`WARNING_INTERVAL` seconds) and carry on.

``statement_done`` and ``auth_failure`` are always queued without waiting; ``end`` never raises.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from callgate.audit import events
from callgate.errors import AuditUnavailable, ConfigError
from callgate.model import Decision, SessionInfo, SqlCommand
from callgate.services import Clock
from callgate.store.base import Store
from callgate.store.errors import StoreError
from callgate.store.records import AppendEvent, EndSession, InsertSession, SessionRecord, WriteOp

if TYPE_CHECKING:
    from callgate.config import Config

log = logging.getLogger("callgate.audit")

DURABILITY_MODES: Final = ("strict", "async")
STORE_FAILURE_MODES: Final = ("deny", "allow")

#: Seconds between two "continuing without audit" warnings, so a dead disk does not flood the log.
WARNING_INTERVAL = 10.0

UNAVAILABLE_MESSAGE = "audit store unavailable; statement not forwarded"


class AuditService:
    """Implements :class:`callgate.services.AuditService` on a :class:`~callgate.store.Store`.

    ``close_store``: :meth:`close` also closes the store (stopping its writer); otherwise it only
    waits until every queued event is written.
    """

    def __init__(
        self,
        store: Store,
        *,
        durability: str = "strict",
        on_store_failure: str = "deny",
        clock: Clock = time.time,
        close_store: bool = True,
    ) -> None:
        if durability not in DURABILITY_MODES:
            raise ConfigError("gateway.audit.durability", "expected strict or async")
        if on_store_failure not in STORE_FAILURE_MODES:
            raise ConfigError("gateway.audit.on_store_failure", "expected deny or allow")
        self._store = store
        self._strict = durability == "strict"
        self._deny = on_store_failure == "deny"
        self._clock = clock
        self._close_store = close_store
        self._last_warning = -WARNING_INTERVAL
        self._suppressed = 0

    @property
    def store(self) -> Store:
        return self._store

    @property
    def durability(self) -> str:
        return "strict" if self._strict else "async"

    @property
    def on_store_failure(self) -> str:
        return "deny" if self._deny else "allow"

    async def open_session(self, info: SessionInfo) -> SessionRecorder:
        p = info.principal
        record = SessionRecord(
            id=info.id,
            subject=p.subject,
            groups=tuple(sorted(p.groups)),
            auth_method=p.method,
            credential_id=p.credential_id,
            issuer=p.issuer,
            connection=info.connection,
            protocol=info.protocol,
            client_addr=info.client_addr,
            client_user=info.client_user,
            application_name=info.application_name,
            tls=info.tls,
            started_at=info.started_at,
        )
        start = AppendEvent(
            info.id, 1, info.started_at, events.SESSION_START, events.session_start(info)
        )
        await self._write((InsertSession(record), start))
        return SessionRecorder(self, info.id, first_seq=1)

    def auth_failure(self, *, protocol: str, source: str, reason: str, issuer: str | None) -> None:
        payload = events.auth_failure(
            protocol=protocol, source=source, reason=reason, issuer=issuer
        )
        self._queue((AppendEvent(None, None, self._clock(), events.AUTH_FAILURE, payload),))

    async def close(self) -> None:
        """Write every queued event; with ``close_store``, also stop the store's writer."""
        if self._close_store:
            await self._store.close()
            return
        try:
            await self._store.flush()
        except StoreError as exc:
            self._warn(exc)

    # --- writing --------------------------------------------------------------------------------

    async def _write(self, ops: Sequence[WriteOp]) -> None:
        """Write under the configured durability; apply ``on_store_failure`` if it fails.

        Ops reach the writer's queue before this first suspends, so events keep their call order.
        """
        store = self._store
        try:
            if self._strict or (self._deny and not store.healthy):
                await store.commit(ops)
            else:
                store.submit(ops)
        except StoreError as exc:
            if self._deny:
                raise AuditUnavailable(UNAVAILABLE_MESSAGE) from exc
            self._warn(exc)

    def _queue(self, ops: Sequence[WriteOp]) -> None:
        """Queue without waiting, whatever the durability; never raises."""
        try:
            self._store.submit(ops)
        except StoreError as exc:
            self._warn(exc)

    async def _write_quietly(self, ops: Sequence[WriteOp]) -> None:
        """Like :meth:`_write` but never raises (the end of a session cannot be refused)."""
        try:
            if self._strict:
                await self._store.commit(ops)
            else:
                self._store.submit(ops)
        except StoreError as exc:
            self._warn(exc)

    def _warn(self, exc: StoreError) -> None:
        now = time.monotonic()
        if now - self._last_warning < WARNING_INTERVAL:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last warning)" if self._suppressed else ""
        mode = "continuing without audit" if not self._deny else "event lost"
        log.warning("audit store unavailable, %s%s: %s", mode, more, exc.message)
        self._last_warning = now
        self._suppressed = 0

    @classmethod
    def from_config(cls, config: Config, store: Store) -> AuditService:
        audit = config.gateway.audit
        return cls(
            store,
            durability=str(audit.durability),
            on_store_failure=str(audit.on_store_failure),
        )


class SessionRecorder:
    """Implements :class:`callgate.services.SessionRecorder` for one session.

    Holds the session's next sequence number in memory; the store's writer holds the chain head.
    The engine calls :meth:`statement` for one statement at a time and :meth:`end` once.
    """

    __slots__ = ("_clock", "_ended", "_id", "_seq", "_service", "_statements")

    def __init__(self, service: AuditService, session_id: str, *, first_seq: int) -> None:
        self._service = service
        self._clock = service._clock
        self._id = session_id
        self._seq = first_seq
        self._statements = 0
        self._ended = False

    @property
    def session_id(self) -> str:
        return self._id

    async def statement(self, command: SqlCommand, decision: Decision) -> int:
        if self._ended:
            raise RuntimeError("statement recorded after the session ended")
        self._seq += 1
        seq = self._seq
        payload = events.query(command, decision)
        await self._service._write(
            (AppendEvent(self._id, seq, self._clock(), events.QUERY, payload),)
        )
        self._statements += 1
        return seq

    def statement_done(
        self,
        seq: int,
        *,
        tag: str | None,
        rows: int | None,
        error_sqlstate: str | None,
        error_message: str | None,
        duration_ms: float,
    ) -> None:
        if self._ended:
            log.debug("statement result after session %s ended: not recorded", self._id)
            return
        self._seq += 1
        payload = events.query_result(
            seq,
            tag=tag,
            rows=rows,
            error_sqlstate=error_sqlstate,
            error_message=error_message,
            duration_ms=duration_ms,
        )
        self._service._queue(
            (AppendEvent(self._id, self._seq, self._clock(), events.QUERY_RESULT, payload),)
        )

    async def end(self, reason: str, *, bytes_from_client: int, bytes_to_client: int) -> None:
        if self._ended:
            return
        self._ended = True
        self._seq += 1
        now = self._clock()
        payload = events.session_end(
            reason,
            bytes_from_client=bytes_from_client,
            bytes_to_client=bytes_to_client,
            statements=self._statements,
        )
        await self._service._write_quietly(
            (
                AppendEvent(self._id, self._seq, now, events.SESSION_END, payload),
                EndSession(
                    self._id, now, reason, bytes_from_client, bytes_to_client, self._statements
                ),
            )
        )
