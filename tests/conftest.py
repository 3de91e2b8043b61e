"""Shared fixtures for tests that use real servers. The implementations live in tests/support/.

- ``pg_local``: the machine's PostgreSQL (127.0.0.1:5432, trust) as a superuser; ``pg_db``: a fresh
  database on it per test.
- ``pg_private`` / ``pg_private_md5`` / ``pg_private_password``: private clusters (TLS, a test CA,
  one auth method, every statement logged); ``pg_clusters(auth_method, require_ssl=True)`` for
  other combinations. Each starts on first use and lives for the session.
- ``gateway``: a factory that starts ``callgate serve`` from a config dict.

A missing server skips the test with the reason; with ``CI`` or ``CALLGATE_REQUIRE_SERVERS`` set in
the environment it fails instead, since CI must run everything. See docs/testing.md.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # so tests and bench import ``tests.support`` the same way
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.gateway import (  # noqa: E402
    Gateway,
    GatewayError,
    GatewayFactory,
    build_config,
    callgate_exe,
)
from tests.support.pgcluster import (  # noqa: E402
    AuthMethod,
    ClusterFactory,
    ClusterUnavailable,
    PgCluster,
    PgServer,
    probe_server,
    start_cluster,
    stop_cluster,
)
from tests.support.tls import CertPaths, gateway_tls_pair  # noqa: E402

__all__ = ["ClusterFactory", "GatewayFactory"]  # fixture types, also importable from tests.support


def servers_required() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("CALLGATE_REQUIRE_SERVERS"))


def unavailable(reason: str) -> NoReturn:
    """Skip locally; fail in CI, where every server must be present."""
    if servers_required():
        pytest.fail(f"{reason} (servers are required: CI/CALLGATE_REQUIRE_SERVERS is set)")
    pytest.skip(reason)


# --- PostgreSQL -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_clusters() -> Iterator[ClusterFactory]:
    """``pg_clusters(auth_method, require_ssl=True) -> PgCluster``, one cluster per combination."""
    started: dict[tuple[str, bool], PgCluster] = {}

    def get(auth_method: AuthMethod = "scram-sha-256", *, require_ssl: bool = True) -> PgCluster:
        key = (auth_method, require_ssl)
        if key not in started:
            try:
                started[key] = start_cluster(auth_method, require_ssl=require_ssl)
            except ClusterUnavailable as e:
                unavailable(f"private PostgreSQL cluster: {e}")
        return started[key]

    try:
        yield get
    finally:
        for cluster in started.values():
            stop_cluster(cluster)


@pytest.fixture(scope="session")
def pg_private(pg_clusters: ClusterFactory) -> PgCluster:
    """Private cluster: ``hostssl`` + SCRAM only, test CA in ``ca_file``, all statements logged."""
    return pg_clusters("scram-sha-256")


@pytest.fixture(scope="session")
def pg_private_md5(pg_clusters: ClusterFactory) -> PgCluster:
    """Like ``pg_private`` but md5 (passwords stored as md5 hashes)."""
    return pg_clusters("md5")


@pytest.fixture(scope="session")
def pg_private_password(pg_clusters: ClusterFactory) -> PgCluster:
    """Like ``pg_private`` but cleartext ``password`` auth (inside TLS)."""
    return pg_clusters("password")


@pytest.fixture(scope="session")
def pg_local(pg_clusters: ClusterFactory) -> PgServer:
    """The machine's PostgreSQL as a superuser with trust auth (``CALLGATE_TEST_PG_HOST``/``_PORT``/
    ``_USER`` override 127.0.0.1:5432/postgres). If it cannot be reached, a private trust cluster
    stands in, so a fresh machine with only the postgresql-15 package still runs these tests.
    """
    host = os.environ.get("CALLGATE_TEST_PG_HOST", "127.0.0.1")
    port = int(os.environ.get("CALLGATE_TEST_PG_PORT", "5432"))
    user = os.environ.get("CALLGATE_TEST_PG_USER", "postgres")
    why_not = probe_server(host, port, user)
    if why_not is None:
        return PgServer(host=host, port=port, user=user)
    cluster = pg_clusters("trust", require_ssl=False)
    return PgServer(host=cluster.host, port=cluster.port, user=cluster.superuser, cluster=cluster)


@pytest.fixture
def pg_db(pg_local: PgServer) -> Iterator[str]:
    """A new, uniquely named database on ``pg_local``; dropped (FORCE) after the test."""
    name = f"cg_test_{secrets.token_hex(6)}"
    with pg_local.connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with pg_local.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- the gateway ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gateway_tls(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    """The gateway's TLS pair, made once per session (``callgate certs dev`` or our own CA)."""
    try:
        exe: Path | None = callgate_exe()
    except GatewayError:
        exe = None
    return gateway_tls_pair(tmp_path_factory.mktemp("gateway-certs"), exe)


@pytest.fixture
def gateway(tmp_path: Path, gateway_tls: CertPaths) -> Iterator[GatewayFactory]:
    """``gateway(config=None, *, allow_plaintext=True, env=None, start=True) -> Gateway``.

    ``config`` is merged over the defaults (see ``build_config``); each call gets its own directory
    under ``tmp_path``. Every gateway started here is stopped (SIGTERM, then SIGKILL) afterwards.
    """
    made: list[Gateway] = []

    def make(
        config: Mapping[str, Any] | None = None,
        *,
        allow_plaintext: bool = True,
        env: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> Gateway:
        workdir = tmp_path / f"gateway{len(made)}"
        workdir.mkdir()
        error = None
        try:
            full = build_config(workdir, config, allow_plaintext=allow_plaintext, tls=gateway_tls)
            gw = Gateway(workdir, full, env=env)
            made.append(gw)
            if start:
                gw.start()
        except GatewayError as e:
            error = str(e)
        if error is not None:  # outside the except: the report shows the log once, unchained
            pytest.fail(error, pytrace=False)
        return gw

    try:
        yield make
    finally:
        for gw in made:
            gw.stop()
