"""One TCP (or TLS) connection as the HTTP engine uses it: an :class:`asyncio.Protocol` that one
coroutine reads from and writes to.

It does what asyncio's ``StreamReader``/``StreamReaderProtocol``/``StreamWriter`` trio did for
the engine, in one object and with fewer steps per read: a read hands back every byte that has
arrived (usually one ``data_received`` chunk, not copied), a waiting read is woken directly from
``data_received``, and a write goes straight to the transport. Back-pressure both ways:

- reading: past ``limit`` unread bytes the transport stops reading (TCP then slows the peer
  down) until the coroutine has taken them;
- writing: :meth:`Stream.drain` waits while the transport's buffer is above its high-water mark
  (``pause_writing``/``resume_writing``).

The engine's callers (:class:`~callgate.engines.http.body.ClientStream`) and upstream connections
(:class:`~callgate.engines.http.upstream.UpstreamConnection`) are both built on it.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast


class Stream(asyncio.Protocol):
    """Bytes in and out of one connection, for one coroutine at a time."""

    __slots__ = (
        "_chunks",
        "_drain_waiter",
        "_eof",
        "_error",
        "_keep_open",
        "_limit",
        "_loop",
        "_lost",
        "_read_paused",
        "_size",
        "_waiter",
        "_write_paused",
        "transport",
    )

    def __init__(self, limit: int, *, keep_open_on_eof: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        self._limit = limit
        #: what a half-close by the peer does to our side: plaintext keeps writing (an answer
        #: to a request whose sender shut its side down still goes out); TLS cannot
        self._keep_open = keep_open_on_eof
        #: bytes received and not read yet, in arrival order
        self._chunks: list[bytes] = []
        self._size = 0
        self._eof = False
        self._lost = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._read_paused = False
        self._write_paused = False
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)

    # --- protocol callbacks (the event loop calls these) --------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self._size > self._limit and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return self._keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._eof = True
        if exc is not None:
            self._error = exc
        self._wake()
        drain = self._drain_waiter
        if drain is not None:
            self._drain_waiter = None
            if not drain.done():
                drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain_waiter
        if drain is not None:
            self._drain_waiter = None
            if not drain.done():
                drain.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- reading ------------------------------------------------------------------------------

    @property
    def buffered(self) -> bool:
        """Some bytes arrived that were not read yet."""
        return bool(self._chunks)

    @property
    def at_eof(self) -> bool:
        """The peer closed its side (or the connection is gone): after the buffered bytes,
        reads return ``b""``."""
        return self._eof

    def take(self) -> bytes:
        """Every byte received and not read yet (``b""`` if none); never waits."""
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        if self._read_paused:
            self._read_paused = False
            if not self._lost:
                self.transport.resume_reading()
        return data

    async def read(self) -> bytes:
        """The bytes that arrived since the last read, waiting for some if there are none;
        ``b""`` at EOF. Raises the connection's error (a reset) once its bytes are read."""
        if not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            waiter = self._loop.create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
            if not self._chunks:
                if self._error is not None:
                    raise self._error
                return b""
        return self.take()

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front of what was received (read too far: the next message)."""
        if data:
            self._chunks.insert(0, data)
            self._size += len(data)

    # --- writing ------------------------------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Hand ``data`` to the transport; True when it now holds more than its high-water
        mark (or the connection is gone): :meth:`drain` before writing more."""
        self.transport.write(data)
        return self._write_paused or self._lost

    @property
    def must_drain(self) -> bool:
        """What the last :meth:`write` said: :meth:`drain` before writing more."""
        return self._write_paused or self._lost

    async def drain(self) -> None:
        """Wait until the transport takes more; ConnectionResetError if the connection is gone."""
        if self._lost:
            raise ConnectionResetError("connection lost")
        if self._write_paused:
            waiter = self._loop.create_future()
            self._drain_waiter = waiter
            try:
                await waiter
            finally:
                self._drain_waiter = None
            if self._lost:
                raise ConnectionResetError("connection lost")

    def write_eof(self) -> None:
        self.transport.write_eof()

    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()

    # --- the connection -----------------------------------------------------------------------

    @property
    def quiet(self) -> bool:
        """Open both ways, and nothing arrived that was not read: a connection between two
        exchanges that can carry another one."""
        return not (self._chunks or self._eof or self._lost or self.transport.is_closing())

    def is_closing(self) -> bool:
        return self._lost or self.transport.is_closing()

    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)
