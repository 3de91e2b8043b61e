"""The audit's background work in a serving gateway: export, retention, dead-replica cleanup.

``callgate serve`` builds one :class:`AuditTasks` after the audit service, ``await start()``s it,
and ``await close()``s it before closing the audit service (which flushes and closes the store).

- :class:`~callgate.audit.exporter.AuditExporter`: drains the outbox into the export sinks.
- :class:`RetentionTask`: every ``retention_every``, removes sessions that ended more than
  ``retention`` ago (each batch with a signed ``purge`` checkpoint), and closes the open sessions
  of gateways sharing the store whose heartbeat stopped (a replica that died and did not come
  back to close them itself).

Interval checkpoints need no task: the store's writer signs them (see
:mod:`callgate.store.checkpoints`). Sessions this gateway left open when it crashed are closed by
:meth:`AuditService.from_config <callgate.audit.service.AuditService.from_config>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from callgate.audit.exporter import AuditExporter
from callgate.services import Clock
from callgate.store.errors import StoreError

if TYPE_CHECKING:
    from callgate.audit.service import AuditService
    from callgate.config import Config

log = logging.getLogger("callgate.audit")

#: A gateway whose heartbeat (every 10 s) is older than this is dead; its open sessions are closed.
STALE_GATEWAY_SECONDS = 600.0


class RetentionTask:
    def __init__(
        self,
        audit: AuditService,
        *,
        retention: float | None,
        every: float,
        stale_after: float = STALE_GATEWAY_SECONDS,
        clock: Clock = time.time,
    ) -> None:
        self._audit = audit
        self._retention = retention
        self._every = every
        self._stale_after = stale_after
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """Purge what is past retention and close dead replicas' sessions; sessions purged."""
        now = self._clock()
        await self._audit.recover_interrupted(stale_before=now - self._stale_after)
        if self._retention is None:
            return 0
        purged = await self._audit.purge(now - self._retention)
        if purged:
            log.info("retention: removed %d session(s) that ended before the cutoff", purged)
        return purged

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except StoreError as exc:
                log.warning("retention run failed, trying again later: %s", exc.message)
            except Exception:
                log.exception("retention run failed")
            await asyncio.sleep(self._every)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class AuditTasks:
    def __init__(self, exporter: AuditExporter, retention: RetentionTask) -> None:
        self.exporter = exporter
        self.retention = retention

    async def start(self) -> None:
        await self.exporter.start()
        await self.retention.start()

    async def close(self) -> None:
        await self.retention.close()
        await self.exporter.close()

    @classmethod
    def from_config(cls, config: Config, audit: AuditService) -> AuditTasks:
        settings = config.gateway.audit
        retention = settings.retention.total_seconds() if settings.retention else None
        return cls(
            AuditExporter.from_config(config, audit.store, audit=audit),
            RetentionTask(
                audit, retention=retention, every=settings.retention_every.total_seconds()
            ),
        )
