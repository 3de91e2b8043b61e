"""``callgate audit verify`` / ``status`` against tampered stores, on SQLite and PostgreSQL.

Each tampering is done directly in the database (sqlite3 on the file, psycopg on PostgreSQL),
behind the store's back, as an attacker with write access to the store would.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from typer.testing import CliRunner

from callgate.cli.audit import app
from callgate.store import canonical_event, chain_hash
from callgate.store.checkpoints import public_key_b64
from tests.audit.recording import Recorded, record, write_config
from tests.store.backends import RawSql, backend, open_backend, raw, store_url

__all__ = ["backend", "open_backend", "raw", "store_url"]

runner = CliRunner()


def _verify(config: Path, *extra: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["verify", "-c", str(config), *extra])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def recorded(tmp_path: Path, store_url: str) -> Recorded:
    return record(tmp_path, store_url)


@pytest.fixture
def config(tmp_path: Path, recorded: Recorded) -> Path:
    return write_config(tmp_path, recorded.store_url, recorded.key_path)


# --- tamperings ----------------------------------------------------------------------------------


def _shift(raw: RawSql, sid: str, from_seq: int, by: int) -> None:
    # two steps, so that no intermediate row breaks UNIQUE (session_id, seq)
    raw.execute("UPDATE events SET seq = seq + 100000 WHERE session_id = ? AND seq >= ?", sid,
                from_seq)  # fmt: skip
    raw.execute("UPDATE events SET seq = seq - 100000 + ? WHERE session_id = ? AND seq >= 100000",
                by, sid)  # fmt: skip


def edit(raw: RawSql) -> None:
    assert raw.execute(
        "UPDATE events SET payload = replace(payload, 'SELECT 2', 'SELECT 3')"
        " WHERE session_id = 's1' AND seq = 4"
    )


def delete(raw: RawSql) -> None:
    assert raw.execute("DELETE FROM events WHERE session_id = 's1' AND seq = 5")


def insert(raw: RawSql) -> None:
    _shift(raw, "s1", 5, 1)
    raw.execute(
        "INSERT INTO events (session_id, seq, ts, type, payload, prev_hash, hash)"
        " SELECT session_id, 5, ts, type, payload, prev_hash, hash FROM events"
        " WHERE session_id = 's1' AND seq = 4"
    )


def reorder(raw: RawSql) -> None:
    raw.execute("UPDATE events SET seq = -1 WHERE session_id = 's1' AND seq = 4")
    raw.execute("UPDATE events SET seq = 4 WHERE session_id = 's1' AND seq = 6")
    raw.execute("UPDATE events SET seq = 6 WHERE session_id = 's1' AND seq = -1")


def truncate(raw: RawSql) -> None:
    assert raw.execute("DELETE FROM events WHERE session_id = 's1' AND seq >= 9") == 2


def delete_session(raw: RawSql) -> None:
    raw.execute("DELETE FROM events WHERE session_id = 's2'")
    raw.execute("DELETE FROM sessions WHERE id = 's2'")


def rewrite(raw: RawSql) -> None:
    """Edit an event and recompute every later hash: links hold, the checkpoint does not."""
    rows = raw.query(
        "SELECT id, seq, ts, type, payload, prev_hash FROM events WHERE session_id = 's1'"
        " ORDER BY seq"
    )
    prev = rows[0][5]
    for event_id, seq, ts, type_, payload, _ in rows:
        if seq == 4:
            payload = payload.replace("SELECT 2", "SELECT 3")
        digest = chain_hash(prev, canonical_event("s1", seq, ts, type_, payload))
        raw.execute(
            "UPDATE events SET payload = ?, prev_hash = ?, hash = ? WHERE id = ?",
            payload, prev, digest, event_id,
        )  # fmt: skip
        prev = digest


def forge_checkpoint(raw: RawSql) -> None:
    assert raw.execute("UPDATE checkpoints SET ts = ts + 1 WHERE id = 1")


def drop_checkpoint(raw: RawSql) -> None:
    assert raw.execute("DELETE FROM checkpoints WHERE id = 1")


def edit_auth_failure(raw: RawSql) -> None:
    assert raw.execute(
        "UPDATE events SET payload = replace(payload, 'unknown', 'valid')"
        " WHERE session_id IS NULL AND seq = 1"
    )


TAMPERINGS: dict[str, tuple[Callable[[RawSql], None], str]] = {
    "edited event": (edit, "session s1, event 4 "),
    "deleted event": (delete, "session s1, event 6 "),
    "inserted event": (insert, "session s1, event 5 "),
    "reordered events": (reorder, "session s1, event 4 "),
    "truncated tail": (truncate, "session s1, event 9: missing"),
    "deleted session": (delete_session, "session s2, event 1: every event is missing"),
    "rewritten chain": (rewrite, "session s1, event 1 "),
    "forged checkpoint": (forge_checkpoint, "checkpoint 1: bad signature"),
    "deleted checkpoint": (drop_checkpoint, "checkpoint 2: the checkpoint chain is broken"),
    "edited auth failure": (edit_auth_failure, "events outside sessions, event 1 "),
}


def test_an_untouched_store_verifies(config: Path, recorded: Recorded) -> None:
    code, out, err = _verify(config)
    assert code == 0, out + err
    assert "verified: ok" in out
    code, out, _ = _verify(config, "--json")
    report = json.loads(out)
    assert report["ok"] is True and report["problems"] == []
    assert report["chains"] == 4 and report["signatures_checked"] is True
    assert report["events"] == sum(recorded.sessions.values()) + 1
    assert report["public_key"] == recorded.public_key


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_each_tampering_is_detected_and_named(
    tampering: str, config: Path, raw: RawSql, recorded: Recorded
) -> None:
    tamper, named = TAMPERINGS[tampering]
    tamper(raw)
    code, out, err = _verify(config)
    assert code == 1, out
    assert "verification FAILED" in out
    first_line = err.strip().splitlines()[0]
    assert first_line.startswith("callgate: audit verification failed: "), err
    assert named in first_line + " ", first_line
    code, out, _ = _verify(config, "--json")
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False and report["first_problem"].startswith(named.strip())


def test_rewrite_names_the_first_event_after_the_last_matching_signed_head(
    config: Path, raw: RawSql, recorded: Recorded
) -> None:
    rewrite(raw)
    _, out, _ = _verify(config, "--json")
    problem = json.loads(out)["problems"][0]
    # s1 was signed only at its end (event 10): no earlier signed head vouches for any part
    assert (problem["session_id"], problem["seq"]) == ("s1", 1)
    assert "rewritten" in problem["reason"]


def test_the_public_key_can_be_given_and_a_wrong_one_fails(
    tmp_path: Path, recorded: Recorded
) -> None:
    no_key = write_config(tmp_path, recorded.store_url, None)
    code, _, err = _verify(no_key)
    assert code == 1 and "--public-key" in err
    code, out, _ = _verify(no_key, "--public-key", recorded.public_key)
    assert code == 0, out
    other = public_key_b64(ed25519.Ed25519PrivateKey.generate().public_key())
    code, out, err = _verify(no_key, "--public-key", other)
    assert code == 1 and "signed by another key" in err
    code, _, err = _verify(no_key, "--public-key", "not-a-key")
    assert code == 1 and "--public-key" in err


def test_one_session_can_be_verified_alone(config: Path, raw: RawSql, recorded: Recorded) -> None:
    edit(raw)
    code, out, _ = _verify(config, "--session", "s3")
    assert code == 0, out
    code, _, err = _verify(config, "--session", "s1")
    assert code == 1 and "session s1, event 4" in err
    code, _, err = _verify(config, "--session", "nope")
    assert code == 1 and "no session 'nope'" in err


def test_status_shows_the_backlog_and_last_checkpoint(tmp_path: Path, recorded: Recorded) -> None:
    cfg = write_config(
        tmp_path, recorded.store_url, recorded.key_path,
        extra="    export:\n      - {jsonl: ./audit.jsonl}\n",
    )  # fmt: skip
    result = runner.invoke(app, ["status", "-c", str(cfg), "--json"])
    assert result.exit_code == 0, result.stdout + result.stderr
    status = json.loads(result.stdout)
    assert status["sinks"][0]["sink"].startswith("jsonl:") and status["sinks"][0]["pending"] == 0
    assert status["last_checkpoint"]["kind"] == "session_end"
    text = runner.invoke(app, ["status", "-c", str(cfg)])
    assert "0 pending" in text.stdout and "last checkpoint" in text.stdout


# --- sessions replay / export --------------------------------------------------------------------


def _sessions(*args: str) -> tuple[int, str, str]:
    from callgate.cli.sessions import app as sessions_app

    result = runner.invoke(sessions_app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_replay_shows_the_session_in_order_with_its_timing(
    config: Path, recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    import callgate.cli.sessions as sessions_cli

    pauses: list[float] = []
    monkeypatch.setattr(sessions_cli.time, "sleep", pauses.append)
    code, out, err = _sessions("replay", "s2", "-c", str(config), "--speed", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("session s2: alice (api_key) from 10.0.0.1:4000 to orders")
    body = [line for line in lines[1:] if line.startswith("[+")]
    assert [re.search(r"#\d+\s+(\S+)", line)[1] for line in body] == [  # type: ignore[index]
        "session.start", "query", "query.result", "query", "query.result", "session.end",
    ]  # fmt: skip
    assert "[+    0.000s]" in body[0] and "allow: SELECT 'x'" in body[1]
    assert "deny: DROP TABLE t [no ddl]" in body[3] and "error 42501" in body[4]
    # the recording's clock ticks 0.25 s per event; --speed 2 halves each pause
    assert pauses and all(abs(p - 0.125) < 1e-6 for p in pauses)
    assert len(pauses) == 5

    pauses.clear()
    code, _, _ = _sessions("replay", "s2", "-c", str(config), "--speed", "0")
    assert code == 0 and pauses == []
    code, _, err = _sessions("replay", "nope", "-c", str(config))
    assert code == 1 and "no session 'nope'" in err


def test_export_writes_every_event_once_in_both_formats(
    config: Path, recorded: Recorded, tmp_path: Path
) -> None:
    code, out, err = _sessions("export", "-c", str(config))
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert len(events) == sum(recorded.sessions.values()) + 1
    assert [e["id"] for e in events] == sorted({e["id"] for e in events})
    code, out, _ = _sessions("export", "-c", str(config), "--session", "s3", "--format", "ocsf")
    ocsf = [json.loads(line) for line in out.splitlines()]
    assert len(ocsf) == recorded.sessions["s3"]
    assert {o["class_uid"] for o in ocsf} == {6005}
    assert [o["metadata"]["uid"] for o in ocsf] == [
        str(e["id"]) for e in events if e["session_id"] == "s3"
    ]
    last_ts = max(e["ts"] for e in events)
    code, out, _ = _sessions("export", "-c", str(config), "--since", str(last_ts))
    assert [json.loads(line)["ts"] for line in out.splitlines()] == [last_ts]
    target = tmp_path / "out.jsonl"
    code, _, err = _sessions("export", "-c", str(config), "--out", str(target))
    assert code == 0 and f"{len(events)} events written" in err
    assert len(target.read_text().splitlines()) == len(events)
    code, _, err = _sessions("export", "-c", str(config), "--format", "csv")
    assert code == 1 and "--format" in err
    code, _, err = _sessions("export", "-c", str(config), "--since", "yesterday-ish")
    assert code == 1 and "--since" in err


def test_verify_says_what_the_journal_holds_that_the_store_does_not_yet(tmp_path: Path) -> None:
    """A gateway journaled a session and its statements and died before applying them: verify
    checks the store, exits 0 for it, and says how much is waiting in the journal (the next
    start applies it); after that start there is nothing waiting and the session verifies."""
    import asyncio

    from callgate.store import AuditWriterSettings, SqliteStore
    from tests.store.test_store_journal import _crash_after

    db = tmp_path / "callgate.db"
    _crash_after(db, 3)
    config = write_config(tmp_path, f"sqlite:///{db}", None)
    code, out, _ = _verify(config)
    assert code == 0, out
    assert "3 audit journal record(s) (3 events) are not in the store yet" in out
    code, out, _ = _verify(config, "--json")
    assert json.loads(out)["journal_pending"] == {"records": 3, "events": 3}

    async def restart() -> None:
        store = SqliteStore(db, journal=True)
        store.configure_audit(AuditWriterSettings())
        await store.close()

    asyncio.run(restart())
    code, out, _ = _verify(config, "--json")
    report = json.loads(out)
    assert code == 0 and report["journal_pending"] == {"records": 0, "events": 0}
    assert report["events"] == 3
