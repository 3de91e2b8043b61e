"""The HTTP listener: accepts callers (TLS, or plaintext where allowed), owns their sessions,
and the per-connection resources they share: upstream pools and credential injectors.

TLS and plaintext share one port: the first byte of a connection tells them apart (a TLS
ClientHello starts with the handshake record type 0x16, RFC 8446 §5.1; an HTTP request with a
method's first letter), peeked before any transport reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Final

from callgate.engines.http.body import ClientStream
from callgate.engines.http.inject import Injector, build_injector
from callgate.engines.http.replies import error_response
from callgate.engines.http.scrub import SecretSet
from callgate.engines.http.session import HttpSession
from callgate.engines.http.upstream import UpstreamPool
from callgate.errors import PlaintextRefused
from callgate.identity.secret_key import secret_key_from_config
from callgate.services import Services
from callgate.tls import client_context, server_context

if TYPE_CHECKING:
    from callgate.config import ConnectionConfig, ListenerConfig

log = logging.getLogger("callgate.http")

#: Seconds a new connection has to send its first byte, and then to finish the TLS handshake.
HANDSHAKE_TIMEOUT: Final = 10.0
#: Pending connections the kernel queues before callgate accepts them.
LISTEN_BACKLOG: Final = 1024
#: Seconds between two rounds of the watchdog that enforces the idle, request-head and
#: upstream-answer timeouts: one timer for the whole listener instead of one per read, so
#: timeouts hold to within this much.
WATCHDOG_TICK: Final = 0.25
#: Bytes held per caller: reading pauses (TCP back-pressure) once this much is unread.
CLIENT_BUFFER: Final = 256 * 1024
_TLS_HANDSHAKE: Final = 0x16
#: Distinct secret sets prepared for scrubbing (one per injector, more while secrets rotate).
SECRET_SETS_KEPT: Final = 64


class HttpListener:
    def __init__(self, services: Services, config: ListenerConfig) -> None:
        self.services = services
        self.config = config
        gw_tls = services.config.gateway.tls
        self.ssl_context: ssl.SSLContext | None = (
            server_context(gw_tls, config.client_ca) if gw_tls is not None else None
        )
        self.sessions: set[HttpSession] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pools: dict[str, tuple[ConnectionConfig, UpstreamPool]] = {}
        self._injectors: dict[str, tuple[ConnectionConfig, Injector | None]] = {}
        self._retired: list[UpstreamPool | Injector] = []
        self._tasks_retiring: set[asyncio.Future[None]] = set()
        self._hosts = self._host_map(services)
        self._connections = self._connection_map(services)
        self._limits(services)
        self._secret_key: bytes | None = None
        self._secret_sets: dict[tuple[str, ...], SecretSet] = {}
        #: header fields injectors added that were found valid (see exchange.py)
        self.injected_valid: dict[tuple[str, str], None] = {}
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None

    # --- configuration ------------------------------------------------------------------------

    @staticmethod
    def _host_map(services: Services) -> dict[str, str]:
        hosts: dict[str, str] = {}
        for conn in services.config.connections:
            if conn.protocol == "http":
                for host in conn.hosts:
                    hosts[host.lower()] = conn.name
        return hosts

    @staticmethod
    def _connection_map(services: Services) -> dict[str, ConnectionConfig]:
        return {c.name: c for c in services.config.connections if c.protocol == "http"}

    def http_connection(self, name: str) -> ConnectionConfig | None:
        """The HTTP connection called ``name``, if there is one."""
        return self._connections.get(name)

    def reload(self, services: Services) -> None:
        """New requests use the new config; resources of unchanged connections are kept."""
        self.services = services
        self._hosts = self._host_map(services)
        self._connections = self._connection_map(services)
        self._limits(services)
        self._secret_key = None
        self.injected_valid.clear()
        for cache in (self._pools, self._injectors):
            for name, (old, _) in list(cache.items()):
                new = services.config.connection(name)
                if new != old:
                    _, resource = cache.pop(name)
                    if resource is not None:
                        self._retired.append(resource)
        if self._retired:
            task = asyncio.ensure_future(self._close_retired())
            self._tasks_retiring.add(task)
            task.add_done_callback(self._tasks_retiring.discard)

    async def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for resource in retired:
            try:
                if isinstance(resource, UpstreamPool):
                    await resource.close()
                else:
                    await resource.aclose()
            except Exception:  # closing an old resource must not disturb anything
                log.exception("could not close a resource of a reloaded connection")

    def _limits(self, services: Services) -> None:
        gateway = services.config.gateway
        #: bytes of a body callgate reads to inspect it (policy, masking, signing) at most
        self.max_inspected = gateway.limits.http_max_inspected_body
        #: bytes of each body kept for audit (``gateway.audit.record_body``)
        self.record_body = gateway.audit.record_body

    def secret_key(self) -> bytes:
        """The gateway's HMAC key (``hash`` mask tokens), read once per config."""
        if self._secret_key is None:
            self._secret_key = secret_key_from_config(self.services.config)
        return self._secret_key

    def host_route(self, host: str) -> str | None:
        """The connection a ``Host`` value is mapped to (with or without its port)."""
        if not self._hosts or not host:
            return None
        lowered = host.lower()
        found = self._hosts.get(lowered)
        if found is None and (lowered.rfind(":") > lowered.rfind("]")):
            found = self._hosts.get(lowered.rsplit(":", 1)[0])  # without the port
        return found

    def secret_set(self, values: tuple[str, ...]) -> SecretSet:
        """The prepared search for an injector's secret values (prepared once per set)."""
        found = self._secret_sets.get(values)
        if found is None:
            if len(self._secret_sets) >= SECRET_SETS_KEPT:
                self._secret_sets.clear()
            found = self._secret_sets[values] = SecretSet(values)
        return found

    def pool(self, conn: ConnectionConfig) -> UpstreamPool:
        found = self._pools.get(conn.name)
        if found is not None and (found[0] is conn or found[0] == conn):
            return found[1]
        upstream = conn.http_upstream
        pool = UpstreamPool(conn.name, upstream, None)
        if pool.address.scheme == "https":
            pool.ssl_context = client_context(
                "verify-full",
                upstream.ca_file,
                pool.address.host,
                key_path=f"connections[{conn.name}].upstream",
            )
        if found is not None:
            self._retired.append(found[1])
        self._pools[conn.name] = (conn, pool)
        return pool

    def injector(self, conn: ConnectionConfig) -> Injector | None:
        found = self._injectors.get(conn.name)
        if found is not None and (found[0] is conn or found[0] == conn):
            return found[1]
        injector = build_injector(conn)
        if found is not None and found[1] is not None:
            self._retired.append(found[1])
        self._injectors[conn.name] = (conn, injector)
        return injector

    # --- accepting ------------------------------------------------------------------------------

    async def start(self) -> None:
        host, port = self.config.host, self.config.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._accepting = asyncio.create_task(self._accept_loop(), name=f"http-accept-{port}")
        self._watchdog = asyncio.create_task(self._watch(), name=f"http-watchdog-{port}")
        log.info("http listener on %s", self.config.bind)

    @property
    def bound_port(self) -> int:
        assert self._sock is not None
        port: int = self._sock.getsockname()[1]
        return port

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            try:
                sock, _ = await loop.sock_accept(self._sock)
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.warning("http listener cannot accept: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._serve(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WATCHDOG_TICK)
            now = loop.time()
            for session in list(self.sessions):
                session.check_deadlines(now)

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            first = await _peek(loop, sock)
            if not first:
                sock.close()
                return
            tls = first[0] == _TLS_HANDSHAKE and self.ssl_context is not None
            stream = ClientStream(CLIENT_BUFFER, tls=tls)
            await loop.connect_accepted_socket(
                lambda: stream,
                sock,
                ssl=self.ssl_context if tls else None,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT if tls else None,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.info("http connection dropped before its first request: %s", exc)
            sock.close()
            return
        if not tls and not self.config.allow_plaintext:
            _, data = error_response(
                PlaintextRefused("callgate requires TLS on this listener (use https://)"),
                close=True,
            )
            with contextlib.suppress(Exception):
                if stream.write(data):
                    async with asyncio.timeout(2.0):
                        await stream.drain()
            stream.close()
            return
        session = HttpSession(self, stream, tls=tls)
        session.task = asyncio.current_task()
        self.sessions.add(session)
        await session.run()

    def forget(self, session: HttpSession) -> None:
        self.sessions.discard(session)

    # --- stopping ---------------------------------------------------------------------------------

    async def stop_accepting(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
            self._accepting = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 - a deadline, not a call timeout
        """Stop accepting; close idle keep-alive connections at once, let requests in progress
        finish (answered with ``Connection: close``) for up to ``timeout`` seconds, then end
        the rest."""
        await self.stop_accepting()
        for session in list(self.sessions):
            session.stopping = True
            if not session.busy and session.task is not None:
                session.task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        for name in list(self._pools):
            self._retired.append(self._pools.pop(name)[1])
        for name in list(self._injectors):
            injector = self._injectors.pop(name)[1]
            if injector is not None:
                self._retired.append(injector)
        await self._close_retired()
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """The first byte the caller sent, left in the socket; ``b""`` if it closed first."""
    ready = loop.create_future()
    fd = sock.fileno()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, readable)
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            await ready
    finally:
        loop.remove_reader(fd)
    try:
        return sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return await _peek(loop, sock)
