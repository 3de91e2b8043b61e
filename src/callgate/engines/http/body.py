"""A caller's request body: streamed to the upstream as it arrives, or buffered when something
must read it (a policy condition on the JSON body, an approval bound to it, an AWS signature).

Bytes come through :class:`ClientStream`, which holds what was read past the previous message
(pipelined requests) and applies the read timeout. ``Expect: 100-continue`` is answered the first
time the body is read, never before: a request refused on its head is refused without the
caller sending its body (RFC 9110 §10.1.1).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Final

from callgate.engines.http.replies import CONTINUE, BodyTooLarge
from callgate.protocols.http import (
    BodyIncomplete,
    Framing,
    Length,
    NoBody,
    body_reader,
)

#: Bytes read from a caller at a time.
CLIENT_READ: Final = 64 * 1024
#: Seconds a caller may leave a started request (head or body) without sending more. Long enough
#: for a slow mobile link, short enough that idle half-sent requests do not pile up (slowloris).
CLIENT_READ_TIMEOUT: Final = 60.0


class ClientGone(Exception):
    """The caller closed the connection, reset it, or stopped sending mid-request."""


class ClientStream:
    """The caller's connection, read with timeouts; bytes read too far are kept for later."""

    __slots__ = ("bytes_in", "pending", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pending = b""
        self.bytes_in = 0

    async def read(self, timeout: float | None = CLIENT_READ_TIMEOUT) -> bytes:  # noqa: ASYNC109
        """The next bytes (``pending`` first); ``b""`` at EOF. Raises :class:`ClientGone` on a
        reset or when nothing arrives within ``timeout`` (``None``: the caller enforces its
        own deadline, see the listener's watchdog)."""
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        reader = self.reader
        try:
            if timeout is None or getattr(reader, "_buffer", None):
                data = await reader.read(CLIENT_READ)  # no timer needed
            else:
                async with asyncio.timeout(timeout):
                    data = await reader.read(CLIENT_READ)
        except TimeoutError:
            raise ClientGone(f"the caller sent nothing for {timeout:g}s") from None
        except (ConnectionError, ssl.SSLError) as exc:
            raise ClientGone(f"the caller's connection failed ({type(exc).__name__})") from None
        self.bytes_in += len(data)
        return data

    async def read_available(self) -> bytes:
        """What the caller already sent (pending, then at most one read's worth of what the
        transport buffered), without waiting for more."""
        data, self.pending = self.pending, b""
        if getattr(self.reader, "_buffer", None):
            more = await self.reader.read(CLIENT_READ)  # returns at once: the bytes are here
            self.bytes_in += len(more)
            data += more
        return data

    def unread(self, data: bytes) -> None:
        if data:
            self.pending = data + self.pending if self.pending else data

    def gone(self) -> bool:
        """The caller closed its side or the transport is closing (checked while a request is
        held for review; StreamReader has no public flag that leaves buffered bytes unread)."""
        return bool(getattr(self.reader, "_eof", False)) or self.writer.is_closing()


class ClientBody:
    """One request's body. Read it once: :meth:`read_all` or :meth:`pieces`."""

    __slots__ = (
        "_continue",
        "_prefetched",
        "_reader",
        "_stream",
        "buffered",
        "declared",
        "done",
        "received",
        "sample",
        "sample_limit",
    )

    def __init__(
        self, stream: ClientStream, framing: Framing, *, expect_continue: bool, sample_limit: int
    ) -> None:
        self._stream = stream
        self._reader = body_reader(framing, request=True)
        self._continue = expect_continue
        self._prefetched: list[bytes] = []
        #: the length the caller declared (Content-Length; 0 without a body; None if chunked)
        self.declared: int | None = (
            framing.length
            if isinstance(framing, Length)
            else 0
            if isinstance(framing, NoBody)
            else None
        )
        self.done = self._reader is None
        #: the whole body once buffered (``b""`` without a body), else ``None``
        self.buffered: bytes | None = b"" if self._reader is None else None
        #: payload bytes read so far
        self.received = 0
        self.sample = b""
        self.sample_limit = sample_limit

    @property
    def empty(self) -> bool:
        return self._reader is None

    @property
    def untouched(self) -> bool:
        """Nothing of the body was read yet (the caller may not even have sent it)."""
        return self.received == 0 and not self.done

    async def _send_continue(self) -> None:
        if self._continue:
            self._continue = False
            w = self._stream.writer
            w.write(CONTINUE)
            try:
                await w.drain()
            except (ConnectionError, RuntimeError) as exc:
                raise ClientGone("the caller went away before sending its body") from exc

    def _decoded(self, data: bytes) -> bytes:
        """Framing removed from ``data`` (raises on broken framing); bookkeeping done."""
        reader = self._reader
        assert reader is not None
        payload = reader.feed(data)
        if reader.done:
            self.done = True
            self._stream.unread(reader.leftover)
        if payload:
            self.received += len(payload)
            if len(self.sample) < self.sample_limit:
                self.sample += payload[: self.sample_limit - len(self.sample)]
        return payload

    async def prefetch(self) -> None:
        """Decode what the caller already sent with its head, before anything goes upstream:
        a body whose framing is broken (a bad chunk size, a smuggled request after the last
        chunk) is then refused with nothing forwarded. Later bytes are checked as they stream;
        callgate frames the body anew for the upstream, so a fault found there can only cut
        the upload short, never smuggle a request."""
        if self._reader is None or self.done or self._continue or self._prefetched:
            return
        data = await self._stream.read_available()
        if data:
            payload = self._decoded(data)
            if payload:
                self._prefetched.append(payload)

    async def pieces(self) -> AsyncIterator[bytes]:
        """The payload as it arrives (chunked coding removed)."""
        reader = self._reader
        if reader is None:
            return
        prefetched, self._prefetched = self._prefetched, []
        for piece in prefetched:
            yield piece
        if self.done:
            return
        await self._send_continue()
        stream = self._stream
        while not reader.done:
            data = await stream.read()
            if not data:
                try:
                    reader.eof()
                except BodyIncomplete:
                    raise ClientGone("the caller closed the connection mid-body") from None
            payload = self._decoded(data)
            if payload:
                yield payload

    async def read_all(self, limit: int) -> bytes:
        """The whole body, or :class:`BodyTooLarge` past ``limit`` bytes (checked against the
        declared length first, so an oversized upload is refused before it is sent)."""
        if self.buffered is not None:
            return self.buffered
        if self.declared is not None and self.declared > limit:
            raise BodyTooLarge(
                f"the request body ({self.declared} bytes) is larger than the "
                f"{limit} bytes callgate inspects (gateway.limits.http_max_inspected_body)"
            )
        parts: list[bytes] = []
        size = 0
        async for piece in self.pieces():
            size += len(piece)
            if size > limit:
                raise BodyTooLarge(
                    f"the request body is larger than the {limit} bytes callgate inspects "
                    "(gateway.limits.http_max_inspected_body)"
                )
            parts.append(piece)
        self.buffered = b"".join(parts)
        return self.buffered
