"""One caller's session through the PostgreSQL engine: startup, authentication, relay, end.

Flow (ARCHITECTURE.md): decode → identity → policy → audit (commit) → upstream; responses are
forwarded in bulk and only observed (ReadyForQuery, CommandComplete, errors) for audit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from callgate.approvals import Grant, pending_error
from callgate.engines.postgres import upstream as up
from callgate.engines.postgres.mask_session import SessionMasking
from callgate.engines.postgres.pool import PoolKey, pool_key, rebind_streams
from callgate.engines.postgres.refusal import (
    ResponseRewriter,
    error_frame,
    new_nonce,
    stand_in_parse,
    stand_in_query,
)
from callgate.engines.postgres.relay import UpstreamRelay
from callgate.engines.postgres.tracking import StatementTracker
from callgate.engines.postgres.wire import buffered, read_message
from callgate.errors import (
    AuditUnavailable,
    AuthenticationFailed,
    CallgateError,
    ConnectRefused,
    FeatureNotSupported,
    InternalError,
    PlaintextRefused,
    ProtocolViolation,
    SessionTerminated,
    StatementDenied,
    UnknownConnection,
)
from callgate.masking import MaskRules, StatementLineage
from callgate.model import (
    ALLOW_ALL,
    Decision,
    Principal,
    SessionInfo,
    SqlCommand,
    Verdict,
    new_session_id,
)
from callgate.policy.access import may_connect
from callgate.policy.classify import Classification, classify, unknown
from callgate.policy.engine import DEFAULT_SEARCH_PATH
from callgate.protocols.postgres import messages as m
from callgate.protocols.postgres.framing import BackendObserver, Frame, FrontendReader, Passthrough
from callgate.services import Services, SessionRecorder

if TYPE_CHECKING:
    from callgate.config import ConnectionConfig, ListenerConfig
    from callgate.config.connections import PoolConfig
    from callgate.engines.postgres.listener import PostgresListener

log = logging.getLogger("callgate.postgres")

#: Time a client has to finish TLS, startup and authentication (PostgreSQL's own
#: authentication_timeout defaults to 60 s as well).
STARTUP_TIMEOUT = 60.0
#: Bytes read from a socket at a time. Larger reads from the upstream keep result sets in bulk.
CLIENT_READ = 64 * 1024
UPSTREAM_READ = 256 * 1024
#: How often a live session re-checks that its credential still holds (revocation); expiry is
#: also acted on at the exact moment it comes. The issue's bound is 60 s.
CREDENTIAL_CHECK_INTERVAL = 10.0
#: Time to flush a final error to a client that may not be reading any more.
FINAL_WRITE_TIMEOUT = 2.0
#: after a FATAL error, how long and how much of what the client still sends is read and dropped
#: before the socket is closed (see :meth:`PgSession._finish`)
LINGER_SECONDS = 1.0
LINGER_BYTES = 1024 * 1024

_OBSERVED = frozenset(
    {
        m.BackendType.READY_FOR_QUERY,
        m.BackendType.COMMAND_COMPLETE,
        m.BackendType.ERROR_RESPONSE,
        m.BackendType.EMPTY_QUERY_RESPONSE,
        m.BackendType.PORTAL_SUSPENDED,
    }
)
_STREAMED = frozenset({m.FrontendType.COPY_DATA})
_EXTENDED = frozenset(
    {m.FrontendType.PARSE, m.FrontendType.BIND, m.FrontendType.DESCRIBE, m.FrontendType.CLOSE}
)


@dataclass(frozen=True, slots=True)
class _Prepared:
    sql: str
    classification: Classification
    #: what feeds its result columns, when mask rules apply
    lineage: StatementLineage | None = None


@dataclass(frozen=True, slots=True)
class _Portal:
    sql: str
    statement: str
    bind: m.Bind
    classification: Classification
    lineage: StatementLineage | None = None


def _masking_denial(decision: Decision, exc: StatementDenied | None) -> Decision:
    """The decision to record when the mask plan refuses what the policy let through."""
    if exc is None or decision.verdict is Verdict.DENY:
        return decision
    return Decision(Verdict.DENY, decision.rules, exc.message)


def _refusal(decision: Decision) -> StatementDenied:
    if decision.verdict is Verdict.REVIEW:
        return StatementDenied(
            f"statement needs approval: {decision.reason}",
            hint="no approval channel is configured for this connection",
        )
    return StatementDenied(decision.reason or "denied by policy")


class PostgresSession:
    def __init__(
        self,
        services: Services,
        listener: PostgresListener,
        config: ListenerConfig,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ):
        self.services = services
        self.listener = listener
        self.listener_config = config
        self.client_r = reader
        self.client_w = writer
        peer = writer.get_extra_info("peername")
        self.client_addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.client_host = peer[0] if isinstance(peer, tuple) else str(peer)
        self.id = new_session_id()
        self.tls = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.principal: Principal | None = None
        self.recorder: SessionRecorder | None = None
        self.upstream: up.UpstreamConnection | None = None
        self.target: up.UpstreamTarget | None = None
        self.cancel_key: tuple[int, int] | None = None
        self.tracker: StatementTracker | None = None
        self._observer: BackendObserver | None = None
        #: done when callgate ends the session (:meth:`terminate`); a future, not a task
        self._stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._credential_timer: asyncio.TimerHandle | None = None
        self._credential_check: asyncio.Task[None] | None = None
        self._stop_reason = ""
        limits = services.config.gateway.limits
        self.max_frame = limits.max_message_bytes
        self.max_decoded = limits.max_decoded_bytes
        self._prepared: dict[str, _Prepared] = {}
        self._portals: dict[str, _Portal] = {}
        self._sql_prepared: dict[str, Classification] = {}
        self._absorbing = False
        self._rewriter: ResponseRewriter | None = None
        #: access windows this session relies on; it ends when any of them ends
        self.grants: tuple[Grant, ...] = ()
        self.grant_policies: tuple[str, ...] = ()
        self.connection: str | None = None
        #: the upstream session's search path ($user expanded); None when unknown
        self.search_path: tuple[str, ...] | None = DEFAULT_SEARCH_PATH
        #: masking of results (None: no mask rule applies to the caller; results go in bulk)
        self.masking: SessionMasking | None = None
        self._mask_version = ""
        self._upstream_relay: UpstreamRelay | None = None
        #: portals described (by the client, or by callgate before an Execute) since their Bind
        self._described: set[str] = set()
        #: the client sent Terminate (callgate ends the upstream side itself)
        self._terminated = False
        #: a FATAL error was sent: read and drop what the client still sends before closing
        self._linger = False
        self._pool_config: PoolConfig | None = None
        self._pool_key: PoolKey = None

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        reason = "client disconnected"
        try:
            try:
                async with asyncio.timeout(STARTUP_TIMEOUT):
                    ready = await self._start()
            except TimeoutError as exc:
                raise ProtocolViolation("startup did not complete in time") from exc
            if ready:
                reason = await self._relay()
        except CallgateError as exc:
            reason = f"{type(exc).__name__}: {exc.message}"
            await self._send_error(exc)
        except (ConnectionError, asyncio.IncompleteReadError):
            reason = "client connection lost"
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        except Exception:
            log.exception("internal error in session %s", self.id)
            reason = "internal error"
            await self._send_error(InternalError("internal error in callgate; session ended"))
        finally:
            await self._finish(reason)

    def terminate(self, reason: str) -> None:
        """Ask the session to end (shutdown, credential expiry). Safe to call more than once."""
        if not self._stop.done():
            self._stop_reason = reason
            self._stop.set_result(None)

    async def _finish(self, reason: str) -> None:
        self.listener.forget(self)
        if self.tracker is not None:
            try:
                self.tracker.abandon(f"session ended: {reason}")
            except Exception:  # recording the end below matters more
                log.exception("session %s: could not record statements in flight", self.id)
        if self.upstream is not None and not self._give_back_upstream():
            w = self.upstream.writer
            if not w.is_closing():
                with contextlib.suppress(OSError, RuntimeError):
                    w.write(m.TERMINATE)
            w.close()
        cw = self.client_w
        linger = self._linger and not cw.is_closing()
        if linger:
            if cw.can_write_eof():  # the client reads our error, then end of stream, at once
                with contextlib.suppress(OSError, RuntimeError):
                    cw.write_eof()
        else:
            cw.close()
        if self.recorder is not None:
            try:
                await self.recorder.end(
                    reason, bytes_from_client=self.bytes_in, bytes_to_client=self.bytes_out
                )
            except CallgateError as exc:
                log.error("could not record the end of session %s: %s", self.id, exc.message)
        if linger:
            try:
                await self._drop_client_input()
            finally:
                cw.close()
        # DEBUG: the audit store records every session; a log line each costs ~5 % of a
        # short session's CPU (docs/performance.md).
        p = self.principal
        if p is None:
            log.debug("session %s from %s ended: %s", self.id, self.client_addr, reason)
        else:
            log.debug(
                "session %s: %s (%s) → %s from %s ended: %s",
                self.id,
                p.subject,
                p.method,
                self.connection or "-",
                self.client_addr,
                reason,
            )

    async def _drop_client_input(self) -> None:
        """After a FATAL error the client may already be sending its next message (it sees
        the error only when it reads). Closing a socket that holds unread data makes the kernel
        reset the connection, and a reset can cost the client our error, so that it reports a
        bare "server closed the connection unexpectedly". So read and drop what comes, for a
        moment, until the client closes its side (a lingering close)."""
        dropped = 0
        try:
            async with asyncio.timeout(LINGER_SECONDS):
                while dropped < LINGER_BYTES:
                    data = await self.client_r.read(65536)
                    if not data:
                        break
                    dropped += len(data)
        except (OSError, RuntimeError, TimeoutError, asyncio.IncompleteReadError):
            pass

    def _give_back_upstream(self) -> bool:
        """Hand an idle, clean upstream connection to the pool; False: close it instead."""
        relay = self._upstream_relay
        upstream = self.upstream
        pool_cfg = self._pool_config
        if (
            upstream is None
            or relay is None
            or pool_cfg is None
            or pool_cfg.max_idle <= 0
            or not self._terminated
            or self._stop.done()
            or self._absorbing
            or self.tracker is None
            or self.tracker.in_flight
            or self.tracker.transaction_status != "I"
            or upstream.writer.is_closing()
        ):
            log.debug("session %s: upstream not pooled (session state)", self.id)
            return False
        if not relay.detach():
            log.debug("session %s: upstream not pooled (stream not clean)", self.id)
            return False
        try:
            rebind_streams(upstream)
        except (OSError, RuntimeError, AttributeError):
            return False
        self.listener.pool.give_back(
            self._pool_key,
            upstream,
            max_idle=pool_cfg.max_idle,
            idle_timeout=pool_cfg.idle_timeout.total_seconds(),
        )
        self.upstream = None
        return True

    async def _send_error(self, exc: CallgateError) -> None:
        if self.client_w.is_closing():
            return
        if self._upstream_relay is not None:
            if not self._upstream_relay.client_at_boundary:
                return  # mid-way through a message: an error now would corrupt the stream
        elif self._observer is not None and not self._observer.at_boundary:
            return  # mid-way through an upstream message: an error now would corrupt the stream
        data = m.encode_error(
            exc.sqlstate,
            exc.message,
            severity="FATAL" if exc.fatal else "ERROR",
            detail=exc.detail,
            hint=exc.hint,
        )
        try:
            self.client_w.write(data)
            self.bytes_out += len(data)
            await asyncio.wait_for(self.client_w.drain(), FINAL_WRITE_TIMEOUT)
        except (OSError, TimeoutError, RuntimeError):
            return
        self._linger = exc.fatal

    # --- startup ------------------------------------------------------------------------------

    async def _read_startup(self) -> m.StartupPacket:
        head = await self.client_r.readexactly(4)
        m.read_startup_packet(head)  # validates the length field; 4 bytes are never a packet
        length = int.from_bytes(head, "big")
        rest = await self.client_r.readexactly(length - 4)
        self.bytes_in += length
        parsed = m.read_startup_packet(head + rest)
        if parsed is None:  # pragma: no cover - the length was checked above
            raise ProtocolViolation("incomplete startup packet")
        return parsed[0]

    async def _start(self) -> bool:
        """TLS, startup, caller authentication, upstream connection. False: nothing to relay."""
        while True:
            pkt = await self._read_startup()
            if isinstance(pkt, m.SSLRequest):
                await self._negotiate_tls()
            elif isinstance(pkt, m.GSSENCRequest):
                self._write(b"N")  # no GSSAPI encryption; libpq then tries TLS or plaintext
            elif isinstance(pkt, m.CancelRequest):
                await self.listener.cancel(pkt.process_id, pkt.secret_key)
                return False
            else:
                return await self._startup(pkt)

    async def _negotiate_tls(self) -> None:
        ctx = self.listener.ssl_context
        if self.tls or ctx is None:
            self._write(b"N")
            return
        if buffered(self.client_r):
            raise ProtocolViolation("data sent before the TLS handshake")
        self._write(b"S")
        await self.client_w.drain()
        try:
            await self.client_w.start_tls(ctx)
        except ssl.SSLError as exc:
            raise ProtocolViolation(f"TLS handshake failed: {exc.reason}") from exc
        self.tls = True

    async def _startup(self, startup: m.StartupMessage) -> bool:
        major, minor = startup.protocol >> 16, startup.protocol & 0xFFFF
        if major != 3:
            raise FeatureNotSupported(
                f"unsupported frontend protocol {major}.{minor}: callgate speaks protocol 3.0"
            )
        if not self.tls and not self.listener_config.allow_plaintext:
            raise PlaintextRefused(
                "callgate requires TLS on this listener",
                hint="connect with sslmode=require (or verify-full with callgate's CA)",
            )
        extensions = tuple(k for k, _ in startup.parameters if k.startswith("_pq_."))
        if minor != 0 or extensions:
            # §55.2.1: answer a newer minor version or unknown protocol options by negotiating.
            body = m._I32.pack(m.PROTOCOL_3_0) + m._I32.pack(len(extensions))
            body += b"".join(m.cstr(e) for e in extensions)
            self._write(m.frame(m.BackendType.NEGOTIATE_PROTOCOL_VERSION, body))
        database = startup.get("database") or startup.get("user") or ""
        principal = await self._authenticate()
        self.principal = principal

        config = self.services.config
        conn = config.connection(database)
        if conn is None or conn.protocol != "postgres":
            raise UnknownConnection(f'connection "{database}" does not exist')
        approvals = self.services.approvals
        if approvals is not None:
            # An approved access window applies its policy to this caller for its duration.
            self.grants = tuple(await approvals.active_grants(principal, conn.name))
            self.grant_policies = tuple(sorted({g.policy for g in self.grants}))
        if not self.grants and not may_connect(config.policies, principal, conn.name):
            raise ConnectRefused(
                f'"{principal.subject}" is not allowed to use connection "{conn.name}"'
            )

        info = SessionInfo(
            id=self.id,
            principal=principal,
            connection=conn.name,
            protocol="postgres",
            client_addr=self.client_addr,
            tls=self.tls,
            client_user=startup.get("user"),
            application_name=startup.get("application_name"),
            started_at=time.time(),
        )
        self.recorder = await self.services.audit.open_session(info)
        self.tracker = StatementTracker(self.recorder, time.monotonic)
        self.target = _target(conn, self.listener.upstream_ssl_context(conn))
        self._pool_config = conn.database_upstream.pool
        self._pool_key = pool_key(self.target, startup.parameters)
        pooled = self.listener.pool.take(self._pool_key) if self._pool_config.max_idle else None
        self.upstream = pooled or await up.connect(self.target, startup.parameters)

        self.connection = conn.name
        self._mask_version = self.listener.services.policy.version
        self.masking = self._new_masking(self._mask_rules())
        column_rules = self.masking is not None and bool(self.masking.rules.columns)
        if column_rules or self.listener.services.policy.needs_search_path(principal, conn.name):
            self.search_path = await up.learn_search_path(self.upstream)
        if self.masking is not None:
            await self.masking.prepare(self.search_path, idle=True)  # the catalog, if needed
        self._observer = BackendObserver(
            _OBSERVED,
            known=m.BACKEND_TYPES,
            max_frame=self.max_frame,
            max_decoded=self.max_decoded,
        )
        self._rewriter = ResponseRewriter(self._observer)
        self.cancel_key = self.listener.register(self)
        out = bytearray(m.AUTH_OK)
        out += self.upstream.status_messages()
        out += m.encode_backend_key_data(*self.cancel_key)
        out += m.encode_ready_for_query(self.upstream.transaction_status)
        self._write(bytes(out))
        await self.client_w.drain()
        log.debug(
            "session %s: %s (%s) → %s from %s",
            self.id,
            principal.subject,
            principal.method,
            conn.name,
            self.client_addr,
        )
        return True

    async def _authenticate(self) -> Principal:
        """Who is calling: a verified client certificate if the TLS handshake produced one,
        else the credential sent as a cleartext password (inside TLS). Never both: a certificate
        that maps to nobody is refused, not retried with a password."""
        identity = self.services.identity
        cert = self._peer_certificate()
        if cert is not None:
            return await identity.authenticate_certificate(
                cert, source=self.client_host, protocol="postgres"
            )
        self._write(m.AUTH_CLEARTEXT)
        await self.client_w.drain()
        f = await read_message(self.client_r, max_size=self.max_decoded, upstream=False)
        self.bytes_in += len(f.body) + 5
        if f.type != m.FrontendType.PASSWORD:
            raise ProtocolViolation("expected a password message")
        credential = m.decode_password(f.body)
        if not credential:
            raise AuthenticationFailed("a credential is required as the password")
        return await identity.authenticate(credential, source=self.client_host, protocol="postgres")

    def _peer_certificate(self) -> bytes | None:
        if not self.tls or self.listener_config.client_ca is None:
            return None
        ssl_object = self.client_w.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        der: bytes | None = ssl_object.getpeercert(binary_form=True)
        return der or None

    def _arm_credential_check(self) -> None:
        """End the session when its credential expires or is revoked (recorded as the end):
        a timer, so a short session pays for no task; the check runs as one when it fires."""
        assert self.principal is not None
        wait = CREDENTIAL_CHECK_INTERVAL
        expires_at = self.principal.expires_at
        if expires_at is not None:
            wait = max(0.0, min(wait, expires_at - time.time()))
        self._credential_timer = asyncio.get_running_loop().call_later(wait, self._credential_due)

    def _credential_due(self) -> None:
        self._credential_timer = None
        if not self._stop.done():
            self._credential_check = asyncio.create_task(
                self._check_credential(), name=f"pg-cred-{self.id}"
            )

    async def _check_credential(self) -> None:
        assert self.principal is not None
        try:
            reason = await self.services.identity.still_valid(self.principal)
        except Exception:  # cannot tell whether the credential still holds: fail closed
            log.exception("session %s: credential check failed", self.id)
            reason = "the credential could not be checked"
        if reason is not None:
            self.terminate(f"session ended: {reason}")
        elif not self._stop.done():
            self._arm_credential_check()

    async def _stop_credential_checks(self) -> None:
        if self._credential_timer is not None:
            self._credential_timer.cancel()
            self._credential_timer = None
        check = self._credential_check
        if check is not None and not check.done():
            check.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await check

    async def _watch_grant(self, grant: Grant) -> None:
        approvals = self.services.approvals
        assert approvals is not None
        how = await approvals.wait_grant_end(grant.id)
        self.terminate(f"session ended: access window {grant.id} {how}")

    def _write(self, data: bytes) -> None:
        self.client_w.write(data)
        self.bytes_out += len(data)

    # --- relay --------------------------------------------------------------------------------

    async def _relay(self) -> str:
        relay = self._start_upstream_relay()
        tasks: set[asyncio.Future[str]] = {
            asyncio.create_task(self._client_pump(), name=f"pg-c2u-{self.id}"),
            relay.done,
        }
        stop = self._stop
        self._arm_credential_check()
        watchers = [asyncio.create_task(self._watch_grant(g)) for g in self.grants]
        done, pending = await asyncio.wait(tasks | {stop}, return_when=asyncio.FIRST_COMPLETED)
        await self._stop_credential_checks()
        for w in watchers:
            w.cancel()
        pending.discard(stop)  # a future nobody else waits on: nothing to cancel
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, *watchers, return_exceptions=True)
        if stop in done:
            raise SessionTerminated(self._stop_reason or "the session was ended by callgate")
        if self._terminated:
            # The client said goodbye; whatever the upstream side did meanwhile is no failure.
            return "client terminated the session"
        # Prefer the error of a failed pump over the clean exit of the other.
        for t in done:
            exc = t.exception()
            if exc is not None:
                raise exc
        return str(next(iter(done)).result())

    # --- decisions ----------------------------------------------------------------------------

    def _decide(self, c: Classification, *, has_parameters: bool) -> Decision:
        # The listener holds the current services: a reloaded policy applies from the next
        # statement of every live session (the connection itself keeps its config).
        assert self.principal is not None and self.connection is not None
        policy = self.listener.services.policy
        return policy.decide_sql(
            self.principal,
            self.connection,
            c,
            search_path=self.search_path,
            prepared=self._sql_prepared,
            has_parameters=has_parameters,
            grants=self.grant_policies,
        )

    # --- masking ------------------------------------------------------------------------------

    def _mask_rules(self) -> MaskRules:
        """The caller's mask rules under the current policy (the listener's services)."""
        assert self.principal is not None and self.connection is not None
        policies = self.listener.services.policy.policies
        if not any(p.mask for p in policies):
            return MaskRules()
        return MaskRules.for_principal(
            policies,
            self.principal,
            self.connection,
            secret=self.listener.secret_key(),
            granted=self.grant_policies,
        )

    def _new_masking(self, rules: MaskRules) -> SessionMasking | None:
        if rules.is_empty:
            return None
        assert self.connection is not None and self.target is not None
        catalog = self.listener.catalog(self.connection, self.target) if rules.columns else None
        return SessionMasking(
            rules, catalog, max_decoded=self.max_decoded, on_masked=self._on_masked
        )

    async def _mask_prepare(self) -> None:
        """Before judging a statement: mask rules of a reloaded policy, and a fresh catalog."""
        assert self.tracker is not None
        version = self.listener.services.policy.version
        if version != self._mask_version:
            self._mask_version = version
            rules = self._mask_rules()
            current = self.masking.rules if self.masking is not None else MaskRules()
            if rules != current:
                if self.tracker.in_flight:
                    # Results in flight were planned under the old rules; the masker cannot be
                    # swapped in the middle of them.
                    raise SessionTerminated(
                        "the mask rules for this session changed while results were in flight; "
                        "reconnect"
                    )
                self.masking = self._new_masking(rules)
                relay = self._upstream_relay
                if relay is not None:
                    relay.masker = self.masking.masker if self.masking is not None else None
        if self.masking is not None:
            idle = not self.tracker.in_flight and self.tracker.transaction_status == "I"
            await self.masking.prepare(self.search_path, idle=idle)

    def _on_masked(self, seq: int | None, columns: list[tuple[str, str, int]]) -> None:
        # Which columns, why and how many values: never a value.
        what = ", ".join(f"{name} ({why}): {count}" for name, why, count in columns)
        log.info("session %s: statement %s masked %s", self.id, seq, what)
        if seq is not None and self.recorder is not None:
            self.recorder.masked(seq, columns)

    async def _record(self, command: SqlCommand, decision: Decision) -> int | CallgateError:
        """Record the statement, then settle a review; the error to answer with if refused."""
        assert self.recorder is not None
        try:
            seq = await self.recorder.statement(command, decision)
        except AuditUnavailable as exc:
            return exc
        if decision.verdict is Verdict.ALLOW:
            return seq
        if decision.verdict is Verdict.REVIEW:
            refused = await self._review(command, decision)
            return seq if refused is None else refused
        return _refusal(decision)

    async def _review(self, command: SqlCommand, decision: Decision) -> CallgateError | None:
        """Hold the statement for a human (or use a deferred approval); None when approved."""
        assert self.principal is not None and self.connection is not None
        services = self.listener.services
        approvals = services.approvals
        found = approvals.rule_for(self.connection) if approvals is not None else None
        if approvals is None or found is None:
            return _refusal(decision)
        rule = found[1]
        version = services.policy.version
        if rule.mode == "deferred":
            used = await approvals.use_deferred(
                self.principal,
                self.connection,
                command.sql,
                command.params,
                command.param_formats,
                policy_version=version,
            )
            if used is not None:
                return None
        review = await approvals.request(
            self.principal,
            connection=self.connection,
            statement_sql=command.sql,
            params=command.params,
            param_formats=command.param_formats,
            rules=decision.rules,
            policy_version=version,
            mode=rule.mode,
            session_id=self.id,
        )
        if rule.mode == "deferred":
            return pending_error(review)
        log.info("session %s: statement held for review %s", self.id, review.id)
        # The session's later messages wait behind the held one: this pump reads nothing more
        # until it is settled. A caller that goes away withdraws the review (cancelling wait()).
        outcome = await approvals.wait_for_caller(
            review.id, rule.timeout.total_seconds(), self._client_gone
        )
        if outcome is None:
            raise ConnectionError("the caller went away while its statement was held")
        if outcome.approved:
            log.info("session %s: review %s approved", self.id, review.id)
            return None
        return outcome.error()

    def _client_gone(self) -> bool:
        # StreamReader has no public "peer closed" flag that leaves buffered bytes unread.
        return bool(getattr(self.client_r, "_eof", False)) or self.client_w.is_closing()

    def _after_allowed(self, c: Classification) -> None:
        """Session state the policy needs: SQL-level prepared statements, the search path."""
        for name in c.deallocates:
            if name == "*":
                self._sql_prepared.clear()
            else:
                self._sql_prepared.pop(name, None)
            if self.masking is not None:
                self.masking.lineage.forget("prepared", name)
        if self.masking is not None and "ddl" in c.kinds:
            self.masking.ddl_sent()
        for name, body in c.prepares:
            self._sql_prepared[name] = body
        if c.sets_search_path:
            self.search_path = None  # unknown from here on: unqualified names may be anywhere

    def _refuse(self, out: bytearray, exc: CallgateError, *, extended: bool, name: str) -> None:
        """Send the stand-in for a refused statement and expect its answer (see refusal.py)."""
        assert self.tracker is not None and self._rewriter is not None
        nonce = new_nonce()
        if extended:
            out += stand_in_parse(nonce, name)
            self.tracker.extended()
            self._absorbing = True
        else:
            out += stand_in_query(nonce)
        replacement = error_frame(exc)
        self._rewriter.arm(nonce, replacement, self.tracker.ready_expected())
        if self.masking is not None:
            self.masking.masker.refused(replacement, simple=not extended)
        log.info("session %s: refused (%s): %s", self.id, exc.sqlstate, exc.message)

    # --- relay: client → upstream ------------------------------------------------------------

    async def _client_pump(self) -> str:
        assert self.upstream is not None and self.tracker is not None
        reader = FrontendReader(
            streamed=_STREAMED,
            known=m.FRONTEND_TYPES,
            max_frame=self.max_frame,
            max_decoded=self.max_decoded,
        )
        up_w = self.upstream.writer
        tracker = self.tracker
        read = self.client_r.read
        while True:
            data = await read(CLIENT_READ)
            if not data:
                return "client disconnected"
            self.bytes_in += len(data)
            out = bytearray()
            terminate = False
            for item in reader.feed(data):
                if isinstance(item, Passthrough):
                    out += item.data
                    continue
                t = item.type
                if self._absorbing:
                    # After a refused extended message the server skips to Sync (its stand-in
                    # failed); we do the same, so nothing of the refused statement is sent.
                    if t == m.FrontendType.SYNC:
                        self._absorbing = False
                    elif t != m.FrontendType.FLUSH:
                        continue
                if t == m.FrontendType.QUERY:
                    await self._on_query(m.decode_query(item.body).sql, out)
                    continue
                if t == m.FrontendType.PARSE:
                    if not await self._on_parse(m.decode_parse(item.body), item, out):
                        continue
                elif t == m.FrontendType.EXECUTE:
                    await self._on_execute(m.decode_execute(item.body), item, out)
                    continue
                elif t in _EXTENDED:
                    self._track_extended(item)
                    tracker.extended()
                elif t == m.FrontendType.SYNC:
                    tracker.sync()
                    if self.masking is not None:
                        self.masking.masker.sync()
                elif t == m.FrontendType.FUNCTION_CALL:
                    await self._on_function_call(m.decode_function_call(item.body), item, out)
                    continue
                elif t == m.FrontendType.TERMINATE:
                    # Not forwarded: the session's end closes the upstream (with a Terminate of
                    # callgate's own) or, when it is idle and clean, gives it back to the pool.
                    self._terminated = terminate = True
                    break
                elif t == m.FrontendType.PASSWORD:
                    raise ProtocolViolation("unexpected password message after authentication")
                out += m.frame(t, item.body)
            if out:
                up_w.write(out)
                await up_w.drain()
            if terminate:
                return "client terminated the session"

    async def _on_query(self, sql: str, out: bytearray) -> None:
        assert self.tracker is not None
        c = classify(sql)
        await self._mask_prepare()
        decision = self._decide(c, has_parameters=False)
        masking = self.masking
        masks = None
        if masking is not None and decision.verdict is not Verdict.DENY:
            try:
                masks = masking.query_masks(sql)
            except StatementDenied as exc:
                decision = _masking_denial(decision, exc)
        result = await self._record(SqlCommand(sql, op="query"), decision)
        if isinstance(result, CallgateError):
            self.tracker.simple(None)
            self._refuse(out, result, extended=False, name="")
            return
        self._after_allowed(c)
        self.tracker.simple(result)
        if masking is not None and masks is not None:
            masking.masker.query(masks, result)
        out += m.encode_query(sql)

    async def _on_parse(self, p: m.Parse, item: Frame, out: bytearray) -> bool:
        """Judge a Parse; True when it is forwarded as it is."""
        c = classify(p.sql)
        await self._mask_prepare()
        decision = self._decide(c, has_parameters=bool(p.param_types))
        lineage = None
        if self.masking is not None and decision.verdict is not Verdict.DENY:
            try:
                lineage = self.masking.parse_lineage(p.sql)
            except StatementDenied as denied:
                decision = _masking_denial(decision, denied)
        # Parse runs nothing: a statement under review is held at Execute, with its parameters.
        if decision.verdict is not Verdict.DENY:
            self._prepared[p.name] = _Prepared(p.sql, c, lineage)
            assert self.tracker is not None
            self.tracker.extended()
            return True
        # Recorded now: a refused Parse never reaches Execute.
        result = await self._record(
            SqlCommand(p.sql, statement_name=p.name or None, op="parse"), decision
        )
        exc = result if isinstance(result, CallgateError) else _refusal(decision)
        self._prepared.pop(p.name, None)
        self._refuse(out, exc, extended=True, name=p.name)
        return False

    async def _on_execute(self, e: m.Execute, item: Frame, out: bytearray) -> None:
        assert self.tracker is not None
        portal = self._portals.get(e.portal)
        await self._mask_prepare()
        masking = self.masking
        if portal is None:
            # No such portal: the server answers with its own error; nothing runs.
            cmd = SqlCommand("", op="execute")
            seq = await self._record(cmd, ALLOW_ALL)
            if isinstance(seq, CallgateError):
                self._refuse(out, seq, extended=True, name=f"callgate_{new_nonce()}")
                return
            self.tracker.execute(seq)
            if masking is not None:
                masking.masker.execute(e.portal, masking.fallback(), seq)
            out += m.frame(item.type, item.body)
            return
        b = portal.bind
        cmd = SqlCommand(
            portal.sql,
            params=b.params,
            param_formats=tuple(b.format_of(i) for i in range(len(b.params))),
            statement_name=portal.statement or None,
            op="execute",
        )
        # Judged again: the policy may have been reloaded since Parse, and a rule may look at
        # the parameters.
        decision = self._decide(portal.classification, has_parameters=bool(b.params))
        mask = None
        if masking is not None and decision.verdict is not Verdict.DENY:
            try:
                mask = masking.mask_of(portal.lineage, strict=True)
            except StatementDenied as exc:
                decision = _masking_denial(decision, exc)
        result = await self._record(cmd, decision)
        if isinstance(result, CallgateError):
            self._refuse(out, result, extended=True, name=f"callgate_{new_nonce()}")
            return
        self._after_allowed(portal.classification)
        self.tracker.execute(result)
        if masking is not None and mask is not None:
            if e.portal not in self._described:
                # The rows of an Execute carry no description of their own: ask for the
                # portal's (its answer is not forwarded) so they can be masked by column type.
                out += m.frame(m.FrontendType.DESCRIBE, b"P" + m.cstr(e.portal))
                masking.masker.describe_portal(e.portal, mask, swallow=True)
                self._described.add(e.portal)
            masking.masker.execute(e.portal, mask, result)
        out += m.frame(item.type, item.body)

    async def _on_function_call(self, fc: m.FunctionCall, item: Frame, out: bytearray) -> None:
        assert self.tracker is not None
        # The fast path names a function by OID only; callgate cannot tell what it does, so it
        # is judged as ``unknown`` (denied unless a rule allows unknown by name).
        c = unknown("fastpath function call by OID")
        await self._mask_prepare()
        decision = self._decide(c, has_parameters=bool(fc.args))
        if self.masking is not None:
            # Its result is one value of unknown source and type: it cannot be masked.
            decision = _masking_denial(
                decision,
                StatementDenied(
                    "fast-path function calls are refused while mask rules apply to the caller"
                ),
            )
        cmd = SqlCommand(
            f"-- fastpath function call, oid {fc.function_oid}",
            params=fc.args,
            param_formats=fc.arg_formats,
            op="function_call",
        )
        result = await self._record(cmd, decision)
        if isinstance(result, CallgateError):
            self.tracker.simple(None)
            self._refuse(out, result, extended=False, name="")
            return
        self.tracker.simple(result)
        out += m.frame(item.type, item.body)

    def _track_extended(self, f: Frame) -> None:
        t = f.type
        if t == m.FrontendType.BIND:
            b = m.decode_bind(f.body)
            prepared = self._prepared.get(b.statement)
            self._described.discard(b.portal)
            if prepared is not None:
                self._portals[b.portal] = _Portal(
                    prepared.sql, b.statement, b, prepared.classification, prepared.lineage
                )
            else:
                self._portals.pop(b.portal, None)
        elif t == m.FrontendType.CLOSE:
            c = m.decode_close(f.body)
            if c.kind == "S":
                self._prepared.pop(c.name, None)
            else:
                self._portals.pop(c.name, None)
                self._described.discard(c.name)
        else:
            d = m.decode_describe(f.body)
            masking = self.masking
            if masking is None:
                return
            if d.kind == "S":
                prepared = self._prepared.get(d.name)
                lineage = prepared.lineage if prepared is not None else None
                masking.masker.describe_statement(masking.mask_of(lineage))
            else:
                portal = self._portals.get(d.name)
                lineage = portal.lineage if portal is not None else None
                masking.masker.describe_portal(d.name, masking.mask_of(lineage), swallow=False)
                self._described.add(d.name)

    # --- relay: upstream → client ------------------------------------------------------------

    def _start_upstream_relay(self) -> UpstreamRelay:
        assert self.upstream is not None and self.tracker is not None
        assert self._observer is not None and self._rewriter is not None
        relay = UpstreamRelay(
            observer=self._observer,
            rewriter=self._rewriter,
            on_frame=self.tracker.on_backend,
            client_writer=self.client_w,
            count_out=self._count_out,
            masker=self.masking.masker if self.masking is not None else None,
        )
        self._upstream_relay = relay
        reader = self.upstream.reader
        leftover = bytes(getattr(reader, "_buffer", b""))  # read during startup, not yet used
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, self.upstream.writer.transport)
        relay.attach(transport, leftover)
        return relay

    def _count_out(self, n: int) -> None:
        self.bytes_out += n

    # --- cancel -------------------------------------------------------------------------------

    async def cancel_upstream(self) -> None:
        if self.target is None or self.upstream is None:
            return
        await up.send_cancel(self.target, self.upstream.process_id, self.upstream.secret_key)


def _target(conn: ConnectionConfig, ssl_context: ssl.SSLContext | None) -> up.UpstreamTarget:
    u = conn.database_upstream
    password = u.password.resolve() if u.password is not None else None
    return up.UpstreamTarget(
        host=u.host,
        port=u.port,
        database=u.database,
        user=u.user,
        password=password,
        tls_mode=u.tls,
        ssl_context=ssl_context,
        connect_timeout=u.connect_timeout.total_seconds(),
    )


def new_cancel_key() -> tuple[int, int]:
    """A random (process id, secret key) pair of our own: the upstream's never reaches callers."""
    return secrets.randbits(31), secrets.randbits(31) - (1 << 30)
