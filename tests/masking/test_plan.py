"""Mask plans: which rules apply to whom, and how lineage and RowDescription origins combine."""

from __future__ import annotations

from typing import Any

import pytest

from callgate.config import PolicyConfig
from callgate.errors import StatementDenied
from callgate.masking.catalog import (
    CatalogColumn,
    CatalogSnapshot,
    ColumnOrigin,
    resolve_columns,
)
from callgate.masking.lineage import Source, statement_lineage
from callgate.masking.notices import MessageScrub
from callgate.masking.plan import ColumnGlob, MaskRules, no_masking
from callgate.model import Principal
from tests.masking.helpers import SECRET, by_attr, columns_of, description, rules

TEXT = 25
ALICE = Principal("alice", frozenset({"functions"}), "api_key")
BOB = Principal("bob", frozenset({"functions", "support-tier2"}), "api_key")


def policy(mask: list[dict[str, Any]], **extra: Any) -> PolicyConfig:
    return PolicyConfig.model_validate(
        {
            "name": extra.pop("name", "p"),
            "subjects": {"groups": ["functions"]},
            "connections": extra.pop("connections", ["orders"]),
            "rules": [{"allow": {"kinds": ["select"]}}],
            "mask": mask,
            **extra,
        }
    )


def test_rules_for_principal_and_exemptions() -> None:
    p = policy(
        [
            {"columns": ["customers.email"], "style": "partial"},
            {"detect": ["email"], "style": "redact"},
        ],
        mask_exempt={"groups": ["support-tier2"]},
    )
    alice = MaskRules.for_principal([p], ALICE, "orders", secret=SECRET)
    assert len(alice.columns) == 1 and alice.detectors is not None
    assert MaskRules.for_principal([p], BOB, "orders", secret=SECRET).is_empty
    assert MaskRules.for_principal([p], ALICE, "other", secret=SECRET).is_empty
    outsider = Principal("eve", frozenset({"nobody"}), "api_key")
    assert MaskRules.for_principal([p], outsider, "orders", secret=SECRET).is_empty


def test_exemption_is_per_policy() -> None:
    exempted = policy([{"columns": ["customers.email"]}], name="a", mask_exempt={"users": ["bob"]})
    other = policy([{"columns": ["customers.card"]}], name="b")
    got = MaskRules.for_principal([exempted, other], BOB, "orders", secret=SECRET)
    assert [r.label for r in got.columns] == ["b / mask[0]"]


def test_strictest_style_wins() -> None:
    r = rules([("customers.email", "partial"), ("*.email", "hash"), ("email", "null")])
    style, _ = r.style_for([Source("public", "customers", "email")])
    assert style is not None and style.name == "null"


@pytest.mark.parametrize(
    ("glob", "source", "covered"),
    [
        ("customers.email", Source("public", "customers", "email"), True),
        ("customers.email", Source("public", "orders", "email"), False),
        ("*.ssn", Source("x", "people", "ssn"), True),
        ("email", Source("x", "y", "email"), True),
        ("public.customers.email", Source("billing", "customers", "email"), False),
        ("public.customers.email", Source(None, "customers", "email"), True),
        ("customers.email", Source("public", "customers", "*"), True),
        ("customers.e*", Source("public", "customers", "name"), False),
    ],
)
def test_globs(glob: str, source: Source, covered: bool) -> None:
    assert ColumnGlob.compile(glob).could_match(source) is covered


def _masked(
    sql: str, cols: list[tuple[str, int]], r: MaskRules, origins: bool = True
) -> tuple[bool, ...]:
    desc = description(cols)
    plan = r.plan(statement_lineage(sql, columns_of))
    return plan.for_row_description(
        desc, resolve_columns(desc, by_attr()) if origins else None
    ).masked


EMAIL_RULE = rules([("customers.email", "redact")])


def test_expression_masked_by_lineage() -> None:
    assert _masked(
        "SELECT lower(email), name FROM customers", [("lower", TEXT), ("name", TEXT)], EMAIL_RULE
    ) == (
        True,
        False,
    )


def test_alias_masked_by_origin_even_without_lineage() -> None:
    # the statement text says nothing useful; the RowDescription origin does
    desc = description([("email", TEXT), ("name", TEXT)])
    plan = EMAIL_RULE.plan(None)
    assert plan.messages == MessageScrub.ALL
    assert plan.for_row_description(desc, resolve_columns(desc, by_attr())).masked == (True, False)


def test_origin_table_column_proves_a_column_free() -> None:
    # lineage unknown (a user function somewhere), but column 1 is exactly customers.name
    desc = description([("email", TEXT), ("name", TEXT)])
    lineage = statement_lineage("SELECT f(email) AS email, name FROM customers", columns_of)
    rw = EMAIL_RULE.plan(lineage).for_row_description(desc, resolve_columns(desc, by_attr()))
    assert rw.masked == (True, False)


def test_view_origin_is_unknown() -> None:
    desc = description([("id", TEXT), ("email", TEXT)], table=("public", "v_customers"))
    origins = resolve_columns(desc, by_attr())
    assert origins[0].column is not None and origins[0].column.kind == "view"
    rw = EMAIL_RULE.plan(None).for_row_description(desc, origins)
    assert rw.masked == (True, True)


def test_unresolved_oid_is_unknown() -> None:
    desc = description([("name", TEXT)])
    rw = EMAIL_RULE.plan(
        statement_lineage("SELECT name FROM customers", columns_of)
    ).for_row_description(desc, (ColumnOrigin("unresolved"),))
    assert rw.masked == (True,)


def test_on_unknown_deny_refuses_before_forwarding() -> None:
    deny = rules([("customers.email", "redact")], deny_unknown=True)
    with pytest.raises(StatementDenied, match="on_unknown: deny"):
        deny.plan(statement_lineage("SELECT * FROM v_customers", columns_of))
    with pytest.raises(StatementDenied):
        deny.plan(statement_lineage("SELECT get_secret(id) FROM customers", columns_of))
    # known sources are fine, masked or not
    deny.plan(statement_lineage("SELECT email, name FROM customers", columns_of))
    # and unknown columns found only at the RowDescription are refused there
    desc = description([("id", TEXT)], table=("public", "v_customers"))
    plan = deny.plan(None)
    with pytest.raises(StatementDenied):
        plan.for_row_description(desc, resolve_columns(desc, by_attr()))


def test_unknown_columns_get_the_strictest_column_style() -> None:
    r = rules([("customers.email", "partial"), ("customers.card", "hash")])
    desc = description([("x", TEXT)], table=None)
    rw = r.plan(statement_lineage("SELECT mystery()", columns_of)).for_row_description(
        desc, resolve_columns(desc, by_attr())
    )
    assert rw.columns[0] is not None and rw.columns[0].style is not None
    assert rw.columns[0].style.name == "hash"


def test_message_scrub_modes() -> None:
    assert EMAIL_RULE.plan(
        statement_lineage("SELECT name FROM customers", columns_of)
    ).messages == (MessageScrub.STRUCTURED)
    assert (
        EMAIL_RULE.plan(
            statement_lineage("SELECT id FROM customers WHERE email = 'a'", columns_of)
        ).messages
        == MessageScrub.VALUES
    )
    assert EMAIL_RULE.plan(
        statement_lineage("SELECT f(id) FROM customers", columns_of)
    ).messages == (MessageScrub.ALL)
    assert no_masking().is_noop


def test_detectors_skip_types_that_cannot_hold_hits() -> None:
    r = rules(detect=[(("email",), "redact")])
    desc = description([("id", 23), ("name", TEXT), ("when", 1184)], table=None)
    rw = r.plan(None).for_row_description(desc)
    assert rw.scanned == (False, True, False)


def test_catalog_snapshot() -> None:
    rows = [
        (16400, "public", "customers", "r", 1, "id"),
        (16400, "public", "customers", "r", 2, "email"),
        (16500, "pg_temp_3", "customers", "r", 1, "x"),
        (16420, "public", "v", "v", 1, "email"),
        (16430, "audit", "customers", "r", 1, "id"),
    ]
    snap = CatalogSnapshot.from_rows(rows, ["audit", "public"])
    found = snap.columns_of(None, "customers")
    assert found is not None and found.schema == "audit"
    assert snap.with_search_path(["public"]).columns_of(None, "customers").columns == (
        "id",
        "email",
    )  # type: ignore[union-attr]
    assert snap.columns_of(None, "v").kind == "view"  # type: ignore[union-attr]
    assert snap.columns_of("nope", "customers") is None
    temp = CatalogSnapshot.from_rows(rows, ["public"], temp_schema="pg_temp_3")
    assert temp.columns_of(None, "customers").schema == "pg_temp_3"  # type: ignore[union-attr]
    assert snap.by_attr[(16400, 2)] == CatalogColumn("public", "customers", "email", "table")
