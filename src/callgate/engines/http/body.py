"""A caller's request body: streamed to the upstream as it arrives, or buffered when something
must read it (a policy condition on the JSON body, an approval bound to it, an AWS signature).

Bytes come through :class:`ClientStream` (the caller's connection, a
:class:`~callgate.engines.http.stream.Stream`), which holds what was read past the previous
message (pipelined requests) and applies the read timeout. ``Expect: 100-continue`` is answered
the first time the body is read, never before: a request refused on its head is refused without
the caller sending its body (RFC 9110 §10.1.1).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Final

from callgate.engines.http.replies import CONTINUE, BodyTooLarge
from callgate.engines.http.stream import Stream
from callgate.protocols.http import (
    BodyIncomplete,
    Framing,
    Length,
    NoBody,
    body_reader,
)

#: Seconds a caller may leave a started request (head or body) without sending more. Long enough
#: for a slow mobile link, short enough that idle half-sent requests do not pile up (slowloris).
CLIENT_READ_TIMEOUT: Final = 60.0


class ClientGone(Exception):
    """The caller closed the connection, reset it, or stopped sending mid-request."""


class ClientStream(Stream):
    """The caller's connection; reads with a timeout where the engine asks for one."""

    __slots__ = ("bytes_in",)

    def __init__(self, limit: int, *, tls: bool) -> None:
        super().__init__(limit, keep_open_on_eof=not tls)
        self.bytes_in = 0

    async def read_within(self, timeout: float | None = CLIENT_READ_TIMEOUT) -> bytes:  # noqa: ASYNC109
        """The next bytes; ``b""`` at EOF. Raises :class:`ClientGone` on a reset or when nothing
        arrives within ``timeout`` (``None``: the caller enforces its own deadline, see the
        listener's watchdog)."""
        try:
            if timeout is None or self.buffered or self.at_eof:
                data = await self.read()  # no timer needed
            else:
                async with asyncio.timeout(timeout):
                    data = await self.read()
        except TimeoutError:
            raise ClientGone(f"the caller sent nothing for {timeout:g}s") from None
        except OSError as exc:
            raise ClientGone(f"the caller's connection failed ({type(exc).__name__})") from None
        self.bytes_in += len(data)
        return data

    def read_available(self) -> bytes:
        """What the caller already sent, without waiting for more."""
        data = self.take()
        self.bytes_in += len(data)
        return data

    def gone(self) -> bool:
        """The caller closed its side or the connection is closing (checked while a request is
        held for review)."""
        return self.at_eof or self.is_closing()


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
        "empty",
        "received",
        "sample",
        "sample_limit",
    )

    def __init__(
        self, stream: ClientStream, framing: Framing, *, expect_continue: bool, sample_limit: int
    ) -> None:
        self._stream = stream
        self._continue = expect_continue
        self._prefetched: list[bytes] = []
        #: there is no body at all (most GETs): nothing to read, stream or buffer
        self.empty = isinstance(framing, NoBody)
        self._reader = None if self.empty else body_reader(framing, request=True)
        #: the length the caller declared (Content-Length; 0 without a body; None if chunked)
        self.declared: int | None = (
            0 if self.empty else framing.length if isinstance(framing, Length) else None
        )
        self.done = self._reader is None
        #: the whole body once buffered (``b""`` without a body), else ``None``
        self.buffered: bytes | None = b"" if self._reader is None else None
        #: payload bytes read so far
        self.received = 0
        self.sample = b""
        self.sample_limit = sample_limit

    @property
    def untouched(self) -> bool:
        """Nothing of the body was read yet (the caller may not even have sent it)."""
        return self.received == 0 and not self.done

    async def _send_continue(self) -> None:
        if self._continue:
            self._continue = False
            stream = self._stream
            try:
                if stream.write(CONTINUE):
                    await stream.drain()
            except (OSError, RuntimeError) as exc:
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
        data = self._stream.read_available()
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
            data = await stream.read_within()
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
