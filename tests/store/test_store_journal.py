"""The audit journal of the serving gateway's SQLite store (callgate.store.journal): strict event
writes acknowledged once appended, applied in the next group commit, replayed after a crash.

A crash is a real one: a child process opens the store, writes, and ends with ``os._exit`` (no
flush, no close), as ``kill -9`` would leave it; the test then opens the store as the restarted
gateway does."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from callgate.store import (
    AppendEvent,
    AuditWriterSettings,
    CloseInterrupted,
    InsertSession,
    SqliteStore,
    StoreUnavailable,
    first_broken_link,
)
from callgate.store.journal import EventJournal, journal_path
from tests.store.test_store_sqlite import _session

CHILD_PRELUDE = """
import asyncio, os, sys
from pathlib import Path
from callgate.store import AppendEvent, EndSession, InsertSession, SessionRecord, SqliteStore

def session(sid):
    return SessionRecord(id=sid, subject="alice", groups=("dba",), auth_method="api_key",
        credential_id="k", issuer=None, connection="orders", protocol="postgres",
        client_addr="10.0.0.1:5555", client_user="app", application_name="psql", tls=True,
        started_at=1000.0)

def event(sid, seq):
    return AppendEvent(sid, seq, 1000.0 + seq, "query", f'{{"n":{seq}}}')

db = Path(sys.argv[1])
"""


def _event(sid: str, seq: int) -> AppendEvent:
    return AppendEvent(sid, seq, 1000.0 + seq, "query", f'{{"n":{seq}}}')


def _child(db: Path, body: str) -> None:
    script = CHILD_PRELUDE + textwrap.dedent(body)
    done = subprocess.run(
        [sys.executable, "-c", script, str(db)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def _crash_after(db: Path, last: int, *, flush_after: int | None = None) -> None:
    """A child gateway opens session s1, commits events 1..``last`` (strict, journaled after the
    first) and dies without flushing; with ``flush_after``, it flushes after that event."""
    _child(
        db,
        f"""
        async def main():
            store = SqliteStore(db, journal=True)
            await store.commit((InsertSession(session("s1")), event("s1", 1)))
            for seq in range(2, {last} + 1):
                await store.commit((event("s1", seq),))
                if seq == {flush_after}:
                    await store.flush()
            os._exit(0)

        asyncio.run(main())
        """,
    )


def _restart(db: Path) -> list[int]:
    """Open the store as a restarted gateway does; the seqs of s1 after the replay (its chain
    verified)."""

    async def restart() -> list[int]:
        store = SqliteStore(db, journal=True)
        try:
            store.configure_audit(AuditWriterSettings())
            await _verify(store, "s1")
            return [s for s, _ in _events(db, "s1")]
        finally:
            await store.close()

    return asyncio.run(restart())


def _events(db: Path, sid: str) -> list[tuple[int, str]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT seq, type FROM events WHERE session_id = ? ORDER BY seq", (sid,)
        ).fetchall()
    finally:
        conn.close()
    return [(int(r[0]), str(r[1])) for r in rows]


def _session_ids(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [str(r[0]) for r in conn.execute("SELECT id FROM sessions ORDER BY id")]
    finally:
        conn.close()


def _journal_applied(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT value FROM store_meta WHERE key = 'journal_applied'").fetchone()
    finally:
        conn.close()
    return int(row[0]) if row is not None else 0


async def _verify(store: SqliteStore, sid: str) -> None:
    events = await store.session_events(sid)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert first_broken_link(events) is None


def test_a_strict_event_is_acknowledged_from_the_journal_and_applied_in_the_next_commit(
    db_path: Path,
) -> None:
    async def main() -> None:
        store = SqliteStore(db_path, journal=True)
        try:
            await store.commit((InsertSession(_session("s1")), _event("s1", 1)))
            await store.flush()
            before = store.write_batches
            assert await store.commit((_event("s1", 2),)) == (None,)
            # acknowledged without a SQLite commit: the event is in the journal only, for now
            assert store.write_batches == before
            assert _events(db_path, "s1") == [(1, "query")]
            assert journal_path(db_path).stat().st_size > 0
            for _ in range(200):
                await asyncio.sleep(0.005)
                if store.write_batches > before:
                    break
            assert _events(db_path, "s1") == [(1, "query"), (2, "query")]
            assert _journal_applied(db_path) >= 1
            await _verify(store, "s1")
        finally:
            await store.close()
        journal = journal_path(db_path)
        assert stat.S_IMODE(journal.stat().st_mode) == 0o600
        assert journal.stat().st_size == 0  # everything applied: emptied on close

    asyncio.run(main())


def test_a_crash_loses_no_acknowledged_event_and_the_restart_replays_them(db_path: Path) -> None:
    _child(
        db_path,
        """
        async def main():
            store = SqliteStore(db, journal=True)
            await store.commit((InsertSession(session("s1")), event("s1", 1)))
            await store.commit((InsertSession(session("s2")), event("s2", 1)))
            store.submit((event("s1", 2),))  # unwaited (a result): goes into the next record
            for seq in range(3, 8):
                await store.commit((event("s1", seq),))
                await store.commit((event("s2", seq - 1),))
            # s2 ends (queued, unwaited) and rides in the record of s1's next statement
            store.submit((
                AppendEvent("s2", 7, 1010.0, "session.end", '{"reason":"client closed"}'),
                EndSession("s2", 1010.0, "client closed", 11, 22, 6),
            ))
            await store.commit((event("s1", 8),))
            os._exit(0)  # the crash: nothing flushed, nothing closed

        asyncio.run(main())
        """,
    )
    # the sessions' rows and every event are in the journal only
    assert _events(db_path, "s1") == []
    assert _session_ids(db_path) == []
    assert journal_path(db_path).stat().st_size > 0

    async def restart() -> None:
        store = SqliteStore(db_path, journal=True)
        try:
            store.configure_audit(AuditWriterSettings())
            assert _session_ids(db_path) == ["s1", "s2"]
            assert [s for s, _ in _events(db_path, "s1")] == list(range(1, 9))
            assert [s for s, _ in _events(db_path, "s2")] == list(range(1, 8))
            await _verify(store, "s1")
            await _verify(store, "s2")
            assert journal_path(db_path).stat().st_size == 0
            s2 = await store.get_session("s2")
            assert s2 is not None and (s2.ended_at, s2.end_reason) == (1010.0, "client closed")
            assert (s2.bytes_from_client, s2.bytes_to_client, s2.statements) == (11, 22, 6)
            # the interrupted session is then closed after its replayed events; the one that
            # ended before the crash keeps its own end
            (closed,) = await store.commit((CloseInterrupted(None, 2000.0, "ended by crash"),))
            assert set(closed) == {"s1"}  # type: ignore[arg-type]
            assert _events(db_path, "s1")[-1] == (9, "session.end")
            assert _events(db_path, "s2")[-1] == (7, "session.end")
            await _verify(store, "s1")
        finally:
            await store.close()

    asyncio.run(restart())


def test_a_torn_last_record_is_ignored_and_the_journal_goes_on(db_path: Path) -> None:
    _crash_after(db_path, 3)
    journal = journal_path(db_path)
    whole = journal.read_bytes()
    # the crash tore the last record (event 3's, 16 bytes of header and about 30 of body): part
    # of it reached the file
    journal.write_bytes(whole[: len(whole) - 12])
    assert _restart(db_path) == [1, 2]
    assert journal.stat().st_size == 0
    # and the next run journals, crashes and is replayed as before
    conn = sqlite3.connect(db_path)
    conn.execute("DELETE FROM events")
    conn.execute("DELETE FROM sessions")
    conn.commit()
    conn.close()
    _crash_after(db_path, 4)
    assert _restart(db_path) == [1, 2, 3, 4]


def test_replay_skips_events_the_store_already_holds(db_path: Path) -> None:
    """A record applied but not yet marked (a batch split) must not be written twice."""
    _crash_after(db_path, 3, flush_after=2)
    # forget that record 1 was applied, as if its mark had not been committed
    conn = sqlite3.connect(db_path)
    conn.execute("DELETE FROM store_meta WHERE key = 'journal_applied'")
    conn.commit()
    conn.close()
    assert journal_path(db_path).stat().st_size > 0, "the test needs the child's records"
    assert _restart(db_path) == [1, 2, 3]


def test_a_second_process_runs_without_the_journal_and_waits_for_commits(db_path: Path) -> None:
    holder = EventJournal(journal_path(db_path))
    holder.open()  # another gateway holds it

    async def main() -> None:
        store = SqliteStore(db_path, journal=True)
        try:
            await store.commit((InsertSession(_session("s1")), _event("s1", 1)))
            before = store.write_batches
            await store.commit((_event("s1", 2),))
            assert store.write_batches > before  # committed before the acknowledgement
            assert [s for s, _ in _events(db_path, "s1")] == [1, 2]
        finally:
            await store.close()

    try:
        asyncio.run(main())
    finally:
        holder.close()
    assert journal_path(db_path).stat().st_size == 0


def test_a_removed_database_fails_strict_writes_instead_of_journaling_them(db_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(db_path, journal=True)
        try:
            await store.commit((InsertSession(_session("s1")), _event("s1", 1)))
            size = journal_path(db_path).stat().st_size
            for suffix in ("", "-wal", "-shm"):
                path = Path(f"{db_path}{suffix}")
                if path.exists():
                    path.unlink()
            await asyncio.sleep(0.01)  # the loop turns: the inotify watch reports the removal
            with pytest.raises(StoreUnavailable, match="removed"):
                await store.commit((_event("s1", 2),))
            assert journal_path(db_path).stat().st_size == size
        finally:
            await store.close()

    asyncio.run(main())


def test_a_removed_journal_turns_journaling_off_and_writes_still_commit(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        store = SqliteStore(db_path, journal=True)
        try:
            await store.commit((InsertSession(_session("s1")), _event("s1", 1)))
            journal_path(db_path).unlink()
            await asyncio.sleep(0.01)  # the loop turns: the inotify watch reports the removal
            before = store.write_batches
            await store.commit((_event("s1", 2),))
            assert store.write_batches > before
            assert [s for s, _ in _events(db_path, "s1")] == [1, 2]
        finally:
            await store.close()

    asyncio.run(main())
    assert "was removed or replaced" in caplog.text


def test_a_journaled_event_whose_commit_fails_is_held_and_written_first_later(
    db_path: Path,
) -> None:
    """The store is locked by another process past the busy timeout: the acknowledged event is
    kept, later strict writes fail (fail closed) rather than overtake it, and once the lock is
    gone it is written, ahead of everything after it, with the chain intact."""

    async def main() -> None:
        store = SqliteStore(db_path, journal=True, busy_timeout=0.2)
        locker = sqlite3.connect(db_path, isolation_level=None)
        try:
            await store.commit((InsertSession(_session("s1")), _event("s1", 1)))
            locker.execute("BEGIN IMMEDIATE")
            await store.commit((_event("s1", 2),))  # journaled, acknowledged
            await asyncio.sleep(0.4)  # its commit gave up
            assert not store.healthy
            with pytest.raises(StoreUnavailable):
                await store.commit((_event("s1", 3),))
            locker.execute("ROLLBACK")
            for _ in range(100):  # the idle tick retries what is held
                await asyncio.sleep(0.05)
                if len(_events(db_path, "s1")) == 2:
                    break
            assert [s for s, _ in _events(db_path, "s1")] == [1, 2]
            await store.commit((_event("s1", 3),))
            await store.flush()
            assert [s for s, _ in _events(db_path, "s1")] == [1, 2, 3]
            await _verify(store, "s1")
        finally:
            locker.close()
            await store.close()

    asyncio.run(main())


def test_an_unreplayable_journal_stops_the_gateway_from_starting(db_path: Path) -> None:
    _crash_after(db_path, 2)
    store = SqliteStore(db_path, journal=True, busy_timeout=0.1)
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another process holds the lock past the busy timeout
    try:
        with pytest.raises(StoreUnavailable, match="cannot apply the audit journal"):
            store.configure_audit(AuditWriterSettings())
    finally:
        locker.execute("ROLLBACK")
        locker.close()
        asyncio.run(store.close())
    # nothing was lost: closing wrote what was held, once the lock was gone
    assert _events(db_path, "s1") == [(1, "query"), (2, "query")]
    assert journal_path(db_path).stat().st_size == 0


def test_cli_stores_never_touch_the_journal(db_path: Path) -> None:
    _crash_after(db_path, 2)
    size = journal_path(db_path).stat().st_size

    async def cli() -> None:
        async with SqliteStore(db_path) as store:
            # what the crashed gateway journaled is not in the database yet
            assert await store.session_events("s1") == []

    asyncio.run(cli())
    assert journal_path(db_path).stat().st_size == size
    assert os.path.exists(journal_path(db_path))


@pytest.mark.parametrize("how", ["remove", "rename over", "move away"])
def test_the_file_watch_notices_a_file_losing_its_name_without_asking_each_time(
    tmp_path: Path, how: str
) -> None:
    from callgate.store.filewatch import FileWatch

    watched = tmp_path / "callgate.db"
    other = tmp_path / "other"
    watched.write_bytes(b"x")
    other.write_bytes(b"y")
    fd = os.open(watched, os.O_RDONLY)

    async def main() -> None:
        watch = FileWatch([(fd, str(watched))])
        try:
            assert watch.ok()
            assert watch._inotify >= 0  # the kernel tells it; no fstat per call
            os.chmod(watched, 0o600)  # an attribute change that keeps the name: still fine
            await asyncio.sleep(0.05)
            assert watch.ok()
            if how == "remove":
                watched.unlink()
            elif how == "rename over":
                os.replace(other, watched)
            else:
                os.replace(watched, tmp_path / "moved")
            await asyncio.sleep(0.05)  # a turn of the loop delivers the notification
            assert not watch.ok()
        finally:
            watch.close()

    try:
        asyncio.run(main())
    finally:
        os.close(fd)


def test_a_database_removed_while_serving_stops_the_journal_within_a_turn(db_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(db_path, journal=True)
        try:
            await store.commit((InsertSession(_session("s1")), _event("s1", 1)))
            await store.commit((_event("s1", 2),))  # journaled: the watch is on
            await store.flush()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db_path}{suffix}").unlink(missing_ok=True)
            await asyncio.sleep(0.05)
            size = journal_path(db_path).stat().st_size
            with pytest.raises(StoreUnavailable, match="removed"):
                await store.commit((_event("s1", 3),))
            assert journal_path(db_path).stat().st_size == size  # not acknowledged from it
        finally:
            await store.close()

    asyncio.run(main())


def test_a_session_row_survives_the_record_format_whatever_the_client_sent() -> None:
    """A session's row goes into a record with its start, and its end with its session.end;
    fields the client chose (user name, application name) cannot break the record's separators,
    and both come back equal."""
    from dataclasses import replace

    from callgate.store import EndSession
    from callgate.store.journal import decode, encode

    hostile = replace(
        _session("s9"),
        client_user="a\x1fb\x1ec\x01session",
        application_name="ünï\ncode\x00",
        groups=("x", "y"),
        issuer="https://idp.example",
    )
    end = EndSession("s9", 1234.5, "client closed: \x1e\x1f", 10, 20, 2)
    items = [InsertSession(hostile), _event("s9", 1), _event("s9", 2), end]
    assert decode(encode(items)) == items
    # a row whose fields do not belong to the session it names is refused, not trusted
    bad = encode([InsertSession(hostile)]).replace(b"s9\x1f0", b"s8\x1f0", 1)
    with pytest.raises(ValueError):
        decode(bad)


def test_a_session_started_in_the_journal_is_alive_for_a_recovery_in_the_same_batch(
    db_path: Path,
) -> None:
    """The retention task's CloseInterrupted (sessions this gateway left open by a crash) can be
    committed in the same transaction that applies a live session's journaled row: that session
    is this writer's, alive, and must not be closed as crashed."""

    async def main() -> None:
        store = SqliteStore(db_path, journal=True)
        try:
            await store.commit((InsertSession(_session("live")), _event("live", 1)))
            (closed,) = await store.commit((CloseInterrupted(None, 2000.0, "ended by crash"),))
            assert closed == ()
            live = await store.get_session("live")
            assert live is not None and live.ended_at is None
            assert _events(db_path, "live") == [(1, "query")]
            await _verify(store, "live")
        finally:
            await store.close()

    asyncio.run(main())
