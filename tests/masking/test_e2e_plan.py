"""The masking core on real PostgreSQL output: statements run on the server, their exact bytes
(captured with a raw protocol client) go through lineage, plan and rewriters.

What the gateway adds on top (psql/psycopg/asyncpg through callgate) is tested with the engine.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from callgate.errors import StatementDenied
from callgate.masking import (
    CATALOG_SQL,
    CatalogSnapshot,
    MaskRules,
    SessionLineage,
    decode_copy_out_response,
    decode_row_description,
    resolve_columns,
    scrub_error_fields,
    statement_lineages,
)
from callgate.masking.rows import RowRewriter
from tests.masking.helpers import parse_row, rules
from tests.masking.pgwire import RawClient
from tests.support.pgcluster import PgServer

pytestmark = pytest.mark.integration

EMAILS = [f"person{i}@example.com" for i in range(5)]
CARD = "4111111111111111"
SETUP = f"""
CREATE TABLE customers (id int PRIMARY KEY, email text UNIQUE, name text, card bigint,
                        note text, doc jsonb);
CREATE VIEW v_customers AS SELECT id, email FROM customers;
CREATE FUNCTION get_email(i int) RETURNS text LANGUAGE sql AS
  $$ SELECT email FROM customers WHERE id = i $$;
CREATE FUNCTION all_emails() RETURNS SETOF text LANGUAGE sql AS $$ SELECT email FROM customers $$;
INSERT INTO customers
SELECT i, 'person' || i || '@example.com', 'Name ' || i, {CARD},
       'reach me at other' || i || '@mail.example.org, thanks',
       jsonb_build_object('contact', 'person' || i || '@example.com', 'n', i)
FROM generate_series(0, 4) AS i;
"""


@pytest.fixture
def client(pg_local: PgServer, pg_db: str) -> Iterator[RawClient]:
    with pg_local.connect(pg_db) as conn:
        conn.execute(SETUP)
    raw = RawClient(pg_local.host, pg_local.port, pg_local.user, pg_db)
    try:
        yield raw
    finally:
        raw.close()


@pytest.fixture
def snapshot(pg_local: PgServer, pg_db: str, client: RawClient) -> CatalogSnapshot:
    with pg_local.connect(pg_db) as conn:
        rows = conn.execute(CATALOG_SQL).fetchall()
    return CatalogSnapshot.from_rows(rows, ["public"])


EMAIL_RULES = rules([("customers.email", "partial")], [(("email", "credit_card"), "redact")])
COLUMN_ONLY = rules([("customers.email", "redact")])


def masked_results(
    client: RawClient, snapshot: CatalogSnapshot, mask: MaskRules, sql: str, binary: bool = False
) -> list[tuple[RowRewriter, list[bytes], list[bytes]]]:
    """For each result of ``sql``: the rewriter, the server's rows and the rewritten rows."""
    session = SessionLineage()
    lineages = [session.effective(x) for x in statement_lineages(sql, snapshot.columns_of)]
    messages = client.extended(sql) if binary else client.query(sql)
    errors = [msg for msg in messages if msg.type == "E"]
    assert not errors, errors
    results: list[tuple[RowRewriter, list[bytes], list[bytes]]] = []
    statement = 0
    current: RowRewriter | None = None
    for msg in messages:
        if msg.type == "T":
            desc = decode_row_description(msg.body)
            plan = mask.plan(lineages[min(statement, len(lineages) - 1)])
            current = plan.for_row_description(desc, resolve_columns(desc, snapshot.by_attr))
            current.rewrite_row_description(msg.body)
            results.append((current, [], []))
        elif msg.type == "D":
            assert current is not None
            results[-1][1].append(msg.body)
            results[-1][2].append(current.rewrite_data_row(msg.body))
        elif msg.type == "C":
            statement += 1
            current = None
    return results


def leaked(rows: list[bytes]) -> list[str]:
    text = b"".join(rows).lower()
    secrets = [*EMAILS, CARD, *(f"other{i}@mail.example.org" for i in range(5))]
    return [s for s in secrets if s.encode() in text]


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id, email, name, card, note, doc FROM customers",
        "SELECT * FROM customers",
        "SELECT lower(email) AS e, email || '' AS f FROM customers",
        "WITH x AS (SELECT email AS contact FROM customers) SELECT contact FROM x",
        "SELECT s.e FROM (SELECT upper(email) AS e FROM customers) s",
        "SELECT (SELECT email FROM customers c2 WHERE c2.id = c.id) FROM customers c",
        "SELECT * FROM v_customers",
        "SELECT get_email(id) FROM customers",
        "SELECT * FROM all_emails()",
        "SELECT row_to_json(c)::text FROM customers c",
        "UPDATE customers SET name = name RETURNING email, note",
        "SELECT name FROM customers UNION ALL SELECT email FROM customers",
    ],
)
def test_no_masked_value_leaves(
    client: RawClient, snapshot: CatalogSnapshot, sql: str, binary: bool
) -> None:
    results = masked_results(client, snapshot, EMAIL_RULES, sql, binary)
    assert results and results[0][1], "the statement returned rows"
    for _, before, after in results:
        assert leaked(before), "the test data has secrets in it"
        assert leaked(after) == []


def test_column_rule_alone_through_every_path(client: RawClient, snapshot: CatalogSnapshot) -> None:
    """No detectors: lineage and origins alone keep the emails in."""
    for sql in [
        "SELECT lower(email) FROM customers",
        "WITH x AS (SELECT email FROM customers) SELECT * FROM x",
        "SELECT * FROM v_customers",
        "SELECT get_email(id) FROM customers",
        "SELECT jsonb_build_object('e', email)::text FROM customers",
        "DELETE FROM customers WHERE id = 4 RETURNING email",
    ]:
        for _, before, after in masked_results(client, snapshot, COLUMN_ONLY, sql):
            assert any(e.encode() in b"".join(before).lower() for e in EMAILS), sql
            assert not any(e.encode() in b"".join(after).lower() for e in EMAILS), sql


def test_unmasked_columns_are_byte_identical(client: RawClient, snapshot: CatalogSnapshot) -> None:
    for binary in (False, True):
        [(rw, before, after)] = masked_results(
            client, snapshot, COLUMN_ONLY, "SELECT id, email, name, card FROM customers", binary
        )
        assert rw.masked == (False, True, False, False)
        for b, a in zip(before, after, strict=True):
            pb, pa = parse_row(b), parse_row(a)
            assert [pb[0], pb[2], pb[3]] == [pa[0], pa[2], pa[3]]
            assert pa[1] == b"[REDACTED]"


def test_rows_without_masked_columns_pass_as_they_are(
    client: RawClient, snapshot: CatalogSnapshot
) -> None:
    [(rw, before, after)] = masked_results(
        client, snapshot, COLUMN_ONLY, "SELECT id, name FROM customers"
    )
    assert rw.is_noop
    assert all(a is b for a, b in zip(after, before, strict=True))


def test_cursor_fetch(client: RawClient, snapshot: CatalogSnapshot) -> None:
    sql = (
        "BEGIN; DECLARE c CURSOR FOR SELECT lower(email), id FROM customers; "
        "FETCH 3 FROM c; FETCH ALL FROM c; COMMIT"
    )
    results = masked_results(client, snapshot, COLUMN_ONLY, sql)
    assert len(results) == 2
    for rw, before, after in results:
        assert rw.masked == (True, False)
        assert leaked(before) and not leaked(after)


def test_on_unknown_deny(snapshot: CatalogSnapshot) -> None:
    deny = rules([("customers.email", "redact")], deny_unknown=True)
    for sql in ("SELECT * FROM v_customers", "SELECT get_email(1)", "SELECT * FROM all_emails()"):
        with pytest.raises(StatementDenied):
            deny.plan(statement_lineages(sql, snapshot.columns_of)[0])


def test_unique_violation_detail(client: RawClient, snapshot: CatalogSnapshot) -> None:
    sql = f"INSERT INTO customers (id, email) VALUES (99, '{EMAILS[1]}')"
    [error] = [m for m in client.query(sql) if m.type == "E"]
    assert EMAILS[1].encode() in error.body  # the server does put it there
    plan = COLUMN_ONLY.plan(statement_lineages(sql, snapshot.columns_of)[0])
    scrubbed = scrub_error_fields(error.body, plan)
    assert EMAILS[1].encode() not in scrubbed and b"23505" in scrubbed
    # an UPDATE that does not name the column still hits the email's unique index
    sql = f"UPDATE customers SET email = '{EMAILS[2]}' WHERE id = 1"
    [error] = [m for m in client.query(sql) if m.type == "E"]
    plan = rules([("customers.email", "hash")]).plan(
        statement_lineages("UPDATE customers SET name = ''", snapshot.columns_of)[0]
    )
    assert EMAILS[2].encode() not in scrub_error_fields(error.body, plan)


def test_cast_error_and_raise_notice(client: RawClient, snapshot: CatalogSnapshot) -> None:
    sql = "SELECT name::int FROM customers"
    [error] = [m for m in client.query(sql) if m.type == "E"]
    assert b"Name 0" in error.body
    r = rules([("customers.name", "redact")])
    assert b"Name 0" not in scrub_error_fields(
        error.body, r.plan(statement_lineages(sql, snapshot.columns_of)[0])
    )
    do = "DO $$ BEGIN RAISE NOTICE 'leak %', (SELECT email FROM customers WHERE id = 3); END $$"
    [notice] = [m for m in client.query(do) if m.type == "N"]
    assert EMAILS[3].encode() in notice.body
    plan = COLUMN_ONLY.plan(statement_lineages(do, snapshot.columns_of)[0])
    assert EMAILS[3].encode() not in scrub_error_fields(notice.body, plan)


@pytest.mark.parametrize(
    "sql",
    [
        "COPY (SELECT id, email, note FROM customers) TO STDOUT",
        "COPY (SELECT id, lower(email), note FROM customers) TO STDOUT (FORMAT csv, HEADER)",
        "COPY customers TO STDOUT",
        "COPY customers (email) TO STDOUT (FORMAT binary)",
    ],
)
def test_copy_to_stdout(client: RawClient, snapshot: CatalogSnapshot, sql: str) -> None:
    messages = client.query(sql)
    [response] = [m for m in messages if m.type == "H"]
    _, formats = decode_copy_out_response(response.body)
    lineage = statement_lineages(sql, snapshot.columns_of)[0]
    mask = COLUMN_ONLY if "binary" in sql else EMAIL_RULES
    rw = mask.plan(lineage).for_copy(lineage.copy, len(formats))
    data = [m.body for m in messages if m.type == "d"]
    out = [rw.rewrite_copy_data(body) for body in data]
    assert any(e.encode() in b"".join(data) for e in EMAILS)
    assert not any(e.encode() in b"".join(out) for e in EMAILS)
    if "binary" not in sql:
        assert not leaked(out)
