"""The one store interface every backend implements (SQLite now, PostgreSQL later).

Writes are :mod:`records` operations handed to the backend's writer, which group-commits them:
everything queued when it becomes free goes into one transaction. :meth:`Store.submit` queues and
returns; :meth:`Store.commit` waits for the transaction carrying its operations. Reads are small
and go through their own connection.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from callgate.store.audit_base import AuditStore
from callgate.store.records import (
    ApiKeyRecord,
    EventRecord,
    RevokeApiKey,
    RevokeSessionToken,
    SessionRecord,
    SessionTokenRecord,
    WriteOp,
)


class Store(AuditStore):
    @property
    @abstractmethod
    def url(self) -> str:
        """Where the store lives, without credentials (for messages)."""

    @property
    @abstractmethod
    def healthy(self) -> bool:
        """``False`` after a transaction failed for want of the store, until one commits again."""

    # --- writes ---------------------------------------------------------------------------------

    @abstractmethod
    def submit(self, ops: Sequence[WriteOp]) -> None:
        """Queue ``ops`` (applied together, in order) without waiting.

        Raises :class:`~callgate.store.errors.StoreClosed` after :meth:`close`. A later failure
        is logged and reflected in :attr:`healthy`.
        """

    @abstractmethod
    async def commit(self, ops: Sequence[WriteOp]) -> tuple[object, ...]:
        """Queue ``ops`` and wait until the transaction carrying them committed.

        Returns one result per op (``None`` for most; ``bool`` for :class:`RevokeApiKey`).
        Raises :class:`~callgate.store.errors.StoreUnavailable` or
        :class:`~callgate.store.errors.StoreConflict`.
        """

    async def flush(self) -> None:
        """Wait until everything queued before this call was written (or failed)."""
        await self.commit(())

    async def revoke_api_key(self, name: str, revoked_at: float) -> bool:
        (result,) = await self.commit((RevokeApiKey(name, revoked_at),))
        return bool(result)

    async def revoke_session_token(self, token_id: str, revoked_at: float) -> bool:
        """Revoke a live session token; ``False`` if there is none by that id (or it was)."""
        (result,) = await self.commit((RevokeSessionToken(token_id, revoked_at),))
        return bool(result)

    # --- reads ----------------------------------------------------------------------------------

    @abstractmethod
    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    @abstractmethod
    async def list_sessions(self, *, limit: int = 100) -> list[SessionRecord]:
        """Newest first."""

    @abstractmethod
    async def session_events(self, session_id: str | None) -> list[EventRecord]:
        """One chain in ``seq`` order; ``None`` gives the events outside any session."""

    @abstractmethod
    async def api_key_by_hash(self, key_hash: str) -> ApiKeyRecord | None: ...

    @abstractmethod
    async def api_key_by_name(self, name: str) -> ApiKeyRecord | None: ...

    @abstractmethod
    async def list_api_keys(self) -> list[ApiKeyRecord]: ...

    @abstractmethod
    async def session_token_by_hash(self, token_hash: str) -> SessionTokenRecord | None: ...

    @abstractmethod
    async def session_token_by_id(self, token_id: str) -> SessionTokenRecord | None: ...

    @abstractmethod
    async def list_session_tokens(
        self, *, live_at: float | None = None, limit: int = 1000
    ) -> list[SessionTokenRecord]:
        """Newest first; with ``live_at``, only tokens neither revoked nor expired at that time."""

    # --- lifecycle ------------------------------------------------------------------------------

    @abstractmethod
    async def close(self) -> None:
        """Write what is queued, stop the writer, close connections. Idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
