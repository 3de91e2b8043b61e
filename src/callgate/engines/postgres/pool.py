"""Idle upstream connections kept for the next caller (session pooling, as pgbouncer does it).

Every caller of a connection reaches the upstream as the same role with callgate's credential, so
a connection one caller has finished with can serve the next one once its session state is gone.
A session that ends with the client's Terminate, idle (no transaction, nothing in flight, the
stream at a message boundary), gives its upstream back instead of closing it. The pool resets it
with ``DISCARD ALL`` (which closes cursors, drops prepared statements and temporary tables,
resets every setting, ``SET ROLE`` and ``SET SESSION AUTHORIZATION``, unlistens and releases
advisory locks) and keeps it only if the server answers exactly as expected: the
``DISCARD ALL`` command tag and ``ReadyForQuery`` idle. Anything else closes it.

A kept connection is reused only for a caller whose allow-listed startup parameters are the same
(``application_name``, ``TimeZone``, …): ``RESET ALL`` returns settings to the values of the
connection's own startup, so those must be the new caller's. Connections idle longer than the
idle timeout are closed, as are all of them on config reload and on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final, cast

from callgate.engines.postgres import upstream as up
from callgate.engines.postgres.wire import read_message
from callgate.errors import CallgateError
from callgate.protocols.postgres import messages as m

log = logging.getLogger("callgate.postgres.pool")

#: Longest the reset of a returned connection may take before it is closed instead.
RESET_TIMEOUT: Final = 5.0
#: Largest message expected while resetting (a notice or a parameter status).
MAX_RESET_MESSAGE: Final = 1 << 16
#: How often idle connections are checked against the idle timeout.
SWEEP_INTERVAL: Final = 5.0

PoolKey = Hashable


@dataclass(slots=True)
class _Idle:
    conn: up.UpstreamConnection
    since: float


def pool_key(target: up.UpstreamTarget, client_parameters: tuple[tuple[str, str], ...]) -> PoolKey:
    """Connections are interchangeable when they reach the same database as the same role over
    the same kind of transport, started with the same forwarded parameters."""
    forwarded = tuple(
        sorted((k.lower(), v) for k, v in up.filter_startup_parameters(client_parameters))
    )
    return (target.host, target.port, target.database, target.user, target.tls_mode, forwarded)


class UpstreamPool:
    """Idle upstream connections of one listener, by :func:`pool_key`."""

    def __init__(self) -> None:
        self._idle: dict[PoolKey, list[_Idle]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False
        #: counters, for tests and the log
        self.reused = 0
        self.returned = 0
        self.discarded = 0

    def take(self, key: PoolKey) -> up.UpstreamConnection | None:
        """An idle connection for ``key`` (the most recently returned), or None."""
        idle = self._idle.get(key)
        while idle:
            entry = idle.pop()
            conn = entry.conn
            if _usable(conn):
                self.reused += 1
                return conn
            _close(conn)
        return None

    def give_back(
        self,
        key: PoolKey,
        conn: up.UpstreamConnection,
        *,
        max_idle: int,
        idle_timeout: float,
    ) -> None:
        """Reset ``conn`` in the background and keep it for ``key`` if that works."""
        if self._closed or max_idle <= 0:
            _close(conn)
            return
        task = asyncio.get_running_loop().create_task(
            self._reset_and_keep(key, conn, max_idle, idle_timeout)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reset_and_keep(
        self, key: PoolKey, conn: up.UpstreamConnection, max_idle: int, idle_timeout: float
    ) -> None:
        try:
            async with asyncio.timeout(RESET_TIMEOUT):
                ok = await _reset(conn)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, CallgateError) as exc:
            log.info("upstream connection not reused: reset failed (%s)", type(exc).__name__)
            ok = False
        if not ok or self._closed:
            self.discarded += 1
            _close(conn)
            return
        idle = self._idle.setdefault(key, [])
        if len(idle) >= max_idle:
            self.discarded += 1
            _close(conn)
            return
        idle.append(_Idle(conn, time.monotonic()))
        self.returned += 1
        self._sweep_later(idle_timeout)

    def _sweep_later(self, idle_timeout: float) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(idle_timeout))

    async def _sweep(self, idle_timeout: float) -> None:
        while any(self._idle.values()) and not self._closed:
            await asyncio.sleep(min(SWEEP_INTERVAL, idle_timeout))
            cutoff = time.monotonic() - idle_timeout
            for idle in self._idle.values():
                keep = [e for e in idle if e.since > cutoff and _usable(e.conn)]
                for e in idle:
                    if e not in keep:
                        _close(e.conn)
                idle[:] = keep

    def clear(self) -> None:
        """Close every idle connection (config reload: the targets may have changed)."""
        for idle in self._idle.values():
            for e in idle:
                _close(e.conn)
        self._idle.clear()

    async def close(self) -> None:
        self._closed = True
        self.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(
            *self._tasks, *([self._sweeper] if self._sweeper else []), return_exceptions=True
        )

    @property
    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())


def rebind_streams(conn: up.UpstreamConnection) -> None:
    """Give ``conn`` a fresh stream reader and writer on its transport (the relay had set its own
    protocol on it), so it can be reset and later started like a new connection."""
    loop = asyncio.get_running_loop()
    transport = cast(asyncio.Transport, conn.writer.transport)
    reader = asyncio.StreamReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    conn.reader = reader
    # The writer is kept and pointed at the new protocol: a replaced StreamWriter closes its
    # transport when it is garbage-collected (Python 3.11+).
    writer = conn.writer
    writer._protocol = protocol  # type: ignore[attr-defined]
    writer._reader = reader  # type: ignore[attr-defined]
    transport.resume_reading()


async def _reset(conn: up.UpstreamConnection) -> bool:
    """``DISCARD ALL``; True when the server answered exactly with its tag and an idle
    ReadyForQuery (parameter statuses and notices allowed in between)."""
    conn.writer.write(m.encode_query("DISCARD ALL"))
    await conn.writer.drain()
    tagged = False
    while True:
        f = await read_message(conn.reader, max_size=MAX_RESET_MESSAGE, upstream=True)
        t = f.type
        if t == m.BackendType.COMMAND_COMPLETE:
            tagged = not tagged and m.decode_command_complete(f.body) == "DISCARD ALL"
            if not tagged:
                return False
        elif t == m.BackendType.READY_FOR_QUERY:
            status = m.decode_ready_for_query(f.body)
            conn.transaction_status = status
            return tagged and status == "I" and not conn.reader._buffer  # type: ignore[attr-defined]
        elif t in (m.BackendType.PARAMETER_STATUS, m.BackendType.NOTICE_RESPONSE):
            if t == m.BackendType.PARAMETER_STATUS:
                name, value = m.decode_parameter_status(f.body)
                conn.set_parameter(name, value)
            continue
        else:
            return False


def _usable(conn: up.UpstreamConnection) -> bool:
    return (
        not conn.writer.is_closing() and not conn.reader.at_eof() and not conn.reader._buffer  # type: ignore[attr-defined]  # nothing unsolicited arrived
    )


def _close(conn: up.UpstreamConnection) -> None:
    w = conn.writer
    if not w.is_closing():
        with contextlib.suppress(OSError, RuntimeError):
            w.write(m.TERMINATE)
    w.close()
