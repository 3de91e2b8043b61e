"""The PostgreSQL listener: accepts callers, owns the live sessions and their cancel keys."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from callgate.engines.postgres.mask_session import CatalogCache
from callgate.engines.postgres.pool import UpstreamPool
from callgate.engines.postgres.session import PostgresSession, new_cancel_key
from callgate.engines.postgres.upstream import UpstreamTarget
from callgate.identity.secret_key import secret_key_from_config
from callgate.services import Services
from callgate.tls import client_context, server_context

if TYPE_CHECKING:
    from callgate.config import ConnectionConfig, ListenerConfig

log = logging.getLogger("callgate.postgres")


class PostgresListener:
    def __init__(self, services: Services, config: ListenerConfig):
        self.services = services
        self.config = config
        gw_tls = services.config.gateway.tls
        self.ssl_context: ssl.SSLContext | None = (
            server_context(gw_tls, config.client_ca) if gw_tls is not None else None
        )
        self._upstream_ctx: dict[str, ssl.SSLContext | None] = {}
        self.sessions: dict[str, PostgresSession] = {}
        self._by_cancel_key: dict[tuple[int, int], PostgresSession] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: per connection: the upstream catalog masking resolves columns with
        self._catalogs: dict[str, CatalogCache] = {}
        #: idle upstream connections kept for the next caller (session pooling)
        self.pool = UpstreamPool()
        self._secret_key: bytes | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.config.host, self.config.port, reuse_address=True
        )
        log.info("postgres listener on %s", self.config.bind)

    @property
    def bound_port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def reload(self, services: Services) -> None:
        """New sessions use the new config; live sessions keep the one they started with."""
        self.services = services
        self._upstream_ctx.clear()
        self._catalogs.clear()
        self.pool.clear()  # a connection's upstream or credential may have changed
        self._secret_key = None

    def secret_key(self) -> bytes:
        """The gateway's HMAC key (``hash`` mask tokens), read once."""
        if self._secret_key is None:
            self._secret_key = secret_key_from_config(self.services.config)
        return self._secret_key

    def catalog(self, connection: str, target: UpstreamTarget) -> CatalogCache:
        """The catalog cache of ``connection`` (shared by its sessions)."""
        cache = self._catalogs.get(connection)
        if cache is None:
            cache = self._catalogs[connection] = CatalogCache(target)
        return cache

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = PostgresSession(self.services, self, self.config, reader, writer)
        self.sessions[session.id] = session
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await session.run()
        finally:
            if task is not None:
                self._tasks.discard(task)

    def upstream_ssl_context(self, conn: ConnectionConfig) -> ssl.SSLContext | None:
        if conn.name not in self._upstream_ctx:
            u = conn.database_upstream
            self._upstream_ctx[conn.name] = client_context(u.tls, u.ca_file, u.host)
        return self._upstream_ctx[conn.name]

    def register(self, session: PostgresSession) -> tuple[int, int]:
        key = new_cancel_key()
        while key in self._by_cancel_key:
            key = new_cancel_key()
        self._by_cancel_key[key] = session
        return key

    def forget(self, session: PostgresSession) -> None:
        self.sessions.pop(session.id, None)
        if session.cancel_key is not None:
            self._by_cancel_key.pop(session.cancel_key, None)

    async def cancel(self, process_id: int, secret_key: int) -> None:
        session = self._by_cancel_key.get((process_id, secret_key))
        if session is None:
            log.info("cancel request with an unknown key dropped")
            return
        try:
            await session.cancel_upstream()
            log.info("session %s: cancel forwarded", session.id)
        except Exception as exc:  # a failed cancel must not disturb anything else
            log.warning("session %s: cancel could not be forwarded: %s", session.id, exc)

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 - a deadline, not a call timeout
        """Wait for live sessions to end; after ``timeout`` end the rest."""
        await self.stop_accepting()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            if pending:
                for s in list(self.sessions.values()):
                    s.terminate("callgate is shutting down")
                await asyncio.wait(pending, timeout=5.0)
        await self.pool.close()
