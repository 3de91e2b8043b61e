"""Per-statement policy enforced in both query protocols, against real servers and clients.

The SQL corpus of tests/policy runs end to end through callgate with psql (simple protocol),
psycopg (extended protocol) and asyncpg (prepared statements) against a private cluster that logs
every statement: no refused statement appears in the server's log, allowed ones return results.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from typing import Any

import asyncpg
import psycopg
import pytest
import yaml

from tests.conftest import GatewayFactory
from tests.engines.postgres.conftest import MakeThrough
from tests.policy.corpus import CORPUS_PATH, Case, load_corpus
from tests.support.gateway import Gateway
from tests.support.pgcluster import PgCluster

pytestmark = pytest.mark.integration

CORPUS = load_corpus()


@pytest.fixture(scope="module")
def corpus_gateway(pg_private: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Any:
    raw = yaml.safe_load(CORPUS_PATH.read_text())
    with psycopg.connect(pg_private.dsn(), autocommit=True) as conn:
        conn.execute(CORPUS.setup_sql)
    return raw


def start_corpus_gateway(
    gateway: GatewayFactory, cluster: PgCluster, raw: Any
) -> tuple[Gateway, str]:
    config = {
        "connections": [
            {
                "name": "app",
                "protocol": "postgres",
                "upstream": {
                    "host": "localhost",
                    "port": cluster.port,
                    "database": cluster.database,
                    "user": cluster.user,
                    "password": "env:CG_TEST_UPSTREAM_PASSWORD",
                    "tls": "verify-full",
                    "ca_file": str(cluster.ca_file),
                    # callgate's own pool reset (DISCARD ALL) would show in the server log
                    # beside the corpus's refused DISCARD ALL
                    "pool": {"max_idle": 0},
                },
            }
        ],
        "policies": raw["config"]["policies"],
        # Reviews answer at once (deferred): nobody approves here, and a hold would wait out
        # its timeout for every review case. Holds have their own tests (test_approvals_e2e).
        "approvals": [{**a, "mode": "deferred"} for a in raw["config"]["approvals"]],
    }
    gw = gateway(config, env={"CG_TEST_UPSTREAM_PASSWORD": cluster.password})
    return gw, gw.create_key(CORPUS.principal.subject, sorted(CORPUS.principal.groups))


def reached_server(case: Case, log: str) -> bool:
    """Did the server log this exact statement (run, executed, or failed)?"""
    import re

    pattern = r"(statement: |execute [^:\n]*: |STATEMENT:  )" + re.escape(case.sql.strip()) + r"\n"
    return re.search(pattern, log + "\n") is not None


def test_corpus_through_psql_simple_protocol(
    gateway: GatewayFactory, pg_private: PgCluster, corpus_gateway: Any
) -> None:
    gw, key = start_corpus_gateway(gateway, pg_private, corpus_gateway)
    offset = pg_private.log_offset()
    env = {**os.environ, "PGPASSWORD": key, "PGSSLMODE": "disable"}
    base = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(gw.port)]
    base += ["-d", "app", "-U", "alice"]
    problems: list[str] = []
    refused: list[Case] = []
    for case in CORPUS.cases:
        if not case.sql.strip() or "\0" in case.sql:  # no client can send a NUL in SQL text
            continue
        argv = list(base)
        if case.search_path != ("public",):
            # the session's path changes: callgate no longer knows it and fails closed
            argv += ["-c", f"SET search_path TO {', '.join(case.search_path)}"]
        for name, body in case.prepared.items():
            argv += ["-c", f"PREPARE {name} AS {body}"]
        argv += ["-c", case.sql]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        allowed = case.decision == "allow"
        if allowed and case.run and not case.prepared and done.returncode != 0:
            problems.append(f"{case.id}: allowed but failed: {done.stderr.strip()[:200]}")
        if not allowed:
            refused.append(case)
            if done.returncode == 0:
                problems.append(f"{case.id}: {case.decision} but it ran")
            elif "syntax error" in done.stderr or "callgate_refused" in done.stderr:
                problems.append(f"{case.id}: the stand-in error leaked: {done.stderr[:200]}")
            elif (
                not case.prepared
                and "42501" not in done.stderr
                and "denied" not in done.stderr
                and "approval" not in done.stderr
            ):
                problems.append(f"{case.id}: unexpected error: {done.stderr.strip()[:200]}")
    log = pg_private.read_log(offset)
    allowed_sql = {c.sql.strip() for c in CORPUS.cases if c.decision == "allow"}
    for case in refused:
        if case.sql.strip() not in allowed_sql and reached_server(case, log):
            problems.append(f"{case.id}: refused statement reached the server log")
    assert not problems, "\n".join(problems)
    assert "callgate_refused_" in log  # the stand-ins did run, in place of refused statements


def test_corpus_through_psycopg_and_asyncpg(
    gateway: GatewayFactory, pg_private: PgCluster, corpus_gateway: Any
) -> None:
    gw, key = start_corpus_gateway(gateway, pg_private, corpus_gateway)
    offset = pg_private.log_offset()
    single = [
        c
        for c in CORPUS.cases
        if c.sql.strip()
        and "\0" not in c.sql
        and (c.statement_count or 1) == 1
        and not c.prepared
        and c.search_path == ("public",)
        and not c.sets_search_path  # one shared session: a changed path fails closed after it
        and not ({"copy_to", "copy_from"} & c.kinds and c.decision == "allow")  # needs copy()
        # A reviewed statement's Parse goes to the server (the review binds to its parameters,
        # decided at Execute): one the server itself rejects fails there, before any review.
        and not (c.decision == "review" and not c.run)
    ]
    problems: list[str] = []
    dsn = f"host=127.0.0.1 port={gw.port} dbname=app user=alice password='{key}' sslmode=disable"
    with psycopg.connect(dsn, autocommit=True) as conn:
        for case in single:
            try:
                conn.execute(case.sql.rstrip().rstrip(";"), prepare=False)  # type: ignore[arg-type]
                ok = True
                err = ""
            except psycopg.Error as exc:
                ok, err = False, f"{exc.sqlstate} {exc}"
            if case.decision == "allow" and case.run and not ok and "42501" in err:
                problems.append(f"psycopg {case.id}: allowed but refused: {err[:200]}")
            if case.decision != "allow" and ok:
                problems.append(f"psycopg {case.id}: {case.decision} but it ran")
            if case.decision != "allow" and not ok and not err.startswith("42501"):
                problems.append(f"psycopg {case.id}: expected 42501, got {err[:200]}")
        assert conn.execute("select 1").fetchone() == (1,)

    async def via_asyncpg() -> None:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=gw.port, user="alice", password=key, database="app", ssl=False
        )
        try:
            for case in single:
                try:
                    stmt = await conn.prepare(case.sql)
                    await stmt.fetch()
                    ok, err = True, ""
                except asyncpg.PostgresError as exc:
                    ok, err = False, f"{exc.sqlstate} {exc}"
                if case.decision != "allow" and ok:
                    problems.append(f"asyncpg {case.id}: {case.decision} but it ran")
                if case.decision != "allow" and not ok and not err.startswith("42501"):
                    problems.append(f"asyncpg {case.id}: expected 42501, got {err[:200]}")
            assert await conn.fetchval("select 2") == 2
        finally:
            await conn.close()

    asyncio.run(via_asyncpg())
    log = pg_private.read_log(offset)
    for case in single:
        if case.decision != "allow" and reached_server(case, log):
            problems.append(f"{case.id}: refused statement reached the server log")
    assert not problems, "\n".join(problems)


TX_POLICY = {
    "name": "writers",
    "subjects": {"groups": ["apps"]},
    "connections": ["main"],
    "rules": [
        {"allow": {"kinds": ["select", "insert", "transaction", "ddl", "session"]}},
        {"deny": {"kinds": ["delete"]}},
    ],
}


def test_denied_statement_fails_the_transaction(make_through: MakeThrough) -> None:
    th = make_through({"policies": [TX_POLICY]})
    with psycopg.connect(th.dsn(), autocommit=True) as conn:
        conn.execute("create table t (id int)")
    for simple in (True, False):
        with psycopg.connect(th.dsn()) as conn:
            conn.execute("insert into t values (1)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                if simple:  # ClientCursor binds client-side and uses the simple protocol
                    psycopg.ClientCursor(conn).execute("delete from t where id = 1")
                else:
                    conn.execute("delete from t where id = %s", (1,))
            assert "writers" in str(info.value)
            # the caller and the server agree: the transaction is aborted
            with pytest.raises(psycopg.errors.InFailedSqlTransaction):
                conn.execute("select 1")
            conn.rollback()
        with psycopg.connect(th.dsn()) as conn:
            assert conn.execute("select count(*) from t").fetchone() == (0,)


def test_begin_insert_denied_delete_commit_commits_nothing(make_through: MakeThrough) -> None:
    th = make_through({"policies": [TX_POLICY]})
    with psycopg.connect(th.dsn(), autocommit=True) as conn:
        conn.execute("create table t2 (id int)")
    done = subprocess.run(
        ["psql", "-X", "-h", "127.0.0.1", "-p", str(th.gw.port), "-d", "main"],
        input="BEGIN;\nINSERT INTO t2 VALUES (1);\nDELETE FROM t2;\nCOMMIT;\n",
        capture_output=True,
        text=True,
        env={**os.environ, **th.env()},
        timeout=60,
    )
    assert "ROLLBACK" in done.stdout, done.stdout + done.stderr  # COMMIT of a failed transaction
    assert "writers" in done.stderr
    with psycopg.connect(th.dsn()) as conn:
        assert conn.execute("select count(*) from t2").fetchone() == (0,)


def test_pipeline_with_a_refused_statement_in_the_middle(make_through: MakeThrough) -> None:
    th = make_through({"policies": [TX_POLICY]})
    with psycopg.connect(th.dsn(), autocommit=True) as conn:
        conn.execute("create table t3 (id int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.pipeline():
            conn.execute("insert into t3 values (%s)", (1,))
            conn.execute("delete from t3 where id = %s", (1,))
            conn.execute("insert into t3 values (%s)", (2,))
        # the session is usable and in step afterwards
        assert conn.execute("select 5").fetchone() == (5,)
        rows = conn.execute("select id from t3 order by id").fetchall()
    # one implicit transaction per pipeline sync: psycopg syncs per statement in autocommit
    assert (2,) not in rows or (1,) in rows


def test_reload_swaps_policy_for_live_sessions(make_through: MakeThrough) -> None:
    th = make_through({"policies": [TX_POLICY]})
    with psycopg.connect(th.dsn(), autocommit=True) as live:
        assert live.execute("select 1").fetchone() == (1,)
        config = dict(th.gw.config)
        config["policies"] = [
            {**TX_POLICY, "rules": [{"allow": {"kinds": ["session", "transaction"]}}]}
        ]
        th.gw.write_config(config)
        th.gw.reload()
        import time

        deadline = time.monotonic() + 10
        while True:
            try:
                live.execute("select 1")
            except psycopg.errors.InsufficientPrivilege:
                break
            assert time.monotonic() < deadline, "reloaded policy not applied to the live session"
            time.sleep(0.2)
