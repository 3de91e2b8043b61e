"""callgate's own HTTP/1.1 client towards an API: connections, a keep-alive pool, timeouts.

One :class:`UpstreamPool` per connection (``connections[]`` with ``protocol: http``) keeps idle
connections for reuse. Every wait has a deadline from ``upstream.timeouts``; running out is a 504,
failing to connect or a broken response a 502.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from callgate.engines.http.stream import Stream
from callgate.errors import UpstreamUnavailable
from callgate.protocols.http import (
    HeadReader,
    HttpResponseError,
    ResponseHead,
    head_end,
    parse_response_head,
)

if TYPE_CHECKING:
    from callgate.config.connections import HttpUpstream

log = logging.getLogger("callgate.http.upstream")

#: Idle connections kept per upstream. Enough for a burst of concurrent callers to reuse theirs;
#: more would only hold sockets (and the upstream's worker slots) for nothing.
POOL_MAX_IDLE: Final = 64
#: Seconds an idle connection is kept. Below the 5 s keep-alive timeout of common servers
#: (uvicorn, gunicorn, Node.js), so callgate nearly always gives up a connection before the
#: upstream does, and a request rarely lands on a connection the upstream is closing.
POOL_IDLE_SECONDS: Final = 4.0
#: Bytes received from an upstream and not relayed yet at which reading pauses (back-pressure
#: towards the upstream); large enough that big responses move in few steps.
UPSTREAM_READ: Final = 256 * 1024
#: Methods whose request may be sent again when a reused connection turned out to be closed
#: before any response byte arrived (RFC 9110 §9.2.2, idempotent methods).
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class UpstreamTimeout(UpstreamUnavailable):
    """The upstream did not connect, accept the request or answer within its timeout (504)."""

    http_status = 504
    code = "gateway_timeout"


@dataclass(frozen=True, slots=True)
class UpstreamAddress:
    scheme: str
    host: str
    port: int
    #: the URL's path (``""`` or ``/base``); the caller's path is appended to it
    base_path: str
    #: the Host header callgate sends (``host`` or ``host:port`` when not the default port)
    authority: str

    @classmethod
    def from_url(cls, url: str) -> UpstreamAddress:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        shown = f"[{host}]" if ":" in host else host
        default = (scheme == "https" and port == 443) or (scheme == "http" and port == 80)
        authority = shown if default else f"{shown}:{port}"
        return cls(scheme, host, port, parts.path.rstrip("/"), authority)

    def url(self, path_and_query: str) -> str:
        return f"{self.scheme}://{self.authority}{path_and_query}"


class UpstreamClosed(UpstreamUnavailable):
    """The upstream closed the connection before a complete response head. ``received``: some
    of the response had arrived (the request was certainly seen; never retried)."""

    def __init__(self, message: str, *, received: bool) -> None:
        super().__init__(message)
        self.received = received


class UpstreamConnection:
    """One connection to the upstream. ``reused``: it served a request before this one."""

    __slots__ = ("idle_since", "reused", "stream", "timed_out")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.reused = False
        self.idle_since = 0.0
        #: the answer did not come in time and the watchdog aborted the connection
        self.timed_out = False

    def expire(self) -> None:
        """Abort: the upstream did not answer in time (the waiting read then ends)."""
        self.timed_out = True
        with contextlib.suppress(Exception):
            self.stream.abort()

    @property
    def usable(self) -> bool:
        """Still open, and nothing arrived while it was idle (an unsolicited byte means the
        upstream is out of step or closing)."""
        return self.stream.quiet

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stream.close()


class UpstreamPool:
    """Connections to one upstream: connect, reuse, expire."""

    def __init__(
        self,
        connection: str,
        upstream: HttpUpstream,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.connection = connection
        self.address = UpstreamAddress.from_url(upstream.url)
        self.ssl_context = ssl_context
        t = upstream.timeouts
        self.connect_timeout = t.connect.total_seconds()
        self.read_timeout = t.read.total_seconds()
        self.write_timeout = t.write.total_seconds()
        self._idle: collections.deque[UpstreamConnection] = collections.deque()
        self._closed = False

    async def acquire(self, *, fresh: bool = False) -> UpstreamConnection:
        """An idle connection if one is usable (unless ``fresh``), else a new one."""
        return (None if fresh else self.reuse()) or await self._connect()

    def reuse(self) -> UpstreamConnection | None:
        """An idle connection that is still usable, if there is one (without waiting)."""
        idle = self._idle
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used is the least likely to be stale
            if now - conn.idle_since < POOL_IDLE_SECONDS and conn.usable:
                conn.reused = True
                return conn
            conn.close()
        return None

    def release(self, conn: UpstreamConnection, *, reusable: bool) -> None:
        if not reusable or self._closed or len(self._idle) >= POOL_MAX_IDLE or not conn.usable:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def _connect(self) -> UpstreamConnection:
        a = self.address
        tls = self.ssl_context is not None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, stream = await asyncio.get_running_loop().create_connection(
                    lambda: Stream(UPSTREAM_READ, keep_open_on_eof=not tls),
                    a.host,
                    a.port,
                    ssl=self.ssl_context,
                    server_hostname=a.host if tls else None,
                )
        except TimeoutError:
            raise UpstreamTimeout(
                f"connection {self.connection!r}: the upstream did not accept a connection "
                f"within {self.connect_timeout:g}s"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise UpstreamUnavailable(
                f"connection {self.connection!r}: the upstream's TLS certificate was not "
                f"accepted ({exc.verify_message or exc.reason})"
            ) from None
        except ssl.SSLError as exc:
            raise UpstreamUnavailable(
                f"connection {self.connection!r}: TLS with the upstream failed ({exc.reason})"
            ) from None
        except OSError as exc:
            raise UpstreamUnavailable(
                f"connection {self.connection!r}: the upstream cannot be reached "
                f"({exc.strerror or type(exc).__name__})"
            ) from None
        sock = stream.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return UpstreamConnection(stream)

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()


async def read_upstream(
    conn: UpstreamConnection,
    timeout: float | None,  # noqa: ASYNC109 - None: no deadline (the caller has its own)
    what: str,
) -> bytes:
    """The next bytes from the upstream (``b""`` at EOF), or :class:`UpstreamTimeout`."""
    stream = conn.stream
    try:
        if timeout is None or stream.buffered or stream.at_eof:
            return await stream.read()  # no timer needed
        async with asyncio.timeout(timeout):
            return await stream.read()
    except TimeoutError:
        raise UpstreamTimeout(f"the upstream sent no {what} within {timeout or 0:g}s") from None
    except OSError as exc:
        raise UpstreamUnavailable(
            f"the upstream connection failed ({type(exc).__name__})"
        ) from None


async def write_upstream(
    conn: UpstreamConnection,
    data: bytes | list[bytes],
    timeout: float,  # noqa: ASYNC109
) -> None:
    """Write, then wait until the transport takes more (back-pressure); UpstreamTimeout."""
    if send_upstream(conn, data):
        await drain_upstream(conn, timeout)


def send_upstream(conn: UpstreamConnection, data: bytes | list[bytes]) -> bool:
    """Write without waiting; True when the transport holds too much and
    :func:`drain_upstream` must be awaited before writing more."""
    try:
        return conn.stream.write(data if isinstance(data, bytes) else b"".join(data))
    except (OSError, RuntimeError) as exc:
        raise UpstreamUnavailable(
            f"the upstream connection failed while sending ({type(exc).__name__})"
        ) from None


async def drain_upstream(conn: UpstreamConnection, timeout: float) -> None:  # noqa: ASYNC109
    """Wait until the transport takes more (back-pressure), or UpstreamTimeout."""
    try:
        # Only when the transport holds too much: most writes need no timer at all.
        async with asyncio.timeout(timeout):
            await conn.stream.drain()
    except TimeoutError:
        raise UpstreamTimeout(
            f"the upstream did not take the request within {timeout:g}s"
        ) from None
    except (OSError, RuntimeError) as exc:
        raise UpstreamUnavailable(
            f"the upstream connection failed while sending ({type(exc).__name__})"
        ) from None


def final_response_head(data: bytes) -> tuple[ResponseHead, bytes] | None:
    """The final response head at the start of ``data`` and what followed it, when ``data``
    holds all of it and no interim (1xx) response came first: the usual answer, taken without
    :func:`read_response_head`'s loop. ``None``: hand ``data`` to that (``first=``)."""
    end = head_end(data, request=False)
    if end < 0:
        return None
    head = parse_response_head(data[:end])
    if head.status < 200:
        return None
    return head, data[end:]


async def read_response_head(
    conn: UpstreamConnection,
    timeout: float | None,  # noqa: ASYNC109
    first: bytes | None = None,
) -> tuple[ResponseHead, bytes, bool]:
    """The next final response head, what followed it, and whether any byte arrived at all.

    Interim 1xx responses (100 Continue, 103 Early Hints) are read and dropped (RFC 9110 §15.2:
    a proxy MAY drop them when it did not ask for them); 101 is refused, callgate never asks
    to switch protocols. EOF before a whole head is :class:`UpstreamClosed`. ``first``: what
    was read from the connection already (``b""``: its EOF).
    """
    reader: HeadReader | None = None  # made when a head comes in pieces
    received = False
    pending = b""
    stream = conn.stream
    while True:
        if first is not None:
            data, first = first, None
        elif pending:
            data, pending = pending, b""
        elif timeout is None:
            try:
                data = await stream.read()  # read_upstream without a timer, one frame less
            except OSError as exc:
                raise UpstreamUnavailable(
                    f"the upstream connection failed ({type(exc).__name__})"
                ) from None
        else:
            data = await read_upstream(conn, timeout, "response")
        if not data:
            raise UpstreamClosed(
                "the upstream closed the connection without a complete response",
                received=received,
            )
        received = True
        if reader is None and (end := head_end(data, request=False)) > 0:
            raw, leftover = data[:end], data[end:]
        else:
            if reader is None:
                reader = HeadReader(request=False)
            found = reader.feed(data)
            if found is None:
                continue
            raw, leftover, reader = found, reader.leftover, None
        head = parse_response_head(raw)
        if head.status == 101:
            raise HttpResponseError("the upstream switched protocols (101) unasked")
        if head.status < 200:
            pending = leftover
            continue
        return head, leftover, received
