"""The audit exporter: drains the store's outbox into the export sinks, at least once.

Every event is written with one outbox row per configured sink in the event's own transaction
(see :meth:`callgate.store.Store.configure_audit`), so an event that committed will be delivered
even if the gateway dies right after: the rows are still there when it starts again. One task per
sink claims the oldest due rows (hidden from other exporters for :data:`LEASE_SECONDS`), sends
them, and deletes them once the sink took them. A failed delivery is retried with exponential
backoff (:data:`BACKOFF_BASE` doubling up to :data:`BACKOFF_MAX`, with jitter).

The data path never waits for a sink: events only gain outbox rows. A dead sink's backlog is
bounded by ``max_backlog``: past it the oldest rows are dropped, an ``export.backlog_dropped``
event records which event ids were dropped, and a warning is logged; ``callgate audit status``
shows each sink's backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from callgate.audit.export import render
from callgate.audit.sinks import Sink, SinkError, sink_from_config
from callgate.services import Clock
from callgate.store.audit_records import (
    ClaimOutbox,
    OutboxDelivered,
    OutboxFailed,
    OutboxItem,
    TrimOutbox,
)
from callgate.store.base import Store
from callgate.store.errors import StoreError
from callgate.store.records import SessionRecord

if TYPE_CHECKING:
    from callgate.audit.service import AuditService
    from callgate.config import Config

log = logging.getLogger("callgate.audit.export")

#: Seconds between two looks at an empty outbox.
POLL_INTERVAL = 0.5
#: Seconds claimed rows stay hidden from other exporters (a crash mid-delivery frees them after).
LEASE_SECONDS = 60.0
BACKOFF_BASE = 0.5
BACKOFF_MAX = 60.0
#: Seconds between two checks of each sink's backlog against its bound.
TRIM_INTERVAL = 5.0
#: Sessions kept in memory for rendering OCSF events (actor, endpoint, database).
SESSION_CACHE = 1024
#: Seconds between two warnings about the same failing sink.
WARN_INTERVAL = 30.0


@dataclass(frozen=True)
class ExportTarget:
    sink: Sink
    #: ``jsonl`` (callgate's event JSON) or ``ocsf``
    format: str = "jsonl"
    batch: int = 100
    max_backlog: int = 100_000

    @property
    def name(self) -> str:
        return self.sink.name


def backoff(failures: int, *, base: float = BACKOFF_BASE, cap: float = BACKOFF_MAX) -> float:
    """Seconds before retry number ``failures`` (1, 2, ...): doubling, capped, ±20% jitter."""
    delay = min(cap, base * (2 ** max(0, failures - 1)))
    return float(delay * random.uniform(0.8, 1.2))


class AuditExporter:
    """``await exporter.start()`` after the store is open; ``await exporter.close()`` before it
    is closed. Without targets both do nothing."""

    def __init__(
        self,
        store: Store,
        targets: Sequence[ExportTarget],
        *,
        audit: AuditService | None = None,
        clock: Clock = time.time,
        poll_interval: float = POLL_INTERVAL,
        trim_interval: float = TRIM_INTERVAL,
        backoff_base: float = BACKOFF_BASE,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        self._store = store
        self._targets = list(targets)
        self._audit = audit
        self._clock = clock
        self._poll = poll_interval
        self._trim_interval = trim_interval
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._tasks: list[asyncio.Task[None]] = []
        self._sessions: OrderedDict[str, SessionRecord | None] = OrderedDict()
        self._failures: dict[str, int] = {}
        self._last_warning: dict[str, float] = {}
        self.delivered: dict[str, int] = {t.name: 0 for t in self._targets}
        self.dropped: dict[str, int] = {t.name: 0 for t in self._targets}

    @property
    def targets(self) -> list[ExportTarget]:
        return list(self._targets)

    async def start(self) -> None:
        if self._tasks:
            return
        for target in self._targets:
            self._tasks.append(asyncio.create_task(self._deliver_loop(target)))
            self._tasks.append(asyncio.create_task(self._trim_loop(target)))

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for target in self._targets:
            with contextlib.suppress(Exception):
                await target.sink.close()

    # --- one round (also used by tests) ---------------------------------------------------------

    async def deliver_once(self, target: ExportTarget) -> int:
        """Claim, send and settle one batch; the number of events delivered (0: nothing due).
        Raises :class:`SinkError` after scheduling the batch's retry."""
        now = self._clock()
        (claimed,) = await self._store.commit(
            (ClaimOutbox(target.name, target.batch, now, now + LEASE_SECONDS),)
        )
        items = claimed if isinstance(claimed, tuple) else ()
        if not items:
            return 0
        rows: list[OutboxItem] = [i for i in items if isinstance(i, OutboxItem)]
        ids = tuple(i.id for i in rows)
        events = await self._store.events_by_ids([i.event_id for i in rows])
        rendered = []
        for event in events:
            session = await self._session(event.session_id) if target.format == "ocsf" else None
            rendered.append(render(event, session, target.format))
        try:
            if rendered:  # rows whose events retention removed are simply settled
                await target.sink.send(rendered)
        except SinkError as exc:
            failures = self._failures.get(target.name, 0) + 1
            self._failures[target.name] = failures
            delay = backoff(failures, base=self._backoff_base, cap=self._backoff_max)
            await self._store.commit((OutboxFailed(ids, self._clock() + delay, exc.message),))
            self._warn(target.name, f"export to {target.name} failed ({exc.message}); retrying")
            raise
        await self._store.commit((OutboxDelivered(ids),))
        if self._failures.pop(target.name, 0):
            log.info("export to %s recovered", target.name)
        self.delivered[target.name] = self.delivered.get(target.name, 0) + len(rendered)
        return len(rendered)

    async def trim_once(self, target: ExportTarget) -> int:
        (result,) = await self._store.commit((TrimOutbox(target.name, target.max_backlog),))
        dropped, first, last = result if isinstance(result, tuple) else (0, None, None)
        if not dropped:
            return 0
        self.dropped[target.name] = self.dropped.get(target.name, 0) + int(dropped)
        log.warning(
            "export backlog of %s passed %d events: dropped the oldest %d (event ids %s-%s)",
            target.name,
            target.max_backlog,
            dropped,
            first,
            last,
        )
        if self._audit is not None:
            self._audit.record_backlog_dropped(
                sink=target.name,
                dropped=int(dropped),
                first_event_id=first,
                last_event_id=last,
                bound=target.max_backlog,
            )
        return int(dropped)

    # --- loops ----------------------------------------------------------------------------------

    async def _deliver_loop(self, target: ExportTarget) -> None:
        while True:
            try:
                sent = await self.deliver_once(target)
            except SinkError:
                failures = self._failures.get(target.name, 1)
                await asyncio.sleep(
                    backoff(failures, base=self._backoff_base, cap=self._backoff_max)
                )
                continue
            except StoreError as exc:
                self._warn(target.name, f"export to {target.name}: store unavailable: {exc}")
                await asyncio.sleep(self._poll)
                continue
            except Exception:
                log.exception("export to %s: unexpected error", target.name)
                await asyncio.sleep(self._poll)
                continue
            if sent == 0:
                await asyncio.sleep(self._poll)

    async def _trim_loop(self, target: ExportTarget) -> None:
        while True:
            try:
                await self.trim_once(target)
            except StoreError as exc:
                log.debug("backlog check of %s failed: %s", target.name, exc)
            except Exception:
                log.exception("backlog check of %s: unexpected error", target.name)
            await asyncio.sleep(self._trim_interval)

    async def _session(self, session_id: str | None) -> SessionRecord | None:
        if session_id is None:
            return None
        if session_id in self._sessions:
            self._sessions.move_to_end(session_id)
            return self._sessions[session_id]
        record = await self._store.get_session(session_id)
        self._sessions[session_id] = record
        if len(self._sessions) > SESSION_CACHE:
            self._sessions.popitem(last=False)
        return record

    def _warn(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(key, -WARN_INTERVAL) >= WARN_INTERVAL:
            log.warning("%s", message)
            self._last_warning[key] = now

    @classmethod
    def from_config(
        cls, config: Config, store: Store, *, audit: AuditService | None = None
    ) -> AuditExporter:
        targets = [
            ExportTarget(
                sink_from_config(s), format=s.format, batch=s.batch, max_backlog=s.max_backlog
            )
            for s in config.gateway.audit.export
        ]
        return cls(store, targets, audit=audit)
