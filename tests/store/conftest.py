from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from callgate.store import SqliteStore


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "callgate.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(db_path)
    yield s
    asyncio.run(s.close())
