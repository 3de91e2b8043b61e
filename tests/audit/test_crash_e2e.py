"""kill -9 the gateway in the middle of a pgbench run (strict durability), then start it again.

The private cluster logs every statement it runs (``log_statement = all``). Under strict
durability a statement's audit event is committed before the statement is forwarded, so every
statement in the server's log must have its event, even those forwarded just before the kill.
After the restart the chains verify against their signed checkpoints and the sessions the kill
interrupted are marked ``ended by crash``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql
from typer.testing import CliRunner

from callgate.cli.audit import app as audit_app
from tests.audit.recording import write_key
from tests.conftest import ClusterFactory, GatewayFactory
from tests.support.pgcluster import PgCluster

pytestmark = pytest.mark.integration

POLICY = {
    "name": "bench",
    "subjects": {"groups": ["bench"]},
    "connections": ["main"],
    "rules": [{"allow": {}}],
}
#: statements the server must have logged through the gateway before the kill
BEFORE_KILL = 300


def _normalize(text: str) -> str:
    return " ".join(text.split()).rstrip(";").strip()


def _caller_statements(cluster: PgCluster, offset: int, database: str) -> int:
    return sum(1 for s in _logged_statements(cluster, offset, database) if s != "DISCARD ALL")


def _logged_statements(cluster: PgCluster, offset: int, database: str) -> list[str]:
    pattern = re.compile(rf" {re.escape(cluster.user)}@{re.escape(database)} LOG:  statement: (.*)")
    found = []
    for line in cluster.read_log(offset).splitlines():
        match = pattern.search(line)
        if match:
            found.append(_normalize(match.group(1)))
    return found


def _sessions(gw: Any) -> list[dict[str, Any]]:
    done = gw.cli("sessions", "list", "--json", "--limit", "1000")
    assert done.returncode == 0, done.stderr
    data: list[dict[str, Any]] = json.loads(done.stdout)
    return data


def test_kill_9_mid_pgbench_loses_no_statement(
    gateway: GatewayFactory, pg_clusters: ClusterFactory, tmp_path: Path
) -> None:
    cluster = pg_clusters("trust", require_ssl=False)
    database = f"crash_{secrets.token_hex(4)}"
    with cluster.admin_connect() as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(database), sql.Identifier(cluster.user)
            )
        )
    direct = f"host=127.0.0.1 port={cluster.port} user={cluster.user} dbname={database}"
    init = subprocess.run(
        ["pgbench", "-i", "-s", "1", "-q", direct], capture_output=True, text=True, timeout=120
    )
    assert init.returncode == 0, init.stderr

    key_path = tmp_path / "audit.pem"
    write_key(key_path)
    upstream = {
        "host": "127.0.0.1",
        "port": cluster.port,
        "database": database,
        "user": cluster.user,
        "tls": "disable",
    }
    gw = gateway(
        {
            "gateway": {
                "audit": {
                    "durability": "strict",
                    "signing_key": f"file:{key_path}",
                    "checkpoint_interval": "1s",
                }
            },
            "connections": [{"name": "main", "protocol": "postgres", "upstream": upstream}],
            "policies": [POLICY],
        }
    )
    key = gw.create_key("bench", ["bench"])
    offset = cluster.log_offset()
    env = {**os.environ, "PGPASSWORD": key, "PGSSLMODE": "disable", "PGUSER": "whoever"}
    bench = subprocess.Popen(
        ["pgbench", "-h", "127.0.0.1", "-p", str(gw.port), "-n", "-c", "4", "-j", "2",
         "-T", "60", "main"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while _caller_statements(cluster, offset, database) < BEFORE_KILL:
            assert bench.poll() is None, bench.communicate()
            assert time.monotonic() < deadline, "pgbench made no progress through the gateway"
            time.sleep(0.05)
        gw.kill()  # SIGKILL, mid-run
        bench.communicate(timeout=120)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode != 0, "pgbench should have lost its connections"
    time.sleep(0.5)  # statements the server had already received are logged by now
    logged = Counter(_logged_statements(cluster, offset, database))
    # callgate's own reset of a pooled upstream connection is no caller's statement
    del logged["DISCARD ALL"]
    assert sum(logged.values()) >= BEFORE_KILL
    # strict events were acknowledged from the audit journal; what the kill left unapplied in it
    # is replayed by the restart below
    assert (gw.workdir / "callgate.db.audit-journal").exists()

    gw.start()  # the restarted gateway closes the sessions the crash left open
    deadline = time.monotonic() + 15
    while True:
        sessions = [s for s in _sessions(gw) if s["subject"] == "bench"]
        if sessions and all(s["ended_at"] is not None for s in sessions):
            break
        assert time.monotonic() < deadline, f"sessions left open: {sessions}"
        time.sleep(0.2)
    crashed = [s for s in sessions if s["end_reason"] == "ended by crash"]
    assert len(crashed) == 4, [s["end_reason"] for s in sessions]

    # every statement the server ran has its audit event
    done = gw.cli("sessions", "export")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    audited = Counter(
        _normalize(e["payload"]["sql"])
        for e in events
        if e["type"] == "query" and e["payload"]["verdict"] == "allow"
    )
    missing = logged - audited
    assert not missing, f"statements the server ran without an audit event: {missing}"
    for session in crashed:
        ends = [e for e in events if e["session_id"] == session["id"]][-1]
        assert ends["type"] == "session.end"
        assert ends["payload"]["reason"] == "ended by crash"

    verified = CliRunner().invoke(audit_app, ["verify", "-c", str(gw.config_path), "--json"])
    report = json.loads(verified.stdout)
    assert verified.exit_code == 0, report["problems"]
    assert report["signatures_checked"] and report["checkpoints"] > 0
    # the crash endings were signed when they were written
    assert not [u for u in report["unanchored"] if u["session_id"] in {s["id"] for s in crashed}]
