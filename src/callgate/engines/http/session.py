"""One caller's connection to the HTTP listener: a keep-alive loop of requests.

Per request (ARCHITECTURE.md): parse the head (sans-IO codec) → authenticate the Bearer
credential → route to a connection → may this caller use it → policy → audit (commit) →
approvals → forward with callgate's credential → mask → answer. :mod:`.exchange` does the
forwarding; this module owns the connection and everything before it.

Audit: every (caller, connection) pair seen on one TCP connection is one recorded session
(``protocol: http``), opened at its first request and ended when the TCP connection closes; each
request is a statement-like ``http.request`` event followed by ``http.response``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from callgate.approvals import Grant
from callgate.engines.http.body import (
    CLIENT_READ_TIMEOUT,
    ClientBody,
    ClientGone,
    ClientStream,
)
from callgate.engines.http.exchange import Exchange
from callgate.engines.http.replies import MethodRefused, error_response
from callgate.errors import (
    AuthenticationFailed,
    CallgateError,
    ConnectRefused,
    InternalError,
    UnknownConnection,
)
from callgate.masking.http import HttpMaskPlan
from callgate.model import HttpRequest, Principal, SessionInfo, new_session_id
from callgate.policy.access import may_connect
from callgate.protocols.http import (
    HeadReader,
    HttpRequestError,
    RequestHead,
    Target,
    expects_continue,
    head_end,
    parse_request_head,
    parse_target,
    request_framing,
    request_keep_alive,
    split_prefix,
)
from callgate.services import SessionRecorder

if TYPE_CHECKING:
    from callgate.config import ConnectionConfig
    from callgate.engines.http.listener import HttpListener
    from callgate.engines.http.upstream import UpstreamConnection

log = logging.getLogger("callgate.http")

#: Seconds a credential verified on this connection is reused for its later requests before it
#: is verified again (revocation is noticed within this time, as in the PostgreSQL engine).
CREDENTIAL_RECHECK: Final = 10.0
#: Distinct credentials remembered per connection (a client rotating tokens on one socket).
CREDENTIALS_PER_CONNECTION: Final = 8
#: After an error answered with Connection: close, how long and how much of what the caller
#: still sends is read and dropped before the socket is closed (so that the caller, still
#: sending a refused body, reads the answer instead of a connection reset).
LINGER_SECONDS: Final = 1.0
LINGER_BYTES: Final = 1024 * 1024
#: Seconds between checks of a caller's access windows (approved grants) on this connection.
GRANT_RECHECK: Final = 10.0


@dataclass
class Audited:
    """One recorded session: a caller on a connection, over this TCP connection."""

    info: SessionInfo
    recorder: SessionRecorder
    grants: tuple[Grant, ...]
    grant_policies: tuple[str, ...]
    checked_at: float
    bytes_in: int = 0
    bytes_out: int = 0
    plan: HttpMaskPlan | None = None
    plan_version: str = ""
    #: the policy version under which the caller was last found allowed to use the connection
    connect_version: str = ""
    requests: int = field(default=0)


class HttpSession:
    def __init__(self, listener: HttpListener, stream: ClientStream, *, tls: bool) -> None:
        self.listener = listener
        self.stream = stream
        self._loop = asyncio.get_running_loop()
        peer = stream.get_extra_info("peername")
        self.client_addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.client_host = peer[0] if isinstance(peer, tuple) else str(peer)
        self.tls = tls
        self.id = new_session_id()
        #: seconds a keep-alive connection waits for its next request (the listener's
        #: ``idle_timeout``, 60 s by default: nginx's is 75 s; shorter keeps idle sockets from
        #: piling up, and a client reconnects transparently)
        self._idle_timeout = listener.config.idle_timeout.total_seconds()
        #: an exchange is in progress (drain lets it finish; an idle connection is closed)
        self.busy = False
        #: the gateway is draining: answer the request in progress with Connection: close
        self.stopping = False
        self._credentials: dict[str, tuple[Principal, float]] = {}
        #: loop time by which the caller must send (idle or mid-head), if waiting for it
        self._client_deadline: float | None = None
        #: the caller is between requests (not mid-head) while :attr:`_client_deadline` runs
        self._client_idle = False
        #: loop time by which the upstream must answer, and the connection it must answer on
        self._upstream_deadline: tuple[float, UpstreamConnection] | None = None
        #: why the watchdog closed the connection, if it did
        self.timed_out: str | None = None
        #: an error was answered with Connection: close: drain before closing
        self._linger = False
        self._audits: dict[tuple[str, str | None, str | None, str, str], Audited] = {}
        #: the caller, connection and recorded session of the last request (the next one is
        #: nearly always the same caller on the same connection)
        self._last_audited: tuple[Principal, ConnectionConfig, Audited] | None = None
        self.task: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        reason = "client disconnected"
        try:
            while not self.stopping:
                raw = await self._read_head()
                if raw is None:
                    reason = self.timed_out or reason
                    break
                self.busy = True
                try:
                    # The exchange is awaited here, not inside _begin: one coroutine level less
                    # on each of its waits (the audit commit, the upstream's answer).
                    begun = await self._begin(raw)
                    keep = begun if isinstance(begun, bool) else await begun.run()
                finally:
                    self.busy = False
                if not keep:
                    reason = "connection closed after the response"
                    break
            else:
                reason = "callgate is shutting down"
        except ClientGone as exc:
            reason = str(exc) or "client connection lost"
        except asyncio.CancelledError:
            reason = "callgate is shutting down" if self.stopping else "cancelled"
            raise
        except Exception:
            log.exception("internal error on HTTP connection %s", self.id)
            reason = "internal error"
            await self.reply_error(InternalError("internal error in callgate"), close=True)
        finally:
            await self._finish(reason)

    async def _finish(self, reason: str) -> None:
        self.listener.forget(self)
        if self._linger:
            await self._lingering_close()
        with contextlib.suppress(Exception):
            self.stream.close()
        for audited in self._audits.values():
            try:
                await audited.recorder.end(
                    reason, bytes_from_client=audited.bytes_in, bytes_to_client=audited.bytes_out
                )
            except CallgateError as exc:
                log.error("could not record the end of session %s: %s", audited.info.id, exc)
        self._audits.clear()
        self._last_audited = None
        self._credentials.clear()

    async def _read_head(self) -> bytes | None:
        """The next request head; ``None`` when the caller closed (or idled out) between
        requests. A head that breaks the rules is answered with its 4xx here.

        No timer per read: the listener's watchdog (:meth:`check_deadlines`) closes a
        connection idle for the listener's ``idle_timeout`` or stuck mid-head for
        :data:`~callgate.engines.http.body.CLIENT_READ_TIMEOUT`."""
        reader: HeadReader | None = None  # made when a head comes in pieces
        stream = self.stream
        clock = self._loop.time
        while True:
            started = (reader is not None and reader.started) or stream.buffered
            limit = CLIENT_READ_TIMEOUT if started else self._idle_timeout
            self._client_deadline = clock() + limit
            self._client_idle = not started
            try:
                data = await stream.read()
            except OSError as exc:
                if not started:
                    return None
                raise ClientGone(f"the caller's connection failed ({type(exc).__name__})") from None
            finally:
                self._client_deadline = None
            stream.bytes_in += len(data)
            if not data:
                if reader is not None and reader.started:
                    closed = "the caller closed the connection mid-request"
                    raise ClientGone(self.timed_out or closed)
                return None
            if reader is None:
                end = head_end(data, request=True)
                if end > 0:
                    stream.unread(data[end:])
                    return data[:end]
                reader = HeadReader(request=True)
            try:
                head = reader.feed(data)
            except HttpRequestError as exc:
                await self.reply_error(exc, close=True)
                raise ClientGone(f"refused a malformed request head: {exc.message}") from None
            if head is not None:
                stream.unread(reader.leftover)
                return head

    # --- deadlines (the listener's watchdog calls check_deadlines a few times a second) -----

    def watch_upstream(self, up: UpstreamConnection, seconds: float) -> None:
        """Give the upstream ``seconds`` to answer; past that the watchdog aborts ``up`` and
        marks it :attr:`~UpstreamConnection.timed_out`."""
        self._upstream_deadline = (self._loop.time() + seconds, up)

    def unwatch_upstream(self) -> None:
        self._upstream_deadline = None

    def check_deadlines(self, now: float) -> None:
        client = self._client_deadline
        if client is not None and now > client:
            self._client_deadline = None
            self.timed_out = (
                f"idle for {self._idle_timeout:g} s between requests: closed by callgate"
                if self._client_idle
                else "the caller sent nothing in time"
            )
            with contextlib.suppress(Exception):
                self.stream.abort()
        upstream = self._upstream_deadline
        if upstream is not None and now > upstream[0]:
            self._upstream_deadline = None
            upstream[1].expire()

    async def reply_error(
        self,
        exc: CallgateError,
        *,
        close: bool,
        review_id: str | None = None,
        head_only: bool = False,
    ) -> tuple[int, int]:
        """Answer with ``exc`` as JSON; returns the status and bytes written."""
        w = self.stream
        status, data = error_response(exc, close=close, review_id=review_id, head_only=head_only)
        if w.is_closing():
            return status, 0
        try:
            if w.write(data):
                async with asyncio.timeout(5.0):
                    await w.drain()
        except (OSError, RuntimeError, TimeoutError):
            return status, 0
        if close:
            self._linger = True
        return status, len(data)

    async def _lingering_close(self) -> None:
        """After an error answered with ``Connection: close``, the caller may still be sending
        (a body we refused to read): closing a socket with unread data makes the kernel reset
        the connection, and the caller may lose our answer. So: stop writing, read and drop
        what comes for a moment, then close (nginx's lingering close)."""
        w = self.stream
        try:
            if w.can_write_eof() and not w.is_closing():
                w.write_eof()
            dropped = 0
            async with asyncio.timeout(LINGER_SECONDS):
                while dropped < LINGER_BYTES:
                    data = await w.read()
                    if not data:
                        break
                    dropped += len(data)
        except (OSError, RuntimeError, TimeoutError, NotImplementedError):
            pass

    # --- one request -------------------------------------------------------------------------

    async def _begin(self, raw: bytes) -> Exchange | bool:
        """One request up to its :class:`Exchange` (to be run), or, when it was answered
        already (refused), whether the connection may carry another."""
        started = time.monotonic()
        try:
            head = parse_request_head(raw)
            framing = request_framing(head)
            target = parse_target(head.method, head.target)
            if head.method == "TRACE":
                raise MethodRefused("TRACE is not relayed: it would echo callgate's credential")
            expect = "expect" in head.names and expects_continue(head)
        except CallgateError as exc:
            # Framing in doubt: nothing after this head can be trusted (RFC 9112 §11.2).
            await self.reply_error(exc, close=True)
            log.info(
                "connection %s: refused request (%s): %s", self.id, exc.http_status, exc.message
            )
            return False
        if "connection" in head.names or head.version < (1, 1):
            keep = request_keep_alive(head) and not self.stopping
        else:
            keep = not self.stopping  # HTTP/1.1 without Connection: persistent (RFC 9112 §9.3)
        listener = self.listener
        body = ClientBody(
            self.stream, framing, expect_continue=expect, sample_limit=listener.record_body
        )
        try:
            principal = self._known_caller(head) or await self.authenticate(head)
            host = head.get("host") or ""
            conn, path = self.route(target, host)
            audited = self._still_audited(principal, conn) or await self.audited(
                principal, conn, head
            )
        except CallgateError as exc:
            # Only a body never read lets the connection go on: its bytes would be read as the
            # next request otherwise. Close instead.
            close = not keep or not body.empty
            await self.reply_error(exc, close=close)
            log.info(
                "connection %s: %s %s refused (%s): %s",
                self.id,
                head.method,
                _short(target.path),
                exc.http_status,
                exc.message,
            )
            return not close
        pairs = zip(head.names, head.fields, strict=True)
        request = HttpRequest(
            method=head.method,
            path=path,
            query=target.query or "",
            headers=tuple([(n, f[1]) for n, f in pairs if n != "authorization"]),
            body=None,
            body_length=body.declared,
            content_type=head.get("content-type"),
        )
        exchange = Exchange(
            session=self,
            head=head,
            target=target,
            body=body,
            conn=conn,
            principal=principal,
            audited=audited,
            request=request,
            keep_alive=keep,
            started=started,
            head_bytes=len(raw),
            host=host,
        )
        return exchange

    # --- who, where ---------------------------------------------------------------------------

    async def authenticate(self, head: RequestHead) -> Principal:
        """The caller of this request: ``Authorization: Bearer <credential>``, else a verified
        client certificate (mTLS)."""
        identity = self.listener.services.identity
        values = head.get_all("authorization")
        if len(values) > 1:
            raise AuthenticationFailed("send one Authorization header")
        if not values:
            cert = self._peer_certificate()
            if cert is not None:
                return await identity.authenticate_certificate(
                    cert, source=self.client_host, protocol="http"
                )
            raise AuthenticationFailed(
                "a credential is required: Authorization: Bearer <credential>"
            )
        scheme, _, credential = values[0].partition(" ")
        credential = credential.strip(" \t")
        if scheme.lower() != "bearer" or not credential:
            raise AuthenticationFailed("expected Authorization: Bearer <credential>")
        now = time.time()
        principal = self._remembered(credential, now)
        if principal is not None:
            return principal
        principal = await identity.authenticate(
            credential, source=self.client_host, protocol="http"
        )
        if len(self._credentials) >= CREDENTIALS_PER_CONNECTION:
            self._credentials.clear()
        self._credentials[credential] = (principal, now)
        return principal

    def _known_caller(self, head: RequestHead) -> Principal | None:
        """The caller of this request when its one ``Authorization: Bearer`` credential was
        verified on this connection lately (no await); otherwise ``None`` and
        :meth:`authenticate` decides."""
        names = head.names
        if names.count("authorization") != 1:
            return None
        scheme, _, credential = head.fields[names.index("authorization")][1].partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self._remembered(credential.strip(" \t"), time.time())

    def _remembered(self, credential: str, now: float) -> Principal | None:
        """The principal ``credential`` was verified as on this connection, if that was less
        than :data:`CREDENTIAL_RECHECK` ago and it has not expired (compared in constant time)."""
        if not credential or not credential.isascii():
            return None  # compare_digest takes ASCII text only; a verified credential is ASCII
        for known, (principal, verified) in self._credentials.items():
            if hmac.compare_digest(known, credential):
                expired = principal.expires_at is not None and principal.expires_at <= now
                if not expired and now - verified < CREDENTIAL_RECHECK:
                    return principal
                del self._credentials[known]
                return None
        return None

    def _peer_certificate(self) -> bytes | None:
        gw_tls = self.listener.services.config.gateway.tls
        client_ca = self.listener.config.client_ca or (gw_tls.client_ca if gw_tls else None)
        if not self.tls or client_ca is None:
            return None
        ssl_object = self.stream.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        der: bytes | None = ssl_object.getpeercert(binary_form=True)
        return der or None

    def route(self, target: Target, host: str) -> tuple[ConnectionConfig, str]:
        """The connection a request is for, and its path inside that connection: the target's
        authority or the ``Host`` field mapped by ``connections[].hosts``, else the first path
        segment."""
        listener = self.listener
        mapped = listener.host_route(target.authority or host)
        if mapped is not None:
            name, path = mapped, target.path
        else:
            name, path = split_prefix(target.path)
        conn = listener.http_connection(name)
        if conn is None:
            shown = name if len(name) <= 64 else name[:64] + "…"
            raise UnknownConnection(f'connection "{shown}" does not exist')
        return conn, path

    def _still_audited(self, principal: Principal, conn: ConnectionConfig) -> Audited | None:
        """The recorded session of the previous request when this one is by the same caller
        (the same verified principal) on the same connection and the checks
        :meth:`audited` made still hold; else ``None`` and :meth:`audited` decides."""
        last = self._last_audited
        if last is None or last[0] is not principal or last[1] is not conn:
            return None
        audited = last[2]
        if time.monotonic() - audited.checked_at >= GRANT_RECHECK:
            return None
        if not audited.grants and audited.connect_version != self.listener.services.policy.version:
            return None
        return audited

    async def audited(
        self, principal: Principal, conn: ConnectionConfig, head: RequestHead
    ) -> Audited:
        """The recorded session of ``principal`` on ``conn`` over this TCP connection, opened
        at its first request. Raises ConnectRefused when no policy (nor access window) lets the
        caller use the connection, AuditUnavailable when the start cannot be recorded."""
        services = self.listener.services
        key = (
            principal.subject,
            principal.issuer,
            principal.credential_id,
            principal.method,
            conn.name,
        )
        audited = self._audits.get(key)
        now = time.monotonic()
        # Connecting is judged per request: a reloaded policy may have taken it away (the answer
        # is remembered per policy version).
        version = services.policy.version
        if (
            audited is not None
            and now - audited.checked_at < GRANT_RECHECK
            and (audited.grants or audited.connect_version == version)
        ):
            self._last_audited = (principal, conn, audited)
            return audited
        grants: tuple[Grant, ...] = ()
        if services.approvals is not None:
            # An approved access window applies its policy to this caller for its duration.
            grants = tuple(await services.approvals.active_grants(principal, conn.name))
        if not grants and not may_connect(services.config.policies, principal, conn.name):
            raise ConnectRefused(
                f'"{principal.subject}" is not allowed to use connection "{conn.name}"'
            )
        if audited is not None:
            audited.connect_version = version
            audited.grants = grants
            audited.grant_policies = tuple(sorted({g.policy for g in grants}))
            audited.checked_at = now
            self._last_audited = (principal, conn, audited)
            return audited
        info = SessionInfo(
            id=new_session_id(),
            principal=principal,
            connection=conn.name,
            protocol="http",
            client_addr=self.client_addr,
            tls=self.tls,
            application_name=_user_agent(head),
            started_at=time.time(),
        )
        recorder = await services.audit.open_session(info)
        audited = Audited(
            info=info,
            recorder=recorder,
            grants=grants,
            grant_policies=tuple(sorted({g.policy for g in grants})),
            checked_at=now,
            connect_version=version,
        )
        self._audits[key] = audited
        self._last_audited = (principal, conn, audited)
        log.info(
            "session %s: %s (%s) → %s over HTTP from %s",
            info.id,
            principal.subject,
            principal.method,
            conn.name,
            self.client_addr,
        )
        return audited

    def mask_plan(self, audited: Audited, principal: Principal, conn: str) -> HttpMaskPlan:
        """The caller's mask plan under the current policy (rebuilt after a reload)."""
        policy = self.listener.services.policy
        if audited.plan is None or audited.plan_version != policy.version:
            audited.plan = HttpMaskPlan.for_principal(
                policy.policies,
                principal,
                conn,
                secret=self.listener.secret_key(),
                granted=audited.grant_policies,
                limit=self.listener.max_inspected,
            )
            audited.plan_version = policy.version
        return audited.plan


def _user_agent(head: RequestHead) -> str | None:
    agent = head.get("user-agent")
    return agent[:200] if agent else None


def _short(path: str) -> str:
    return path if len(path) <= 80 else path[:80] + "…"
