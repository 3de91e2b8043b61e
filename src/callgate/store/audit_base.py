"""The audit half of the store interface: checkpoints, export outbox, verification reads.

:class:`callgate.store.base.Store` inherits it; every backend implements both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from callgate.store.audit_records import CheckpointRecord, OutboxStatus
from callgate.store.checkpoints import AuditWriterSettings
from callgate.store.records import EventRecord


class AuditStore(ABC):
    @abstractmethod
    def configure_audit(self, settings: AuditWriterSettings) -> None:
        """Give the writer its checkpoint signer and interval, export sinks and gateway id.

        Takes effect from the next transaction. The serving gateway's audit service calls this
        once at start; other processes (the CLI) never do, so they never sign or fill the outbox.
        """

    @abstractmethod
    async def checkpoints(self) -> list[CheckpointRecord]:
        """Every checkpoint, in id order."""

    async def journal_pending(self) -> tuple[int, int]:
        """Records of the audit journal not yet in the store and the events in them (a gateway
        applies them within milliseconds, or at its next start after a crash); ``(0, 0)`` for a
        store without a journal."""
        return 0, 0

    @abstractmethod
    async def chain_ids(self) -> list[str | None]:
        """Every chain with events or a session row: session ids (sorted), then ``None`` if there
        are events outside sessions."""

    @abstractmethod
    async def events_by_ids(self, ids: Sequence[int]) -> list[EventRecord]:
        """The events with these ids that exist, in id order."""

    @abstractmethod
    async def events_page(
        self,
        after_id: int,
        limit: int,
        *,
        session_id: str | None = None,
        since: float | None = None,
    ) -> list[EventRecord]:
        """Up to ``limit`` events with ``id > after_id`` in id order; only ``session_id``'s when
        given, only those at or after ``since`` (unix seconds) when given."""

    @abstractmethod
    async def outbox_status(self) -> list[OutboxStatus]:
        """The export backlog, one entry per sink with rows waiting."""
