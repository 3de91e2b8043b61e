"""Lineage: which source columns feed each output column, through every evasion path."""

from __future__ import annotations

import pytest

from callgate.masking.lineage import (
    UNKNOWN_STATEMENT,
    ColumnLineage,
    SessionLineage,
    StarGroup,
    StatementLineage,
    no_catalog,
    statement_lineage,
    statement_lineages,
)
from tests.masking.helpers import columns_of

EMAIL = "public.customers.email"


def sources(sql: str) -> list[set[str]]:
    """The sources of each output column (``?`` marks an unknown one)."""
    lineage = statement_lineage(sql, columns_of)
    assert lineage.items is not None, sql
    out = []
    for item in lineage.items:
        names = {str(s) for s in item.sources}
        if item.unknown:
            names.add("?")
        out.append(names)
    return out


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT email FROM customers",
        "SELECT lower(email) FROM customers",
        "SELECT email || '' FROM customers",
        "SELECT upper(trim(email))::varchar(100) AS x FROM customers",
        "SELECT c.email AS contact FROM customers c",
        "SELECT public.customers.email FROM public.customers",
        "WITH x AS (SELECT email AS e FROM customers) SELECT e FROM x",
        "WITH x(e) AS (SELECT email FROM customers) SELECT upper(e) FROM x",
        "SELECT s.e FROM (SELECT email AS e FROM customers) s",
        "SELECT (SELECT email FROM customers LIMIT 1)",
        "SELECT ARRAY(SELECT email FROM customers)",
        "SELECT string_agg(email, ',') FROM customers",
        "SELECT coalesce(NULL, email) FROM customers",
        "SELECT CASE WHEN id > 0 THEN email END FROM customers",
        "SELECT concat_ws(' ', name, email) FROM customers",
        "SELECT (c).email FROM customers c",
        "SELECT x FROM customers, LATERAL (SELECT email AS x) l",
        "SELECT v FROM customers, unnest(ARRAY[email]) AS v",
        "SELECT name FROM orders UNION ALL SELECT email FROM customers",
        "WITH RECURSIVE r(n, e) AS (SELECT 1, ''::text UNION ALL "
        "SELECT n + 1, email FROM r, customers) SELECT e FROM r",
        "SELECT jsonb_build_object('e', email) FROM customers",
        "SELECT row_to_json(c) FROM customers c",
        "SELECT c FROM customers c",
        "SELECT email FROM customers JOIN orders o ON o.customer_id = customers.id",
    ],
)
def test_every_path_carries_email(sql: str) -> None:
    cols = sources(sql)
    assert any(EMAIL in c for c in cols), cols


def test_unrelated_expression_is_free() -> None:
    assert sources("SELECT lower(name), id + 1, now() FROM customers") == [
        {"public.customers.name"},
        {"public.customers.id"},
        set(),
    ]


def test_star_expands_through_the_catalog() -> None:
    cols = sources("SELECT * FROM customers c JOIN orders o ON o.customer_id = c.id")
    assert len(cols) == 9
    assert cols[1] == {EMAIL}
    assert cols[6] == {"public.orders.customer_id"}


def test_join_using_merges_the_column() -> None:
    cols = sources("SELECT * FROM customers JOIN orders USING (id)")
    assert cols[0] == {"public.customers.id", "public.orders.id"}
    assert len(cols) == 8  # id once, 4 more of customers, 3 more of orders


def test_view_is_unknown() -> None:
    cols = sources("SELECT id, lower(email) FROM v_customers")
    assert all("?" in c for c in cols)
    assert statement_lineage("SELECT id FROM v_customers", columns_of).opaque


def test_unknown_relation_is_unknown() -> None:
    cols = sources("SELECT a FROM nowhere")
    assert cols == [{"public.nowhere.a", "?"}] or cols == [{"nowhere.a", "?"}]


def test_user_function_is_unknown() -> None:
    assert sources("SELECT get_email(id) FROM customers") == [{"public.customers.id", "?"}]
    assert sources("SELECT pg_catalog.lower(name) FROM customers") == [{"public.customers.name"}]
    assert sources("SELECT evil.lower(name) FROM customers") == [{"public.customers.name", "?"}]


def test_set_returning_user_function_is_unknown() -> None:
    lineage = statement_lineage("SELECT * FROM customer_emails()", columns_of)
    assert lineage.items == (StarGroup(frozenset(), True),)
    assert lineage.columns(3) == (lineage.items[0].column(),) * 3
    assert all(c.unknown for c in lineage.columns(3))


def test_query_to_xml_is_unknown() -> None:
    assert "?" in sources("SELECT query_to_xml('select email from customers', true, false, '')")[0]


def test_user_operator_is_unknown() -> None:
    assert "?" in sources("SELECT id OPERATOR(evil.+) 1 FROM customers")[0]


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO customers (id, email) VALUES (1, 'a@b.c') RETURNING email",
        "INSERT INTO customers (id) VALUES (1) ON CONFLICT (id) "
        "DO UPDATE SET name = 'x' RETURNING *",
        "UPDATE customers SET name = 'x' RETURNING lower(email)",
        "DELETE FROM customers RETURNING email",
        "DELETE FROM orders USING customers WHERE customers.id = orders.customer_id "
        "RETURNING customers.email",
        "WITH d AS (DELETE FROM customers RETURNING email) SELECT * FROM d",
    ],
)
def test_returning(sql: str) -> None:
    assert any(EMAIL in c for c in sources(sql))


def test_update_from_returning_star_includes_the_from_tables() -> None:
    cols = sources("UPDATE orders SET memo = '' FROM customers WHERE customers.id = 1 RETURNING *")
    assert len(cols) == 9 and cols[5] == {EMAIL}


def test_copy_to_stdout() -> None:
    lineage = statement_lineage(
        "COPY (SELECT email FROM customers) TO STDOUT (FORMAT csv, HEADER)", columns_of
    )
    assert lineage.copy is not None and lineage.copy.format == "csv" and lineage.copy.header
    assert lineage.items == (ColumnLineage("email", frozenset(_src("email"))),)
    table = statement_lineage("COPY customers (name, email) TO STDOUT", columns_of)
    assert table.copy is not None and table.copy.format == "text"
    assert [str(s) for i in table.items or () for s in i.sources] == [
        "public.customers.name",
        EMAIL,
    ]
    assert statement_lineage("COPY customers TO STDOUT", columns_of).columns(5)[1].sources == _src(
        "email"
    )
    # COPY to a file sends no rows to the caller
    assert statement_lineage("COPY customers TO '/tmp/x'", columns_of).items is None
    assert statement_lineage("COPY customers FROM STDIN", columns_of).items is None


def test_copy_options() -> None:
    fmt = statement_lineage(
        "COPY customers TO STDOUT WITH (FORMAT text, DELIMITER '|', NULL 'nil')", columns_of
    ).copy
    assert fmt is not None and (fmt.delimiter, fmt.null) == ("|", "nil")
    old = statement_lineage("COPY customers TO STDOUT CSV", columns_of).copy
    assert old is not None and old.format == "csv"
    binary = statement_lineage("COPY customers TO STDOUT (FORMAT binary)", columns_of).copy
    assert binary is not None and binary.format == "binary"


def test_cursor_and_fetch() -> None:
    session = SessionLineage()
    declare = statement_lineage(
        "DECLARE c CURSOR FOR SELECT lower(email) FROM customers", columns_of
    )
    assert declare.items is None and declare.defines == ("cursor", "c")
    session.effective(declare)
    fetched = session.effective(statement_lineage("FETCH 10 FROM c", columns_of))
    assert fetched.items is not None and fetched.items[0].sources == _src("email")
    unknown = session.effective(statement_lineage("FETCH ALL FROM other", columns_of))
    assert unknown.returns_rows and all(c.unknown for c in unknown.columns(2))
    assert statement_lineage("MOVE 5 IN c", columns_of).uses is None


def test_prepare_and_execute() -> None:
    session = SessionLineage()
    session.effective(
        statement_lineage("PREPARE p AS SELECT email FROM customers WHERE id = $1", columns_of)
    )
    executed = session.effective(statement_lineage("EXECUTE p(1)", columns_of))
    assert executed.items is not None and executed.items[0].sources == _src("email")
    session.forget("prepared", "*")
    again = session.effective(statement_lineage("EXECUTE p(1)", columns_of))
    assert again.columns(1)[0].unknown


def test_procedures_are_opaque() -> None:
    call = statement_lineage("CALL refresh_everything()", columns_of)
    assert call.opaque and call.returns_rows
    assert statement_lineage("DO $$ BEGIN RAISE NOTICE 'x'; END $$", columns_of).opaque


def test_batches_have_one_lineage_per_statement() -> None:
    parts = statement_lineages("SELECT email FROM customers; SET x = 1; SELECT 1", columns_of)
    assert [p.returns_rows for p in parts] == [True, False, True]


def test_what_does_not_parse_is_unknown() -> None:
    assert statement_lineages("SELEC nonsense", columns_of) == (UNKNOWN_STATEMENT,)
    assert statement_lineages("SELECT 1\0", columns_of) == (UNKNOWN_STATEMENT,)


def test_no_catalog_fails_closed() -> None:
    lineage = statement_lineage("SELECT * FROM customers", no_catalog)
    assert all(c.unknown for c in lineage.columns(5))
    assert any(s.column == "*" for s in lineage.columns(5)[0].sources)


def test_star_group_takes_the_remaining_width() -> None:
    lineage = StatementLineage(
        items=(ColumnLineage("a"), StarGroup(frozenset(), True), ColumnLineage("z"))
    )
    cols = lineage.columns(5)
    assert cols[0].name == "a" and cols[-1].name == "z"
    assert all(c.unknown for c in cols[1:4])
    # a width that cannot fit: everything unknown
    assert all(c.unknown for c in StatementLineage(items=(ColumnLineage("a"),)).columns(2))


def test_where_and_join_columns_are_referenced_not_output() -> None:
    lineage = statement_lineage("SELECT id FROM customers WHERE email = 'x'", columns_of)
    assert lineage.items is not None and lineage.items[0].sources == _src("id")
    assert _src("email") <= lineage.referenced


def test_deep_nesting_is_unknown_not_a_crash() -> None:
    sql = "SELECT " + "lower(" * 300 + "email" + ")" * 300 + " FROM customers"
    lineage = statement_lineages(sql, columns_of)[0]
    assert lineage == UNKNOWN_STATEMENT or lineage.columns(1)[0].sources == _src("email")


def _src(column: str) -> frozenset:  # type: ignore[type-arg]
    from callgate.masking.lineage import Source

    return frozenset({Source("public", "customers", column)})
