"""Real clients through callgate against a real PostgreSQL: psql, psycopg, asyncpg, pgbench."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time

import asyncpg
import psycopg
import pytest

from tests.engines.postgres.conftest import Through

pytestmark = pytest.mark.integration


def run(argv: list[str], th: Through, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **th.env()}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)


def test_psql_simple_queries_and_copy(through: Through, tmp_path: object) -> None:
    base = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(through.gw.port)]
    base += ["-d", "main", "-At"]
    done = run(base + ["-c", "select 40 + 2"], through)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "42"
    script = (
        "create table t (id int primary key, name text);"
        "insert into t values (1, 'a'), (2, 'b');"
        "\\copy t from stdin\n3\tc\n\\.\n"
        "select count(*) from t;"
        "\\copy (select * from t order by id) to stdout\n"
    )
    done = subprocess.run(
        base + ["-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        env={**os.environ, **through.env()},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "3\n1\ta\n2\tb\n3\tc" in done.stdout


def test_psycopg_text_binary_cursor_copy_pipeline(through: Through) -> None:
    with psycopg.connect(through.dsn(), autocommit=True) as conn:
        conn.execute("create table items (id int primary key, v text, n numeric, b bytea)")
        with conn.cursor() as cur:
            cur.executemany(
                "insert into items values (%s, %s, %s, %s)",
                [(i, f"v{i}", i * 1.5, bytes([i % 256]) * 3) for i in range(200)],
            )
        # text results
        assert conn.execute("select v from items where id = %s", (7,)).fetchone() == ("v7",)
        # binary results
        with conn.cursor(binary=True) as cur:
            cur.execute("select id, b from items where id = %s", (5,))
            assert cur.fetchone() == (5, b"\x05\x05\x05")
        # server-side cursor (needs a transaction)
        conn.autocommit = False
        with conn.cursor(name="big") as cur:
            cur.itersize = 17
            cur.execute("select id from items order by id")
            assert [r[0] for r in cur] == list(range(200))
        conn.commit()
        conn.autocommit = True
        # COPY in and out
        with conn.cursor() as cur:
            with cur.copy("copy items (id, v) from stdin") as cp:
                for i in range(1000, 1100):
                    cp.write_row((i, f"copy{i}"))
            out = bytearray()
            with cur.copy(
                "copy (select id, v from items where id >= 1000 order by id) to stdout"
            ) as cp:
                for chunk in cp:
                    out += chunk
        assert out.decode().splitlines()[0] == "1000\tcopy1000"
        assert len(out.decode().splitlines()) == 100
        # pipeline mode
        with conn.pipeline():
            curs = [conn.execute("select %s::int * 2", (i,)) for i in range(50)]
        assert [c.fetchone()[0] for c in curs] == [i * 2 for i in range(50)]  # type: ignore[index]
        # an error in the middle, and the session still works after it
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("select * from nope")
        assert conn.execute("select 1").fetchone() == (1,)


def test_psycopg_transactions_and_notices(through: Through) -> None:
    with psycopg.connect(through.dsn()) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("create table tx (id int)")
        conn.execute("insert into tx values (1)")
        conn.rollback()
        conn.execute("do $$ begin raise notice 'hello from plpgsql'; end $$")
        conn.commit()
        assert "hello from plpgsql" in notices
    with psycopg.connect(through.dsn(), autocommit=True) as conn:
        # LISTEN/NOTIFY through the gateway
        conn.execute("listen chan")
        with psycopg.connect(through.dsn(), autocommit=True) as other:
            other.execute("notify chan, 'payload-1'")
        got = list(conn.notifies(timeout=5, stop_after=1))
        assert [(n.channel, n.payload) for n in got] == [("chan", "payload-1")]


def test_asyncpg_prepared_binary_executemany_and_timeout(through: Through) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=through.gw.port,
            user="whoever",
            password=through.key,
            database="main",
            ssl=False,
        )
        try:
            await conn.execute("create table a (id int primary key, t text, ts timestamptz)")
            await conn.executemany(
                "insert into a values ($1, $2, now())", [(i, f"row{i}") for i in range(300)]
            )
            stmt = await conn.prepare("select t from a where id = $1")
            for i in (1, 150, 299):
                assert await stmt.fetchval(i) == f"row{i}"
            rows = await conn.fetch("select id, ts from a where id < $1 order by id", 10)
            assert [r["id"] for r in rows] == list(range(10))
            # a timeout makes asyncpg send a CancelRequest through callgate
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await conn.execute("select pg_sleep(30)", timeout=1.0)
            assert time.monotonic() - started < 5
            assert await conn.fetchval("select 7") == 7
        finally:
            await conn.close()

    asyncio.run(main())


def test_cancel_returns_57014_quickly(through: Through) -> None:
    with psycopg.connect(through.dsn(), autocommit=True) as conn:
        import threading

        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled) as info:
            conn.execute("select pg_sleep(30)")
        assert time.monotonic() - started < 2.5
        assert info.value.sqlstate == "57014"
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_modes_zero_failures(through: Through, mode: str) -> None:
    direct = through.server.dsn(through.database)
    init = subprocess.run(
        ["pgbench", "-i", "-s", "1", "-q", direct], capture_output=True, text=True, timeout=120
    )
    assert init.returncode == 0, init.stderr
    done = run(
        [
            "pgbench",
            "-h",
            "127.0.0.1",
            "-p",
            str(through.gw.port),
            "-M",
            mode,
            "-c",
            "4",
            "-j",
            "2",
            "-t",
            "50",
            "main",
        ],
        through,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    processed = re.search(r"number of transactions actually processed: (\d+)", done.stdout)
    assert processed and int(processed.group(1)) == 200
    failed = re.search(r"number of failed transactions: (\d+)", done.stdout)
    assert failed is None or int(failed.group(1)) == 0


def test_statements_are_recorded(through: Through) -> None:
    with psycopg.connect(through.dsn(application_name="recorder-test"), autocommit=True) as conn:
        conn.execute("select %s::text as greeting", ("hello-param",))
        conn.execute("select 1; select 2")
    deadline = time.monotonic() + 10
    while True:
        sessions = [s for s in through.sessions() if s.get("application_name") == "recorder-test"]
        if sessions and sessions[0].get("ended_at"):
            break
        assert time.monotonic() < deadline, "session end not recorded"
        time.sleep(0.2)
    detail = through.session(sessions[0]["id"])
    text = str(detail)
    assert "hello-param" in text
    assert "select 1; select 2" in text
    assert "fn1" in text
