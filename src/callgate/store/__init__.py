"""The store: sessions, events, API-key hashes, checkpoints (see :mod:`callgate.store.base`)."""

from callgate.store.audit_records import (
    Checkpoint,
    CheckpointRecord,
    ClaimOutbox,
    CloseInterrupted,
    Heartbeat,
    OutboxDelivered,
    OutboxFailed,
    OutboxItem,
    OutboxStatus,
    PurgeSessions,
    TrimOutbox,
)
from callgate.store.base import Store
from callgate.store.chain import (
    ZERO_HASH,
    canonical_event,
    canonical_json,
    chain_hash,
    first_broken_link,
)
from callgate.store.checkpoints import AuditWriterSettings, CheckpointSigner, load_public_key
from callgate.store.errors import StoreClosed, StoreConflict, StoreError, StoreUnavailable
from callgate.store.records import (
    ApiKeyRecord,
    AppendEvent,
    EndSession,
    EventRecord,
    InsertApiKey,
    InsertSession,
    RevokeApiKey,
    SessionRecord,
    TouchApiKey,
    WriteOp,
)
from callgate.store.sqlite import SqliteStore
from callgate.store.url import (
    open_store,
    open_store_from_config,
    sqlite_path,
    store_from_config,
)

__all__ = [
    "ZERO_HASH",
    "ApiKeyRecord",
    "AppendEvent",
    "AuditWriterSettings",
    "Checkpoint",
    "CheckpointRecord",
    "CheckpointSigner",
    "ClaimOutbox",
    "CloseInterrupted",
    "EndSession",
    "EventRecord",
    "Heartbeat",
    "InsertApiKey",
    "InsertSession",
    "OutboxDelivered",
    "OutboxFailed",
    "OutboxItem",
    "OutboxStatus",
    "PurgeSessions",
    "RevokeApiKey",
    "SessionRecord",
    "SqliteStore",
    "Store",
    "StoreClosed",
    "StoreConflict",
    "StoreError",
    "StoreUnavailable",
    "TouchApiKey",
    "TrimOutbox",
    "WriteOp",
    "canonical_event",
    "canonical_json",
    "chain_hash",
    "first_broken_link",
    "load_public_key",
    "open_store",
    "open_store_from_config",
    "sqlite_path",
    "store_from_config",
]
