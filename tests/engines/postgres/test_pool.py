"""Session pooling: an idle upstream connection serves the next caller, with nothing of the
previous session left on it (DISCARD ALL), and only when it was given back clean."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import asyncpg
import psycopg
import pytest

from tests.engines.postgres.conftest import MakeThrough, Through, main_connection

pytestmark = pytest.mark.integration


def backend_pid(th: Through, **extra: str | int) -> int:
    with psycopg.connect(th.dsn(**extra), autocommit=True) as conn:
        row = conn.execute("select pg_backend_pid()").fetchone()
        assert row is not None
        return int(row[0])


def wait_pooled(th: Through, pid: int) -> None:
    """Until the connection of backend ``pid`` is back in the pool (its reset, DISCARD ALL,
    done: the server shows it idle with that as its last statement)."""
    with th.server.connect(th.database) as admin:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            row = admin.execute(
                "select state, query from pg_stat_activity where pid = %s", (pid,)
            ).fetchone()
            if row == ("idle", "DISCARD ALL"):
                break
            time.sleep(0.02)


def reused_after(th: Through, pid: int, **extra: str | int) -> int:
    """The next session's backend pid, once the last one's connection is back in the pool."""
    wait_pooled(th, pid)
    return backend_pid(th, **extra)


def test_next_caller_gets_the_connection_with_nothing_left_of_the_last(
    make_through: MakeThrough,
) -> None:
    th = make_through()
    with psycopg.connect(th.dsn(), autocommit=True) as conn:
        first = conn.execute("select pg_backend_pid()").fetchone()
        assert first is not None
        conn.execute("set statement_timeout = 1234")
        conn.execute("set role pg_read_all_data")  # a role the connection's user may set
        conn.execute("create temp table scratch (x int)")
        conn.execute("prepare leftover as select 42")
        conn.execute("listen somewhere")
        conn.execute("select pg_advisory_lock(77)")
        conn.execute("declare c cursor with hold for select 1")
    pid = int(first[0])
    wait_pooled(th, pid)
    with psycopg.connect(th.dsn(), autocommit=True) as conn:
        assert conn.execute("select pg_backend_pid()").fetchone() == (pid,)
        assert conn.execute("show statement_timeout").fetchone() == ("0",)
        assert conn.execute("select current_user = session_user").fetchone() == (True,)
        assert conn.execute("select to_regclass('pg_temp.scratch')").fetchone() == (None,)
        assert conn.execute("select count(*) from pg_prepared_statements").fetchone() == (0,)
        assert conn.execute("select count(*) from pg_listening_channels()").fetchone() == (0,)
        assert conn.execute("select count(*) from pg_cursors").fetchone() == (0,)
        held = conn.execute(
            "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()"
        ).fetchone()
        assert held == (0,)


def test_a_session_left_in_a_transaction_is_not_reused(make_through: MakeThrough) -> None:
    th = make_through()
    with th.server.connect(th.database) as admin:
        admin.execute("create table pooled_tx (x int)")
    conn = psycopg.connect(th.dsn())
    row = conn.execute("insert into pooled_tx values (1) returning pg_backend_pid()").fetchone()
    assert row is not None
    pid = int(row[0])
    conn.close()  # Terminate inside the open transaction
    time.sleep(0.3)
    assert backend_pid(th) != pid
    with th.server.connect(th.database) as admin:
        assert admin.execute("select count(*) from pooled_tx").fetchone() == (0,)
        gone = admin.execute(
            "select count(*) from pg_stat_activity where pid = %s", (pid,)
        ).fetchone()
    assert gone == (0,)


def test_different_startup_parameters_get_different_connections(
    make_through: MakeThrough,
) -> None:
    th = make_through()
    pid = backend_pid(th, application_name="one")
    assert reused_after(th, pid, application_name="one") == pid
    with psycopg.connect(th.dsn(application_name="two"), autocommit=True) as conn:
        row = conn.execute(
            "select pg_backend_pid(), current_setting('application_name')"
        ).fetchone()
    assert row is not None
    assert row[0] != pid and row[1] == "two"


def test_pool_off_closes_every_upstream(
    make_through: MakeThrough,
) -> None:
    th0 = make_through()
    connection = main_connection(th0.server, th0.database)
    connection["upstream"]["pool"] = {"max_idle": 0}
    th = make_through({"connections": [connection]})
    pid = backend_pid(th)
    time.sleep(0.3)
    assert backend_pid(th) != pid


def test_pgbench_connect_per_transaction_reuses_connections(make_through: MakeThrough) -> None:
    th = make_through()
    with th.server.connect(th.database) as admin:
        admin.execute("create table pgb (x int)")
        admin.execute("insert into pgb values (1)")
    script = th.gw.workdir / "select.sql"
    script.write_text("select x from pgb;\n")
    done = subprocess.run(
        ["pgbench", "-n", "-C", "-t", "50", "-c", "2", "-f", str(script)]
        + ["-h", "127.0.0.1", "-p", str(th.gw.port), "-U", "whoever", "main"],
        capture_output=True,
        text=True,
        env={**th.env(), "PATH": "/usr/bin:/bin:/usr/lib/postgresql/15/bin"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    with th.server.connect(th.database) as admin:
        row = admin.execute(
            "select count(*) from pg_stat_activity where datname = current_database()"
            " and backend_type = 'client backend'"
        ).fetchone()
    assert row is not None and row[0] <= 1 + 2 + 16  # admin, at most the clients and the idle pool
    listed = th.gw.cli("sessions", "list", "--json", "--limit", "500")
    assert listed.returncode == 0, listed.stderr
    # every caller session is still recorded (pgbench also opens one of its own first)
    assert sum(1 for s in json.loads(listed.stdout) if s["statements"] == 1) == 100


def test_asyncpg_sessions_reuse_and_cancel_still_works(make_through: MakeThrough) -> None:
    th = make_through()

    async def run() -> None:
        kw = {"host": "127.0.0.1", "port": th.gw.port, "user": "x", "password": th.key}
        conn = await asyncpg.connect(database="main", ssl=False, **kw)
        pid = await conn.fetchval("select pg_backend_pid()")
        await conn.close()
        await asyncio.to_thread(reused_after, th, pid)
        conn = await asyncpg.connect(database="main", ssl=False, **kw)
        try:
            assert await conn.fetchval("select pg_backend_pid()") == pid
            # a cancel reaches the statement of the session that now holds the connection
            # (asyncpg sends a CancelRequest with callgate's key when its timeout passes)
            with pytest.raises(TimeoutError):
                await conn.execute("select pg_sleep(5)", timeout=0.5)
            started = time.monotonic()
            assert await conn.fetchval("select 1") == 1
            assert time.monotonic() - started < 3.0, "the sleep was not cancelled upstream"
        finally:
            await conn.close()

    asyncio.run(run())
