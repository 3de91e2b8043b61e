"""Store backends for tests: every store test runs on SQLite and on PostgreSQL.

``backend`` is parametrized; ``store_url`` is a fresh SQLite file or a fresh PostgreSQL database
(``pg_db`` on ``pg_local``); ``open_backend()`` opens (and migrates) a store there, so a test can
close and reopen it; ``raw`` runs SQL on the backend directly, behind the store's back (for
tampering tests). Import these fixtures into a conftest to use them.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from callgate.store import Store, open_store

BACKENDS = ("sqlite", "postgresql")


class RawSql:
    """Direct access to the store's database. SQL uses ``?`` placeholders on both backends."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite = url.startswith("sqlite:///")

    def _pg(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.url, autocommit=True)

    def execute(self, sql: str, *params: object) -> int:
        if self.sqlite:
            with sqlite3.connect(self.url[len("sqlite:///") :]) as conn:
                return conn.execute(sql, params).rowcount
        with self._pg() as conn:
            return conn.execute(sql.replace("?", "%s"), params).rowcount  # type: ignore[arg-type]

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        if self.sqlite:
            with sqlite3.connect(self.url[len("sqlite:///") :]) as conn:
                return list(conn.execute(sql, params).fetchall())
        with self._pg() as conn:
            return list(conn.execute(sql.replace("?", "%s"), params).fetchall())  # type: ignore[arg-type]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'callgate.db'}"
    server = request.getfixturevalue("pg_local")
    database = request.getfixturevalue("pg_db")
    return f"postgresql://{server.user}@{server.host}:{server.port}/{database}"


@pytest.fixture
def open_backend(store_url: str) -> Callable[[], Store]:
    return lambda: open_store(store_url)


@pytest.fixture
def store(open_backend: Callable[[], Store]) -> Iterator[Store]:
    s = open_backend()
    yield s
    asyncio.run(s.close())


@pytest.fixture
def raw(store_url: str) -> RawSql:
    return RawSql(store_url)
