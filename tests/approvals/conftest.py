"""Fixtures for the approvals tests: a config, a store in tmp (SQLite, or the PostgreSQL database
``review_store_url`` names), the service, principals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from callgate.approvals import ApprovalService, WebhookNotifier
from callgate.audit import AuditService
from callgate.config import Config, parse_config
from callgate.model import Principal
from callgate.store import SqliteStore, Store, open_store

T = TypeVar("T")

ALICE = Principal("alice", frozenset({"functions"}), "api_key", issuer=None)
MALLORY = Principal("mallory", frozenset({"functions"}), "api_key", issuer=None)
DBA1 = Principal("dba-one", frozenset({"dba"}), "api_key")
DBA2 = Principal("dba-two", frozenset({"dba"}), "api_key")
DBA_ALICE = Principal("alice", frozenset({"dba", "functions"}), "api_key")


def base_config(approvals: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "gateway": {"store": "sqlite:///./state.db"},
        "connections": [
            {
                "name": name,
                "protocol": "postgres",
                "upstream": {"host": "127.0.0.1", "port": 5432, "database": "x", "user": "u"},
            }
            for name in ("orders", "billing")
        ],
        "policies": [
            {
                "name": "functions read orders",
                "subjects": {"groups": ["functions"]},
                "connections": ["orders", "billing"],
                "rules": [{"allow": {"kinds": ["select"]}}, {"review": {"kinds": ["insert"]}}],
            },
            {
                "name": "oncall-write",
                "subjects": {"groups": ["nobody"]},
                "connections": ["orders"],
                "rules": [{"allow": {"kinds": ["insert", "update", "delete"]}}],
            },
        ],
        "approvals": approvals
        if approvals is not None
        else [
            {
                "connections": ["orders", "billing"],
                "approvers": {"groups": ["dba"]},
                "timeout": "30s",
                "access": {"grant_policy": "oncall-write", "max_duration": "1h"},
            }
        ],
    }
    data.update(extra)
    return data


def make_config(tmp_path: Path, data: Mapping[str, Any] | None = None) -> Config:
    return parse_config(dict(data or base_config()), tmp_path)


#: The store the approvals tests run on: ``None`` for a SQLite file in the test's directory, else
#: a PostgreSQL URL (set by test_service's parametrized ``review_backend`` fixture).
STORE_URL: list[str | None] = [None]


def open_test_store(tmp_path: Path) -> Store:
    url = STORE_URL[0]
    return SqliteStore(tmp_path / "state.db") if url is None else open_store(url)


@asynccontextmanager
async def running(
    tmp_path: Path,
    data: Mapping[str, Any] | None = None,
    *,
    start: bool = True,
    notifier: WebhookNotifier | None = None,
) -> AsyncIterator[tuple[ApprovalService, Store]]:
    config = make_config(tmp_path, data)
    store = open_test_store(tmp_path)
    audit = AuditService(store, close_store=False)
    service = ApprovalService.from_config(config, store, audit, notifier=notifier)
    if start:
        await service.start()
    try:
        yield service, store
    finally:
        await service.close()
        await store.close()


def run(work: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(work())  # type: ignore[arg-type]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    import yaml

    path = tmp_path / "callgate.yaml"
    path.write_text(yaml.safe_dump(base_config()))
    return path
