"""The store on both backends (the ``store`` fixture is SQLite and PostgreSQL): group commit,
ordering, reads, conflicts; and the SQLite file itself: schema, WAL, failures of the file."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from callgate.store import (
    ApiKeyRecord,
    AppendEvent,
    EndSession,
    InsertApiKey,
    InsertSession,
    SessionRecord,
    SqliteStore,
    Store,
    StoreClosed,
    StoreConflict,
    StoreError,
    StoreUnavailable,
    TouchApiKey,
    first_broken_link,
    open_store,
    sqlite_path,
)
from callgate.store.schema import LATEST_VERSION


def _session(sid: str, started: float = 1000.0) -> SessionRecord:
    return SessionRecord(
        id=sid,
        subject="alice",
        groups=("dba", "functions"),
        auth_method="api_key",
        credential_id="alice-key",
        issuer=None,
        connection="orders",
        protocol="postgres",
        client_addr="10.0.0.1:5555",
        client_user="app",
        application_name="psql",
        tls=True,
        started_at=started,
    )


def _event(sid: str | None, seq: int | None, n: int = 0) -> AppendEvent:
    return AppendEvent(sid, seq, 1000.0 + n, "query", f'{{"n":{n}}}')


def test_open_creates_the_schema_in_wal_mode_with_a_private_file(db_path: Path) -> None:
    store = SqliteStore(db_path)
    asyncio.run(store.close())
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert versions == list(range(1, LATEST_VERSION + 1))
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"sessions", "events", "checkpoints", "api_keys", "session_tokens", "outbox"} <= tables
    conn.close()


def test_reopening_keeps_data_and_does_not_migrate_again(db_path: Path) -> None:
    async def first() -> None:
        async with SqliteStore(db_path) as s:
            await s.commit((InsertSession(_session("s1")), _event("s1", 1)))

    async def second() -> None:
        async with SqliteStore(db_path) as s:
            assert (await s.get_session("s1")) == _session("s1")

    asyncio.run(first())
    asyncio.run(second())
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == LATEST_VERSION
    conn.close()


def test_a_newer_schema_is_refused(db_path: Path) -> None:
    asyncio.run(SqliteStore(db_path).close())
    conn = sqlite3.connect(db_path)
    conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this callgate"):
        SqliteStore(db_path)


def test_store_urls(tmp_path: Path) -> None:
    assert sqlite_path("sqlite:////abs/x.db") == Path("/abs/x.db")
    assert sqlite_path("sqlite:///rel/x.db") == Path("rel/x.db")
    assert sqlite_path("sqlite:///./x.db", base_dir=tmp_path) == tmp_path / "x.db"
    assert sqlite_path("postgresql://h/db") is None
    # nothing listens on port 1: the error names the store without its password
    with pytest.raises(StoreUnavailable, match="cannot open store") as caught:
        open_store("postgresql://gw:s3cret@127.0.0.1:1/callgate")
    assert "s3cret" not in caught.value.message
    assert "postgresql://gw@127.0.0.1:1/callgate" in caught.value.message
    with pytest.raises(StoreError, match="unsupported store URL"):
        open_store("mysql://x/y")
    with pytest.raises(StoreError, match="invalid SQLite store URL"):
        open_store("sqlite:///")
    with pytest.raises(StoreUnavailable, match="does not exist"):
        open_store(f"sqlite:///{tmp_path}/missing/x.db")
    store = open_store(f"sqlite:///{tmp_path}/y.db")
    assert isinstance(store, SqliteStore) and store.path == tmp_path / "y.db"
    asyncio.run(store.close())


def test_group_commit_under_200_concurrent_writers(store: Store) -> None:
    sessions = [f"session-{i:03d}" for i in range(200)]
    per_session = 10

    async def writer(sid: str) -> None:
        await store.commit((InsertSession(_session(sid)), _event(sid, 1)))
        for seq in range(2, per_session + 1):
            await store.commit((_event(sid, seq, seq),))

    async def main() -> None:
        await asyncio.gather(*(writer(sid) for sid in sessions))
        for sid in sessions:
            events = await store.session_events(sid)
            assert [e.seq for e in events] == list(range(1, per_session + 1))
            assert first_broken_link(events) is None

    asyncio.run(main())
    # Concurrent commits shared transactions: far fewer than one per commit.
    assert store.write_batches < len(sessions) * per_session / 2


def test_submitted_writes_keep_their_order_and_are_flushed_on_close(
    open_backend: Callable[[], Store],
) -> None:
    async def write() -> None:
        store = open_backend()
        for seq in range(1, 501):
            store.submit((_event("s", seq, seq),))
        await store.close()
        with pytest.raises(StoreClosed):
            store.submit((_event("s", 501),))

    async def read() -> None:
        async with open_backend() as store:
            events = await store.session_events("s")
            assert [e.seq for e in events] == list(range(1, 501))
            assert first_broken_link(events) is None

    asyncio.run(write())
    asyncio.run(read())


def test_end_session_updates_the_row(store: Store) -> None:
    async def main() -> None:
        await store.commit((InsertSession(_session("s")), _event("s", 1)))
        await store.commit((_event("s", 2), EndSession("s", 2000.0, "client closed", 10, 20, 1)))
        row = await store.get_session("s")
        assert row is not None
        assert (row.ended_at, row.end_reason, row.bytes_from_client, row.bytes_to_client) == (
            2000.0,
            "client closed",
            10,
            20,
        )
        assert row.statements == 1

    asyncio.run(main())


def test_sessions_are_listed_newest_first(store: Store) -> None:
    async def main() -> None:
        for i, started in enumerate([300.0, 100.0, 200.0]):
            await store.commit((InsertSession(_session(f"s{i}", started)),))
        assert [s.id for s in await store.list_sessions()] == ["s0", "s2", "s1"]
        assert [s.id for s in await store.list_sessions(limit=1)] == ["s0"]

    asyncio.run(main())


def test_a_conflicting_write_fails_alone(store: Store) -> None:
    key = ApiKeyRecord("ci", "0123abcd", "h" * 64, ("g",), 1.0)

    async def main() -> None:
        await store.commit((InsertApiKey(key),))
        # Queued together, so they land in one batch: only the duplicate may fail.
        results = await asyncio.gather(
            store.commit((_event("s", 1),)),
            store.commit((InsertApiKey(key),)),
            store.commit((_event("s", 2),)),
            return_exceptions=True,
        )
        assert results[0] == (None,) and results[2] == (None,)
        assert isinstance(results[1], StoreConflict)
        events = await store.session_events("s")
        assert [e.seq for e in events] == [1, 2]
        assert first_broken_link(events) is None
        assert store.healthy

    asyncio.run(main())


def test_the_writer_survives_a_locked_database_and_recovers(db_path: Path) -> None:
    store = SqliteStore(db_path, busy_timeout=0.05)
    blocker = sqlite3.connect(db_path, isolation_level=None)

    async def main() -> None:
        await store.commit((_event("s", 1, 1),))
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.commit((_event("s", 2, 2),))
        assert not store.healthy
        blocker.execute("ROLLBACK")
        await store.commit((_event("s", 3, 3),))
        assert store.healthy
        events = await store.session_events("s")
        # The failed event never became a link: the chain goes 1 -> 3 and verifies.
        assert [e.seq for e in events] == [1, 3]
        assert first_broken_link(events) is None
        await store.close()

    asyncio.run(main())
    blocker.close()


def test_a_removed_database_fails_every_write(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    store = SqliteStore(directory / "callgate.db")

    async def main() -> None:
        await store.commit((_event("s", 1),))
        # the WAL checkpointer may recreate -shm/-wal while the tree goes: the file is what counts
        shutil.rmtree(directory, ignore_errors=True)
        assert not (directory / "callgate.db").exists()
        with pytest.raises(StoreUnavailable, match="was removed"):
            await store.commit((_event("s", 2),))
        with pytest.raises(StoreUnavailable):
            await store.commit((_event("s", 3),))
        assert not store.healthy
        await store.close()

    asyncio.run(main())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only files")
def test_a_read_only_database_fails_writes(db_path: Path) -> None:
    store = SqliteStore(db_path)

    async def main() -> None:
        await store.commit((_event("s", 1),))
        for p in db_path.parent.iterdir():
            p.chmod(0o400)
        with pytest.raises(StoreUnavailable):
            await store.commit((_event("s", 2),))
        for p in db_path.parent.iterdir():
            p.chmod(0o600)
        await store.close()

    asyncio.run(main())


def test_events_without_a_session_form_one_chain_across_restarts(
    open_backend: Callable[[], Store],
) -> None:
    async def write(n: int) -> None:
        async with open_backend() as store:
            for i in range(n):
                await store.commit((_event(None, None, i),))

    async def check() -> None:
        async with open_backend() as store:
            events = await store.session_events(None)
            assert [e.seq for e in events] == [1, 2, 3, 4, 5]
            assert first_broken_link(events) is None

    asyncio.run(write(3))
    asyncio.run(write(2))
    asyncio.run(check())


def test_api_key_rows(store: Store) -> None:
    key = ApiKeyRecord("ci", "0123abcd", "f" * 64, ("a", "b"), 1.0, expires_at=99.0)

    async def main() -> None:
        await store.commit((InsertApiKey(key),))
        assert await store.api_key_by_hash("f" * 64) == key
        assert await store.api_key_by_name("ci") == key
        assert await store.api_key_by_hash("0" * 64) is None
        assert await store.revoke_api_key("ci", 5.0)
        assert not await store.revoke_api_key("ci", 6.0)
        assert not await store.revoke_api_key("nobody", 6.0)
        await store.commit((TouchApiKey("ci", 7.0),))
        await store.commit((TouchApiKey("ci", 3.0),))  # an older touch never moves it back
        row = await store.api_key_by_name("ci")
        assert row is not None and (row.revoked_at, row.last_used_at) == (5.0, 7.0)
        assert [k.name for k in await store.list_api_keys()] == ["ci"]

    asyncio.run(main())


@pytest.mark.parametrize("writer", ["thread"])
def test_waiters_on_several_event_loops(tmp_path: Path, writer: str) -> None:
    """With the thread writer, each loop's waiters are woken on their own loop. (The default loop
    writer belongs to the one loop of the gateway; several loops need ``writer="thread"``.)"""
    import threading

    store = SqliteStore(tmp_path / "loops.db", writer=writer)

    errors: list[BaseException] = []

    def run(prefix: str) -> None:
        async def main() -> None:
            await asyncio.gather(*(store.commit((_event(f"{prefix}{i}", 1),)) for i in range(50)))

        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    asyncio.run(store.close())
    assert errors == []


def test_an_unexpected_error_in_a_batch_does_not_kill_the_writer(store: Store) -> None:
    class Bogus:
        pass

    async def main() -> None:
        with pytest.raises(StoreUnavailable, match="internal error"):
            await store.commit((Bogus(),))  # type: ignore[arg-type]
        await store.commit((_event("s", 1),))
        assert [e.seq for e in await store.session_events("s")] == [1]

    asyncio.run(main())
