"""Fixtures for end-to-end tests of the PostgreSQL engine: a gateway in front of a real server."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import GatewayFactory
from tests.support.gateway import Gateway
from tests.support.pgcluster import PgServer


@dataclass
class Through:
    """A gateway with one connection ``main`` in front of a real database, and a caller's key."""

    gw: Gateway
    key: str
    database: str
    server: PgServer

    def dsn(self, **extra: str | int) -> str:
        params: dict[str, str | int] = {
            "host": "127.0.0.1",
            "port": self.gw.port,
            "dbname": "main",
            "user": "whoever",
            "password": self.key,
            "sslmode": "disable",
        }
        params.update(extra)
        return " ".join(f"{k}='{v}'" for k, v in params.items())

    def env(self) -> dict[str, str]:
        """libpq environment for psql/pgbench: the key travels in PGPASSWORD, never in argv."""
        return {"PGPASSWORD": self.key, "PGSSLMODE": "disable", "PGUSER": "whoever"}

    def sessions(self) -> list[dict[str, Any]]:
        done = self.gw.cli("sessions", "list", "--json")
        assert done.returncode == 0, done.stderr
        data: list[dict[str, Any]] = json.loads(done.stdout)
        return data

    def session(self, session_id: str) -> dict[str, Any]:
        done = self.gw.cli("sessions", "show", session_id, "--json")
        assert done.returncode == 0, done.stderr
        data: dict[str, Any] = json.loads(done.stdout)
        return data


def main_connection(server: PgServer, database: str, **upstream: Any) -> dict[str, Any]:
    up: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "database": database,
        "user": server.user,
        "tls": "disable",
    }
    up.update(upstream)
    return {"name": "main", "protocol": "postgres", "upstream": up}


ALLOW_APPS = {
    "name": "apps",
    "subjects": {"groups": ["apps"]},
    "connections": ["main"],
    "rules": [{"allow": {}}],
}


@pytest.fixture
def through(gateway: GatewayFactory, pg_local: PgServer, pg_db: str) -> Through:
    gw = gateway({"connections": [main_connection(pg_local, pg_db)], "policies": [ALLOW_APPS]})
    return Through(gw, gw.create_key("fn1", ["apps"]), pg_db, pg_local)


MakeThrough = Callable[..., Through]


@pytest.fixture
def make_through(gateway: GatewayFactory, pg_local: PgServer, pg_db: str) -> MakeThrough:
    def make(extra: dict[str, Any] | None = None, **kw: Any) -> Through:
        cfg: dict[str, Any] = {
            "connections": [main_connection(pg_local, pg_db)],
            "policies": [ALLOW_APPS],
        }
        cfg.update(extra or {})
        gw = gateway(cfg, **kw)
        return Through(gw, gw.create_key("fn1", ["apps"]), pg_db, pg_local)

    return make
