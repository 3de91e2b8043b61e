"""Serve the API app with uvicorn inside the gateway's own event loop.

``callgate serve`` runs this beside the PostgreSQL listener: uvicorn's server object runs as one
more task; it installs no signal handlers (the gateway owns SIGTERM/SIGHUP) and no logging config.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Generator
from typing import Final

import uvicorn
from starlette.types import ASGIApp

#: Seconds the server may take to come up.
START_TIMEOUT: Final = 10.0
#: Seconds requests in flight get to finish when the server stops.
STOP_TIMEOUT: Final = 5.0


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The gateway handles signals and stops us; uvicorn's own handlers would steal them.
        yield


class ApiServer:
    """A running API server; :meth:`stop` ends it."""

    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None], sock: socket.socket):
        self._server = server
        self._task = task
        self._socket = sock
        name = sock.getsockname()
        self.host: str = str(name[0])
        self.port: int = int(name[1])

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:  # noqa: ASYNC109
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._server.force_exit = True
            await self._task
        finally:
            self._socket.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve_api(
    app: ASGIApp, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> ApiServer:
    """Bind ``host:port`` (0: a free port) and serve ``app`` until :meth:`ApiServer.stop`.

    Raises :class:`OSError` when the address cannot be bound.
    """
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=int(STOP_TIMEOUT),
    )
    config.load()
    config.ssl = ssl_context  # our own context (certificates already loaded, client CA set)
    server = _EmbeddedServer(config)
    sock = _bind(host, port)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"callgate-api-{host}:{port}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while not server.started:
        if task.done():
            sock.close()
            task.result()  # raises what stopped it
            raise OSError(f"the API server on {host}:{port} stopped while starting")
        if loop.time() > deadline:
            server.should_exit = True
            sock.close()
            raise OSError(f"the API server on {host}:{port} did not start in time")
        await asyncio.sleep(0.01)
    return ApiServer(server, task, sock)
