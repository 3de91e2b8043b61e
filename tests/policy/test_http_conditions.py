"""The JSON body condition grammar and its comparisons (callgate.policy.jsoncond)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callgate.masking.jsonpath import loads_keeping_duplicates
from callgate.policy.jsoncond import ConditionError, parse_condition


@pytest.mark.parametrize(
    ("text", "op", "literal", "path"),
    [
        ("$.amount > 10000", ">", 10000, "$.amount"),
        ("$.amount>=1.5", ">=", 1.5, "$.amount"),
        ("$.amount < -2e3", "<", -2000.0, "$.amount"),
        ("$.currency == 'usd'", "==", "usd", "$.currency"),
        ('$["currency"] != "usd"', "!=", "usd", '$["currency"]'),
        ("$.items[*].sku == 'X'", "==", "X", "$.items[*].sku"),
        ("$.ok == true", "==", True, "$.ok"),
        ("$.ok == false", "==", False, "$.ok"),
        ("$.x == null", "==", None, "$.x"),
        ("$..name <= 'm'", "<=", "m", "$..name"),
        ("$.q == 'it\\'s'", "==", "it's", "$.q"),
        ("$.q == '\\u00e9'", "==", "é", "$.q"),
        ("exists $.refund", "exists", None, "$.refund"),
        ("not  exists $.refund", "not exists", None, "$.refund"),
        ("  $.a[0] == 1  ", "==", 1, "$.a[0]"),
    ],
)
def test_parse(text: str, op: str, literal: Any, path: str) -> None:
    c = parse_condition(text)
    assert (c.op, c.literal, c.path.text) == (op, literal, path)
    assert type(c.literal) is type(literal)
    assert c.text == text.strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected a JSON path starting with $"),
        ("amount > 1", "expected a JSON path starting with $"),
        ("$.amount", "expected an operator"),
        ("$.amount =! 1", "expected an operator"),
        ("$.amount = 1", "expected an operator"),
        ("$.amount > ", "expected a value after the operator"),
        ("$.amount > 1 2", "unexpected '2'"),
        ("$.amount > 01", "unexpected '1'"),
        ("$.amount > usd", "expected a number, a quoted string"),
        ("$.amount > 'usd", "unterminated string"),
        ("$.amount == 'a\\n'", "unknown escape"),
        ("$.ok > true", "> needs a number or a string"),
        ("$.ok >= null", ">= needs a number or a string"),
        ("$ == 1", "expected a path below $"),
        ("exists amount", "expected a JSON path starting with $"),
        ("exists $.a == 1", "unexpected '='"),
        ("$.a[1:2] == 1", "slices and unions are not supported"),
        ("$.a.. == 1", "expected a member name, * or [ after .."),
        ("$..a == truex", "unexpected 'x'"),
    ],
)
def test_bad_conditions(text: str, message: str) -> None:
    with pytest.raises(ConditionError) as caught:
        parse_condition(text)
    assert message in str(caught.value)


def holds(text: str, doc: Any, *, every: bool) -> bool:
    return parse_condition(text).holds(doc, every=every)


@pytest.mark.parametrize(
    ("text", "value", "any_", "every"),
    [
        # numbers, and strings read as numbers
        ("$.v > 10", 11, True, True),
        ("$.v > 10", 10, False, False),
        ("$.v > 10", 10.5, True, True),
        ("$.v > 10", "11", True, True),
        ("$.v > 10", " +1.1e1 ", True, True),
        ("$.v > 10", "0x0b", True, True),
        ("$.v > 10", "eleven", True, False),  # cannot be compared
        ("$.v > 10", {"a": 11}, True, False),
        ("$.v > 10", None, False, False),
        ("$.v > 10", True, False, False),
        ("$.v == 1", 1.0, True, True),
        ("$.v == 1", "1", True, True),
        ("$.v == 1", True, False, False),  # true is not 1 in JSON
        ("$.v != 1", 2, True, True),
        ("$.v != 1", "x", True, False),
        # strings
        ("$.v == 'usd'", "usd", True, True),
        ("$.v == 'usd'", "USD", False, False),
        ("$.v != 'usd'", "eur", True, True),
        ("$.v != 'usd'", 5, True, True),
        ("$.v < 'm'", "a", True, True),
        ("$.v < 'm'", 1, False, False),
        # booleans and null
        ("$.v == true", True, True, True),
        ("$.v == true", " TRUE ", True, True),
        ("$.v == true", 1, False, False),
        ("$.v == false", False, True, True),
        ("$.v == null", None, True, True),
        ("$.v != null", None, False, False),
    ],
)
def test_comparisons(text: str, value: Any, any_: bool, every: bool) -> None:
    assert holds(text, {"v": value}, every=False) is any_
    assert holds(text, {"v": value}, every=True) is every


def test_any_and_every_over_several_values() -> None:
    doc = {"items": [{"qty": 1}, {"qty": 50}]}
    assert holds("$.items[*].qty > 10", doc, every=False)
    assert not holds("$.items[*].qty > 10", doc, every=True)
    assert holds("$.items[*].qty > 0", doc, every=True)
    assert not holds("$.missing > 0", doc, every=False)
    assert not holds("$.missing > 0", doc, every=True)
    assert holds("exists $.items[1]", doc, every=True)
    assert holds("exists $.items[-1]", doc, every=True)
    assert not holds("exists $.items[2]", doc, every=False)
    assert holds("not exists $.items[2]", doc, every=True)


def test_duplicates_are_every_value() -> None:
    doc = loads_keeping_duplicates('{"a": 1, "a": 500, "b": {"c": 2, "c": 3}}')
    assert holds("$.a > 100", doc, every=False)
    assert not holds("$.a < 100", doc, every=True)
    assert holds("$..c == 3", doc, every=False)
    assert holds("$.b.* == 2", doc, every=False)


# --- properties -----------------------------------------------------------------------------


@given(st.text(max_size=40))
def test_parser_only_raises_condition_errors(text: str) -> None:
    with contextlib.suppress(ConditionError):
        parse_condition(text)


NUMBERS = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
)


@given(
    value=NUMBERS,
    literal=st.integers(min_value=-(10**6), max_value=10**6),
    op=st.sampled_from(["<", "<=", ">", ">=", "==", "!="]),
    as_string=st.booleans(),
)
def test_numeric_comparisons_match_python(
    value: float, literal: int, op: str, as_string: bool
) -> None:
    expected = {
        "<": value < literal,
        "<=": value <= literal,
        ">": value > literal,
        ">=": value >= literal,
        "==": value == literal,
        "!=": value != literal,
    }[op]
    sent: Any = json.dumps(value) if as_string else value
    doc = json.loads(json.dumps({"v": sent}))
    assert holds(f"$.v {op} {literal}", doc, every=False) is expected
    assert holds(f"$.v {op} {literal}", doc, every=True) is expected
