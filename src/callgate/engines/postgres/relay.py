"""Upstream → client forwarding as protocol callbacks: no task switch per chunk of results.

Once the session is established, the upstream transport's protocol is swapped for
:class:`UpstreamRelay`. Each chunk the server sends is observed (or rewritten while a refusal is
outstanding) and written to the caller at once. Back-pressure: when the caller's transport buffers
more than its high-water mark, reading from the upstream pauses until the caller drains
(asyncio's flow control, ARCHITECTURE.md "Hot path").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from callgate.engines.postgres.masker import MaskingStopped, ResultMasker
from callgate.engines.postgres.refusal import ResponseRewriter
from callgate.errors import (
    CallgateError,
    ProtocolViolation,
    UpstreamProtocolViolation,
    UpstreamUnavailable,
)
from callgate.protocols.postgres import messages as m
from callgate.protocols.postgres.framing import BackendObserver, Frame

#: Bytes buffered towards a slow caller before reading from the upstream pauses.
CLIENT_HIGH_WATER = 1 << 20


class UpstreamRelay(asyncio.Protocol):
    def __init__(
        self,
        *,
        observer: BackendObserver,
        rewriter: ResponseRewriter,
        on_frame: Callable[[Frame], None],
        client_writer: asyncio.StreamWriter,
        count_out: Callable[[int], None],
        masker: ResultMasker | None = None,
    ):
        self._observer = observer
        self._rewriter = rewriter
        self._on_frame = on_frame
        self._client_w = client_writer
        self._client_t = client_writer.transport
        self._count_out = count_out
        self._transport: asyncio.Transport | None = None
        self._draining = False
        self._drain_task: asyncio.Future[None] | None = None
        #: masks results after the refusal rewriter (None: no mask rule, bytes go in bulk);
        #: swapped by the session between statements when a reload changes the rules
        self.masker = masker
        #: resolves with the reason the upstream side ended (an exception for failures)
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        #: upstream bytes were dropped (they came after the relay stopped) or relaying failed
        self._spoiled = False

    def attach(self, transport: asyncio.Transport, leftover: bytes) -> None:
        self._transport = transport
        transport.set_protocol(self)
        if leftover:
            self.data_received(leftover)
        transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            self._spoiled = True
            return
        try:
            if self._rewriter.active:
                data, frames = self._rewriter.process(data)
            else:
                frames = self._observer.feed(data)
            masker = self.masker
            if masker is not None:
                if data:
                    data = masker.process(data)
                frames = [_scrubbed(f, masker) for f in frames]
            if data:
                self._client_t.write(data)
                self._count_out(len(data))
            for f in frames:
                self._on_frame(f)
        except MaskingStopped as stop:
            # Whole messages before the one that could not be masked go out; then the session
            # ends with the error (rows may already have been delivered: the statement cannot be
            # ended in a way the client would read as a normal failure).
            if stop.output:
                self._client_t.write(stop.output)
                self._count_out(len(stop.output))
            self._fail(stop.error)
            return
        except ProtocolViolation as exc:
            self._fail(UpstreamProtocolViolation(f"upstream sent malformed data: {exc}"))
            return
        except CallgateError as exc:
            self._fail(exc)
            return
        if not self._draining and self._client_t.get_write_buffer_size() > CLIENT_HIGH_WATER:
            self._draining = True
            assert self._transport is not None
            self._transport.pause_reading()
            self._drain_task = asyncio.ensure_future(self._drain())

    @property
    def client_at_boundary(self) -> bool:
        """True when the bytes sent to the client end at a message boundary."""
        if self.masker is not None:
            return self.masker.at_boundary
        return self._observer.at_boundary

    async def _drain(self) -> None:
        try:
            await self._client_w.drain()
        except (ConnectionError, RuntimeError):
            pass  # the client pump sees the caller go away
        finally:
            self._draining = False
            if self._transport is not None and not self._transport.is_closing():
                self._transport.resume_reading()

    def eof_received(self) -> bool | None:
        self._fail(UpstreamUnavailable("the upstream database closed the connection"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(UpstreamUnavailable("the upstream database closed the connection"))

    def detach(self) -> bool:
        """Stop relaying and hand the transport back (session pooling). True when the upstream
        stream is clean: nothing failed or was dropped, and it stands at a message boundary."""
        clean = (
            not self._spoiled
            and not self._draining
            and self._observer.at_boundary
            and not self._rewriter.active
            and (self.masker is None or self.masker.at_boundary)
        )
        self._spoiled = True  # nothing more goes to this session's client
        if not self.done.done():
            self.done.cancel()
        if self._transport is not None:
            self._transport.pause_reading()
        return clean

    def _fail(self, exc: CallgateError) -> None:
        self._spoiled = True
        if not self.done.done():
            self.done.set_exception(exc)
        if self._transport is not None:
            self._transport.pause_reading()


def _scrubbed(f: Frame, masker: ResultMasker) -> Frame:
    """An ErrorResponse as the caller received it (masked), for the audit record."""
    if f.type == m.BackendType.ERROR_RESPONSE and masker.scrubbed_errors:
        return Frame(f.type, masker.scrubbed_errors.popleft())
    return f
