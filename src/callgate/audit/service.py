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
import socket
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from callgate.audit import events
from callgate.audit.signing import signer_from_config
from callgate.audit.sinks import sink_name
from callgate.errors import AuditUnavailable, ConfigError
from callgate.model import Decision, HttpRequest, SessionInfo, SqlCommand
from callgate.services import Clock
from callgate.store.audit_records import Checkpoint, CloseInterrupted, PurgeSessions
from callgate.store.base import Store
from callgate.store.chain import canonical_json
from callgate.store.checkpoints import AuditWriterSettings, CheckpointSigner
from callgate.store.errors import StoreError
from callgate.store.records import AppendEvent, EndSession, InsertSession, SessionRecord, WriteOp

if TYPE_CHECKING:
    from callgate.config import Config

log = logging.getLogger("callgate.audit")

DURABILITY_MODES: Final = ("strict", "async")
STORE_FAILURE_MODES: Final = ("deny", "allow")

#: Seconds between two "continuing without audit" warnings, so a dead disk does not flood the log.
WARNING_INTERVAL = 10.0

#: seconds between interval checkpoints unless configured (gateway.audit.checkpoint_interval)
DEFAULT_CHECKPOINT_SECONDS = 10.0

UNAVAILABLE_MESSAGE = "audit store unavailable; statement not forwarded"


class ParamScrubber(Protocol):
    """Turns a statement's bind parameters into what is recorded.

    The hook for the content detectors of the session's mask rules (``callgate.masking``):
    called once per statement, before its ``query`` event is built, with the session, the
    command and the policy decision; returns one value per parameter (``None`` for SQL NULL).
    Must not block or do I/O: it runs on the data path.
    """

    def __call__(
        self, session: SessionInfo, command: SqlCommand, decision: Decision
    ) -> Sequence[bytes | None]: ...


def record_params_as_sent(
    session: SessionInfo, command: SqlCommand, decision: Decision
) -> Sequence[bytes | None]:
    """The default :class:`ParamScrubber`: parameters are recorded as the client sent them."""
    return command.params


def default_gateway_id() -> str:
    return socket.gethostname() or "callgate"


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
        scrubber: ParamScrubber = record_params_as_sent,
        record_rows: int = 0,
        record_body: int = 0,
        signer: CheckpointSigner | None = None,
        checkpoint_interval: float = DEFAULT_CHECKPOINT_SECONDS,
        sinks: Sequence[str] = (),
        gateway_id: str | None = None,
    ) -> None:
        """``scrubber``: what parameter values are recorded (see :class:`ParamScrubber`).
        ``record_rows``: rows of each result kept by :meth:`SessionRecorder.rows` (0: none).
        ``record_body``: bytes of each HTTP request and response body kept (0: none).
        ``signer``, ``checkpoint_interval``: signed checkpoints (none without a signer).
        ``sinks``: export sink names; each event gets an outbox row per sink in its transaction.
        ``gateway_id``: recorded with each session; :meth:`recover_interrupted` closes this
        gateway's sessions left open by a crash.
        """
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
        self._scrubber = scrubber
        self._record_rows = max(0, record_rows)
        self._record_body = max(0, record_body)
        self._gateway_id = gateway_id
        self._signer = signer
        if signer is not None or sinks or gateway_id is not None:
            store.configure_audit(
                AuditWriterSettings(
                    signer=signer,
                    checkpoint_interval=checkpoint_interval,
                    sinks=tuple(sinks),
                    gateway_id=gateway_id,
                )
            )

    @property
    def gateway_id(self) -> str | None:
        return self._gateway_id

    @property
    def record_rows(self) -> int:
        return self._record_rows

    @property
    def record_body(self) -> int:
        return self._record_body

    @property
    def signing(self) -> bool:
        """Whether checkpoints are signed (a signing key is configured)."""
        return self._signer is not None

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
            gateway_id=self._gateway_id,
        )
        start = AppendEvent(
            info.id, 1, info.started_at, events.SESSION_START, events.session_start(info)
        )
        await self._write((InsertSession(record), start))
        return SessionRecorder(self, info, first_seq=1)

    def auth_failure(self, *, protocol: str, source: str, reason: str, issuer: str | None) -> None:
        payload = events.auth_failure(
            protocol=protocol, source=source, reason=reason, issuer=issuer
        )
        self._queue((AppendEvent(None, None, self._clock(), events.AUTH_FAILURE, payload),))

    async def event(
        self, type_: str, payload: Mapping[str, Any], *, ts: float | None = None
    ) -> None:
        """Append an event outside any session (reviews, grants) and wait for its commit.

        Raises :class:`~callgate.store.errors.StoreError` when it was not written, so a caller
        relaying from an outbox can try again. Never pass a credential in ``payload``.
        """
        when = self._clock() if ts is None else ts
        data = canonical_json(dict(payload))
        await self._store.commit((AppendEvent(None, None, when, type_, data),))

    # --- checkpoints, crash recovery, retention, export bookkeeping -----------------------------

    async def checkpoint(self, kind: str = "manual") -> int | None:
        """Sign the chain heads that moved since the last checkpoint now; its id (``None``
        without a signing key)."""
        (result,) = await self._store.commit((Checkpoint(kind),))
        return result if isinstance(result, int) else None

    def recovery_ops(self, *, stale_before: float | None = None) -> tuple[CloseInterrupted]:
        return (
            CloseInterrupted(
                self._gateway_id, self._clock(), events.CRASH_REASON, stale_before=stale_before
            ),
        )

    async def recover_interrupted(self, *, stale_before: float | None = None) -> tuple[str, ...]:
        """Close the sessions this gateway (``gateway_id``) left open when it died, appending a
        ``session.end`` with reason ``ended by crash`` to each chain; with ``stale_before``, also
        those of gateways whose last heartbeat is older. Returns the session ids closed."""
        (closed,) = await self._store.commit(self.recovery_ops(stale_before=stale_before))
        ids = tuple(str(s) for s in closed) if isinstance(closed, tuple) else ()
        if ids:
            log.warning("%d session(s) left open by a crash marked ended: %s", len(ids), ids)
        return ids

    async def purge(self, ended_before: float, *, batch: int = 1000) -> int:
        """Remove sessions that ended before ``ended_before`` with their events, ``batch`` per
        transaction (each with a signed ``purge`` checkpoint). Returns how many were removed."""
        total = 0
        while True:
            (purged,) = await self._store.commit((PurgeSessions(ended_before, batch),))
            n = len(purged) if isinstance(purged, tuple) else 0
            total += n
            if n < batch:
                return total

    def record_backlog_dropped(
        self,
        *,
        sink: str,
        dropped: int,
        first_event_id: int | None,
        last_event_id: int | None,
        bound: int,
    ) -> None:
        payload = events.backlog_dropped(
            sink=sink,
            dropped=dropped,
            first_event_id=first_event_id,
            last_event_id=last_event_id,
            bound=bound,
        )
        self._queue((AppendEvent(None, None, self._clock(), events.BACKLOG_DROPPED, payload),))

    async def flush(self) -> None:
        """Wait until everything queued so far (a session's end, results) is committed."""
        await self._store.flush()

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
    def from_config(
        cls,
        config: Config,
        store: Store,
        *,
        scrubber: ParamScrubber = record_params_as_sent,
        recover: bool = True,
    ) -> AuditService:
        """The serving gateway's audit service. Resolves the signing key (raises
        :class:`ConfigError` when it is unusable) and, with ``recover``, queues the closing of
        this gateway's sessions that a crash left open, ahead of any new session's write."""
        audit = config.gateway.audit
        service = cls(
            store,
            durability=str(audit.durability),
            on_store_failure=str(audit.on_store_failure),
            scrubber=scrubber,
            record_rows=audit.record_rows,
            record_body=audit.record_body,
            signer=signer_from_config(config),
            checkpoint_interval=audit.checkpoint_interval.total_seconds(),
            sinks=[sink_name(s) for s in audit.export],
            gateway_id=audit.instance or default_gateway_id(),
        )
        if recover:
            # Queued first, so the writer runs it before anything this process records.
            service._queue(service.recovery_ops())
        return service


class SessionRecorder:
    """Implements :class:`callgate.services.SessionRecorder` for one session.

    Holds the session's next sequence number in memory; the store's writer holds the chain head.
    The engine calls :meth:`statement` for one statement at a time and :meth:`end` once.
    """

    __slots__ = ("_clock", "_ended", "_id", "_info", "_seq", "_service", "_statements")

    def __init__(self, service: AuditService, info: SessionInfo, *, first_seq: int) -> None:
        self._service = service
        self._clock = service._clock
        self._info = info
        self._id = info.id
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
        service = self._service
        params = service._scrubber(self._info, command, decision) if command.params else None
        payload = events.query(command, decision, params)
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

    def rows(
        self,
        seq: int,
        columns: Sequence[str],
        rows: Sequence[Sequence[bytes | str | None]],
    ) -> None:
        """Record the first rows of statement ``seq``'s result as the caller received them (the
        engine passes them masked). Keeps at most ``record_rows`` rows; nothing when it is 0.
        Queued; never blocks the data path."""
        limit = self._service._record_rows
        if self._ended or limit <= 0:
            return
        kept = rows[:limit]
        self._seq += 1
        payload = events.query_rows(seq, columns, kept, truncated=len(rows) > len(kept))
        self._service._queue(
            (AppendEvent(self._id, self._seq, self._clock(), events.QUERY_ROWS, payload),)
        )

    # --- HTTP ---------------------------------------------------------------------------------

    @property
    def record_body(self) -> int:
        """Bytes of each HTTP body kept by :meth:`bodies` (0: none)."""
        return self._service._record_body

    async def request(self, request: HttpRequest, decision: Decision) -> int:
        """Record an HTTP request before it is forwarded (or refused); like :meth:`statement`."""
        if self._ended:
            raise RuntimeError("request recorded after the session ended")
        self._seq += 1
        seq = self._seq
        payload = events.http_request(request, decision)
        await self._service._write(
            (AppendEvent(self._id, seq, self._clock(), events.HTTP_REQUEST, payload),)
        )
        self._statements += 1
        return seq

    def response(
        self,
        seq: int,
        *,
        status: int,
        bytes_from_client: int,
        bytes_to_client: int,
        duration_ms: float,
        error: str | None = None,
    ) -> None:
        """Record how HTTP request ``seq`` ended. Queued; never blocks the data path."""
        if self._ended:
            log.debug("response after session %s ended: not recorded", self._id)
            return
        self._seq += 1
        payload = events.http_response(
            seq,
            status=status,
            bytes_from_client=bytes_from_client,
            bytes_to_client=bytes_to_client,
            duration_ms=duration_ms,
            error=error,
        )
        self._service._queue(
            (AppendEvent(self._id, self._seq, self._clock(), events.HTTP_RESPONSE, payload),)
        )

    def bodies(
        self,
        seq: int,
        *,
        request: bytes | None,
        response: bytes | None,
        request_truncated: bool = False,
        response_truncated: bool = False,
    ) -> None:
        """Keep the first ``record_body`` bytes of request ``seq``'s body and its response's,
        as forwarded and as delivered (masked). Queued; nothing when ``record_body`` is 0."""
        limit = self._service._record_body
        if self._ended or limit <= 0 or (not request and not response):
            return
        self._seq += 1
        payload = events.http_body(
            seq,
            request=request[:limit] if request else request,
            response=response[:limit] if response else response,
            request_truncated=request_truncated or len(request or b"") > limit,
            response_truncated=response_truncated or len(response or b"") > limit,
        )
        self._service._queue(
            (AppendEvent(self._id, self._seq, self._clock(), events.HTTP_BODY, payload),)
        )

    def masked(self, seq: int, columns: Sequence[tuple[str, str, int]]) -> None:
        """Record which result columns of statement ``seq`` were masked, why and how many
        values. Queued; never blocks the data path."""
        if self._ended or not columns:
            return
        self._seq += 1
        payload = events.query_masked(seq, columns)
        self._service._queue(
            (AppendEvent(self._id, self._seq, self._clock(), events.QUERY_MASKED, payload),)
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
        # Queued, never waited for, whatever the durability: the caller is gone or going, nothing
        # reaches the upstream after this, and a session's end rides along with the next commit
        # (within the writer's delay) instead of costing one of its own.
        self._service._queue(
            (
                AppendEvent(self._id, self._seq, now, events.SESSION_END, payload),
                EndSession(
                    self._id, now, reason, bytes_from_client, bytes_to_client, self._statements
                ),
            )
        )
