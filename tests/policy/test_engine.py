"""Policy evaluation semantics (docs/policy.md), one rule at a time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from callgate.config import ApprovalConfig, PolicyConfig
from callgate.model import Principal, Verdict
from callgate.policy.classify import Classification, classify
from callgate.policy.engine import PolicyEngine

ALICE = Principal(subject="alice", groups=frozenset({"app"}), method="api_key")
MALLORY = Principal(subject="mallory", groups=frozenset({"other"}), method="api_key")


def policy(*rules: Mapping[str, Any], name: str = "p", **extra: Any) -> PolicyConfig:
    return PolicyConfig.model_validate(
        {
            "name": name,
            "subjects": {"groups": ["app"]},
            "connections": ["db"],
            "rules": list(rules),
            **extra,
        }
    )


def decide(
    policies: PolicyConfig | Sequence[PolicyConfig],
    sql: str,
    *,
    search_path: Sequence[str] | None = ("public",),
    prepared: Mapping[str, str] | None = None,
    has_parameters: bool = False,
    approvals: Sequence[ApprovalConfig] | None = None,
    principal: Principal = ALICE,
) -> tuple[Verdict, str, tuple[str, ...]]:
    engine = PolicyEngine([policies] if isinstance(policies, PolicyConfig) else policies, approvals)
    known: dict[str, Classification] = {k: classify(v) for k, v in (prepared or {}).items()}
    d = engine.decide_sql(
        principal,
        "db",
        classify(sql),
        search_path=search_path,
        prepared=known,
        has_parameters=has_parameters,
    )
    return d.verdict, d.reason, d.rules


ALLOW_SELECT = {"allow": {"kinds": ["select"]}}


# --- verdict order ----------------------------------------------------------------------------


def test_nothing_matched_is_deny() -> None:
    verdict, reason, rules = decide(policy(ALLOW_SELECT), "DELETE FROM t WHERE id = 1")
    assert verdict is Verdict.DENY
    assert reason == "denied: no rule allows this statement"
    assert rules == ()


def test_no_policy_for_the_caller_is_deny() -> None:
    verdict, _, _ = decide(policy(ALLOW_SELECT), "SELECT 1", principal=MALLORY)
    assert verdict is Verdict.DENY


def test_deny_beats_review_beats_allow() -> None:
    rules = (
        {"allow": {"kinds": ["delete"]}},
        {"review": {"kinds": ["delete"]}},
        {"deny": {"kinds": ["delete"], "where": "absent"}},
    )
    assert decide(policy(*rules), "DELETE FROM t")[0] is Verdict.DENY
    assert decide(policy(*rules), "DELETE FROM t WHERE id = 1")[0] is Verdict.REVIEW
    assert decide(policy(rules[0]), "DELETE FROM t WHERE id = 1")[0] is Verdict.ALLOW


def test_every_applicable_policy_counts() -> None:
    other = PolicyConfig.model_validate(
        {
            "name": "everyone",
            "subjects": {"users": ["*"]},
            "connections": ["*"],
            "rules": [{"deny": {"functions": ["pg_sleep"]}}],
        }
    )
    verdict, reason, rules = decide([policy(ALLOW_SELECT), other], "SELECT pg_sleep(1)")
    assert verdict is Verdict.DENY
    assert reason == "denied by policy 'everyone' rule 0 (deny functions pg_sleep)"
    assert rules == (
        "p / rules[0]: allow kinds=[select]",
        "everyone / rules[0]: deny functions=[pg_sleep]",
    )


# --- allow must cover every kind ------------------------------------------------------------


def test_allow_select_does_not_cover_a_cte_delete() -> None:
    sql = "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d"
    verdict, reason, _ = decide(policy(ALLOW_SELECT), sql)
    assert verdict is Verdict.DENY
    assert reason == "denied: no rule allows delete"


def test_allow_rules_together_cover_kinds() -> None:
    sql = "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d"
    both = policy(ALLOW_SELECT, {"allow": {"kinds": ["delete"]}})
    assert decide(both, sql)[0] is Verdict.ALLOW


def test_review_covers_its_kinds() -> None:
    sql = "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d"
    p = policy(ALLOW_SELECT, {"review": {"kinds": ["delete"]}})
    assert decide(p, sql)[0] is Verdict.REVIEW
    assert decide(p, "SELECT 1; CREATE TABLE x (a int)")[0] is Verdict.DENY


def test_allow_without_kinds_covers_all_but_unknown() -> None:
    p = policy({"allow": {}})
    assert decide(p, "DROP TABLE t")[0] is Verdict.ALLOW
    verdict, reason, _ = decide(p, "SELEKT 1")
    assert verdict is Verdict.DENY
    assert "could not be parsed" in reason


def test_unknown_allowed_only_by_name() -> None:
    assert decide(policy({"allow": {"kinds": ["unknown"]}}), "SELEKT 1")[0] is Verdict.ALLOW
    assert decide(policy({"allow": {"kinds": ["unknown"]}}), "SELECT 1")[0] is Verdict.DENY


def test_empty_statement_is_allowed() -> None:
    verdict, reason, _ = decide(policy(), "  ; -- nothing")
    assert verdict is Verdict.ALLOW
    assert reason == "empty statement"


# --- EXECUTE --------------------------------------------------------------------------------


def test_execute_is_judged_by_the_prepared_body() -> None:
    p = policy(ALLOW_SELECT)
    assert decide(p, "EXECUTE q(1)", prepared={"q": "SELECT $1::int"})[0] is Verdict.ALLOW
    verdict, reason, _ = decide(p, "EXECUTE q(1)", prepared={"q": "DELETE FROM t WHERE id = $1"})
    assert verdict is Verdict.DENY
    assert reason == "denied: no rule allows this statement"


def test_execute_of_an_unknown_name_is_unknown() -> None:
    verdict, reason, _ = decide(policy(ALLOW_SELECT), "EXECUTE nosuch")
    assert verdict is Verdict.DENY
    assert "unknown" in reason


def test_prepare_and_execute_in_one_batch() -> None:
    p = policy(ALLOW_SELECT, {"allow": {"kinds": ["session"]}})
    assert decide(p, "PREPARE q AS SELECT 1; EXECUTE q; DEALLOCATE q")[0] is Verdict.ALLOW
    # the batch's own PREPARE and the session's both count when the names collide
    verdict, _, _ = decide(
        p, "PREPARE q AS SELECT 1; EXECUTE q", prepared={"q": "DELETE FROM t WHERE id = 1"}
    )
    assert verdict is Verdict.DENY


def test_prepare_carries_its_body_kinds() -> None:
    assert decide(policy(ALLOW_SELECT), "PREPARE q AS DELETE FROM t WHERE a = 1")[0] is Verdict.DENY


# --- tables and the search path -------------------------------------------------------------

PUBLIC_ONLY = policy({"allow": {"kinds": ["select"], "tables": ["public.*"]}})
NO_EVIL = policy(ALLOW_SELECT, {"deny": {"tables": ["evil.*"]}})


def test_unqualified_table_is_qualified_with_the_search_path() -> None:
    assert decide(PUBLIC_ONLY, "SELECT * FROM orders")[0] is Verdict.ALLOW
    assert decide(PUBLIC_ONLY, "SELECT * FROM orders", search_path=["app"])[0] is Verdict.DENY


def test_allow_needs_every_schema_on_the_path_to_match() -> None:
    assert decide(PUBLIC_ONLY, "SELECT * FROM orders", search_path=["public", "evil"])[0] is (
        Verdict.DENY
    )
    assert decide(PUBLIC_ONLY, "SELECT * FROM public.orders", search_path=["evil"])[0] is (
        Verdict.ALLOW
    )


def test_deny_matches_any_schema_on_the_path() -> None:
    assert decide(NO_EVIL, "SELECT * FROM orders", search_path=["public", "evil"])[0] is (
        Verdict.DENY
    )
    assert decide(NO_EVIL, "SELECT * FROM orders", search_path=["public"])[0] is Verdict.ALLOW


def test_statement_that_sets_the_search_path_makes_names_ambiguous() -> None:
    p = policy(ALLOW_SELECT, {"allow": {"kinds": ["session"]}}, {"deny": {"tables": ["evil.*"]}})
    verdict, reason, _ = decide(p, "SET search_path = evil; SELECT * FROM orders")
    assert verdict is Verdict.DENY
    assert "evil.*" in reason
    both = policy({"allow": {"kinds": ["select", "session"], "tables": ["public.*"]}})
    assert decide(both, "SET search_path = public; SELECT * FROM orders")[0] is Verdict.DENY
    assert decide(both, "SET search_path = public; SELECT * FROM public.orders")[0] is (
        Verdict.ALLOW
    )


def test_unknown_search_path_makes_names_ambiguous() -> None:
    assert decide(NO_EVIL, "SELECT * FROM orders", search_path=None)[0] is Verdict.DENY
    assert decide(PUBLIC_ONLY, "SELECT * FROM orders", search_path=None)[0] is Verdict.DENY
    assert decide(PUBLIC_ONLY, "SELECT * FROM public.orders", search_path=None)[0] is Verdict.ALLOW


def test_pg_names_may_resolve_to_pg_catalog() -> None:
    p = policy(ALLOW_SELECT, {"deny": {"tables": ["pg_catalog.pg_authid"]}})
    assert decide(p, "SELECT * FROM pg_authid")[0] is Verdict.DENY
    assert decide(PUBLIC_ONLY, "SELECT * FROM pg_class")[0] is Verdict.DENY


def test_allow_tables_must_cover_every_table() -> None:
    sql = "SELECT * FROM public.orders JOIN evil.x ON true"
    assert decide(PUBLIC_ONLY, sql)[0] is Verdict.DENY


def test_glob_without_schema_matches_any_schema() -> None:
    p = policy(ALLOW_SELECT, {"deny": {"tables": ["secret*"]}})
    assert decide(p, "SELECT * FROM vault.secrets")[0] is Verdict.DENY


# --- functions and columns ------------------------------------------------------------------


def test_function_glob_matches_bare_and_qualified_names() -> None:
    bare = policy(ALLOW_SELECT, {"deny": {"functions": ["pg_read_file"]}})
    assert decide(bare, "SELECT pg_catalog.pg_read_file('x')")[0] is Verdict.DENY
    assert decide(bare, "SELECT evil.pg_read_file('x')")[0] is Verdict.DENY
    qualified = policy(ALLOW_SELECT, {"deny": {"functions": ["pg_catalog.pg_read_file"]}})
    assert decide(qualified, "SELECT pg_read_file('x')")[0] is Verdict.DENY
    assert decide(qualified, "SELECT \"PG_READ_FILE\"('x')")[0] is Verdict.ALLOW


def test_allow_functions_must_cover_every_call() -> None:
    p = policy({"allow": {"kinds": ["select"], "functions": ["lower", "upper"]}})
    assert decide(p, "SELECT lower('A'), upper('b')")[0] is Verdict.ALLOW
    assert decide(p, "SELECT lower('A'), md5('b')")[0] is Verdict.DENY


def test_column_rules() -> None:
    deny_ssn = policy(ALLOW_SELECT, {"deny": {"columns": ["customers.ssn"]}})
    assert decide(deny_ssn, "SELECT name FROM customers")[0] is Verdict.ALLOW
    assert decide(deny_ssn, "SELECT * FROM customers")[0] is Verdict.DENY
    assert decide(deny_ssn, "SELECT ssn FROM customers c, orders o")[0] is Verdict.DENY
    only_names = policy({"allow": {"kinds": ["select"], "columns": ["customers.name", "*.id"]}})
    assert decide(only_names, "SELECT id, name FROM customers")[0] is Verdict.ALLOW
    assert decide(only_names, "SELECT * FROM customers")[0] is Verdict.DENY


# --- other conditions -------------------------------------------------------------------------


def test_locks_condition() -> None:
    p = policy(ALLOW_SELECT, {"review": {"locks": True}})
    assert decide(p, "SELECT * FROM t FOR UPDATE")[0] is Verdict.REVIEW
    assert decide(p, "SELECT * FROM t")[0] is Verdict.ALLOW
    no_locks = policy({"allow": {"kinds": ["select"], "locks": False}})
    assert decide(no_locks, "SELECT * FROM t FOR SHARE")[0] is Verdict.DENY


def test_any_parameters_condition() -> None:
    p = policy(ALLOW_SELECT, {"review": {"any_parameters": True}})
    assert decide(p, "SELECT $1", has_parameters=True)[0] is Verdict.REVIEW
    assert decide(p, "SELECT 1")[0] is Verdict.ALLOW


def test_http_rules_never_match_sql() -> None:
    p = policy(ALLOW_SELECT, {"deny": {"methods": ["GET"]}})
    assert decide(p, "SELECT 1")[0] is Verdict.ALLOW


def test_review_without_approvers_is_denied_when_approvals_are_known() -> None:
    p = policy({"review": {"kinds": ["select"]}})
    verdict, reason, _ = decide(p, "SELECT 1", approvals=[])
    assert verdict is Verdict.DENY
    assert "no approvers" in reason
    approvers = ApprovalConfig.model_validate(
        {"connections": ["db"], "approvers": {"groups": ["dba"]}}
    )
    assert decide(p, "SELECT 1", approvals=[approvers])[0] is Verdict.REVIEW


# --- what the caller is told ----------------------------------------------------------------


def test_reason_names_the_rule_and_no_literal() -> None:
    p = policy(ALLOW_SELECT, {"deny": {"kinds": ["ddl", "privilege"]}})
    verdict, reason, rules = decide(p, "SELECT 'hunter2'; GRANT x TO \"hunter2\"")
    assert verdict is Verdict.DENY
    assert reason == "denied by policy 'p' rule 1 (deny kinds ddl, privilege)"
    assert rules == (
        "p / rules[0]: allow kinds=[select]",
        "p / rules[1]: deny kinds=[ddl, privilege]",
    )
    for sql in (
        "SELECT pg_read_file('/etc/hunter2')",
        "SELEKT 'hunter2'",
        "DELETE FROM t WHERE a = 'hunter2'",
    ):
        _, reason, rules = decide(p, sql)
        assert "hunter2" not in reason and not any("hunter2" in r for r in rules)


def test_version_is_stable_and_tracks_the_policy() -> None:
    a = PolicyEngine([policy(ALLOW_SELECT)])
    b = PolicyEngine([policy(ALLOW_SELECT)])
    c = PolicyEngine([policy({"allow": {"kinds": ["insert"]}})])
    assert a.version == b.version != c.version
    assert len(a.version) == 12


def test_applicable_uses_subjects_and_connections() -> None:
    p = policy(ALLOW_SELECT, subjects={"groups": ["app"], "except": {"users": ["alice"]}})
    engine = PolicyEngine([p])
    assert engine.applicable(ALICE, "db") == ()
    bob = Principal(subject="bob", groups=frozenset({"app"}), method="oidc")
    assert engine.applicable(bob, "db") == (p,)
    assert engine.applicable(bob, "other") == ()


@pytest.mark.parametrize("sql", ["SELECT 1", "DROP TABLE t", "SELEKT", ""])
def test_decide_never_raises(sql: str) -> None:
    engine = PolicyEngine([policy(ALLOW_SELECT)])
    assert engine.decide_sql(ALICE, "db", classify(sql)).verdict in set(Verdict)
