"""The JSONPath subset (callgate.masking.jsonpath): parsing, and selection against a reference."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callgate.masking.jsonpath import (
    JsonPathError,
    Step,
    loads_keeping_duplicates,
    parse_json_path,
    parse_prefix,
    select,
)


@pytest.mark.parametrize(
    ("text", "steps"),
    [
        ("$", ()),
        ("$.a", (Step(name="a"),)),
        ("$.a-b_c$", (Step(name="a-b_c$"),)),
        ("$.données", (Step(name="données"),)),
        ("$['a b']", (Step(name="a b"),)),
        ('$["a\\"b"]', (Step(name='a"b'),)),
        ("$['\\u0041']", (Step(name="A"),)),
        ("$[ 0 ]", (Step(index=0),)),
        ("$[-1]", (Step(index=-1),)),
        ("$[*]", (Step(wildcard=True),)),
        ("$.*", (Step(wildcard=True),)),
        ("$..a", (Step(descend=True, name="a"),)),
        ("$..*", (Step(descend=True, wildcard=True),)),
        ("$..[0]", (Step(descend=True, index=0),)),
        ("$..['x']", (Step(descend=True, name="x"),)),
        (
            "$.data[*].card.number",
            (Step(name="data"), Step(wildcard=True), Step(name="card"), Step(name="number")),
        ),
        ("  $.a  ", (Step(name="a"),)),
    ],
)
def test_parse(text: str, steps: tuple[Step, ...]) -> None:
    assert parse_json_path(text).steps == steps


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("", "expected a JSON path starting with $", 0),
        ("a.b", "expected a JSON path starting with $", 0),
        ("$.", "expected a member name, * or [ after .", 2),
        ("$..", "expected a member name, * or [ after ..", 3),
        ("$...a", "expected a name, * or [ after ..", 3),
        ("$.a b", "unexpected ' '", 3),
        ("$[", "unterminated [", 1),
        ("$[0", "expected ]", 3),
        ("$[1:2]", "slices and unions are not supported", 3),
        ("$[0,1]", "slices and unions are not supported", 3),
        ("$[?(@.a)]", "filters, slices and unions are not supported", 2),
        ("$['a]", "unterminated string", 2),
        ("$['\\x']", "unknown escape \\x", 3),
        ("$['\\u12']", "expected four hex digits", 3),
        ("$.a()", "unexpected '('", 3),
        ("$$", "unexpected '$'", 1),
    ],
)
def test_bad_paths(text: str, message: str, position: int) -> None:
    with pytest.raises(JsonPathError) as caught:
        parse_json_path(text)
    assert message in caught.value.message
    assert caught.value.position == position


def test_prefix_stops_at_operators() -> None:
    path, end = parse_prefix("$.amount>=10")
    assert (path.text, end) == ("$.amount", 8)


DOC = {
    "data": [
        {"card": {"number": "4111", "exp": "12/30"}, "id": 1},
        {"card": {"number": "4242"}, "id": 2},
        {"other": {"card": {"number": "5555"}}},
    ],
    "card": "top",
}


@pytest.mark.parametrize(
    ("path", "values"),
    [
        ("$", [DOC]),
        ("$.card", ["top"]),
        ("$.data[*].card.number", ["4111", "4242"]),
        ("$.data[0].id", [1]),
        ("$.data[-1].other.card.number", ["5555"]),
        ("$.data[3]", []),
        ("$.data[-4]", []),
        ("$..number", ["4111", "4242", "5555"]),
        ("$..card.number", ["4111", "4242", "5555"]),
        ("$.data.*.id", [1, 2]),
        ("$.card.number", []),
        ("$.data.card", []),
        ("$.missing[*]", []),
    ],
)
def test_select(path: str, values: list[Any]) -> None:
    found = select(DOC, parse_json_path(path))
    key = json.dumps
    assert sorted(map(key, found)) == sorted(map(key, values))


def test_descendants_include_the_node_itself() -> None:
    doc = {"a": {"a": 1}}
    assert sorted(map(json.dumps, select(doc, parse_json_path("$..a")))) == ["1", '{"a": 1}']
    assert select([[1, 2]], parse_json_path("$..[1]")) == [2]


def test_duplicates() -> None:
    doc = loads_keeping_duplicates('{"a": 1, "a": {"b": 2}, "c": [{"a": 3}]}')
    assert sorted(map(json.dumps, select(doc, parse_json_path("$..a")))) == [
        "1",
        "3",
        json.dumps({"b": 2}),
    ]
    assert select(doc, parse_json_path("$.a.b")) == [2]
    with pytest.raises(ValueError):
        loads_keeping_duplicates('{"a": NaN}')
    with pytest.raises(ValueError):
        loads_keeping_duplicates("[" * 100_000 + "]" * 100_000)


# --- properties -----------------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c", "x y", "é"])
STEPS = st.one_of(
    st.builds(Step, name=NAMES),
    st.builds(Step, index=st.integers(min_value=-3, max_value=3)),
    st.builds(Step, wildcard=st.just(True)),
    st.builds(Step, descend=st.just(True), name=NAMES),
    st.builds(Step, descend=st.just(True), wildcard=st.just(True)),
    st.builds(Step, descend=st.just(True), index=st.integers(min_value=-2, max_value=2)),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=3))
DOCS = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(NAMES, children, max_size=4),
    max_leaves=20,
)


def _reference(node: Any, steps: list[Step]) -> list[Any]:
    """A deliberately different implementation: recursion over the steps."""
    if not steps:
        return [node]
    step, rest = steps[0], steps[1:]
    nodes = [node]
    if step.descend:
        nodes = []
        pending = [node]
        while pending:
            current = pending.pop()
            nodes.append(current)
            if isinstance(current, dict):
                pending.extend(current.values())
            elif isinstance(current, list):
                pending.extend(current)
    out: list[Any] = []
    for current in nodes:
        if isinstance(current, dict):
            for key, child in current.items():
                if step.wildcard or step.name == key:
                    out.extend(_reference(child, rest))
        elif isinstance(current, list):
            for index, child in enumerate(current):
                wanted = step.index
                if wanted is not None and wanted < 0:
                    wanted += len(current)
                if step.wildcard or wanted == index:
                    out.extend(_reference(child, rest))
    return out


@settings(max_examples=300)
@given(doc=DOCS, steps=st.lists(STEPS, max_size=4))
def test_select_matches_reference_and_text_round_trips(doc: Any, steps: list[Step]) -> None:
    text = "$" + "".join(step.text for step in steps)
    path = parse_json_path(text)
    assert path.steps == tuple(steps)
    key = json.dumps
    assert sorted(map(key, select(doc, path))) == sorted(map(key, _reference(doc, steps)))


@given(st.text(max_size=30))
def test_parser_only_raises_path_errors(text: str) -> None:
    with contextlib.suppress(JsonPathError):
        parse_json_path("$" + text)
