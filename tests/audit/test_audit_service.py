"""The audit service on a real SQLite store: what is recorded, chains, durability, failures."""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from callgate.audit import UNAVAILABLE_MESSAGE, AuditService, verify_session_chain
from callgate.audit.events import render_param
from callgate.errors import AuditUnavailable, ConfigError
from callgate.model import ALLOW_ALL, Decision, Principal, SessionInfo, SqlCommand, Verdict
from callgate.store import SqliteStore, Store, WriteOp

ALICE = Principal(
    "alice", frozenset({"functions", "dba"}), "api_key", expires_at=5000.0, credential_id="alice"
)


def _info(sid: str = "s1") -> SessionInfo:
    return SessionInfo(
        sid, ALICE, "orders", "postgres", "10.0.0.1:4000", True, "app", "psql", started_at=1000.0
    )


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


def test_a_session_is_recorded_and_its_chain_verifies(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "a.db")
        audit = AuditService(store, clock=_Clock())
        rec = await audit.open_session(_info())
        cmd = SqlCommand(
            "SELECT * FROM orders WHERE id = $1 AND blob = $2 AND x = $3",
            (b"42", b"\xff\x00\xfe", None),
            (0, 1, 0),
            "s1",
            "execute",
        )
        decision = Decision(Verdict.ALLOW, ("functions read orders: rules[0]",), "select")
        seq = await rec.statement(cmd, decision)
        rec.statement_done(
            seq, tag="SELECT 1", rows=1, error_sqlstate=None, error_message=None, duration_ms=1.25
        )
        denied = await rec.statement(SqlCommand("DROP TABLE orders"), Decision(Verdict.DENY))
        rec.statement_done(
            denied,
            tag=None,
            rows=None,
            error_sqlstate="42501",
            error_message="denied",
            duration_ms=0.0,
        )
        await rec.end("client closed", bytes_from_client=123, bytes_to_client=456)
        await audit.close()

        async with SqliteStore(tmp_path / "a.db") as reader:
            row = await reader.get_session("s1")
            assert row is not None
            assert (row.subject, row.groups, row.auth_method, row.credential_id) == (
                "alice",
                ("dba", "functions"),
                "api_key",
                "alice",
            )
            assert (row.connection, row.protocol, row.client_addr, row.tls) == (
                "orders",
                "postgres",
                "10.0.0.1:4000",
                True,
            )
            assert (row.client_user, row.application_name, row.started_at) == (
                "app",
                "psql",
                1000.0,
            )
            assert (row.end_reason, row.bytes_from_client, row.bytes_to_client) == (
                "client closed",
                123,
                456,
            )
            assert row.statements == 2 and row.ended_at is not None

            events = await reader.session_events("s1")
            assert [(e.seq, e.type) for e in events] == [
                (1, "session.start"),
                (2, "query"),
                (3, "query.result"),
                (4, "query"),
                (5, "query.result"),
                (6, "session.end"),
            ]
            assert seq == 2 and denied == 4
            start, query, result, _, failed, end = (e.data() for e in events)
            assert start["subject"] == "alice" and start["groups"] == ["dba", "functions"]
            assert start["client_user"] == "app" and start["tls"] is True
            assert query["sql"].startswith("SELECT * FROM orders")
            assert query["params"] == [
                "42",
                {"base64": base64.b64encode(b"\xff\x00\xfe").decode()},
                None,
            ]
            assert query["param_formats"] == [0, 1, 0]
            assert (query["statement_name"], query["op"], query["verdict"]) == (
                "s1",
                "execute",
                "allow",
            )
            assert query["rules"] == ["functions read orders: rules[0]"]
            assert result == {
                "statement_seq": 2,
                "tag": "SELECT 1",
                "rows": 1,
                "error": None,
                "duration_ms": 1.25,
            }
            assert failed["error"] == {"sqlstate": "42501", "message": "denied"}
            assert end["statements"] == 2 and end["reason"] == "client closed"
            assert await verify_session_chain(reader, "s1") == (True, None)

    asyncio.run(main())


def test_params_that_are_text_stay_text() -> None:
    assert render_param("héllo".encode()) == "héllo"
    assert render_param(b"\x00\x00\x00\x01") == "\x00\x00\x00\x01"  # valid UTF-8, kept exactly
    assert render_param(b"\xc3") == {"base64": "ww=="}
    assert render_param(None) is None


def test_an_edited_payload_is_detected(tmp_path: Path) -> None:
    db = tmp_path / "a.db"

    async def record() -> None:
        audit = AuditService(SqliteStore(db))
        rec = await audit.open_session(_info())
        for i in range(3):
            await rec.statement(SqlCommand(f"SELECT {i}"), ALLOW_ALL)
        await rec.end("done", bytes_from_client=0, bytes_to_client=0)
        await audit.close()

    asyncio.run(record())
    conn = sqlite3.connect(db)
    conn.execute(
        "UPDATE events SET payload = replace(payload, 'SELECT 1', 'SELECT 7')"
        " WHERE session_id = 's1' AND seq = 3"
    )
    conn.commit()
    conn.close()

    async def verify() -> None:
        async with SqliteStore(db) as store:
            assert await verify_session_chain(store, "s1") == (False, 3)

    asyncio.run(verify())


def test_group_commit_with_200_concurrent_sessions(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "a.db")
        audit = AuditService(store)

        async def session(i: int) -> None:
            rec = await audit.open_session(_info(f"sess-{i}"))
            for n in range(5):
                seq = await rec.statement(SqlCommand(f"SELECT {n}"), ALLOW_ALL)
                rec.statement_done(
                    seq, tag="SELECT 1", rows=1, error_sqlstate=None, error_message=None,
                    duration_ms=0.1,
                )  # fmt: skip
            await rec.end("done", bytes_from_client=1, bytes_to_client=2)

        await asyncio.gather(*(session(i) for i in range(200)))
        await store.flush()  # a session's end is queued, not waited for
        for i in range(200):
            events = await store.session_events(f"sess-{i}")
            assert len(events) == 12
            assert await verify_session_chain(store, f"sess-{i}") == (True, None)
        assert len(await store.list_sessions(limit=1000)) == 200
        assert store.write_batches < 200 * 7
        await audit.close()

    asyncio.run(main())


class _RecordingStore(SqliteStore):
    """A real store that notes how each write was handed over."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.calls: list[str] = []

    def submit(self, ops: Sequence[WriteOp]) -> None:
        self.calls.append("submit")
        super().submit(ops)

    async def commit(self, ops: Sequence[WriteOp]) -> tuple[object, ...]:
        self.calls.append("commit")
        return await super().commit(ops)


@pytest.mark.parametrize(("durability", "expected"), [("strict", "commit"), ("async", "submit")])
def test_durability_decides_whether_statements_wait_for_the_commit(
    tmp_path: Path, durability: str, expected: str
) -> None:
    async def main() -> None:
        store = _RecordingStore(tmp_path / "a.db")
        audit = AuditService(store, durability=durability)
        rec = await audit.open_session(_info())
        await rec.statement(SqlCommand("SELECT 1"), ALLOW_ALL)
        rec.statement_done(
            2, tag="SELECT 1", rows=1, error_sqlstate=None, error_message=None, duration_ms=1
        )
        await rec.end("done", bytes_from_client=0, bytes_to_client=0)
        # open_session, statement (statement_done and the end are always queued)
        assert store.calls == [expected, expected, "submit", "submit"]
        await audit.close()

    asyncio.run(main())


def test_strict_statement_is_committed_when_it_returns(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "a.db")
        audit = AuditService(store, durability="strict")
        rec = await audit.open_session(_info())
        seq = await rec.statement(SqlCommand("SELECT 1"), ALLOW_ALL)
        # A second connection (another process) sees it without any flush.
        conn = sqlite3.connect(tmp_path / "a.db")
        rows = conn.execute("SELECT type FROM events WHERE session_id = 's1' AND seq = ?", (seq,))
        assert rows.fetchall() == [("query",)]
        conn.close()
        await audit.close()

    asyncio.run(main())


def test_async_statement_returns_while_the_store_is_blocked(tmp_path: Path) -> None:
    db = tmp_path / "a.db"

    async def main() -> None:
        store = SqliteStore(db, busy_timeout=30)
        audit = AuditService(store, durability="async")
        rec = await audit.open_session(_info())
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        # The writer now waits for the lock; an async statement must not wait with it.
        seq = await asyncio.wait_for(rec.statement(SqlCommand("SELECT 1"), ALLOW_ALL), 10)
        assert seq == 2
        blocker.execute("ROLLBACK")
        blocker.close()
        await audit.close()

    asyncio.run(main())

    async def check() -> None:
        async with SqliteStore(db) as store:
            assert [e.type for e in await store.session_events("s1")] == ["session.start", "query"]

    asyncio.run(check())


def _remove_store(directory: Path) -> None:
    shutil.rmtree(directory)


def test_deny_refuses_the_statement_when_the_store_fails(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir()

    async def main() -> None:
        audit = AuditService(SqliteStore(directory / "a.db"), on_store_failure="deny")
        rec = await audit.open_session(_info())
        _remove_store(directory)
        with pytest.raises(AuditUnavailable) as caught:
            await rec.statement(SqlCommand("SELECT 1"), ALLOW_ALL)
        assert caught.value.message == UNAVAILABLE_MESSAGE
        assert caught.value.sqlstate == "58000"
        with pytest.raises(AuditUnavailable):
            await audit.open_session(_info("s2"))
        # The end of a session is never refused.
        await rec.end("done", bytes_from_client=0, bytes_to_client=0)
        await audit.close()

    asyncio.run(main())


def test_allow_continues_and_warns_when_the_store_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "state"
    directory.mkdir()

    async def main() -> None:
        audit = AuditService(SqliteStore(directory / "a.db"), on_store_failure="allow")
        rec = await audit.open_session(_info())
        _remove_store(directory)
        with caplog.at_level(logging.WARNING, logger="callgate.audit"):
            seq = await rec.statement(SqlCommand("SELECT 'secret-looking'"), ALLOW_ALL)
        assert seq == 2
        assert "audit store unavailable" in caplog.text
        assert "secret-looking" not in caplog.text
        rec2 = await audit.open_session(_info("s2"))
        assert await rec2.statement(SqlCommand("SELECT 2"), ALLOW_ALL) == 2
        await audit.close()

    asyncio.run(main())


def test_async_deny_refuses_once_a_queued_write_failed(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir()

    async def main() -> None:
        store = SqliteStore(directory / "a.db")
        audit = AuditService(store, durability="async", on_store_failure="deny")
        rec = await audit.open_session(_info())
        _remove_store(directory)
        # Queued before anyone knows: returns (that is what async means)...
        await rec.statement(SqlCommand("SELECT 1"), ALLOW_ALL)
        with pytest.raises(Exception, match="removed"):
            await store.flush()
        assert not store.healthy
        # ...but from now on statements wait for the store, and are refused.
        with pytest.raises(AuditUnavailable):
            await rec.statement(SqlCommand("SELECT 2"), ALLOW_ALL)
        await audit.close()

    asyncio.run(main())


def test_auth_failures_are_recorded_outside_sessions(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "a.db")
        audit = AuditService(store)
        audit.auth_failure(
            protocol="postgres", source="10.0.0.9", reason="unknown API key", issuer=None
        )
        audit.auth_failure(protocol="http", source="10.0.0.9", reason="expired", issuer="corp")
        await store.flush()
        events = await store.session_events(None)
        assert [(e.seq, e.type) for e in events] == [(1, "auth.failure"), (2, "auth.failure")]
        assert events[0].data() == {
            "protocol": "postgres",
            "source": "10.0.0.9",
            "reason": "unknown API key",
            "issuer": None,
        }
        assert await verify_session_chain(store, None) == (True, None)
        await audit.close()

    asyncio.run(main())


def test_after_end_nothing_more_is_recorded(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "a.db")
        audit = AuditService(store)
        rec = await audit.open_session(_info())
        await rec.end("done", bytes_from_client=0, bytes_to_client=0)
        await rec.end("again", bytes_from_client=9, bytes_to_client=9)
        rec.statement_done(
            2, tag=None, rows=None, error_sqlstate=None, error_message=None, duration_ms=0
        )
        with pytest.raises(RuntimeError):
            await rec.statement(SqlCommand("SELECT 1"), ALLOW_ALL)
        await store.flush()
        assert [e.type for e in await store.session_events("s1")] == [
            "session.start",
            "session.end",
        ]
        row = await store.get_session("s1")
        assert row is not None and row.end_reason == "done"
        await audit.close()

    asyncio.run(main())


def test_close_without_closing_the_store_flushes(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "a.db")
        audit = AuditService(store, durability="async", close_store=False)
        rec = await audit.open_session(_info())
        for i in range(100):
            await rec.statement(SqlCommand(f"SELECT {i}"), ALLOW_ALL)
        await audit.close()
        assert len(await store.session_events("s1")) == 101
        await store.close()

    asyncio.run(main())


def test_bad_modes_are_config_errors(tmp_path: Path) -> None:
    store: Store = SqliteStore(tmp_path / "a.db")
    with pytest.raises(ConfigError, match=r"gateway\.audit\.durability"):
        AuditService(store, durability="eventually")
    with pytest.raises(ConfigError, match=r"gateway\.audit\.on_store_failure"):
        AuditService(store, on_store_failure="ignore")
    asyncio.run(store.close())


def test_from_config(tmp_path: Path) -> None:
    from callgate.config import parse_config

    config = parse_config(
        {
            "gateway": {
                "store": "sqlite:///a.db",
                "audit": {"durability": "async", "on_store_failure": "allow"},
            }
        },
        tmp_path,
    )
    store = SqliteStore(tmp_path / "a.db")
    audit = AuditService.from_config(config, store)
    assert (audit.durability, audit.on_store_failure) == ("async", "allow")
    asyncio.run(audit.close())
