"""``callgate keys`` and ``callgate sessions`` end to end, through the real CLI app."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from callgate.audit import AuditService
from callgate.cli.main import app
from callgate.identity import KEY_FILE_NAME, ApiKeys
from callgate.model import ALLOW_ALL, Decision, Principal, SessionInfo, SqlCommand, Verdict
from callgate.store import SqliteStore

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "callgate.yaml"
    path.write_text("gateway:\n  store: sqlite:///./state.db\n")
    return path


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_keys_round_trip(config: Path, tmp_path: Path) -> None:
    code, out, err = _run(
        "keys", "create", "ci-bot", "--groups", "functions,ci", "--expires", "30d",
        "-c", str(config), "--json",
    )  # fmt: skip
    assert code == 0, err
    created = json.loads(out)
    assert created["name"] == "ci-bot" and created["groups"] == ["ci", "functions"]
    assert re.fullmatch(r"cgk_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", created["key"])
    assert created["expires_at"] is not None
    key = created["key"]

    code, out, _ = _run("keys", "create", "plain", "--groups", "g", "-c", str(config))
    assert code == 0
    plain_key = out.strip()
    assert plain_key.startswith("cgk_") and "\n" not in plain_key

    # The key works with the secret the CLI generated beside the store.
    secret = bytes.fromhex((tmp_path / KEY_FILE_NAME).read_text())

    async def verify(credential: str) -> str:
        async with SqliteStore(tmp_path / "state.db") as store:
            return (await ApiKeys(store, secret).verify(credential)).subject

    assert asyncio.run(verify(key)) == "ci-bot"
    assert asyncio.run(verify(plain_key)) == "plain"

    code, out, _ = _run("keys", "list", "-c", str(config), "--json")
    assert code == 0
    listed = {k["name"]: k for k in json.loads(out)}
    assert set(listed) == {"ci-bot", "plain"}
    assert listed["ci-bot"]["status"] == "active"
    assert listed["ci-bot"]["prefix"] == key[:13]
    assert key not in out and "hash" not in out

    code, out, _ = _run("keys", "list", "-c", str(config))
    assert code == 0 and "ci-bot" in out and "active" in out and key not in out

    code, out, _ = _run("keys", "revoke", "ci-bot", "-c", str(config))
    assert code == 0 and "revoked" in out
    code, out, _ = _run("keys", "list", "-c", str(config), "--json")
    assert {k["name"]: k["status"] for k in json.loads(out)} == {
        "ci-bot": "revoked",
        "plain": "active",
    }

    code, out, err = _run("keys", "revoke", "ci-bot", "-c", str(config))
    assert code == 1 and err.strip() == "callgate: the API key 'ci-bot' is already revoked"
    code, _, err = _run("keys", "create", "plain", "--groups", "g", "-c", str(config))
    assert code == 1 and "already exists" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(
        "keys", "create", "x", "--groups", "g", "--expires", "soon", "-c", str(config)
    )
    assert code == 1 and "--expires" in err

    # Nothing in the store files is the key.
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("state.db"))
    assert key.encode() not in blob and plain_key.encode() not in blob


def test_a_missing_config_fails_with_one_line(tmp_path: Path) -> None:
    code, _, err = _run("keys", "list", "-c", str(tmp_path / "nope.yaml"))
    assert code != 0
    assert err.startswith("callgate: ") and len(err.strip().splitlines()) == 1


def _record(db: Path) -> None:
    async def main() -> None:
        audit = AuditService(SqliteStore(db))
        principal = Principal("ci-bot", frozenset({"functions"}), "api_key", credential_id="ci-bot")
        for sid, started in (("older", 1000.0), ("newer", 2000.0)):
            info = SessionInfo(
                sid, principal, "orders", "postgres", "10.1.1.1:999", True, started_at=started
            )
            rec = await audit.open_session(info)
            seq = await rec.statement(SqlCommand("SELECT [x] FROM orders"), ALLOW_ALL)
            rec.statement_done(
                seq,
                tag="SELECT 3",
                rows=3,
                error_sqlstate=None,
                error_message=None,
                duration_ms=2.5,
            )
            await rec.statement(
                SqlCommand("DELETE FROM orders"), Decision(Verdict.DENY, ("no deletes: rules[1]",))
            )
            await rec.end("client closed", bytes_from_client=10, bytes_to_client=20)
        await audit.close()

    asyncio.run(main())


def test_sessions_list_and_show(config: Path, tmp_path: Path) -> None:
    _record(tmp_path / "state.db")

    code, out, err = _run("sessions", "list", "-c", str(config), "--json")
    assert code == 0, err
    sessions = json.loads(out)
    assert [s["id"] for s in sessions] == ["newer", "older"]
    assert sessions[0]["subject"] == "ci-bot" and sessions[0]["statements"] == 2
    assert sessions[0]["end_reason"] == "client closed"

    code, out, _ = _run("sessions", "list", "-c", str(config))
    assert code == 0
    lines = out.splitlines()
    assert "ID" in lines[0] and "STATEMENTS" in lines[0]
    assert lines[1].split()[0] == "newer" and lines[2].split()[0] == "older"

    code, out, _ = _run("sessions", "show", "newer", "-c", str(config), "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["session"]["id"] == "newer" and shown["chain_ok"] is True
    assert [e["type"] for e in shown["events"]] == [
        "session.start",
        "query",
        "query.result",
        "query",
        "session.end",
    ]
    assert shown["events"][3]["payload"]["rules"] == ["no deletes: rules[1]"]

    code, out, _ = _run("sessions", "show", "newer", "-c", str(config))
    assert code == 0
    assert "SELECT [x] FROM orders" in out  # brackets are data, not markup
    assert "deny: DELETE FROM orders [no deletes: rules[1]]" in out
    assert "chain:" in out and "ok" in out

    code, _, err = _run("sessions", "show", "missing", "-c", str(config))
    assert code == 1 and err.strip() == "callgate: no session 'missing'"


def test_sessions_show_reports_a_broken_chain(config: Path, tmp_path: Path) -> None:
    _record(tmp_path / "state.db")
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute(
        "UPDATE events SET payload = ? WHERE session_id = 'older' AND seq = 2",
        ('{"sql":"SELECT 1"}',),
    )
    conn.commit()
    conn.close()
    code, out, _ = _run("sessions", "show", "older", "-c", str(config), "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["chain_ok"] is False and shown["first_broken_seq"] == 2
