"""The few protocol-independent objects every engine turns its traffic into (ARCHITECTURE.md)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, and how it was proven."""

    subject: str
    groups: frozenset[str]
    #: how the credential was proven: ``api_key``, ``oidc``, ``session_token``, ``mtls``
    method: str
    #: unix time after which the proof is no longer valid (``None``: no expiry)
    expires_at: float | None = None
    #: a non-secret handle on the credential (API key name, token id) for audit and revocation
    credential_id: str | None = None
    issuer: str | None = None


def new_session_id() -> str:
    """A session id: 32 hex digits, the first 12 the start time in milliseconds, the other 20
    random (80 bits).

    Time-ordered like a UUIDv7 so that the store's indexes on session ids (the sessions table's
    key, the events' ``(session_id, seq)``) grow at their right edge: with random ids every new
    session dirtied a page of each index somewhere in the middle, so each commit of a stream of
    short sessions wrote several pages more than it needed.
    """
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One caller connected to one connection."""

    id: str
    principal: Principal
    connection: str
    protocol: str
    client_addr: str
    tls: bool
    #: what the client said it was (PostgreSQL ``user``): recorded, never trusted
    client_user: str | None = None
    application_name: str | None = None
    started_at: float = field(default_factory=time.time)


class Verdict(StrEnum):
    ALLOW = "allow"
    REVIEW = "review"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class SqlCommand:
    """One SQL statement (or batch) a caller asks to run."""

    sql: str
    #: bind parameter values as the client sent them (``None`` is SQL NULL); text or binary
    params: tuple[bytes | None, ...] = ()
    #: the format code of each parameter (0 text, 1 binary), as in Bind
    param_formats: tuple[int, ...] = ()
    #: prepared statement name (extended protocol), ``None`` for a simple Query
    statement_name: str | None = None
    #: ``query`` (simple), ``execute`` (Bind+Execute of a prepared statement), ``function_call``
    op: str = "query"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    #: human-readable names of the rules that matched, e.g. ``"functions read orders: rules[0]"``
    rules: tuple[str, ...] = ()
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW


ALLOW_ALL = Decision(Verdict.ALLOW, (), "")


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One HTTP request a caller asks to send (the facts policy, approvals and audit look at).

    ``path`` is the path after the connection prefix, as the caller sent it (percent-encoded);
    ``query`` the raw query string without ``?``; header names are lower case, values as sent
    (the caller's ``Authorization`` already removed). ``body`` is the request body when callgate
    buffered it (a policy looks at JSON, or an approval binds to it), ``None`` when it streams
    through unread; ``body_length`` is its declared length when known.
    """

    method: str
    path: str
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    body_length: int | None = None
    content_type: str | None = None
