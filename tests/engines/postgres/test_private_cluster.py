"""callgate in front of private clusters: SCRAM over hostssl with verify-full, MD5, cleartext.

These clusters log every statement, and their only role has a password: the caller never holds it,
and nothing callgate writes contains it or the caller's key.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import GatewayFactory
from tests.support.pgcluster import PgCluster

pytestmark = pytest.mark.integration


def cluster_connection(cluster: PgCluster, *, tls: str = "verify-full") -> dict[str, Any]:
    return {
        "name": "main",
        "protocol": "postgres",
        "upstream": {
            "host": "localhost",
            "port": cluster.port,
            "database": cluster.database,
            "user": cluster.user,
            "password": "env:CG_TEST_UPSTREAM_PASSWORD",
            "tls": tls,
            **({"ca_file": str(cluster.ca_file)} if tls == "verify-full" else {}),
        },
    }


POLICY = {
    "name": "apps",
    "subjects": {"groups": ["apps"]},
    "connections": ["main"],
    "rules": [{"allow": {}}],
}


def through_cluster(gateway: GatewayFactory, cluster: PgCluster, tls: str = "verify-full"):  # type: ignore[no-untyped-def]
    gw = gateway(
        {"connections": [cluster_connection(cluster, tls=tls)], "policies": [POLICY]},
        env={"CG_TEST_UPSTREAM_PASSWORD": cluster.password},
    )
    return gw, gw.create_key("fn-private", ["apps"])


def dsn(port: int, key: str) -> str:
    return f"host=127.0.0.1 port={port} dbname=main user=someone password='{key}' sslmode=require"


def test_scram_hostssl_verify_full_and_secret_hygiene(
    gateway: GatewayFactory, pg_private: PgCluster
) -> None:
    gw, key = through_cluster(gateway, pg_private)
    offset = pg_private.log_offset()
    with psycopg.connect(dsn(gw.port, key), autocommit=True) as conn:
        assert conn.execute("select current_user").fetchone() == (pg_private.user,)
        ssl = conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
        assert ssl == (True,)
        conn.execute("select 'marker-private-cluster'")
        # the caller cannot learn the upstream password from the server either
        with pytest.raises(psycopg.Error):
            conn.execute("select passwd from pg_shadow")
    assert "marker-private-cluster" in pg_private.read_log(offset)
    env = {**os.environ, "PGPASSWORD": key}
    done = subprocess.run(
        [
            "pgbench",
            "-h",
            "127.0.0.1",
            "-p",
            str(gw.port),
            "-n",
            "-M",
            "extended",
            "-t",
            "20",
            "-c",
            "2",
            "-f",
            "-",
            "main",
        ],
        input="select 1;\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    gw.stop()
    # Everything callgate wrote: its logs, the store (and WAL), the config dir.
    written = b""
    for path in Path(gw.workdir).rglob("*"):
        if path.is_file():
            written += path.read_bytes()
    written += gw.log_text().encode()
    assert pg_private.password.encode() not in written, "upstream password leaked"
    assert key.encode() not in written, "caller key leaked"
    secret_part = key.rsplit("_", 1)[-1].encode()
    assert secret_part not in written, "caller key secret leaked"


def test_verify_full_refuses_wrong_ca(
    gateway: GatewayFactory, pg_private: PgCluster, tmp_path: Path
) -> None:
    from tests.support.tls import make_ca

    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(make_ca("some other CA").cert_pem())
    conn_cfg = cluster_connection(pg_private)
    conn_cfg["upstream"]["ca_file"] = str(other_ca)
    gw = gateway(
        {"connections": [conn_cfg], "policies": [POLICY]},
        env={"CG_TEST_UPSTREAM_PASSWORD": pg_private.password},
    )
    key = gw.create_key("fn-private", ["apps"])
    with pytest.raises(psycopg.OperationalError, match="TLS"):
        psycopg.connect(dsn(gw.port, key)).close()


def test_wrong_upstream_password_is_reported_without_it(
    gateway: GatewayFactory, pg_private: PgCluster
) -> None:
    gw = gateway(
        {"connections": [cluster_connection(pg_private)], "policies": [POLICY]},
        env={"CG_TEST_UPSTREAM_PASSWORD": "definitely-wrong-pw"},
    )
    key = gw.create_key("fn-private", ["apps"])
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(dsn(gw.port, key)).close()
    assert "refused callgate's credential" in str(info.value)
    assert "definitely-wrong-pw" not in str(info.value)
    assert "definitely-wrong-pw" not in gw.log_text()


@pytest.mark.parametrize("fixture", ["pg_private_md5", "pg_private_password"])
def test_md5_and_cleartext_upstreams(
    gateway: GatewayFactory, request: pytest.FixtureRequest, fixture: str
) -> None:
    cluster: PgCluster = request.getfixturevalue(fixture)
    gw, key = through_cluster(gateway, cluster, tls="require")
    with psycopg.connect(dsn(gw.port, key)) as conn:
        assert conn.execute("select current_user").fetchone() == (cluster.user,)
