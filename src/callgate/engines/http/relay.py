"""Upstream response → caller: framed again for the caller, masked when a rule may apply,
scrubbed of callgate's own secrets, streamed with back-pressure otherwise.

The body is re-framed rather than copied: transfer codings are hop-by-hop (RFC 9112 §7), so a
chunked upstream body reaches an HTTP/1.1 caller chunked again, an HTTP/1.0 caller delimited by
closing the connection. A body that must be masked is buffered (up to
``gateway.limits.http_max_inspected_body``) and sent with its new Content-Length; past the limit,
or when it cannot be masked, the caller gets a 502 and none of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from callgate.engines.http.body import ClientGone, ClientStream
from callgate.engines.http.replies import reason_phrase
from callgate.engines.http.scrub import SecretScrubber
from callgate.engines.http.upstream import UpstreamConnection, read_upstream
from callgate.errors import UpstreamError, UpstreamUnavailable
from callgate.masking.errors import MaskingFailed
from callgate.masking.http import HttpMaskPlan
from callgate.masking.media import SNIFF_BYTES
from callgate.protocols.http import (
    LAST_CHUNK,
    BodyIncomplete,
    BodyReader,
    Length,
    RequestHead,
    ResponseHead,
    UntilClose,
    body_reader,
    chunk_parts,
    encode_response_head,
    end_to_end,
    response_framing,
    response_keep_alive,
)

#: Seconds a caller may leave a response unread (its socket buffer full) before the exchange is
#: given up. Back-pressure means a slow reader slows the upstream down; a stalled one ends.
CLIENT_WRITE_TIMEOUT: Final = 60.0


#: Response fields never copied from the upstream's head: callgate writes its own framing.
_NOT_RELAYED: Final = frozenset({"content-length"})

#: Buffers up to this size are joined into one before writing: one small copy is cheaper than
#: handing the transport several buffers (and keeps one send per response).
JOIN_BELOW: Final = 64 * 1024


class ResponseWithheld(UpstreamError):
    """The response must be inspected and cannot be: too large, or not maskable. Nothing of
    its body is sent (SPEC §5: masked values never leave callgate unmasked)."""

    http_status = 502
    code = "response_withheld"


class ResponseRelay:
    """Sends one upstream response to the caller. :meth:`run` returns whether the upstream
    connection can serve another request."""

    __slots__ = (
        "_extra",
        "_pending",
        "_reader",
        "aborted",
        "body_bytes",
        "client",
        "close_delimited",
        "head_sent",
        "keep_alive",
        "max_inspected",
        "plan",
        "read_timeout",
        "request_head",
        "response",
        "sample",
        "sample_limit",
        "scrubber",
        "sent",
        "up",
    )

    def __init__(
        self,
        *,
        session_stream: ClientStream,
        request_head: RequestHead,
        up: UpstreamConnection,
        response: ResponseHead,
        leftover: bytes,
        plan: HttpMaskPlan,
        scrubber: SecretScrubber,
        keep_alive: bool,
        max_inspected: int,
        read_timeout: float,
        sample_limit: int,
    ) -> None:
        self.client = session_stream
        self.request_head = request_head
        self.up = up
        self.response = response
        self.plan = plan
        self.scrubber = scrubber
        self.keep_alive = keep_alive
        self.max_inspected = max_inspected
        self.read_timeout = read_timeout
        self.sample_limit = sample_limit
        self._pending = leftover
        self._reader: BodyReader | None = None
        self._extra = False
        self.head_sent = False
        self.aborted = False
        #: the caller's copy of the body ends when callgate closes the connection
        self.close_delimited = False
        #: bytes written to the caller (head included)
        self.sent = 0
        #: body bytes delivered, and the first ``sample_limit`` of them (for audit)
        self.body_bytes = 0
        self.sample = b""

    # --- writing to the caller ----------------------------------------------------------------

    async def _write(self, data: bytes | list[bytes]) -> None:
        if self._send(data):
            await self._drain()

    def _send(self, data: bytes | list[bytes]) -> bool:
        """Write without waiting; True when :meth:`_drain` must be awaited before more."""
        w = self.client
        try:
            if isinstance(data, bytes):
                drain = w.write(data)
                self.sent += len(data)
                return drain
            size = sum(len(d) for d in data)
            if len(data) == 1 or size <= JOIN_BELOW:
                drain = w.write(data[0] if len(data) == 1 else b"".join(data))
            else:
                w.transport.writelines(data)  # a big chunk is not copied to add its size line
                drain = w.must_drain
            self.sent += size
            return drain
        except (OSError, RuntimeError) as exc:
            raise ClientGone(f"the caller's connection failed ({type(exc).__name__})") from None

    async def _drain(self) -> None:
        """Wait until the caller takes more (back-pressure), for at most
        :data:`CLIENT_WRITE_TIMEOUT`."""
        try:
            async with asyncio.timeout(CLIENT_WRITE_TIMEOUT):
                await self.client.drain()
        except TimeoutError:
            raise ClientGone(f"the caller read nothing for {CLIENT_WRITE_TIMEOUT:g}s") from None
        except (OSError, RuntimeError) as exc:
            raise ClientGone(f"the caller's connection failed ({type(exc).__name__})") from None

    def _head(self, fields: list[tuple[str, str]]) -> bytes:
        resp = self.response
        if not self.keep_alive or self.close_delimited:
            fields.append(("Connection", "close"))
        elif self.request_head.version < (1, 1):
            fields.append(("Connection", "keep-alive"))
        self.head_sent = True
        return encode_response_head(
            resp.status, resp.reason or reason_phrase(resp.status), tuple(fields)
        )

    def _delivered(self, payload: bytes) -> None:
        self.body_bytes += len(payload)
        if len(self.sample) < self.sample_limit:
            self.sample += payload[: self.sample_limit - len(self.sample)]

    def abort(self) -> None:
        """Cut the caller's connection (the response could not be completed)."""
        self.aborted = True
        with contextlib.suppress(Exception):
            self.client.abort()

    # --- reading from the upstream ------------------------------------------------------------

    async def _payload(self) -> bytes | None:
        """The next payload bytes of the body; ``None`` at its end."""
        reader = self._reader
        assert reader is not None
        while not reader.done:
            if self._pending:
                data, self._pending = self._pending, b""
            else:
                data = await read_upstream(self.up, self.read_timeout, "response body")
                if not data:
                    try:
                        reader.eof()
                    except BodyIncomplete:
                        raise UpstreamUnavailable(
                            "the upstream closed the connection before the end of its response"
                        ) from None
                    return None
            payload = reader.feed(data)
            if reader.done and reader.leftover:
                self._extra = True  # bytes after the response: the connection is out of step
            if payload:
                return payload
        return None

    # --- the response ----------------------------------------------------------------------------

    async def run(self) -> bool:
        resp = self.response
        method = self.request_head.method
        framing = response_framing(resp, method)
        fields = end_to_end(resp.fields, resp.names, drop=_NOT_RELAYED)
        plan = self.plan
        if not plan.untouched:
            fields = plan.mask_headers(fields)
        fields = self.scrubber.fields(fields)
        self._reader = body_reader(framing, request=False)
        if self._reader is None:
            if method == "HEAD":
                length = resp.get("content-length")
                if length is not None and length.isdigit():
                    fields.append(("Content-Length", length))
            elif resp.status >= 200 and resp.status not in (204, 304):
                fields.append(("Content-Length", "0"))
            await self._write(self._head(fields))
            return _keep_alive(resp) and not self._pending
        content_type = None if plan.bodies_untouched else resp.get("content-type")
        mode = "none" if plan.bodies_untouched else plan.inspection(content_type)
        first = b""
        if mode == "sniff":
            first = await self._at_least(SNIFF_BYTES)
            inspect = self.plan.needs_body(content_type, first, resp.get("content-encoding"))
        else:
            inspect = mode == "buffer"
        if inspect:
            await self._masked(fields, first, content_type, resp.get("content-encoding"))
        elif not first and isinstance(framing, Length) and len(self._pending) >= framing.length:
            if self._send_whole(fields, framing):
                await self._drain()
        else:
            await self._streamed(fields, first, framing)
        return (
            self._reader.done
            and not self._extra
            and not isinstance(framing, UntilClose)
            and _keep_alive(resp)
        )

    async def _at_least(self, n: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        while size < n:
            payload = await self._payload()
            if payload is None:
                break
            parts.append(payload)
            size += len(payload)
        return b"".join(parts)

    async def _masked(
        self,
        fields: list[tuple[str, str]],
        first: bytes,
        content_type: str | None,
        content_encoding: str | None,
    ) -> None:
        parts = [first] if first else []
        size = len(first)
        while (payload := await self._payload()) is not None:
            size += len(payload)
            if size > self.max_inspected:
                raise ResponseWithheld(
                    f"the response body is larger than the {self.max_inspected} bytes callgate "
                    "can inspect (gateway.limits.http_max_inspected_body); nothing of it was sent"
                )
            parts.append(payload)
        body = b"".join(parts)
        try:
            masked = self.plan.mask_body(body, content_type, content_encoding)
        except MaskingFailed as exc:
            raise ResponseWithheld(
                f"callgate could not mask the response ({exc.reason}); nothing of it was sent"
            ) from None
        masked = self.scrubber.whole(masked)
        fields.append(("Content-Length", str(len(masked))))
        self._delivered(masked)
        await self._write(self._head(fields) + masked)

    def _send_whole(self, fields: list[tuple[str, str]], framing: Length) -> bool:
        """The whole body came with the head (most small responses): head and body leave in
        one write, without streaming steps. Nothing is held back for a secret straddling two
        reads: the body is searched whole. Returns :meth:`_send`'s answer."""
        reader = self._reader
        assert reader is not None
        fields.append(("Content-Length", str(framing.length)))
        head = self._head(fields)
        pending, self._pending = self._pending, b""
        body = self.scrubber.whole(reader.feed(pending))
        if reader.leftover:
            self._extra = True  # bytes after the response: the connection is out of step
        self._delivered(body)
        return self._send(head + body)

    async def _streamed(self, fields: list[tuple[str, str]], first: bytes, framing: object) -> None:
        chunked = False
        if isinstance(framing, Length):
            fields.append(("Content-Length", str(framing.length)))
        elif self.request_head.version >= (1, 1):
            fields.append(("Transfer-Encoding", "chunked"))
            chunked = True
        else:
            self.close_delimited = True  # an HTTP/1.0 caller reads to the end of the connection
        scrubber = self.scrubber
        head = self._head(fields)
        pending_head: bytes | None = head
        small = isinstance(framing, Length) and framing.length <= JOIN_BELOW
        if not first and not self._pending and not small:
            # Nothing of the body is here yet and it may take its time (an event stream, a long
            # poll): the head goes now. A small body of known length is right behind its head
            # (servers write them separately): both leave in one write.
            await self._write(head)
            pending_head = None
        payload: bytes | None = first or await self._payload()
        while payload is not None:
            out = scrubber.feed(payload)
            if out:
                self._delivered(out)
                parts = list(chunk_parts(out)) if chunked else [out]
                if pending_head is not None:
                    parts.insert(0, pending_head)  # small responses leave in one write
                    pending_head = None
                await self._write(parts)
            payload = await self._payload()
        tail = scrubber.flush()
        parts = []
        if pending_head is not None:
            parts.append(pending_head)
        if tail:
            self._delivered(tail)
            parts += list(chunk_parts(tail)) if chunked else [tail]
        if chunked:
            parts.append(LAST_CHUNK)
        if parts:
            await self._write(parts)


def _keep_alive(resp: ResponseHead) -> bool:
    """Whether the upstream keeps the connection (:func:`response_keep_alive`), without its
    calls for the usual HTTP/1.1 response that has no Connection field."""
    if resp.version >= (1, 1) and "connection" not in resp.names:
        return True
    return response_keep_alive(resp)
