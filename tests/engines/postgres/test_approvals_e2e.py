"""A statement waits inside the live session until a human approves it (issue 5, end to end)."""

from __future__ import annotations

import asyncio
import json
import secrets
import select
import statistics
import subprocess
import threading
import time
from typing import Any

import asyncpg
import httpx
import psycopg
import pytest

from callgate.protocols.postgres import messages as m
from tests.engines.postgres.conftest import MakeThrough, Through
from tests.engines.postgres.test_refusals import error_code, login
from tests.support.gateway import Gateway
from tests.support.pgcluster import PgServer

pytestmark = pytest.mark.integration

POLICY = {
    "name": "apps write with review",
    "subjects": {"groups": ["apps"]},
    "connections": ["main"],
    "rules": [
        {"allow": {"kinds": ["select", "transaction", "session", "ddl"]}},
        {"review": {"kinds": ["insert", "update", "delete"]}},
    ],
}


def approvals(mode: str = "hold", timeout: str = "20s", **extra: Any) -> list[dict[str, Any]]:
    return [
        {
            "connections": ["main"],
            "approvers": {"groups": ["dba"]},
            "mode": mode,
            "timeout": timeout,
            **extra,
        }
    ]


def cli_as(gw: Gateway, credential: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``callgate ARGS`` as the holder of ``credential`` (in the environment, not argv)."""
    return subprocess.run(
        [str(gw.exe), *args, "-c", str(gw.config_path)],
        capture_output=True,
        text=True,
        env={**gw.env, "CALLGATE_CREDENTIAL": credential},
        timeout=60,
        check=False,
    )


def pending(
    gw: Gateway, credential: str, at_least: int = 1, timeout: float = 20
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        done = cli_as(gw, credential, "reviews", "list", "--json")
        assert done.returncode == 0, done.stderr
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        if len(rows) >= at_least:
            return rows
        assert time.monotonic() < deadline, "no pending review appeared"
        time.sleep(0.2)


LISTENERS = [
    {"protocol": "postgres", "allow_plaintext": True},
    {"protocol": "api", "allow_plaintext": True},
]


def setup(make_through: MakeThrough, **kw: Any) -> tuple[Through, str]:
    th = make_through({"policies": [POLICY], "approvals": approvals(**kw), "listeners": LISTENERS})
    dba = th.gw.create_key("dba-1", ["dba"])
    with psycopg.connect(th.server.dsn(th.database), autocommit=True) as admin:
        admin.execute("create table items (id int primary key, v text)")
    return th, dba


def count(th: Through) -> int:
    with psycopg.connect(th.server.dsn(th.database)) as admin:
        return int(admin.execute("select count(*) from items").fetchone()[0])  # type: ignore[index]


def held_insert(th: Through, row_id: int) -> tuple[threading.Thread, dict[str, Any]]:
    """psql-like client inserting a row (a statement the policy holds for review), on a thread;
    its ``rowcount`` lands in the returned dict once the statement is released."""
    result: dict[str, Any] = {}

    def client() -> None:
        with psycopg.connect(th.dsn(), autocommit=True) as conn:
            cur = conn.execute("insert into items values (%s, %s)", (row_id, "held"))
            result["rowcount"] = cur.rowcount

    t = threading.Thread(target=client)
    t.start()
    return t, result


def test_held_insert_approved_by_cli_gets_its_result(make_through: MakeThrough) -> None:
    th, dba = setup(make_through)
    t, result = held_insert(th, 1)
    review = pending(th.gw, dba)[0]
    assert "insert into items" in json.dumps(review)
    # the requester can never approve its own request
    own = cli_as(th.gw, th.key, "reviews", "approve", review["id"])
    assert own.returncode != 0
    done = cli_as(th.gw, dba, "reviews", "approve", review["id"], "--reason", "looks fine")
    assert done.returncode == 0, done.stderr
    t.join(30)
    assert result.get("rowcount") == 1
    assert count(th) == 1


def test_denied_and_timed_out_holds_write_nothing(make_through: MakeThrough) -> None:
    th, dba = setup(make_through, timeout="8s")
    errors: list[BaseException] = []

    def client(value: int) -> None:
        try:
            with psycopg.connect(th.dsn(), autocommit=True) as conn:
                conn.execute("insert into items values (%s, 'x')", (value,))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=client, args=(1,))
    t.start()
    review = pending(th.gw, dba)[0]
    no_reason = cli_as(th.gw, dba, "reviews", "deny", review["id"])
    assert no_reason.returncode != 0  # a reason is required to deny
    done = cli_as(th.gw, dba, "reviews", "deny", review["id"], "--reason", "not during the freeze")
    assert done.returncode == 0, done.stderr
    t.join(30)
    assert isinstance(errors[0], psycopg.errors.InsufficientPrivilege)
    assert "not during the freeze" in str(errors[0]) and review["id"] in str(errors[0])
    # nobody decides: the hold times out
    errors.clear()
    started = time.monotonic()
    client(2)
    assert isinstance(errors[0], psycopg.errors.InsufficientPrivilege)
    assert time.monotonic() - started < 15
    assert count(th) == 0


def test_hold_with_asyncpg_prepared_statement(make_through: MakeThrough) -> None:
    th, dba = setup(make_through)

    async def main() -> str:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=th.gw.port,
            user="x",
            password=th.key,
            database="main",
            ssl=False,
        )
        try:
            stmt = await conn.prepare("insert into items values ($1, $2)")
            await stmt.fetch(7, "prepared")
            return str(await conn.fetchval("select v from items where id = 7"))
        finally:
            await conn.close()

    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(v=asyncio.run(main())))
    t.start()
    review = pending(th.gw, dba)[0]
    assert cli_as(th.gw, dba, "reviews", "approve", review["id"]).returncode == 0
    t.join(30)
    assert result.get("v") == "prepared"


def test_deferred_mode_one_use(make_through: MakeThrough) -> None:
    th, dba = setup(make_through, mode="deferred")
    with psycopg.connect(th.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute("insert into items values (%s, 'later')", (5,))
        assert "rv_" in str(info.value)
    review = pending(th.gw, dba)[0]
    assert cli_as(th.gw, dba, "reviews", "approve", review["id"]).returncode == 0
    with psycopg.connect(th.dsn(), autocommit=True) as conn:
        assert conn.execute("insert into items values (%s, 'later')", (5,)).rowcount == 1
        # used once: the same statement again, or another one, is refused
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("insert into items values (%s, 'later')", (5,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("insert into items values (%s, 'other')", (6,))
    assert count(th) == 1


def test_fifty_holds_approved_in_a_burst(make_through: MakeThrough) -> None:
    th, dba = setup(make_through, timeout="60s")
    results: dict[int, int] = {}
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            with psycopg.connect(th.dsn(), autocommit=True) as conn:
                results[i] = conn.execute(
                    "insert into items values (%s, %s) returning id", (i, f"v{i}")
                ).fetchone()[0]  # type: ignore[index]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    reviews = pending(th.gw, dba, at_least=50, timeout=60)

    async def approve_all() -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{th.gw.ports['api']}") as http:
            answers = await asyncio.gather(
                *(
                    http.post(
                        f"/api/reviews/{r['id']}/approve",
                        headers={"Authorization": f"Bearer {dba}"},
                        json={},
                    )
                    for r in reviews
                )
            )
            assert all(a.status_code == 200 for a in answers), [a.text for a in answers]

    asyncio.run(approve_all())
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert results == {i: i for i in range(50)}  # each session got its own row back


def test_non_approver_refused_by_api_and_latency(make_through: MakeThrough) -> None:
    th = make_through(
        {
            "policies": [POLICY],
            "approvals": approvals(),
            "listeners": LISTENERS,
        }
    )
    dba = th.gw.create_key("dba-1", ["dba"])
    with psycopg.connect(th.server.dsn(th.database), autocommit=True) as admin:
        admin.execute("create table items (id int primary key, v text)")
    api = f"http://127.0.0.1:{th.gw.ports['api']}"
    latencies: list[float] = []
    for i in range(7):
        got: dict[str, float] = {}

        def client(i: int = i, got: dict[str, float] = got) -> None:
            with psycopg.connect(th.dsn(), autocommit=True) as conn:
                conn.execute("insert into items values (%s, 'x')", (i,))
                got["done"] = time.monotonic()

        t = threading.Thread(target=client)
        t.start()
        review = pending(th.gw, dba)[0]
        with httpx.Client(base_url=api) as http:
            if i == 0:
                outsider = http.post(
                    f"/api/reviews/{review['id']}/approve",
                    headers={"Authorization": f"Bearer {th.key}"},
                    json={},
                )
                assert outsider.status_code == 403
            r = http.post(
                f"/api/reviews/{review['id']}/approve",
                headers={"Authorization": f"Bearer {dba}"},
                json={},
            )
            returned = time.monotonic()
            assert r.status_code == 200, r.text
        t.join(30)
        latencies.append(got["done"] - returned)
    median_ms = statistics.median(latencies) * 1000
    print(f"approval → result median {median_ms:.1f} ms over {len(latencies)} holds")


def test_access_window_applies_its_policy_then_ends_the_session(make_through: MakeThrough) -> None:
    read_only = {
        "name": "fn reads",
        "subjects": {"groups": ["apps"]},
        "connections": ["main"],
        "rules": [{"allow": {"kinds": ["select", "session", "transaction"]}}],
    }
    oncall_write = {
        "name": "oncall-write",
        "subjects": {"groups": ["oncall"]},
        "connections": ["main"],
        "rules": [{"allow": {"kinds": ["select", "insert", "session", "transaction"]}}],
    }
    th = make_through(
        {
            "policies": [read_only, oncall_write],
            "approvals": approvals(access={"grant_policy": "oncall-write"}),
            "listeners": LISTENERS,
        }
    )
    dba = th.gw.create_key("dba-1", ["dba"])
    with psycopg.connect(th.server.dsn(th.database), autocommit=True) as admin:
        admin.execute("create table items (id int primary key, v text)")
    with (
        psycopg.connect(th.dsn(), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("insert into items values (1, 'no window yet')")
    asked = cli_as(
        th.gw,
        th.key,
        "access",
        "request",
        "main",
        "--duration",
        "4s",
        "--reason",
        "incident",
        "--json",
    )
    assert asked.returncode == 0, asked.stderr
    review_id = json.loads(asked.stdout)["id"]
    assert cli_as(th.gw, dba, "reviews", "approve", review_id).returncode == 0
    conn = psycopg.connect(th.dsn(), autocommit=True)
    started = time.monotonic()
    assert conn.execute("insert into items values (2, 'inside the window')").rowcount == 1
    with pytest.raises(psycopg.OperationalError) as info:
        while time.monotonic() - started < 30:
            conn.execute("select 1")
            time.sleep(0.2)
    assert "access window" in str(info.value)
    conn.close()
    with (  # after the window: read-only again
        psycopg.connect(th.dsn(), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("insert into items values (3, 'after')")


def test_the_end_of_a_session_with_client_bytes_unread_still_reaches_the_client(
    make_through: MakeThrough,
) -> None:
    """A statement is held, and the client pipelines more behind it: callgate does not read on
    while the statement waits. Then the key expires and callgate ends the session with a FATAL
    error. Closing a socket that holds unread bytes resets the connection, and a reset can cost
    the client the error; callgate reads and drops what is left first, so the client reads the
    error and a clean end of stream."""
    th, _ = setup(make_through)
    done = th.gw.cli("keys", "create", "brief", "--groups", "apps", "--expires", "6s", "--json")
    assert done.returncode == 0, done.stderr
    s = login(th.gw.port, json.loads(done.stdout)["key"])
    try:
        s.sendall(m.encode_query("insert into items values (1, 'held')"))
        s.sendall(m.encode_query("select 1") * 40_000)  # 560 KB: more than callgate buffers
        readable, _, _ = select.select([s], [], [], 60)
        assert readable, "callgate did not end the session of an expired key"
        time.sleep(0.3)
        data = b""
        while chunk := s.recv(65536):  # a reset raises ConnectionResetError here
            data += chunk
        errors = []
        while data:
            kind, length = data[0], int.from_bytes(data[1:5], "big")
            assert kind == ord("E"), data[:40]
            errors.append(data[5 : 1 + length])
            data = data[1 + length :]
        assert errors and error_code(errors[-1]) == "57P01"
        assert b"credential expired" in errors[-1]
    finally:
        s.close()
    assert count(th) == 0


def test_held_insert_approved_on_a_postgresql_store(
    make_through: MakeThrough, pg_local: PgServer
) -> None:
    """Approvals with the audit and review store in PostgreSQL: the gateway holds the statement,
    the CLI (its own process, the same store) lists and approves it, the client gets its result,
    and the decision is in the audit chain."""
    store_db = f"cg_store_{secrets.token_hex(6)}"
    with pg_local.connect() as admin:
        admin.execute(f'CREATE DATABASE "{store_db}"')
    try:
        url = f"postgresql://{pg_local.user}@{pg_local.host}:{pg_local.port}/{store_db}"
        th = make_through(
            {
                "gateway": {"store": url, "secret_key": "env:CG_TEST_SECRET_KEY"},
                "policies": [POLICY],
                "approvals": approvals(),
                "listeners": LISTENERS,
            },
            env={"CG_TEST_SECRET_KEY": secrets.token_hex(32)},
        )
        dba = th.gw.create_key("dba-1", ["dba"])
        with psycopg.connect(th.server.dsn(th.database), autocommit=True) as admin:
            admin.execute("create table items (id int primary key, v text)")
        t, result = held_insert(th, 7)
        review = pending(th.gw, dba)[0]
        done = cli_as(th.gw, dba, "reviews", "approve", review["id"], "--reason", "ok")
        assert done.returncode == 0, done.stderr
        t.join(30)
        assert result.get("rowcount") == 1
        assert count(th) == 1
        th.gw.stop()  # the review events reach the chain at the latest when it stops
        with psycopg.connect(pg_local.dsn(store_db)) as store:
            types = {r[0] for r in store.execute("SELECT type FROM events")}
        assert {"review.requested", "review.approved"} <= types, types
    finally:
        with pg_local.connect() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{store_db}" WITH (FORCE)')
