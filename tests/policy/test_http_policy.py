"""HTTP request decisions (docs/policy.md, "HTTP requests"), one behaviour at a time."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callgate.config import ApprovalConfig, PolicyConfig
from callgate.model import HttpRequest, Principal, Verdict
from callgate.policy.classify import classify
from callgate.policy.engine import PolicyEngine
from callgate.policy.http import compile_path_glob, path_forms, query_values

ALICE = Principal(subject="alice", groups=frozenset({"fn"}), method="api_key")
BOB = Principal(subject="bob", groups=frozenset({"other"}), method="api_key")


def policy(*rules: Mapping[str, Any], name: str = "pay", **extra: Any) -> PolicyConfig:
    return PolicyConfig.model_validate(
        {
            "name": name,
            "subjects": {"groups": ["fn"]},
            "connections": ["payments"],
            "rules": list(rules),
            **extra,
        }
    )


def engine(
    *rules: Mapping[str, Any], approvals: Sequence[ApprovalConfig] | None = None
) -> PolicyEngine:
    return PolicyEngine([policy(*rules)], approvals)


def req(
    method: str = "GET",
    path: str = "/",
    *,
    query: str = "",
    headers: Sequence[tuple[str, str]] = (),
    body: Any = None,
    raw: bytes | None = None,
    content_type: str | None = "application/json",
    body_length: int | None = None,
) -> HttpRequest:
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    return HttpRequest(
        method=method,
        path=path,
        query=query,
        headers=tuple(headers),
        body=data,
        body_length=body_length if body_length is not None else (len(data) if data else 0),
        content_type=content_type if data is not None else None,
    )


def verdict(e: PolicyEngine, request: HttpRequest, principal: Principal = ALICE) -> Verdict:
    return e.decide_http(principal, "payments", request).verdict


ALLOW_GET = {"allow": {"methods": ["GET"], "paths": ["/v1/charges/*"]}}


# --- verdicts ---------------------------------------------------------------------------------


def test_nothing_matched_is_deny() -> None:
    d = engine(ALLOW_GET).decide_http(ALICE, "payments", req("POST", "/v1/charges/x"))
    assert d.verdict is Verdict.DENY
    assert d.reason == "denied: no rule allows this request"
    assert d.rules == ()


def test_no_policy_for_the_caller_is_deny() -> None:
    assert verdict(engine(ALLOW_GET), req("GET", "/v1/charges/x"), BOB) is Verdict.DENY


def test_deny_beats_review_beats_allow_and_names_rules() -> None:
    e = engine(
        ALLOW_GET,
        {"review": {"paths": ["/v1/charges/ch_*"]}},
        {"deny": {"paths": ["/v1/charges/ch_bad"]}},
    )
    d = e.decide_http(ALICE, "payments", req("GET", "/v1/charges/ch_bad"))
    assert d.verdict is Verdict.DENY
    assert d.reason == "denied by policy 'pay' rule 2 (deny paths /v1/charges/ch_bad)"
    assert d.rules == (
        "pay / rules[0]: allow methods=[GET] paths=[/v1/charges/*]",
        "pay / rules[1]: review paths=[/v1/charges/ch_*]",
        "pay / rules[2]: deny paths=[/v1/charges/ch_bad]",
    )
    assert verdict(e, req("GET", "/v1/charges/ch_1")) is Verdict.REVIEW
    assert verdict(e, req("GET", "/v1/charges/other")) is Verdict.ALLOW


def test_review_without_approvers_is_denied_when_approvals_are_known() -> None:
    rule = {"review": {"methods": ["POST"]}}
    d = engine(rule, approvals=[]).decide_http(ALICE, "payments", req("POST", "/x"))
    assert d.verdict is Verdict.DENY
    assert "no approvers" in d.reason
    approvers = ApprovalConfig.model_validate(
        {"connections": ["payments"], "approvers": {"groups": ["ops"]}}
    )
    assert verdict(engine(rule, approvals=[approvers]), req("POST", "/x")) is Verdict.REVIEW


def test_sql_rules_never_match_requests_and_empty_rules_match_both() -> None:
    e = engine({"allow": {"kinds": ["select"]}}, {"deny": {"kinds": ["ddl"]}})
    assert verdict(e, req("GET", "/")) is Verdict.DENY  # the allow is SQL-only
    everything = engine({"allow": {}}, {"deny": {"kinds": ["ddl"]}})
    assert verdict(everything, req("DELETE", "/anything")) is Verdict.ALLOW
    both = PolicyEngine([policy({"allow": {}}, {"deny": {"methods": ["GET"]}})])
    assert both.decide_sql(ALICE, "payments", classify("SELECT 1")).verdict is Verdict.ALLOW


def test_access_grants_add_their_policy() -> None:
    granted = PolicyConfig.model_validate(
        {
            "name": "break-glass",
            "subjects": {"groups": ["sre"]},
            "connections": ["payments"],
            "rules": [{"allow": {"methods": ["GET"]}}],
        }
    )
    e = PolicyEngine([policy(ALLOW_GET), granted])
    other = Principal("carol", frozenset({"nobody"}), "api_key")
    assert e.decide_http(other, "payments", req("GET", "/x")).verdict is Verdict.DENY
    d = e.decide_http(other, "payments", req("GET", "/x"), grants=["break-glass"])
    assert d.verdict is Verdict.ALLOW


def test_rules_name_query_and_header_conditions_without_their_values() -> None:
    e = engine(
        {
            "deny": {
                "query": {"force": "yes-*"},
                "headers": {"x-key": "k-123", "x-a": {"present": False}},
            }
        }
    )
    d = e.decide_http(ALICE, "payments", req(query="force=yes-1", headers=[("X-Key", "k-123")]))
    assert d.verdict is Verdict.DENY
    assert d.rules == ("pay / rules[0]: deny query=[force] headers=[x-key, x-a absent]",)
    assert d.reason == "denied by policy 'pay' rule 0 (deny query force headers x-key, x-a absent)"


def test_reason_and_rules_never_contain_request_values() -> None:
    e = engine({"deny": {"methods": ["POST"], "json": ["$.amount > 10"]}})
    d = e.decide_http(
        ALICE, "payments", req("POST", "/v1/secret-path", query="q=secret", body={"amount": 99})
    )
    assert d.verdict is Verdict.DENY
    for text in (d.reason, *d.rules):
        assert "secret" not in text and "99" not in text


# --- paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("glob", "path", "matches"),
    [
        ("/v1/charges/*", "/v1/charges/ch_1", True),
        ("/v1/charges/*", "/v1/charges/ch_1/refunds", False),
        ("/v1/charges/*", "/v1/charges/", True),
        ("/v1/charges/**", "/v1/charges/ch_1/refunds", True),
        ("/v1/charges/**", "/v1/charges", True),
        ("/v1/**/refunds", "/v1/refunds", True),
        ("/v1/**/refunds", "/v1/a/b/refunds", True),
        ("/v1/**/refunds", "/v1/a/b/refundsx", False),
        ("/v?/x", "/v1/x", True),
        ("/v?/x", "/v/x", False),
        ("/v[12]/x", "/v2/x", True),
        ("/v[!12]/x", "/v2/x", False),
        ("/a.b/x", "/aXb/x", False),
        ("/admin", "/Admin", False),
        ("/[^a]/x", "/^/x", True),
        ("/[z-a]/x", "/[z-a]/x", True),  # not a valid set: literal, as in fnmatch
    ],
)
def test_path_globs(glob: str, path: str, matches: bool) -> None:
    assert bool(compile_path_glob(glob).fullmatch(path)) is matches


@pytest.mark.parametrize(
    "path",
    [
        "/admin/users",
        "/%61dmin/users",
        "/v1/../admin/users",
        "/v1/%2e%2e/admin/users",
        "/v1/..%2fadmin/users",
        "/v1/..%2Fadmin/users",
        "//admin/users",
        "/./admin/users",
        "/admin;jsessionid=1/users",
        "/v1/..\\admin/users",
        "/%2561dmin/users",
    ],
)
def test_path_evasions_are_denied_and_never_allowed(path: str) -> None:
    deny = engine({"allow": {}}, {"deny": {"paths": ["/admin/**"]}})
    assert verdict(deny, req("GET", path)) is Verdict.DENY, path_forms(path)
    allow_v1 = engine({"allow": {"paths": ["/v1/**", "/other/**"]}})
    if not path.startswith("/admin"):
        assert verdict(allow_v1, req("GET", path)) is Verdict.DENY, path_forms(path)


def test_plain_paths_have_one_form() -> None:
    assert path_forms("/v1/charges/ch_1") == ("/v1/charges/ch_1",)
    assert path_forms("/v1/.well-known/x") == ("/v1/.well-known/x",)
    assert path_forms("") == ("/",)
    assert path_forms("*") == ("*",)
    assert path_forms("/a/./b/../c/") == ("/a/./b/../c/", "/a/c/")


# --- methods ----------------------------------------------------------------------------------


def test_methods_fail_closed() -> None:
    deny_delete = engine({"allow": {}}, {"deny": {"methods": ["DELETE", "GET"], "paths": ["/x"]}})
    assert verdict(deny_delete, req("delete", "/x")) is Verdict.DENY  # case
    assert verdict(deny_delete, req("HEAD", "/x")) is Verdict.DENY  # HEAD runs GET
    override = [("X-HTTP-Method-Override", "DELETE")]
    assert verdict(deny_delete, req("POST", "/x", headers=override)) is Verdict.DENY
    assert verdict(deny_delete, req("POST", "/x", query="_method=delete")) is Verdict.DENY
    assert verdict(deny_delete, req("POST", "/x", query="a=1&%5Fmethod=DELETE")) is Verdict.DENY
    assert verdict(deny_delete, req("POST", "/x", query="a=1&_METHOD=DELETE")) is Verdict.DENY
    assert verdict(deny_delete, req("POST", "/x")) is Verdict.ALLOW

    allow_post = engine({"allow": {"methods": ["POST"]}})
    assert verdict(allow_post, req("POST", "/x")) is Verdict.ALLOW
    assert verdict(allow_post, req("post", "/x")) is Verdict.DENY  # only as written
    assert verdict(allow_post, req("POST", "/x", headers=override)) is Verdict.DENY
    assert verdict(allow_post, req("POST", "/x", query="_method=DELETE")) is Verdict.DENY
    both = engine({"allow": {"methods": ["POST", "DELETE"]}})
    assert verdict(both, req("POST", "/x", headers=override)) is Verdict.ALLOW


# --- query and headers ------------------------------------------------------------------------


def test_query_conditions() -> None:
    e = engine(
        {"allow": {"paths": ["/search"], "query": {"limit": ["1?", "?"]}}},
        {"deny": {"query": {"force": "true"}}},
        {"review": {"query": {"export": {"present": True}}}},
    )
    assert verdict(e, req("GET", "/search", query="limit=10")) is Verdict.ALLOW
    assert verdict(e, req("GET", "/search", query="limit=100")) is Verdict.DENY
    assert verdict(e, req("GET", "/search")) is Verdict.DENY  # allow needs the parameter
    # every value must be allowed; any value may be denied
    assert verdict(e, req("GET", "/search", query="limit=1&limit=500")) is Verdict.DENY
    assert verdict(e, req("GET", "/search", query="limit=1&force=no&force=true")) is Verdict.DENY
    # names ignoring case, decoded; values decoded; ';' as a separator
    assert verdict(e, req("GET", "/search", query="limit=1&FORCE=true")) is Verdict.DENY
    assert verdict(e, req("GET", "/search", query="limit=1&f%6frce=%74rue")) is Verdict.DENY
    assert verdict(e, req("GET", "/search", query="limit=1;force=true")) is Verdict.DENY
    assert verdict(e, req("GET", "/search", query="limit=1&export")) is Verdict.REVIEW
    absent = engine({"allow": {"query": {"debug": {"present": False}}}})
    assert verdict(absent, req("GET", "/", query="a=1")) is Verdict.ALLOW
    assert verdict(absent, req("GET", "/", query="a=1&DEBUG=0")) is Verdict.DENY


def test_query_values_every_reading() -> None:
    values = query_values("a=1+2&b=%2B;c=3")
    assert values["a"] == ["1 2", "1+2"]
    assert values["b"] == ["+;c=3", "+"]
    assert values["c"] == ["3"]


def test_header_conditions() -> None:
    e = engine(
        {"allow": {"headers": {"x-tenant": "t-*"}}},
        {"deny": {"headers": {"X-Debug": "1"}}},
    )
    assert verdict(e, req(headers=[("X-Tenant", "t-1")])) is Verdict.ALLOW
    assert verdict(e, req(headers=[("x-tenant", "t-1"), ("x-tenant", "evil")])) is Verdict.DENY
    assert verdict(e, req(headers=[("x-tenant", "t-1"), ("x-debug", " 1 ")])) is Verdict.DENY
    assert verdict(e, req()) is Verdict.DENY


# --- JSON bodies ------------------------------------------------------------------------------

CHARGES = [
    {"allow": {"methods": ["POST"], "paths": ["/v1/charges"]}},
    {"deny": {"methods": ["POST"], "paths": ["/v1/charges"], "json": ["$.amount > 10000"]}},
    {"review": {"methods": ["POST"], "json": ["$.currency != 'usd'"]}},
]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"amount": 500, "currency": "usd"}, Verdict.ALLOW),
        ({"amount": 50000, "currency": "usd"}, Verdict.DENY),
        ({"amount": "50000", "currency": "usd"}, Verdict.DENY),  # a number in a string
        ({"amount": " 5e4 ", "currency": "usd"}, Verdict.DENY),
        ({"amount": "0x10000", "currency": "usd"}, Verdict.DENY),
        ({"amount": "lots", "currency": "usd"}, Verdict.DENY),  # cannot be compared
        ({"amount": [50000], "currency": "usd"}, Verdict.DENY),
        ({"amount": None, "currency": "usd"}, Verdict.ALLOW),
        ({"amount": True, "currency": "usd"}, Verdict.ALLOW),
        ({"amount": 500, "currency": "eur"}, Verdict.REVIEW),
        ({"amount": 500}, Verdict.ALLOW),  # nothing selected: != does not hold
    ],
)
def test_json_conditions(body: Any, expected: Verdict) -> None:
    e = engine(*CHARGES, approvals=None)
    assert verdict(e, req("POST", "/v1/charges", body=body)) is expected


def test_repeated_members_count_every_value() -> None:
    e = engine(*CHARGES)
    raw = b'{"amount": 1, "currency": "usd", "amount": 50000}'
    assert verdict(e, req("POST", "/v1/charges", raw=raw)) is Verdict.DENY
    raw = b'{"amount": 50000, "currency": "usd", "amount": 1}'
    assert verdict(e, req("POST", "/v1/charges", raw=raw)) is Verdict.DENY


@pytest.mark.parametrize(
    ("request_", "deny_matches"),
    [
        (
            req(
                "POST",
                "/v1/charges",
                raw=b"amount=50000",
                content_type="application/x-www-form-urlencoded",
            ),
            True,
        ),
        (
            req(
                "POST",
                "/v1/charges",
                raw=b'{"a":"&amount=50000&"}',
                content_type="application/x-www-form-urlencoded",
            ),
            True,
        ),
        (req("POST", "/v1/charges", raw=b'{"amount": 5}', content_type=None), True),
        (req("POST", "/v1/charges", raw=b'{"amount": 5', content_type="application/json"), True),
        (req("POST", "/v1/charges", raw=b'{"amount": NaN}', content_type="application/json"), True),
        (req("POST", "/v1/charges", raw=b"\xff\xfe", content_type="application/json"), True),
        (req("POST", "/v1/charges", body_length=100), True),  # not buffered
        (HttpRequest("POST", "/v1/charges"), True),  # length unknown (chunked), not buffered
        (req("POST", "/v1/charges", body_length=0), False),  # no body
        (req("POST", "/v1/charges", raw=b"  \n", content_type="text/plain"), False),
        (
            req(
                "POST",
                "/v1/charges",
                raw=b'{"amount": 5}',
                content_type="application/vnd.api+json; charset=utf-8",
            ),
            False,
        ),
    ],
)
def test_unreadable_bodies_fail_closed(request_: HttpRequest, deny_matches: bool) -> None:
    deny = engine({"allow": {}}, {"deny": {"json": ["$.amount > 10000"]}})
    assert (verdict(deny, request_) is Verdict.DENY) is deny_matches
    review = engine({"allow": {}}, {"review": {"json": ["$.amount > 10000"]}})
    assert (verdict(review, request_) is Verdict.REVIEW) is deny_matches
    allow = engine({"allow": {"json": ["$.amount < 10000"]}})
    readable_small = not deny_matches and request_.body and b"amount" in request_.body
    assert (verdict(allow, request_) is Verdict.ALLOW) is bool(readable_small)


def test_allow_json_needs_every_value() -> None:
    e = engine({"allow": {"json": ["$.items[*].qty < 10", "not exists $.refund"]}})
    assert verdict(e, req("POST", "/", body={"items": [{"qty": 1}, {"qty": 9}]})) is Verdict.ALLOW
    assert verdict(e, req("POST", "/", body={"items": [{"qty": 1}, {"qty": 99}]})) is Verdict.DENY
    assert verdict(e, req("POST", "/", body={"items": []})) is Verdict.DENY  # nothing selected
    body = {"items": [{"qty": 1}], "refund": None}
    assert verdict(e, req("POST", "/", body=body)) is Verdict.DENY


def test_no_body_selects_nothing() -> None:
    e = engine({"allow": {}}, {"deny": {"json": ["exists $"]}})
    assert verdict(e, req("POST", "/", body_length=0)) is Verdict.ALLOW
    assert verdict(e, req("POST", "/", body={})) is Verdict.DENY
    absent = engine({"allow": {"json": ["not exists $.refund"]}})
    assert verdict(absent, req("POST", "/", body_length=0)) is Verdict.ALLOW
    assert verdict(absent, req("POST", "/", body={"refund": 1})) is Verdict.DENY


def test_exists_and_descendants() -> None:
    e = engine({"allow": {}}, {"deny": {"json": ["exists $..card.cvc"]}})
    assert verdict(e, req("POST", "/", body={"a": [{"b": {"card": {"cvc": "1"}}}]})) is Verdict.DENY
    assert verdict(e, req("POST", "/", body={"a": [{"b": {"card": {}}}]})) is Verdict.ALLOW


def test_json_decisions_are_not_cached_across_bodies() -> None:
    e = engine(*CHARGES)
    small = req("POST", "/v1/charges", body={"amount": 1, "currency": "usd"})
    large = req("POST", "/v1/charges", body={"amount": 10**6, "currency": "usd"})
    for _ in range(3):
        assert verdict(e, small) is Verdict.ALLOW
        assert verdict(e, large) is Verdict.DENY


def test_repeated_requests_reuse_the_decision() -> None:
    e = engine(ALLOW_GET, {"deny": {"query": {"x": "1"}}})
    first = e.decide_http(ALICE, "payments", req("GET", "/v1/charges/a", query="x=2"))
    again = e.decide_http(ALICE, "payments", req("GET", "/v1/charges/a", query="x=2"))
    assert first is again
    assert e.decide_http(ALICE, "payments", req("GET", "/v1/charges/a", query="x=1")).verdict is (
        Verdict.DENY
    )


def test_needs_request_body() -> None:
    e = engine(*CHARGES, {"deny": {"methods": ["DELETE"], "json": ["exists $.all"]}})
    assert e.needs_request_body(ALICE, "payments", "POST", "/v1/charges")
    assert e.needs_request_body(ALICE, "payments", "POST", "/v1/other")  # the review rule
    assert not e.needs_request_body(ALICE, "payments", "GET", "/v1/charges")
    assert e.needs_request_body(ALICE, "payments", "DELETE", "/x")
    assert not e.needs_request_body(BOB, "payments", "POST", "/v1/charges")
    assert not engine(ALLOW_GET).needs_request_body(ALICE, "payments", "POST", "/v1/charges")


@given(st.text(alphabet="/ab*?[]!^\\%2Ff.;-", max_size=16))
def test_any_glob_compiles_and_literal_globs_match_themselves(glob: str) -> None:
    pattern = compile_path_glob("/" + glob)
    if not any(c in glob for c in "*?["):
        assert pattern.fullmatch("/" + glob)


@given(st.text(alphabet="/ab.%2eEfF5C;\\", max_size=20))
def test_path_forms_start_with_the_path_as_sent(path: str) -> None:
    forms = path_forms("/" + path)
    assert forms[0] == "/" + path
    assert all(f.startswith("/") for f in forms)
    assert all("/../" not in f and not f.endswith("/..") for f in forms[1:])
