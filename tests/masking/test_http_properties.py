"""Properties of HTTP body masking, for random JSON documents and rules:

- no value a path rule covers comes out as it went in (it is exactly its masked form), and
  every part no rule covers comes out unchanged (both bodies parsed and compared);
- no planted sensitive value survives the detectors, and text without any is left alone.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callgate.masking.http import HttpMaskPlan
from callgate.masking.jsonmask import PathRule
from callgate.masking.jsonpath import JsonPath, Step
from callgate.masking.plan import DetectRule
from callgate.masking.styles import REDACTED, Style, strictest

SECRET = b"property-secret"

NAMES = st.sampled_from(["a", "b", "card", "number"])
STEPS = st.one_of(
    st.builds(Step, name=NAMES),
    st.builds(Step, index=st.integers(min_value=-2, max_value=2)),
    st.builds(Step, wildcard=st.just(True)),
    st.builds(Step, descend=st.just(True), name=NAMES),
)
STYLES = st.one_of(
    st.sampled_from(["redact", "hash", "null", "email"]).map(
        lambda name: Style(name, secret=SECRET)  # type: ignore[arg-type]
    ),
    st.integers(min_value=0, max_value=6).map(lambda keep: Style("partial", keep=keep)),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**18), max_value=10**18),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
DOCS = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(NAMES, children, max_size=4),
    max_leaves=25,
)

Location = tuple[str | int, ...]


def _selected(doc: Any, steps: tuple[Step, ...]) -> set[Location]:
    """Where a path selects, as locations from the root (a reference independent of the
    automaton the masker uses)."""
    current: set[Location] = {()}
    for step in steps:
        starts = current
        if step.descend:
            starts = {loc for top in current for loc in _below(_at(doc, top), top)}
        following: set[Location] = set()
        for loc in starts:
            node = _at(doc, loc)
            if isinstance(node, dict):
                following |= {(*loc, k) for k in node if step.wildcard or step.name == k}
            elif isinstance(node, list):
                for i in range(len(node)):
                    want = step.index
                    if want is not None and want < 0:
                        want += len(node)
                    if step.wildcard or want == i:
                        following.add((*loc, i))
        current = following
    return current


def _at(doc: Any, loc: Location) -> Any:
    for key in loc:
        doc = doc[key]
    return doc


def _below(node: Any, loc: Location) -> list[Location]:
    out = [loc]
    if isinstance(node, dict):
        for key, child in node.items():
            out += _below(child, (*loc, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            out += _below(child, (*loc, index))
    return out


def _leaves(node: Any, loc: Location = ()) -> list[tuple[Location, Any]]:
    if isinstance(node, dict):
        return [leaf for key, child in node.items() for leaf in _leaves(child, (*loc, key))]
    if isinstance(node, list):
        return [leaf for i, child in enumerate(node) for leaf in _leaves(child, (*loc, i))]
    return [(loc, node)]


def _expected(value: Any, style: Style) -> Any:
    """What docs/masking.md says a covered scalar becomes."""
    if value is None:
        return None
    if isinstance(value, bool):
        if style.name == "hash":
            return style.token(b"true" if value else b"false")
        return None if style.name == "null" else REDACTED
    if isinstance(value, str):
        return style.whole(value)
    return style.whole(json.dumps(value))


def _shape(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _shape(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_shape(v) for v in node]
    return None


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=DOCS,
    rules=st.lists(st.tuples(st.lists(STEPS, max_size=3), STYLES), min_size=1, max_size=3),
)
def test_paths_mask_exactly_what_they_cover(
    doc: Any, rules: list[tuple[list[Step], Style]]
) -> None:
    body = json.dumps(doc).encode()
    doc = json.loads(body)  # floats as the masker reads them
    paths = [
        PathRule(JsonPath("$" + "".join(s.text for s in steps), tuple(steps)), style, f"r{i}")
        for i, (steps, style) in enumerate(rules)
    ]
    plan = HttpMaskPlan.compile(paths)
    out = json.loads(plan.mask_body(body, "application/json"))

    covered: dict[Location, list[Style]] = {}
    for rule in paths:
        for loc in _selected(doc, rule.path.steps):
            covered.setdefault(loc, []).append(rule.style)
    assert _shape(out) == _shape(doc)  # no member or element added, lost or renamed
    for loc, value in _leaves(doc):
        styles = [
            s for prefix, found in covered.items() if loc[: len(prefix)] == prefix for s in found
        ]
        got = _at(out, loc)
        if not styles:
            assert got == value and type(got) is type(value), loc
            continue
        style = strictest(styles)
        assert style is not None
        assert got == _expected(value, style), loc
        if isinstance(value, str) and len(value) >= 2 and style.name in ("redact", "hash", "null"):
            assert got != value or value == REDACTED


SAFE_TEXT = st.text(alphabet="abcdefghij XYZ.,:;-_", max_size=12)
PLANTED = st.sampled_from(
    [
        "bob@example.com",
        "4111111111111111",
        "4111 1111 1111 1111",
        "GB82WEST12345698765432",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_0123456789abcdefghijABCDEFGHIJ012345",
    ]
)
SAFE_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-999, 999), SAFE_TEXT)


@st.composite
def planted_docs(draw: st.DrawFn) -> tuple[Any, list[str]]:
    secrets: list[str] = []

    def leaf() -> st.SearchStrategy[Any]:
        def plant(parts: tuple[str, str, str]) -> str:
            secrets.append(parts[1])
            return f"{parts[0]} {parts[1]} {parts[2]}"

        return st.one_of(
            SAFE_SCALARS,
            st.tuples(SAFE_TEXT, PLANTED, SAFE_TEXT).map(plant),
        )

    doc = draw(
        st.recursive(
            leaf(),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(st.one_of(SAFE_TEXT, PLANTED), children, max_size=4)
            ),
            max_leaves=15,
        )
    )
    keys = [k for loc, _ in _leaves(doc) for k in loc if isinstance(k, str)]
    secrets += [k for k in keys if k in PLANTED_VALUES]
    return doc, secrets


PLANTED_VALUES = {
    "bob@example.com",
    "4111111111111111",
    "4111 1111 1111 1111",
    "GB82WEST12345698765432",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_0123456789abcdefghijABCDEFGHIJ012345",
}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    planted=planted_docs(),
    style=st.sampled_from(["redact", "hash", "null", "partial", "email"]),
)
def test_detectors_leave_no_planted_value(planted: tuple[Any, list[str]], style: str) -> None:
    doc, _ = planted
    detectors = DetectRule(
        "d",
        ("email", "credit_card", "iban", "aws_access_key", "api_key"),
        Style(style, secret=SECRET),  # type: ignore[arg-type]
    )
    plan = HttpMaskPlan.compile(detects=[detectors])
    body = json.dumps(doc).encode()
    out_bytes = plan.mask_body(body, "application/json")
    out = json.loads(out_bytes)
    text = json.dumps(out, ensure_ascii=False)
    for secret in PLANTED_VALUES:
        if style == "email" and secret == "bob@example.com":
            assert "bob@" not in text
        else:
            assert secret not in text
    if not any(secret in body.decode() for secret in PLANTED_VALUES):
        assert out_bytes is body  # nothing to find: the body is not even rewritten
    # members may be renamed (a hit in a name), never dropped
    assert len(_leaves(out)) == len(_leaves(doc))
