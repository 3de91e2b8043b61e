"""Classifier behaviour the corpus does not show well: caching, limits, structure, properties."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast import parser

from callgate.policy.classify import (
    MAX_CACHED_CHARS,
    Classification,
    TableRef,
    classify,
    classify_uncached,
    clear_cache,
)
from tests.policy.corpus import load_corpus

PARSEABLE = [case.sql for case in load_corpus().cases if classify(case.sql).parse_error is None]


# --- caching ---------------------------------------------------------------------------------


def test_same_shape_is_cached_and_equal() -> None:
    clear_cache()
    first = classify("SELECT id FROM orders WHERE id = 1")
    second = classify("SELECT id FROM orders WHERE id = 2")
    assert second is first  # served from the shape cache


def test_literal_dependent_results_are_not_shared_by_shape() -> None:
    clear_cache()
    harmless = classify("SELECT set_config('work_mem', '64MB', false)")
    role = classify("SELECT set_config('role', 'postgres', false)")
    assert "privilege" not in harmless.kinds
    assert "privilege" in role.kinds


def test_explain_analyze_option_value_is_not_shared_by_shape() -> None:
    clear_cache()
    off = classify("EXPLAIN (ANALYZE false) DELETE FROM orders")
    on = classify("EXPLAIN (ANALYZE true) DELETE FROM orders")
    assert off.kinds == {"explain"}
    assert on.kinds == {"explain", "delete"}


def test_dynamic_sql_is_not_shared_by_shape() -> None:
    clear_cache()
    read = classify("SELECT query_to_xml('SELECT 1', true, true, '')")
    write = classify("SELECT query_to_xml('DELETE FROM orders RETURNING 1', true, true, '')")
    assert "delete" not in read.kinds
    assert "delete" in write.kinds


def test_long_text_is_classified_but_not_cached() -> None:
    clear_cache()
    sql = "SELECT " + ", ".join(["1"] * (MAX_CACHED_CHARS // 3)) + " FROM orders"
    assert len(sql) > MAX_CACHED_CHARS
    assert classify(sql).kinds == {"select"}


# --- structure -------------------------------------------------------------------------------


def test_tables_as_written() -> None:
    c = classify("INSERT INTO public.audit_log (note) SELECT status FROM orders")
    assert c.tables_written == {TableRef("public", "audit_log")}
    assert c.tables_read == {TableRef(None, "orders")}
    assert str(TableRef("public", "audit_log")) == "public.audit_log"


def test_prepares_executes_deallocates() -> None:
    c = classify("PREPARE p (int) AS DELETE FROM orders WHERE id = $1; EXECUTE p(1); DEALLOCATE p")
    assert [name for name, _ in c.prepares] == ["p"]
    assert c.prepares[0][1].kinds == {"delete"}
    assert c.executes == ("p",)
    assert c.deallocates == ("p",)
    assert classify("DEALLOCATE ALL").deallocates == ("*",)


def test_explain_without_analyze_does_not_execute() -> None:
    assert classify("EXPLAIN EXECUTE p").executes == ()
    assert classify("EXPLAIN ANALYZE EXECUTE p").executes == ("p",)


def test_call_records_the_procedure() -> None:
    c = classify("CALL app.refresh_totals(1)")
    assert c.kinds == {"procedural"}
    assert c.functions == {"app.refresh_totals"}


def test_empty() -> None:
    for sql in ("", " ", ";", "-- x", "/* x */ ; ;"):
        c = classify(sql)
        assert c.empty and c.statement_count == 0 and c.parse_error is None


@pytest.mark.parametrize(
    "sql",
    ["SELECT 1\0", "(" * 20_000 + "1" + ")" * 20_000, "SELECT " + "-" * 100_000 + "1", "\udcff"],
    ids=["nul", "deep-parens", "long-operator", "lone-surrogate"],
)
def test_hostile_input_is_unknown(sql: str) -> None:
    c = classify(sql)
    assert isinstance(c, Classification)
    if c.parse_error is not None:
        assert c.kinds == {"unknown"}


def test_deeply_nested_subqueries_do_not_crash() -> None:
    sql = "SELECT " + "(SELECT " * 500 + "1" + ")" * 500
    c, _ = classify_uncached(sql)
    assert c.kinds in ({"select"}, {"unknown"})


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_never_raises_on_arbitrary_text(sql: str) -> None:
    c = classify(sql)
    if c.parse_error is not None:
        assert c.kinds == {"unknown"}


SQLISH = st.lists(
    st.sampled_from(
        [
            "SELECT",
            "DELETE",
            "FROM",
            "WHERE",
            "(",
            ")",
            ";",
            "'",
            '"',
            "$$",
            "$a$",
            "/*",
            "*/",
            "--",
            "\n",
            "orders",
            "U&",
            "E'",
            "\\",
            "1",
            ",",
            "*",
            "pg_read_file",
            "WITH",
            "AS",
            "EXPLAIN",
            "ANALYZE",
            "COPY",
            "TO",
            "PROGRAM",
            "SET",
            "ROLE",
            " ",
            "::",
        ]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(SQLISH)
def test_never_raises_on_sql_like_text(sql: str) -> None:
    c = classify(sql)
    if c.parse_error is not None:
        assert c.kinds == {"unknown"}


def _tokens(sql: str) -> list[parser.Token]:
    return [t for t in parser.scan(sql) if t.name not in ("SQL_COMMENT", "C_COMMENT")]


COMMENTS = st.sampled_from([" /* c */ ", " /* a /* nested */ b */ ", " -- line\n", "\n--\n"])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PARSEABLE), st.data())
def test_comments_between_tokens_do_not_change_anything(sql: str, data: st.DataObject) -> None:
    tokens = _tokens(sql)
    if len(tokens) < 2:
        return
    positions = data.draw(
        st.lists(
            st.sampled_from([t.start for t in tokens[1:]]), min_size=1, max_size=4, unique=True
        )
    )
    commented = sql
    for position in sorted(positions, reverse=True):
        commented = commented[:position] + data.draw(COMMENTS) + commented[position:]
    assert classify_uncached(commented)[0] == classify_uncached(sql)[0], commented


def _swap_ascii_case(text: str, upper: list[bool]) -> str:
    return (
        "".join(
            (ch.upper() if flip else ch.lower()) if ch in string.ascii_letters else ch
            for ch, flip in zip(text, upper, strict=False)
        )
        + text[len(upper) :]
    )


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PARSEABLE), st.data())
def test_case_of_unquoted_names_does_not_change_anything(sql: str, data: st.DataObject) -> None:
    changed = sql
    for token in reversed(_tokens(sql)):
        text = sql[token.start : token.end + 1]
        foldable = token.kind != "NO_KEYWORD" or (token.name == "IDENT" and text[0] != '"')
        if not foldable:
            continue
        flips = data.draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
        changed = changed[: token.start] + _swap_ascii_case(text, flips) + changed[token.end + 1 :]
    assert classify_uncached(changed)[0] == classify_uncached(sql)[0], changed


def test_quick_shape_cache_never_merges_statements_that_classify_differently() -> None:
    from callgate.policy.classify import classify_uncached, clear_cache

    clear_cache()
    for sql in (
        "EXPLAIN (ANALYZE 0) DELETE FROM t",
        "EXPLAIN (ANALYZE 1) DELETE FROM t",
        "SELECT 1 FROM t LIMIT 5",
        "select a ? 5 from t",
        "select a ? ? from t",
    ):
        assert classify(sql) == classify_uncached(sql)[0], sql
    first = classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
    again = classify("SELECT abalance FROM pgbench_accounts WHERE aid = 2")
    assert first == again
    assert classify("select a ? 5 from t").parse_error is None
    assert classify("select a ? ? from t").parse_error is not None
