"""The implementations satisfy the interfaces engines use (checked by mypy, and run)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from callgate import services
from callgate.audit import AuditService
from callgate.identity import ApiKeys, Authenticator, IdentityService
from callgate.model import Principal, SessionInfo
from callgate.store import SqliteStore


def test_implementations_match_the_service_protocols(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "a.db")
        audit: services.AuditService = AuditService(store)
        keys: Authenticator = ApiKeys(store, b"x" * 32)
        identity: services.IdentityService = IdentityService([keys], audit=audit)
        info = SessionInfo("s", Principal("p", frozenset(), "api_key"), "c", "postgres", "a", False)
        recorder: services.SessionRecorder = await audit.open_session(info)
        await recorder.end("done", bytes_from_client=0, bytes_to_client=0)
        assert identity is not None
        await store.close()

    asyncio.run(main())
