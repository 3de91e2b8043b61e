"""Claims without crypto: dotted paths, groups, claim mappings, registered-claim checks."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callgate.config.identity import ClaimMappingConfig
from callgate.errors import AuthenticationFailed
from callgate.identity.claims import (
    ClaimMapping,
    audience_matches,
    check_times,
    groups_from,
    mapped_groups,
    resolve_claim,
    scalar_strings,
    subject_from,
)

K8S: dict[str, Any] = {
    "sub": "system:serviceaccount:reports:reporter",
    "kubernetes.io": {
        "namespace": "reports",
        "serviceaccount": {"name": "reporter", "uid": "0b8d"},
    },
    "realm_access": {"roles": ["dba", "reader"]},
    "a.b": "flat",
    "a": {"b": "nested"},
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("sub", "system:serviceaccount:reports:reporter"),
        ("kubernetes.io.namespace", "reports"),
        ("kubernetes.io.serviceaccount.name", "reporter"),
        ("realm_access.roles", ["dba", "reader"]),
        ("a.b", "flat"),  # a claim literally named "a.b" wins over a → b
        ("kubernetes.io.nothing", None),
        ("missing", None),
        ("sub.deeper", None),
    ],
)
def test_resolve_claim(path: str, expected: object) -> None:
    assert resolve_claim(K8S, path) == expected


def test_resolve_falls_back_to_shorter_names() -> None:
    claims = {"x.y": {"other": 1}, "x": {"y": {"z": "found"}}}
    assert resolve_claim(claims, "x.y.z") == "found"


@given(
    st.recursive(
        st.text(max_size=5) | st.integers(),
        lambda c: st.dictionaries(st.text(max_size=4), c, max_size=4),
    ),
    st.text(max_size=20),
)
def test_resolve_never_raises(claims: object, path: str) -> None:
    if isinstance(claims, dict):
        resolve_claim(claims, path)


def test_scalar_strings() -> None:
    assert scalar_strings("x") == ("x",)
    assert scalar_strings(True) == ("true",)
    assert scalar_strings(42) == ("42",)
    assert scalar_strings(["a", 1, None, {"x": 1}, ["nested"]]) == ("a", "1")
    assert scalar_strings(None) == ()
    assert scalar_strings({"a": "b"}) == ()
    assert scalar_strings(float("nan")) == ()


def test_subject() -> None:
    assert subject_from(K8S, "kubernetes.io.serviceaccount.name") == "reporter"
    assert subject_from({"oid": 12345}, "oid") == "12345"
    for bad in ({}, {"sub": ""}, {"sub": "  "}, {"sub": ["x"]}, {"sub": True}, {"sub": "x" * 2000}):
        with pytest.raises(AuthenticationFailed, match="missing subject"):
            subject_from(bad, "sub")


def test_groups() -> None:
    assert groups_from(K8S, "realm_access.roles") == {"dba", "reader"}
    assert groups_from({"groups": "one"}, "groups") == {"one"}
    assert groups_from({}, "groups") == frozenset()
    for bad in ({"groups": [1]}, {"groups": {"a": 1}}, {"groups": [""]}, {"groups": ["x"] * 1001}):
        with pytest.raises(AuthenticationFailed, match="bad groups claim"):
            groups_from(bad, "groups")


def mapping(claims: dict[str, str], groups: list[str]) -> ClaimMapping:
    return ClaimMapping.from_config(ClaimMappingConfig(claims=claims, groups=tuple(groups)))


def test_claim_mappings() -> None:
    gha = {"repository": "acme/billing", "ref": "refs/heads/main", "run_attempt": "1"}
    deployers = mapping({"repository": "acme/billing", "ref": "refs/heads/main"}, ["deployers"])
    any_acme_branch = mapping({"repository": "acme/*", "ref": "refs/heads/*"}, ["acme-ci"])
    tags_only = mapping({"repository": "acme/*", "ref": "refs/tags/*"}, ["releasers"])
    case = mapping({"repository": "ACME/*"}, ["case"])
    assert mapped_groups(gha, [deployers, any_acme_branch, tags_only, case]) == {
        "deployers",
        "acme-ci",
    }
    k8s = mapping(
        {"kubernetes.io.namespace": "reports", "kubernetes.io.serviceaccount.name": "rep*"},
        ["report-jobs"],
    )
    assert k8s.matches(K8S)
    roles = mapping({"realm_access.roles": "db?"}, ["db-team"])  # any list item
    assert roles.matches(K8S)
    assert not mapping({"absent": "*"}, ["x"]).matches(K8S)


def test_check_times() -> None:
    now = 1_000_000.0
    assert check_times({"exp": now + 10}, now=now, skew=0) == now + 10
    cases: list[tuple[dict[str, object], str]] = [
        ({"exp": now}, "expired"),
        ({}, "missing expiry"),
        ({"exp": True}, "malformed token"),
        ({"exp": now + 10, "nbf": now + 1}, "not yet valid"),
        ({"exp": now + 10, "iat": now + 1}, "issued in the future"),
        ({"exp": now + 10, "iat": "yesterday"}, "malformed token"),
    ]
    for claims, reason in cases:
        with pytest.raises(AuthenticationFailed) as caught:
            check_times(claims, now=now, skew=0)
        assert caught.value.message == reason
    check_times({"exp": now - 5, "nbf": now + 5, "iat": now + 5}, now=now, skew=10)


def test_audience() -> None:
    assert audience_matches({"aud": "callgate"}, ("callgate",))
    assert audience_matches({"aud": ["x", "callgate"]}, ("callgate",))
    assert not audience_matches({"aud": ["x"]}, ("callgate",))
    assert not audience_matches({}, ("callgate",))
    assert not audience_matches({"aud": [["callgate"]]}, ("callgate",))
