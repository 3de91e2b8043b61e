"""Recording contents (parameter scrubbing hook, result rows), the gateway's start (signing key,
crash recovery), retention, on both backends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from callgate.audit import AuditService, RetentionTask, verify_store
from callgate.config import parse_config
from callgate.errors import ConfigError
from callgate.model import ALLOW_ALL, Decision, SessionInfo, SqlCommand
from callgate.store import CheckpointSigner, SqliteStore, Store, load_public_key
from tests.audit.recording import ALICE, Clock, record_sessions, write_key
from tests.store.backends import RawSql


def _info(sid: str) -> SessionInfo:
    return SessionInfo(sid, ALICE, "orders", "postgres", "10.0.0.1:4000", True, "app", "psql")


def test_parameters_pass_through_the_scrubber_before_they_are_stored(store: Store) -> None:
    seen: list[tuple[str, str]] = []

    def scrub(
        session: SessionInfo, command: SqlCommand, decision: Decision
    ) -> Sequence[bytes | None]:
        seen.append((session.id, command.sql))
        return [b"[card]" if v is not None and v.startswith(b"4111") else v for v in command.params]

    async def main() -> None:
        audit = AuditService(store, scrubber=scrub, close_store=False)
        rec = await audit.open_session(_info("s1"))
        command = SqlCommand("INSERT INTO p VALUES ($1, $2, $3)",
                             (b"4111111111111111", b"bob", None), (0, 0, 0))  # fmt: skip
        await rec.statement(command, ALLOW_ALL)
        await rec.statement(SqlCommand("SELECT 1"), ALLOW_ALL)  # no params: not called
        await rec.end("done", bytes_from_client=0, bytes_to_client=0)
        query = (await store.session_events("s1"))[1]
        assert json.loads(query.payload)["params"] == ["[card]", "bob", None]
        assert "4111" not in query.payload

    asyncio.run(main())
    assert seen == [("s1", "INSERT INTO p VALUES ($1, $2, $3)")]


def test_the_first_rows_are_recorded_when_record_rows_is_set(store: Store) -> None:
    async def main() -> None:
        audit = AuditService(store, record_rows=2, close_store=False, durability="async")
        rec = await audit.open_session(_info("s1"))
        seq = await rec.statement(SqlCommand("SELECT id, email FROM c"), ALLOW_ALL)
        rec.rows(seq, ["id", "email"], [[b"1", "a***@x.io"], [b"2", None], [b"3", b"\xff"]])
        rec.statement_done(seq, tag="SELECT 3", rows=3, error_sqlstate=None, error_message=None,
                           duration_ms=1.0)  # fmt: skip
        await rec.end("done", bytes_from_client=0, bytes_to_client=0)
        off = AuditService(store, record_rows=0, close_store=False)
        rec2 = await off.open_session(_info("s2"))
        seq2 = await rec2.statement(SqlCommand("SELECT 1"), ALLOW_ALL)
        rec2.rows(seq2, ["x"], [[b"1"]])
        await rec2.end("done", bytes_from_client=0, bytes_to_client=0)
        await store.flush()
        types = [e.type for e in await store.session_events("s1")]
        assert types == ["session.start", "query", "query.rows", "query.result", "session.end"]
        rows = json.loads((await store.session_events("s1"))[2].payload)
        assert rows == {
            "statement_seq": seq,
            "columns": ["id", "email"],
            "rows": [["1", "a***@x.io"], ["2", None]],
            "truncated": True,
        }
        assert "query.rows" not in [e.type for e in await store.session_events("s2")]

    asyncio.run(main())


def test_from_config_signs_and_closes_the_sessions_a_crash_left_open(
    tmp_path: Path, store_url: str, open_backend: Callable[[], Store]
) -> None:
    key_path = tmp_path / "k.pem"
    write_key(key_path)
    config = parse_config(
        {
            "gateway": {
                "store": store_url,
                "secret_key": "x" * 32,
                "audit": {"signing_key": f"file:{key_path}", "instance": "gw-a"},
            }
        },
        tmp_path,
    )

    async def crashed() -> None:
        store = open_backend()
        audit = AuditService.from_config(config, store)
        assert audit.signing and audit.gateway_id == "gw-a"
        rec = await audit.open_session(_info("s1"))
        await rec.statement(SqlCommand("SELECT 1"), ALLOW_ALL)
        await store.close()  # the process dies: no session.end

    async def restarted() -> None:
        store = open_backend()
        audit = AuditService.from_config(config, store)
        await store.flush()  # the recovery queued at start ran before anything else
        row = await store.get_session("s1")
        assert row is not None and row.end_reason == "ended by crash"
        events = await store.session_events("s1")
        assert [e.type for e in events] == ["session.start", "query", "session.end"]
        report = await verify_store(store, _public(key_path))
        assert report.ok, report.problems
        assert "s1" not in report.unanchored  # the crash end was signed
        await audit.close()

    asyncio.run(crashed())
    asyncio.run(restarted())


def _public(key_path: Path) -> ed25519.Ed25519PublicKey:
    return load_public_key(CheckpointSigner.from_pem(key_path.read_bytes()).public_key)


def test_an_unusable_signing_key_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key\n")
    config = parse_config(
        {"gateway": {"store": "sqlite:///a.db", "audit": {"signing_key": f"file:{bad}"}}},
        tmp_path,
    )
    store = open_store_for(tmp_path)
    with pytest.raises(ConfigError, match=r"gateway\.audit\.signing_key") as caught:
        AuditService.from_config(config, store)
    assert "not a key" not in caught.value.message
    asyncio.run(store.close())


def open_store_for(tmp_path: Path) -> Store:
    return SqliteStore(tmp_path / "a.db")


def test_retention_purges_old_sessions_and_what_remains_verifies(
    tmp_path: Path, store_url: str, open_backend: Callable[[], Store], raw: RawSql
) -> None:
    key_path = tmp_path / "k.pem"
    key = write_key(key_path)
    public = key.public_key()

    async def main() -> None:
        await record_sessions(store_url, key)  # ends around 1.7e9
        store = open_backend()
        audit = AuditService(store, signer=CheckpointSigner(key), clock=Clock(1.8e9),
                             close_store=False)  # fmt: skip
        rec = await audit.open_session(_info("recent"))
        await rec.end("done", bytes_from_client=0, bytes_to_client=0)
        task = RetentionTask(audit, retention=90 * 86400.0, every=3600, clock=lambda: 1.8e9)
        assert await task.run_once() == 3
        assert [s.id for s in await store.list_sessions()] == ["recent"]
        report = await verify_store(store, public)
        assert report.ok, report.problems
        assert report.purged == 3
        # a session deleted by hand, not by retention, is still caught
        raw.execute("DELETE FROM events WHERE session_id = 'recent'")
        raw.execute("DELETE FROM sessions WHERE id = 'recent'")
        report = await verify_store(store, public)
        assert not report.ok and report.first is not None
        assert report.first.session_id == "recent"
        await audit.close()
        await store.close()

    asyncio.run(main())
