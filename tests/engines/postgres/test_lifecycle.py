"""Gateway lifecycle and failure modes: drain on SIGTERM, audit store down, repeated failures."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.engines.postgres.conftest import MakeThrough

pytestmark = pytest.mark.integration


def test_sigterm_drains_then_ends_sessions(make_through: MakeThrough) -> None:
    th = make_through({"gateway": {"drain_timeout": "2s"}})
    live = psycopg.connect(th.dsn(), autocommit=True)
    try:
        assert live.execute("select 1").fetchone() == (1,)
        import os
        import signal

        proc = th.gw.proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGTERM)
        time.sleep(0.5)
        # during the drain the live session still works, new sessions are not accepted
        assert live.execute("select 2").fetchone() == (2,)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(th.dsn(), connect_timeout=3).close()
        # after the drain timeout the session is ended with 57P01
        with pytest.raises(psycopg.OperationalError) as info:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                live.execute("select 3")
                time.sleep(0.2)
        assert "shutting down" in str(info.value)
        assert proc.wait(15) == 0
    finally:
        live.close()


def store_path(th_dir: Path) -> Path:
    return th_dir / "callgate.db"


def test_audit_store_unavailable_refuses_with_58000(make_through: MakeThrough) -> None:
    th = make_through()
    conn = psycopg.connect(th.dsn(), autocommit=True)
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        # Another process holds the store's write lock longer than callgate's busy timeout.
        lock = sqlite3.connect(
            store_path(Path(th.gw.workdir)),
            timeout=1,
            isolation_level=None,
            check_same_thread=False,
        )
        lock.execute("BEGIN EXCLUSIVE")
        released = threading.Event()

        def release_later() -> None:
            released.wait(30)
            lock.execute("ROLLBACK")
            lock.close()

        t = threading.Thread(target=release_later)
        t.start()
        ran: list[int] = []
        try:
            # Statements whose events reached the audit journal before the gateway found the
            # store locked (its next group commit, within milliseconds) go ahead: their events
            # are durable and reach the store once it is free. From then on every statement is
            # refused until the store takes writes again.
            with pytest.raises(psycopg.Error) as info:
                for n in range(1000):
                    conn.execute(f"select 'under lock {n}'")
                    ran.append(n)
            assert info.value.sqlstate == "58000"
            assert len(ran) < 1000
        finally:
            released.set()
            t.join()
        # the session continues once the store is back
        deadline = time.monotonic() + 15
        while True:
            try:
                assert conn.execute("select 4").fetchone() == (4,)
                break
            except psycopg.Error:
                assert time.monotonic() < deadline
                time.sleep(0.5)
    finally:
        conn.close()
    # every statement that ran has its event; the refused one has none
    db = sqlite3.connect(store_path(Path(th.gw.workdir)))
    try:
        recorded = [
            str(r[0])
            for r in db.execute("SELECT payload FROM events WHERE type = 'query' ORDER BY id")
        ]
    finally:
        db.close()
    for n in ran:
        assert sum(f"under lock {n}'" in p for p in recorded) == 1, n
    assert not any(f"under lock {len(ran)}'" in p for p in recorded)


def test_repeated_failures_slow_down_then_lock_out(make_through: MakeThrough) -> None:
    th = make_through(
        {
            "identity": {
                "failures": {
                    "slow_after": 2,
                    "delay": "300ms",
                    "lockout_after": 4,
                    "window": "60s",
                    "lockout": "60s",
                }
            }
        }
    )
    timings = []
    for _ in range(4):
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(th.dsn(password="cgk_wrong_" + "x" * 30)).close()
        timings.append(time.monotonic() - started)
    assert timings[3] >= 0.3  # slowed down once past slow_after
    # locked out now: even the right key is refused, without being checked
    with pytest.raises(psycopg.OperationalError, match=r"28P01|too many|credential"):
        psycopg.connect(th.dsn()).close()


def test_session_ends_when_its_key_expires_and_the_end_is_recorded(
    make_through: MakeThrough,
) -> None:
    import json

    th = make_through()
    done = th.gw.cli(
        "keys", "create", "short-lived", "--groups", "apps", "--expires", "3s", "--json"
    )
    assert done.returncode == 0, done.stderr
    key = json.loads(done.stdout)["key"]
    conn = psycopg.connect(th.dsn(password=key, application_name="short"), autocommit=True)
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as info:
        while time.monotonic() - started < 30:
            conn.execute("select 1")
            time.sleep(0.2)
    assert "credential expired" in str(info.value)
    assert time.monotonic() - started < 15
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ours = [s for s in th.sessions() if s.get("application_name") == "short"]
        if ours and ours[0].get("end_reason"):
            assert "credential expired" in ours[0]["end_reason"]
            return
        time.sleep(0.2)
    pytest.fail("the end of the session was not recorded")


def test_session_ends_when_its_key_is_revoked(make_through: MakeThrough) -> None:
    th = make_through()
    key = th.gw.create_key("revoke-me", ["apps"])
    conn = psycopg.connect(th.dsn(password=key), autocommit=True)
    assert conn.execute("select 1").fetchone() == (1,)
    assert th.gw.cli("keys", "revoke", "revoke-me").returncode == 0
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as info:
        while time.monotonic() - started < 60:
            conn.execute("select 1")
            time.sleep(0.5)
    assert "revoked" in str(info.value)
