"""ErrorResponse/NoticeResponse scrubbing: values of masked columns never leave in messages."""

from __future__ import annotations

from callgate.masking.lineage import statement_lineage
from callgate.masking.notices import (
    HIDDEN_DETAIL,
    HIDDEN_MESSAGE,
    decode_fields,
    scrub_error_fields,
)
from callgate.masking.plan import MaskPlan, MaskRules
from callgate.masking.styles import REDACTED
from callgate.protocols.postgres.messages import decode_error_fields
from tests.masking.helpers import columns_of, rules

EMAIL_RULE = rules([("customers.email", "redact")])


def error(**fields: str) -> bytes:
    out = b"".join(code.encode() + value.encode() + b"\0" for code, value in fields.items())
    return out + b"\0"


def scrub(body: bytes, sql: str | None, r: MaskRules = EMAIL_RULE) -> dict[str, str]:
    plan: MaskPlan = r.plan(statement_lineage(sql, columns_of) if sql is not None else None)
    out = scrub_error_fields(body, plan)
    decode_error_fields(out)  # still a well-formed message
    return dict(decode_fields(out))


UNIQUE = error(
    S="ERROR",
    V="ERROR",
    C="23505",
    M='duplicate key value violates unique constraint "customers_email_key"',
    D="Key (email)=(a@b.com) already exists.",
    s="public",
    t="customers",
    n="customers_email_key",
)


def test_unique_violation_detail_is_masked_for_a_masked_column() -> None:
    got = scrub(UNIQUE, "INSERT INTO customers (id, email) VALUES (1, 'a@b.com')")
    assert got["D"] == f"Key (email)=({REDACTED}) already exists."
    assert got["C"] == "23505" and "customers_email_key" in got["M"]


def test_unique_violation_detail_even_when_the_statement_does_not_name_the_column() -> None:
    # UPDATE of another column; the unique index covers (email, name)
    body = error(
        C="23505",
        M="duplicate",
        D="Key (email, name)=(a@b.com, x) already exists.",
        s="public",
        t="customers",
    )
    assert "a@b.com" not in scrub(body, "UPDATE customers SET name = 'x'")["D"]


def test_key_of_an_unmasked_column_is_kept() -> None:
    body = error(
        C="23505", M="duplicate", D="Key (id)=(5) already exists.", s="public", t="customers"
    )
    assert (
        scrub(body, "INSERT INTO customers (id) VALUES (5)")["D"] == "Key (id)=(5) already exists."
    )


def test_expression_key_is_masked() -> None:
    body = error(
        C="23505", M="dup", D="Key (lower(name))=(bob) already exists.", s="public", t="customers"
    )
    assert "bob" not in scrub(body, "INSERT INTO customers (name) VALUES ('Bob')")["D"]


def test_foreign_key_and_exclusion_details() -> None:
    fk = error(
        C="23503",
        M="fk",
        D='Key (email)=(a@b.com) is not present in table "customers".',
        t="customers",
    )
    assert "a@b.com" not in scrub(fk, "INSERT INTO customers (email) VALUES ('a@b.com')")["D"]
    excl = error(
        C="23P01",
        M="conflicting key value violates exclusion constraint",
        D="Key (email)=(x@y.com) conflicts with existing key (email)=(z@y.com).",
        t="customers",
    )
    detail = scrub(excl, "INSERT INTO customers (email) VALUES ('x@y.com')")["D"]
    assert "x@y.com" not in detail and "z@y.com" not in detail


def test_failing_row_is_masked() -> None:
    body = error(
        C="23514",
        M="new row violates check constraint",
        D="Failing row contains (1, a@b.com, Bob).",
        t="customers",
    )
    assert (
        scrub(body, "INSERT INTO customers VALUES (1, 'a@b.com', 'Bob')")["D"]
        == f"Failing row contains ({REDACTED})."
    )


def test_cast_error_message_is_masked() -> None:
    body = error(C="22P02", M='invalid input syntax for type integer: "Bob Smith"')
    got = scrub(body, "SELECT email::int FROM customers")
    assert "Bob Smith" not in got["M"] and "integer" in got["M"]


def test_unknown_detail_is_hidden_when_masked_columns_are_touched() -> None:
    body = error(C="XX000", M="something", D="the value was Bob Smith")
    assert scrub(body, "SELECT email FROM customers")["D"] == HIDDEN_DETAIL
    assert scrub(body, "SELECT name FROM customers")["D"] == "the value was Bob Smith"


def test_raise_from_a_function_is_hidden() -> None:
    body = error(
        S="NOTICE", C="00000", M="secret is Bob", W="PL/pgSQL function leak() line 3 at RAISE"
    )
    got = scrub(body, "SELECT leak()")
    assert got["M"] == HIDDEN_MESSAGE and "W" not in got
    do = scrub(body, "DO $$ BEGIN RAISE NOTICE '%', (SELECT name FROM customers LIMIT 1); END $$")
    assert do["M"] == HIDDEN_MESSAGE


def test_detectors_apply_to_every_text_field() -> None:
    r = rules(detect=[(("email",), "redact")])
    body = error(C="P0001", M="mail a@b.com", D="and c@d.org", H="e@f.net")
    got = scrub(body, "SELECT 1", r)
    assert got == {"C": "P0001", "M": f"mail {REDACTED}", "D": f"and {REDACTED}", "H": REDACTED}


def test_nothing_to_mask_returns_the_same_bytes() -> None:
    assert scrub_error_fields(UNIQUE, rules().plan(None)) is UNIQUE
    syntax = error(C="42601", M='syntax error at or near "SELEC"', P="1")
    plan = EMAIL_RULE.plan(statement_lineage("SELECT name FROM customers", columns_of))
    assert scrub_error_fields(syntax, plan) is syntax
