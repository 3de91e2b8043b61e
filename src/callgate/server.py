"""``callgate serve``: build the services, run the listeners, drain on SIGTERM, reload on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from callgate.audit import AuditTasks
from callgate.bootstrap import ServiceBundle, build_services
from callgate.config import Config, load_config
from callgate.engines.http.listener import HttpListener
from callgate.engines.postgres.listener import PostgresListener
from callgate.errors import CallgateError, ConfigError
from callgate.tls import server_context
from callgate.web import ApiContext, ApiServer, create_api_app, serve_api

log = logging.getLogger("callgate.server")

#: Listener protocols this version serves. Others are refused at start rather than ignored, so a
#: config never silently leaves a data path unguarded.
SUPPORTED_LISTENERS = frozenset({"postgres", "http", "api"})


def check_supported(config: Config) -> None:
    for i, lst in enumerate(config.listeners):
        if lst.protocol not in SUPPORTED_LISTENERS:
            raise ConfigError(
                f"listeners[{i}].protocol",
                f"'{lst.protocol}' listeners are not available in this version of callgate "
                f"(available: {', '.join(sorted(SUPPORTED_LISTENERS))})",
            )


class Gateway:
    def __init__(self, config_path: Path, config: Config, bundle: ServiceBundle):
        self.config_path = config_path
        self.bundle = bundle
        self.listeners: list[PostgresListener | HttpListener] = []
        for lst in config.listeners:
            if lst.protocol == "postgres":
                self.listeners.append(PostgresListener(bundle.services, lst))
            elif lst.protocol == "http":
                self.listeners.append(HttpListener(bundle.services, lst))
        self.api_configs = [lst for lst in config.listeners if lst.protocol == "api"]
        self.api_servers: list[ApiServer] = []
        self._stop = asyncio.Event()

    async def start(self) -> None:
        for lst in self.listeners:
            await lst.start()
        for api in self.api_configs:
            approvals = self.bundle.approvals
            if approvals is None:
                raise ConfigError("listeners", "the api listener needs a store that holds reviews")
            app = create_api_app(
                ApiContext(
                    approvals=approvals,
                    identity=lambda: self.bundle.services.identity,
                    healthy=lambda: self.bundle.store.healthy,
                )
            )
            gw_tls = self.bundle.services.config.gateway.tls
            ctx = None
            if gw_tls is not None and not api.allow_plaintext:
                ctx = server_context(gw_tls, api.client_ca)
            self.api_servers.append(await serve_api(app, api.host, api.port, ctx))
            log.info("api listener on %s", api.bind)

    def request_stop(self) -> None:
        self._stop.set()

    async def reload(self) -> None:
        """Re-read the config. New sessions use it; live sessions are left as they are.

        Listener addresses, the store and TLS pair take effect at the next restart.
        """
        try:
            config = load_config(self.config_path)
            check_supported(config)
        except CallgateError as exc:
            log.error("reload refused, keeping the running config: %s", exc.message)
            return
        self.bundle.services = await self.bundle.with_config(config)
        for lst in self.listeners:
            lst.reload(self.bundle.services)
        log.info("configuration reloaded from %s", self.config_path)

    async def run_until_stopped(self) -> None:
        await self._stop.wait()
        log.info("draining sessions")
        drain = self.bundle.services.config.gateway.drain_timeout.total_seconds()
        for api in self.api_servers:
            await api.stop()
        await asyncio.gather(*(lst.drain(drain) for lst in self.listeners))
        await self.bundle.close()
        log.info("stopped")


async def serve(config_path: Path) -> None:
    config = load_config(config_path)
    check_supported(config)
    bundle = await build_services(config)
    tasks = AuditTasks.from_config(config, bundle.audit)  # export, retention, replica sweep
    await tasks.start()
    bundle.on_close.append(tasks.close)
    gateway = Gateway(config_path, config, bundle)
    try:
        await gateway.start()
    except OSError as exc:
        await bundle.close()
        raise ConfigError("listeners", f"cannot listen: {exc.strerror or exc}") from exc
    except CallgateError:
        await bundle.close()
        raise
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, gateway.request_stop)
    loop.add_signal_handler(signal.SIGINT, gateway.request_stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(gateway.reload()))
    log.info("callgate is serving (%d listeners)", len(gateway.listeners))
    await gateway.run_until_stopped()
