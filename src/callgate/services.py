"""The interfaces engines use, and the one ``Services`` object built at start.

Engines receive a :class:`Services` and never reach a service through a module global, so tests can
pass their own implementations and a clock (ARCHITECTURE.md, "Layers").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from callgate.model import Decision, HttpRequest, Principal, SessionInfo, SqlCommand

if TYPE_CHECKING:
    from callgate.approvals import ApprovalService
    from callgate.config import Config
    from callgate.policy.engine import PolicyEngine


class SessionRecorder(Protocol):
    """Audit hooks for one session (compare Teleport's OnSessionStart/OnQuery/OnResult)."""

    async def statement(self, command: SqlCommand, decision: Decision) -> int:
        """Record a statement before it is forwarded (or refused).

        Returns the statement's sequence number in the session. With ``durability: strict`` the
        event is committed when this returns. Raises :class:`callgate.errors.AuditUnavailable`
        when the store cannot take it and ``on_store_failure: deny`` is set.
        """
        ...

    def statement_done(
        self,
        seq: int,
        *,
        tag: str | None,
        rows: int | None,
        error_sqlstate: str | None,
        error_message: str | None,
        duration_ms: float,
    ) -> None:
        """Record how statement ``seq`` ended. Queued; never blocks the data path."""
        ...

    def rows(
        self, seq: int, columns: Sequence[str], rows: Sequence[Sequence[bytes | str | None]]
    ) -> None:
        """Keep the first ``record_rows`` rows of statement ``seq`` as the caller received them
        (already masked). Queued; never blocks."""
        ...

    def masked(self, seq: int, columns: Sequence[tuple[str, str, int]]) -> None:
        """Record which result columns of statement ``seq`` were masked: ``(column, source,
        values changed)`` each, never a value. Queued; never blocks."""
        ...

    @property
    def record_body(self) -> int:
        """Bytes of each HTTP body :meth:`bodies` keeps (``gateway.audit.record_body``)."""
        ...

    async def request(self, request: HttpRequest, decision: Decision) -> int:
        """Record an HTTP request before it is forwarded (or refused); the HTTP engine's
        :meth:`statement`, with the same durability and ``on_store_failure`` behaviour."""
        ...

    def response(
        self,
        seq: int,
        *,
        status: int,
        bytes_from_client: int,
        bytes_to_client: int,
        duration_ms: float,
        error: str | None = None,
    ) -> None:
        """Record how HTTP request ``seq`` ended. Queued; never blocks."""
        ...

    def bodies(
        self,
        seq: int,
        *,
        request: bytes | None,
        response: bytes | None,
        request_truncated: bool = False,
        response_truncated: bool = False,
    ) -> None:
        """Keep the first ``record_body`` bytes of request ``seq``'s body and response body
        (already masked). Queued; never blocks."""
        ...

    async def end(self, reason: str, *, bytes_from_client: int, bytes_to_client: int) -> None:
        """Record the end of the session (always called once, whatever ended it)."""
        ...


class AuditService(Protocol):
    async def open_session(self, info: SessionInfo) -> SessionRecorder:
        """Record a session start (committed under strict durability) and return its recorder."""
        ...

    def auth_failure(self, *, protocol: str, source: str, reason: str, issuer: str | None) -> None:
        """Record a failed authentication. Never pass the credential itself."""
        ...


class IdentityService(Protocol):
    async def authenticate(self, credential: str, *, source: str, protocol: str) -> Principal:
        """Verify a caller's credential. Raises :class:`callgate.errors.AuthenticationFailed`.

        Repeated failures from one ``source`` are slowed down, then refused for a while
        (:class:`callgate.errors.TooManyFailures`).
        """
        ...

    async def authenticate_certificate(
        self, der: bytes, *, source: str, protocol: str
    ) -> Principal:
        """Map a verified client certificate (mTLS) to a principal, or raise
        AuthenticationFailed."""
        ...

    async def still_valid(self, principal: Principal) -> str | None:
        """None while the credential behind ``principal`` holds; else why it no longer does."""
        ...


Clock = Callable[[], float]


@dataclass
class Services:
    config: Config
    identity: IdentityService
    audit: AuditService
    #: statement-level policy; swapped as a whole on reload (sessions read it per statement)
    policy: PolicyEngine
    #: reviews and grants; None when the store cannot hold them (reviews are then refused)
    approvals: ApprovalService | None = None
    clock: Clock = field(default=__import__("time").time)
