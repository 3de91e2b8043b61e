"""Every corpus case the reference policy allows really runs on the corpus schema.

Keeps the corpus honest for the end-to-end replay through a gateway: an allowed case that fails
on PostgreSQL itself would make that replay report a policy problem that is not one.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.policy.corpus import Case, load_corpus
from tests.support.pgcluster import PgServer

pytestmark = pytest.mark.integration


def _run(conn: psycopg.Connection[tuple[object, ...]], case: Case) -> None:
    for name, body in case.prepared.items():
        conn.execute(f"PREPARE {name} AS {body}")
    if case.sql.lstrip().upper().startswith("COPY"):
        with conn.cursor() as cur, cur.copy(case.sql) as copy:
            for _ in copy:
                pass
        return
    conn.execute(case.sql)  # no parameters: the simple query protocol, batches allowed


def test_allowed_cases_run(pg_local: PgServer, pg_db: str) -> None:
    corpus = load_corpus()
    with psycopg.connect(pg_local.dsn(pg_db), autocommit=True) as conn:
        conn.execute(corpus.setup_sql)
    failures: list[str] = []
    runnable = [case for case in corpus.cases if case.runnable]
    assert len(runnable) >= 40
    for case in runnable:
        with psycopg.connect(pg_local.dsn(pg_db), autocommit=True) as conn:
            try:
                _run(conn, case)
            except psycopg.Error as exc:
                failures.append(f"{case.id}: {str(exc).strip().splitlines()[0]}")
    assert not failures, "allowed corpus cases that fail on the server:\n" + "\n".join(failures)
