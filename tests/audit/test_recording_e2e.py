"""Through a real gateway and a real PostgreSQL: what replay and export show is what the client saw,
and the session's chain verifies against its signed checkpoints."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from callgate.cli.audit import app as audit_app
from tests.audit.recording import write_key
from tests.conftest import GatewayFactory
from tests.engines.postgres.conftest import ALLOW_APPS, main_connection
from tests.support.gateway import Gateway
from tests.support.pgcluster import PgServer

pytestmark = pytest.mark.integration

STATEMENTS = [
    "CREATE TABLE items (id int, name text)",
    "INSERT INTO items VALUES (1, 'apple'), (2, 'pear')",
    "SELECT id, name FROM items ORDER BY id",
    "UPDATE items SET name = 'plum' WHERE id = 2",
    "SELECT count(*) FROM items WHERE name = 'nope'",
]


def _session_id(gw: Gateway, application: str) -> str:
    deadline = time.monotonic() + 10
    while True:
        done = gw.cli("sessions", "list", "--json")
        assert done.returncode == 0, done.stderr
        found = [
            s
            for s in json.loads(done.stdout)
            if s["application_name"] == application and s["ended_at"] is not None
        ]
        if found:
            return str(found[0]["id"])
        assert time.monotonic() < deadline, "the session was not recorded as ended"
        time.sleep(0.1)


def _export(gw: Gateway, *args: str) -> list[dict[str, Any]]:
    done = gw.cli("sessions", "export", *args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_replay_and_export_match_what_the_client_saw(
    gateway: GatewayFactory, pg_local: PgServer, pg_db: str, tmp_path: Path
) -> None:
    key_path = tmp_path / "audit.pem"
    write_key(key_path)
    gw = gateway(
        {
            "gateway": {"audit": {"signing_key": f"file:{key_path}"}},
            "connections": [main_connection(pg_local, pg_db)],
            "policies": [ALLOW_APPS],
        }
    )
    key = gw.create_key("fn1", ["apps"])
    dsn = (
        f"host=127.0.0.1 port={gw.port} dbname=main user=whoever password='{key}'"
        " sslmode=disable application_name=replay-test"
    )
    seen: list[tuple[str, str | None, int]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql in STATEMENTS:
            cur = conn.execute(sql)
            seen.append((sql, cur.statusmessage, cur.rowcount))
    sid = _session_id(gw, "replay-test")

    events = _export(gw, "--session", sid)
    queries = [e for e in events if e["type"] == "query"]
    results = {e["payload"]["statement_seq"]: e["payload"] for e in events
               if e["type"] == "query.result"}  # fmt: skip
    assert [q["payload"]["sql"] for q in queries] == STATEMENTS
    for query, (_, tag, rowcount) in zip(queries, seen, strict=True):
        result = results[query["seq"]]
        assert result["tag"] == tag and result["error"] is None
        if tag is not None and tag.split()[0] in ("SELECT", "INSERT", "UPDATE"):
            assert result["rows"] == rowcount
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert len({e["id"] for e in events}) == len(events)

    ocsf = _export(gw, "--session", sid, "--format", "ocsf")
    assert [o["metadata"]["uid"] for o in ocsf] == [str(e["id"]) for e in events]
    strings = [o["query_info"]["query_string"] for o in ocsf
               if o["activity_id"] == 4 and "query_string" in o.get("query_info", {})]  # fmt: skip
    assert strings == STATEMENTS
    assert {o["class_uid"] for o in ocsf} == {6005}

    replay = gw.cli("sessions", "replay", sid, "--speed", "0")
    assert replay.returncode == 0, replay.stderr
    lines = replay.stdout.splitlines()
    positions = []
    for sql, tag, _ in seen:
        at = next(i for i, line in enumerate(lines) if sql in line and i not in positions)
        positions.append(at)
        assert any(tag in line for line in lines[at + 1 : at + 3]), (tag, lines[at : at + 3])
    assert positions == sorted(positions)  # in the order the client ran them
    assert "session.end" in lines[-1]

    verified = CliRunner().invoke(audit_app, ["verify", "-c", str(gw.config_path)])
    assert verified.exit_code == 0, verified.stdout + verified.stderr
