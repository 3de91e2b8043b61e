"""Rows the store keeps, and the write operations the store's writer applies.

Both are frozen dataclasses so they can cross the thread boundary to the writer and the layer
boundary to callers without anyone mutating them. Timestamps are unix seconds (``float``): the
event hash covers the timestamp's exact ``repr``, and a double survives both SQLite ``REAL`` and
PostgreSQL ``double precision`` unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from callgate.store.audit_records import AuditOp


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One row of ``sessions``."""

    id: str
    subject: str
    groups: tuple[str, ...]
    auth_method: str
    credential_id: str | None
    issuer: str | None
    connection: str
    protocol: str
    client_addr: str
    client_user: str | None
    application_name: str | None
    tls: bool
    started_at: float
    ended_at: float | None = None
    end_reason: str | None = None
    bytes_from_client: int = 0
    bytes_to_client: int = 0
    statements: int = 0
    #: the gateway process (``gateway.audit.instance``) that serves the session; a gateway that
    #: restarts closes its own sessions left open by a crash
    gateway_id: str | None = None


def session_row_params(r: SessionRecord) -> tuple[object, ...]:
    """The values of a new ``sessions`` row, in the column order both stores insert them
    (``groups`` as a JSON list, ``tls`` as 0/1)."""
    return (
        r.id, r.subject, json.dumps(list(r.groups), separators=(",", ":")), r.auth_method,
        r.credential_id, r.issuer, r.connection, r.protocol, r.client_addr, r.client_user,
        r.application_name, int(r.tls), r.started_at, r.gateway_id,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One row of ``events``. ``payload`` is the canonical JSON text that the hash covers."""

    id: int
    session_id: str | None
    seq: int
    ts: float
    type: str
    payload: str
    prev_hash: str
    hash: str

    def data(self) -> dict[str, Any]:
        """The payload decoded (for display; verification works on the stored text)."""
        value = json.loads(self.payload)
        return value if isinstance(value, dict) else {"value": value}


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """One row of ``api_keys``. ``key_hash`` is HMAC-SHA256(secret key, full key), hex."""

    name: str
    key_id: str
    key_hash: str
    groups: tuple[str, ...]
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None
    created_by: str | None = None


@dataclass(frozen=True, slots=True)
class SessionTokenRecord:
    """One row of ``session_tokens``. ``token_hash`` is HMAC-SHA256(secret key, full token), hex.

    ``id`` is the public part of the token (``cgt_<id>_…``): the handle for listing, revoking and
    audit (:attr:`callgate.model.Principal.credential_id`).
    """

    id: str
    token_hash: str
    subject: str
    groups: tuple[str, ...]
    issuer: str | None
    created_at: float
    expires_at: float
    revoked_at: float | None = None
    last_used_at: float | None = None


# --- write operations ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InsertSession:
    record: SessionRecord


@dataclass(frozen=True, slots=True)
class AppendEvent:
    """Append one event to a hash chain.

    The writer computes ``prev_hash`` and ``hash`` when it writes the event, from the chain head it
    holds in memory, and moves the head only when the transaction commits: an event lost to a failed
    write never becomes a link that later events point at. ``seq`` is assigned by the session's
    recorder (callers need it before the commit); ``None`` asks the writer to number the event,
    which is how non-session events (``session_id is None``) are numbered.
    """

    session_id: str | None
    seq: int | None
    ts: float
    type: str
    #: canonical JSON (see :func:`callgate.store.chain.canonical_json`)
    payload: str


@dataclass(frozen=True, slots=True)
class JournalMark:
    """Ends a writer item whose events are in the audit journal (:mod:`callgate.store.journal`).

    The transaction that applies the item records ``seq`` as applied. With ``replay``, the events
    come from a previous process: each session's chain head is read from the store first, and
    events the store already holds (by ``seq``) are skipped.
    """

    seq: int
    replay: bool = False


@dataclass(frozen=True, slots=True)
class EndSession:
    """Close a session row and forget its chain head (after the commit)."""

    session_id: str
    ended_at: float
    end_reason: str
    bytes_from_client: int
    bytes_to_client: int
    statements: int


@dataclass(frozen=True, slots=True)
class InsertApiKey:
    record: ApiKeyRecord


@dataclass(frozen=True, slots=True)
class RevokeApiKey:
    """Revoke a live key. Its result is ``True`` when a live key was revoked."""

    name: str
    revoked_at: float


@dataclass(frozen=True, slots=True)
class TouchApiKey:
    """Record that a key was used (the identity service writes this at most once a minute)."""

    name: str
    last_used_at: float


@dataclass(frozen=True, slots=True)
class InsertSessionToken:
    record: SessionTokenRecord


@dataclass(frozen=True, slots=True)
class RevokeSessionToken:
    """Revoke a live session token. Its result is ``True`` when a live token was revoked."""

    token_id: str
    revoked_at: float


@dataclass(frozen=True, slots=True)
class TouchSessionToken:
    """Record that a session token was used (at most once a minute per token)."""

    token_id: str
    last_used_at: float


WriteOp = (
    AuditOp
    | InsertSession
    | AppendEvent
    | JournalMark
    | EndSession
    | InsertApiKey
    | RevokeApiKey
    | TouchApiKey
    | InsertSessionToken
    | RevokeSessionToken
    | TouchSessionToken
)
