"""One request through the HTTP engine, after the caller is known and the connection chosen:
policy → audit → approvals → forward → response (masked, secrets scrubbed) → audit.

Bodies stream both ways unless something must read them; the socket buffers give back-pressure
(every write waits for ``drain``), so a 1 GiB upload or download holds a few hundred KiB.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from callgate.approvals import ApprovalPending
from callgate.engines.http.body import ClientBody, ClientGone
from callgate.engines.http.inject import Injector, Outgoing
from callgate.engines.http.relay import ResponseRelay
from callgate.engines.http.replies import BodyTooLarge
from callgate.engines.http.scrub import NO_SECRETS, SecretScrubber
from callgate.engines.http.upstream import (
    IDEMPOTENT,
    UpstreamClosed,
    UpstreamConnection,
    UpstreamPool,
    UpstreamTimeout,
    drain_upstream,
    final_response_head,
    read_response_head,
    send_upstream,
    write_upstream,
)
from callgate.errors import (
    AuditUnavailable,
    CallerError,
    CallgateError,
    InternalError,
    StatementDenied,
    UpstreamUnavailable,
)
from callgate.masking.http import HttpMaskPlan
from callgate.model import Decision, HttpRequest, Principal, Verdict
from callgate.policy.http import HttpRuleSet
from callgate.protocols.http import (
    LAST_CHUNK,
    RequestHead,
    ResponseHead,
    Target,
    chunk_parts,
    encode_request_head,
    end_to_end,
    join_path,
    valid_field,
)

if TYPE_CHECKING:
    from callgate.config import ConnectionConfig
    from callgate.engines.http.session import Audited, HttpSession

log = logging.getLogger("callgate.http")

#: Request fields never forwarded: the caller's credential, what callgate sets itself (Host,
#: framing, the forwarding headers, whose caller-sent values cannot be trusted), and Expect
#: (callgate answers 100-continue itself and sends the body only once it decided to).
_NOT_FORWARDED: Final = frozenset(
    {
        "authorization",
        "host",
        "expect",
        "content-length",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-real-ip",
    }
)
#: The same, when callgate asks the upstream for an uncompressed body itself.
_NOT_FORWARDED_SCRUBBED: Final = _NOT_FORWARDED | {"accept-encoding"}
#: A request target as it may be written on the request line (visible ASCII, RFC 9112 §3.2).
_TARGET: Final = re.compile(r"/[\x21-\x7e]*")
#: Injected fields found valid are remembered (per listener, emptied on reload) up to this many:
#: an injector sends the same few until its secrets rotate.
_INJECTED_VALID_KEPT: Final = 256
#: Methods whose request carries Content-Length: 0 when it has no body (RFC 9110 §8.6: a user
#: agent SHOULD send it for methods that define a body).
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})


class Exchange:
    """One request and its response. :meth:`run` returns whether the connection may be kept."""

    __slots__ = (
        "abandoned",
        "audited",
        "body",
        "conn",
        "head",
        "head_bytes",
        "host",
        "keep_alive",
        "listener",
        "principal",
        "relay",
        "request",
        "review_id",
        "session",
        "started",
        "target",
    )

    def __init__(
        self,
        *,
        session: HttpSession,
        head: RequestHead,
        target: Target,
        body: ClientBody,
        conn: ConnectionConfig,
        principal: Principal,
        audited: Audited,
        request: HttpRequest,
        keep_alive: bool,
        started: float,
        head_bytes: int,
        host: str,
    ) -> None:
        self.session = session
        self.listener = session.listener
        self.head = head
        self.target = target
        self.body = body
        self.conn = conn
        self.principal = principal
        self.audited = audited
        self.request = request
        self.keep_alive = keep_alive
        self.started = started
        self.head_bytes = head_bytes
        #: the caller's Host field ("" without one)
        self.host = host
        self.review_id: str | None = None
        #: the response head went to the caller: an error now can only cut the connection
        self.relay: ResponseRelay | None = None
        #: the request body was not read to its end (an early response): close afterwards
        self.abandoned = False

    # --- the pipeline -------------------------------------------------------------------------

    async def run(self) -> bool:
        recorder = self.audited.recorder
        audited = self.audited
        plan = audited.plan
        if plan is None or audited.plan_version != self.listener.services.policy.version:
            plan = self.session.mask_plan(audited, self.principal, self.conn.name)
        injector = self.listener.injector(self.conn)
        seq: int | None = None
        status = 0
        error: str | None = None
        try:
            rules = self.listener.services.policy.http_rules_for(
                self.principal, self.conn.name, self.audited.grant_policies
            )
            try:
                if self._needs_body(injector, rules):
                    await self._buffer_body()
            except BodyTooLarge as exc:
                # Recorded as a refusal, then answered with the 413 itself.
                refused = Decision(Verdict.DENY, (), exc.message)
                seq = await recorder.request(self._as_recorded(plan), refused)
                raise
            decision = rules.decide(self.request)  # per request (cached per method and path)
            seq = await recorder.request(self._as_recorded(plan), decision)
            if decision.verdict is Verdict.DENY:
                raise StatementDenied(decision.reason or "denied by policy")
            if decision.verdict is Verdict.REVIEW:
                await self._review(decision)
            status = await self._forward(injector, plan)
        except ClientGone as exc:
            error = f"caller went away: {exc}"
            status = 499  # nginx's "client closed request": nothing was answered
            raise
        except CallgateError as exc:
            status, error = exc.http_status, exc.message
            if self.relay is not None and self.relay.head_sent:
                # Part of the response is with the caller: cutting the connection is the only
                # way left to tell it the response is incomplete.
                self.relay.abort()
                log.warning("session %s: response cut off: %s", self.audited.info.id, exc.message)
                self.keep_alive = False
            else:
                close = not self._may_continue()
                _, sent = await self.session.reply_error(exc, close=close, review_id=self.review_id)
                self._count_out(sent)
                self.keep_alive = not close
            if not isinstance(exc, StatementDenied | AuditUnavailable):
                log.info(
                    "session %s: %s %s: %s",
                    self.audited.info.id,
                    self.head.method,
                    self.request.path,
                    exc.message,
                )
        finally:
            self._finish(seq, status, error, plan)
        return self._may_continue()

    def _may_continue(self) -> bool:
        relay = self.relay
        if relay is not None and (relay.close_delimited or relay.aborted):
            return False
        return (
            self.keep_alive and not self.abandoned and self.body.done and not self.session.stopping
        )

    def _finish(self, seq: int | None, status: int, error: str | None, plan: HttpMaskPlan) -> None:
        a = self.audited
        relay = self.relay
        bytes_in = self.head_bytes + self.body.received
        a.bytes_in += bytes_in
        if relay is not None:
            a.bytes_out += relay.sent
        a.requests += 1
        if seq is None:
            return
        recorder = a.recorder
        recorder.response(
            seq,
            status=status,
            bytes_from_client=bytes_in,
            bytes_to_client=relay.sent if relay is not None else 0,
            duration_ms=(time.monotonic() - self.started) * 1000.0,
            error=error,
        )
        limit = recorder.record_body
        if limit > 0:
            sample: bytes | None = (
                self.body.buffered if self.body.buffered is not None else self.body.sample
            )
            if sample and not plan.untouched:
                sample = plan.mask_request_sample(sample, self.request.content_type, limit)
            recorder.bodies(
                seq,
                request=sample or None,
                response=relay.sample if relay is not None and relay.sample else None,
                request_truncated=self.body.received > limit,
                response_truncated=relay is not None and relay.body_bytes > limit,
            )

    def _count_out(self, n: int) -> None:
        self.audited.bytes_out += n

    def _as_recorded(self, plan: HttpMaskPlan) -> HttpRequest:
        """The request as audit records it: the query through the caller's mask plan (secret
        parameters and detector hits masked; the event builder masks secret names again)."""
        query = self.request.query
        if query and not plan.untouched:
            return replace(self.request, query=plan.mask_query(query), body=None)
        return replace(self.request, body=None) if self.request.body is not None else self.request

    def _needs_body(self, injector: Injector | None, rules: HttpRuleSet) -> bool:
        """The body must be buffered before deciding or forwarding: a policy rule with ``json``
        conditions may apply, or the injector signs it."""
        if self.body.empty:
            return False
        if injector is not None and injector.needs_body:
            return True
        return rules.needs_body(self.request.method, self.request.path)

    async def _buffer_body(self) -> None:
        data = await self.body.read_all(self.listener.max_inspected)
        self.request = replace(self.request, body=data, body_length=len(data))

    # --- approvals ------------------------------------------------------------------------------

    async def _review(self, decision: Decision) -> None:
        """Hold the request for a human (or use a deferred approval); returns when approved."""
        services = self.listener.services
        approvals = services.approvals
        found = approvals.rule_for(self.conn.name) if approvals is not None else None
        if approvals is None or found is None:
            raise StatementDenied(
                f"request needs approval: {decision.reason}",
                hint="no approval channel is configured for this connection",
            )
        # An approval covers exactly this request, body included: buffer it to bind and send it.
        if not self.body.empty and self.request.body is None:
            await self._buffer_body()
        r = self.request
        statement = f"{r.method} {r.path}" + (f"?{r.query}" if r.query else "")
        params = (r.body,) if r.body else ()
        rule = found[1]
        version = services.policy.version
        if rule.mode == "deferred":
            used = await approvals.use_deferred(
                self.principal, self.conn.name, statement, params, policy_version=version
            )
            if used is not None:
                log.info("session %s: deferred approval %s used", self.audited.info.id, used.id)
                return
        review = await approvals.request(
            self.principal,
            connection=self.conn.name,
            statement_sql=statement,
            params=params,
            rules=decision.rules,
            policy_version=version,
            mode=rule.mode,
            session_id=self.audited.info.id,
        )
        self.review_id = review.id
        if rule.mode == "deferred":
            raise ApprovalPending(
                f"request needs approval: review {review.id} was created; send it again once it "
                "is approved",
                hint=f"an approver runs: callgate reviews approve {review.id}",
            )
        log.info("session %s: request held for review %s", self.audited.info.id, review.id)
        outcome = await approvals.wait_for_caller(
            review.id, rule.timeout.total_seconds(), self.session.stream.gone
        )
        if outcome is None:
            raise ClientGone("the caller went away while its request was held")
        if not outcome.approved:
            raise outcome.error()
        log.info("session %s: review %s approved", self.audited.info.id, review.id)

    # --- forwarding -----------------------------------------------------------------------------

    def _upstream_fields(
        self, pool: UpstreamPool, plan: HttpMaskPlan, scrub: bool
    ) -> list[tuple[str, str]]:
        head = self.head
        # Accept-Encoding is dropped here when callgate sets it below (a compressed body cannot
        # be searched for an echoed secret, see scrub.py); the mask plan may set it too.
        fields = end_to_end(
            head.fields, head.names, drop=_NOT_FORWARDED_SCRUBBED if scrub else _NOT_FORWARDED
        )
        if not plan.bodies_untouched:
            fields = plan.request_headers(fields)
        elif scrub:
            fields.append(("Accept-Encoding", "identity"))
        session = self.session
        out = [("Host", pool.address.authority), *fields]
        out.append(("X-Forwarded-For", session.client_host))
        out.append(("X-Forwarded-Proto", "https" if session.tls else "http"))
        host = self.target.authority or self.host
        if host:
            out.append(("X-Forwarded-Host", host))
        return out

    async def _forward(self, injector: Injector | None, plan: HttpMaskPlan) -> int:
        listener = self.listener
        pool = listener.pool(self.conn)
        address = pool.address
        request = self.request
        path = join_path(address.base_path, request.path)
        query = self.target.query
        target = path if query is None else f"{path}?{query}"
        fields = self._upstream_fields(pool, plan, injector is not None)
        url = address.url(target)
        outgoing = Outgoing(
            request.method,
            url,
            list(fields),
            request.body if request.body is not None else (b"" if self.body.empty else None),
            request.body_length,
        )
        if injector is not None:
            outgoing = injector.apply_now(outgoing) or await injector.apply(outgoing)
        head_bytes, chunked = _encode_upstream_head(
            outgoing, pool, url, target, fields, listener.injected_valid
        )
        # After apply(): the secrets as resolved for this request (an OAuth2 token just fetched).
        scrubber = SecretScrubber(
            listener.secret_set(injector.secret_values()) if injector is not None else NO_SECRETS
        )
        up, resp, leftover = await self._exchange_head(pool, outgoing, head_bytes, chunked)
        relay = ResponseRelay(
            session_stream=self.session.stream,
            request_head=self.head,
            up=up,
            response=resp,
            leftover=leftover,
            plan=plan,
            scrubber=scrubber,
            keep_alive=self._may_continue(),
            max_inspected=self.listener.max_inspected,
            read_timeout=pool.read_timeout,
            sample_limit=self.audited.recorder.record_body,
        )
        self.relay = relay
        try:
            reusable = await relay.run()
        except BaseException:
            up.close()
            raise
        pool.release(up, reusable=reusable and not self.abandoned)
        if scrubber.hits:
            log.warning(
                "session %s: %d copies of callgate's upstream credential removed from a response",
                self.audited.info.id,
                scrubber.hits,
            )
        return resp.status

    async def _exchange_head(
        self, pool: UpstreamPool, outgoing: Outgoing, head_bytes: bytes, chunked: bool
    ) -> tuple[UpstreamConnection, ResponseHead, bytes]:
        """Send the request (its body too, or start streaming it) and read the response head.
        A reused connection found closed before any answer is replaced once, for requests that
        can be sent again (idempotent, body not streamed)."""
        streamed = outgoing.body is None and not self.body.empty
        if streamed:
            await self.body.prefetch()
        replayable = not streamed and outgoing.method in IDEMPOTENT
        session = self.session
        for attempt in (0, 1):
            up = (pool.reuse() if attempt == 0 else None) or await pool.acquire(fresh=True)
            try:
                if streamed:
                    resp, leftover = await self._send_streaming(up, pool, head_bytes, chunked)
                    return up, resp, leftover
                data = [head_bytes, outgoing.body] if outgoing.body else head_bytes
                if send_upstream(up, data):
                    await drain_upstream(up, pool.write_timeout)
                # The answer is due within the read timeout: the listener's watchdog holds it
                # (no timer of its own), aborting the connection when it runs out.
                session.watch_upstream(up, pool.read_timeout)
                try:
                    try:
                        data = await up.stream.read()
                    except OSError as exc:
                        raise UpstreamUnavailable(
                            f"the upstream connection failed ({type(exc).__name__})"
                        ) from None
                    found = final_response_head(data) if data else None
                    if found is None:
                        resp, leftover, _ = await read_response_head(up, None, first=data)
                    else:
                        resp, leftover = found
                except UpstreamUnavailable:
                    if up.timed_out:
                        raise UpstreamTimeout(
                            f"the upstream sent no response within {pool.read_timeout:g}s"
                        ) from None
                    raise
                finally:
                    session.unwatch_upstream()
                return up, resp, leftover
            except UpstreamTimeout:
                up.close()
                raise
            except UpstreamUnavailable as exc:
                up.close()
                answered = isinstance(exc, UpstreamClosed) and exc.received
                if attempt == 0 and up.reused and replayable and not answered:
                    log.debug("connection %s: stale pooled connection, retrying", self.conn.name)
                    continue
                raise
            except BaseException:
                up.close()
                raise
        raise InternalError(
            "unreachable: the retry loop always returns or raises"
        )  # pragma: no cover

    async def _send_streaming(
        self, up: UpstreamConnection, pool: UpstreamPool, head_bytes: bytes, chunked: bool
    ) -> tuple[ResponseHead, bytes]:
        """Stream the caller's body while watching for the response: an upstream may answer
        (413, 401 …) before taking the whole body, and then the rest is not sent."""
        await write_upstream(up, head_bytes, pool.write_timeout)
        pump = asyncio.ensure_future(self._pump(up, pool.write_timeout, chunked))
        # The read timeout starts when the body has been sent: an upload may take long.
        answer = asyncio.ensure_future(read_response_head(up, None))
        try:
            await asyncio.wait({pump, answer}, return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():
                failure = pump.exception()
                if isinstance(failure, ClientGone | CallerError):
                    raise failure  # the caller's fault: the upstream gets a cut-off upload
                # The body was sent (or the upstream stopped taking it): now the answer is due.
                try:
                    async with asyncio.timeout(pool.read_timeout):
                        await asyncio.shield(answer)
                except TimeoutError:
                    if failure is not None:
                        raise failure from None
                    raise UpstreamTimeout(
                        f"the upstream sent no response within {pool.read_timeout:g}s"
                    ) from None
            resp, leftover, _ = answer.result()
            if not pump.done():
                self.abandoned = True  # answered early: the rest of the caller's body is unread
            return resp, leftover
        finally:
            for task in (pump, answer):
                if not task.done():
                    task.cancel()
            await asyncio.gather(pump, answer, return_exceptions=True)

    async def _pump(self, up: UpstreamConnection, timeout: float, chunked: bool) -> None:  # noqa: ASYNC109
        async for piece in self.body.pieces():
            if chunked:
                await write_upstream(up, list(chunk_parts(piece)), timeout)
            else:
                await write_upstream(up, piece, timeout)
        if chunked:
            await write_upstream(up, LAST_CHUNK, timeout)


def _encode_upstream_head(
    out: Outgoing,
    pool: UpstreamPool,
    url: str,
    target: str,
    ours: list[tuple[str, str]],
    valid: dict[tuple[str, str], None],
) -> tuple[bytes, bool]:
    """The request head as sent upstream, and whether its body is chunked. The injector's
    headers are sent as it returned them (an AWS signature covers them); framing is added
    here, last, from the body actually sent. ``url``/``target``/``ours``: what callgate built
    before the injector ran; only what the injector added or changed is checked again (and
    remembered in ``valid`` once found valid)."""
    if out.url != url:
        parts = urlsplit(out.url)
        a = pool.address
        if (
            parts.scheme != a.scheme
            or (parts.hostname or "") != a.host
            or (parts.port or a.port) != a.port
        ):
            raise InternalError("the credential injector changed the upstream address")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not _TARGET.fullmatch(target):
            raise InternalError("the credential injector produced an invalid request target")
    # Callgate's own fields hold no framing (Content-Length and Transfer-Encoding were not
    # forwarded) and are valid (parsed from the caller's head, or callgate's); only what the
    # injector added is looked at, and found valid once per distinct field.
    checked = set(ours)
    fields: list[tuple[str, str]] = []
    for field in out.headers:
        if field in checked or field in valid:
            fields.append(field)
            continue
        name, value = field
        if name.lower() in ("content-length", "transfer-encoding"):
            continue
        if not valid_field(name, value):
            raise InternalError(f"the credential injector produced an invalid header {name!r}")
        if len(valid) >= _INJECTED_VALID_KEPT:
            valid.clear()
        valid[field] = None
        fields.append(field)
    chunked = False
    if out.body is not None:
        if out.body or out.method in _BODY_METHODS:
            fields.append(("Content-Length", str(len(out.body))))
    elif out.body_length is not None:
        fields.append(("Content-Length", str(out.body_length)))
    else:
        fields.append(("Transfer-Encoding", "chunked"))
        chunked = True
    return encode_request_head(out.method, target, tuple(fields)), chunked
