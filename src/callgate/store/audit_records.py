"""Audit rows and write operations beyond events: checkpoints, the export outbox, retention and
crash recovery. Frozen dataclasses, like :mod:`callgate.store.records` (which re-exports the
operations in its ``WriteOp`` union)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """One row of ``checkpoints``: a signed statement of chain heads (see :mod:`.checkpoints`).

    ``heads`` are ``(session_id, seq, hash)`` of every chain that moved since the previous
    checkpoint (``session_id`` ``None`` for the chain outside sessions); ``purged`` names the
    sessions that retention removed in the transaction that wrote this checkpoint. ``prev`` is the
    previous checkpoint's digest, so checkpoints form a chain of their own.
    """

    id: int
    ts: float
    kind: str
    heads: tuple[tuple[str | None, int, str], ...]
    purged: tuple[str, ...]
    prev: str
    public_key: str
    signature: str


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """An event waiting for delivery to one export sink."""

    id: int
    sink: str
    event_id: int
    attempts: int


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """The backlog of one export sink."""

    sink: str
    pending: int
    oldest_created_at: float | None
    max_attempts: int
    last_error: str | None


# --- write operations ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Sign every chain head that moved since the last checkpoint, now (in this transaction).

    Result: the checkpoint id, or ``None`` when the store has no signing key.
    """

    kind: str = "manual"


@dataclass(frozen=True, slots=True)
class CloseInterrupted:
    """Close sessions left without an end by a crash: append their ``session.end`` (reason
    ``reason``) to each chain and fill in the ``sessions`` row.

    Closes the open sessions of ``gateway_id`` (and those recorded without a gateway id) that this
    writer does not hold open, plus, when ``stale_before`` is given, those of any gateway whose
    last heartbeat is older than it. Result: the tuple of session ids closed.
    """

    gateway_id: str | None
    ended_at: float
    reason: str
    stale_before: float | None = None


@dataclass(frozen=True, slots=True)
class PurgeSessions:
    """Delete up to ``limit`` ended sessions with ``ended_at < ended_before``, their events and
    outbox rows. With a signing key, a ``purge`` checkpoint naming them is written in the same
    transaction, so verification knows they were removed, not lost. Result: the ids purged."""

    ended_before: float
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Record that gateway ``gateway_id`` is alive (for closing a dead replica's sessions)."""

    gateway_id: str
    ts: float


@dataclass(frozen=True, slots=True)
class ClaimOutbox:
    """Take up to ``limit`` due rows of ``sink`` (oldest first) and hide them until
    ``lease_until`` so that another exporter does not take them meanwhile.
    Result: ``tuple[OutboxItem, ...]``."""

    sink: str
    limit: int
    now: float
    lease_until: float


@dataclass(frozen=True, slots=True)
class OutboxDelivered:
    """Delete delivered outbox rows."""

    ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class OutboxFailed:
    """Count a failed delivery and schedule the rows again at ``next_attempt_at``."""

    ids: tuple[int, ...]
    next_attempt_at: float
    error: str


@dataclass(frozen=True, slots=True)
class TrimOutbox:
    """Drop the oldest rows of ``sink`` beyond ``max_rows``. Result: ``(dropped, first event id,
    last event id)`` of what was dropped (``(0, None, None)`` within the bound)."""

    sink: str
    max_rows: int


AuditOp = (
    Checkpoint
    | CloseInterrupted
    | PurgeSessions
    | Heartbeat
    | ClaimOutbox
    | OutboxDelivered
    | OutboxFailed
    | TrimOutbox
)
AUDIT_OPS = (
    Checkpoint,
    CloseInterrupted,
    PurgeSessions,
    Heartbeat,
    ClaimOutbox,
    OutboxDelivered,
    OutboxFailed,
    TrimOutbox,
)
