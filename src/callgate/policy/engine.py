"""Per-statement policy decisions (SPEC §2): allow, review or deny a classified SQL statement
(and, through :mod:`callgate.policy.http`, an HTTP request: :meth:`PolicyEngine.decide_http`).

Pure: no I/O. Compile once per config (:class:`PolicyEngine`), then call :meth:`decide_sql` per
statement. The semantics, with examples, are in docs/policy.md; in short:

- every rule of every policy that applies to the caller and the connection is checked;
- deny beats review beats allow; nothing matched is deny;
- the allow (and review) rules that match must together cover **every** kind of the statement;
- ``unknown`` is covered only by a rule that names it;
- conditions that name tables, columns or functions fail closed on ambiguous names
  (see :mod:`callgate.policy.matching`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

from callgate.model import Decision, HttpRequest, Principal, Verdict
from callgate.policy.access import policies_for
from callgate.policy.classify import Classification, merge
from callgate.policy.http import HttpRule, HttpRuleSet
from callgate.policy.matching import Candidate, GlobSet, Resolver

if TYPE_CHECKING:
    from callgate.config import ApprovalConfig, ConditionsConfig, PolicyConfig

DEFAULT_SEARCH_PATH: Final[tuple[str, ...]] = ("public",)

_NO_PREPARED: Final[Mapping[str, Classification]] = {}


@dataclass(frozen=True, slots=True)
class CompiledRule:
    policy: str
    index: int
    action: str
    conditions: ConditionsConfig
    kinds: frozenset[str]
    tables: GlobSet
    columns: GlobSet
    functions: GlobSet
    #: has HTTP conditions (methods, paths, query, headers, json): never matches a SQL statement
    http_only: bool
    #: has SQL conditions (kinds, tables, …): never matches an HTTP request
    sql_only: bool = False

    @property
    def label(self) -> str:
        """``"functions read orders / rules[3]: deny kinds=[ddl, privilege]"``"""
        return f"{self.policy} / rules[{self.index}]: {self.action} {self.summary('=[', ']')}"

    def summary(self, open_: str = " ", close: str = "") -> str:
        """The rule's conditions: ``kinds=[ddl, privilege] where=absent`` (label form, with
        ``open_="=["``) or ``kinds ddl, privilege where absent`` (sentence form)."""
        c = self.conditions
        scalar = "=" if open_.startswith("=") else " "
        parts: list[str] = []
        for key, values in (
            ("kinds", c.kinds),
            ("tables", c.tables),
            ("columns", c.columns),
            ("functions", c.functions),
            ("methods", c.methods),
            ("paths", c.paths),
        ):
            if values:
                parts.append(f"{key}{open_}{', '.join(values)}{close}")
        for key, tests in (("query", c.query), ("headers", c.headers)):
            if tests:
                # names only: a header value a rule expects may be something of a secret, and
                # the reason is shown to the caller
                shown = (name if t.present else f"{name} absent" for name, t in tests.items())
                parts.append(f"{key}{open_}{', '.join(shown)}{close}")
        if c.json_conditions:
            parts.append(f"json{open_}{', '.join(c.json_conditions)}{close}")
        if c.where is not None:
            parts.append(f"where{scalar}{c.where}")
        if c.locks is not None:
            parts.append(f"locks{scalar}{str(c.locks).lower()}")
        if c.any_parameters:
            parts.append(f"any_parameters{scalar}true")
        return " ".join(parts) if parts else "everything"

    @property
    def phrase(self) -> str:
        """``"policy 'functions read orders' rule 3 (deny kinds ddl, privilege)"``"""
        return f"policy {self.policy!r} rule {self.index} ({self.action} {self.summary()})"


def compile_rules(policy: PolicyConfig) -> tuple[CompiledRule, ...]:
    rules: list[CompiledRule] = []
    for index, rule in enumerate(policy.rules):
        c = rule.when
        rules.append(
            CompiledRule(
                policy=policy.name,
                index=index,
                action=rule.action,
                conditions=c,
                kinds=frozenset(c.kinds),
                tables=GlobSet.compile(c.tables),
                columns=GlobSet.compile(c.columns, columns=True),
                functions=GlobSet.compile(c.functions),
                http_only=bool(c.http_keys),
                sql_only=bool(c.sql_keys),
            )
        )
    return tuple(rules)


@dataclass(frozen=True, slots=True)
class _Subject:
    """The statement as the rules see it: every written name turned into candidates."""

    c: Classification
    tables: tuple[tuple[Candidate, ...], ...]
    columns: tuple[tuple[Candidate, ...], ...]
    functions: tuple[tuple[Candidate, ...], ...]
    has_parameters: bool


#: Bound on each of the engine's caches (rules per caller, decisions per statement shape); a full
#: cache is simply emptied, which costs one recomputation per shape.
DECISION_CACHE_ENTRIES = 50_000


class PolicyEngine:
    """The compiled ``policies:`` (and ``approvals:``) of one config."""

    def __init__(
        self,
        policies: Sequence[PolicyConfig],
        approvals: Sequence[ApprovalConfig] | None = None,
    ) -> None:
        self.policies: tuple[PolicyConfig, ...] = tuple(policies)
        #: ``None``: reviews are not checked for approvers (policy tests, tools)
        self.approvals: tuple[ApprovalConfig, ...] | None = (
            None if approvals is None else tuple(approvals)
        )
        self._rules: dict[str, tuple[CompiledRule, ...]] = {
            p.name: compile_rules(p) for p in self.policies
        }
        self._http_rules: dict[str, tuple[HttpRule, ...]] = {
            name: tuple(HttpRule.compile(r) for r in rules if not r.sql_only)
            for name, rules in self._rules.items()
        }
        self.version: str = policy_version(self.policies, self.approvals or ())
        self._http_sets: dict[tuple[str, frozenset[str], str, tuple[str, ...]], HttpRuleSet] = {}
        # Both caches live as long as this engine, i.e. until the next reload. Statements of one
        # shape classify to the same Classification object, so a repeated shape is two lookups.
        self._rules_cache: dict[
            tuple[str, frozenset[str], str, tuple[str, ...]], tuple[CompiledRule, ...]
        ] = {}
        self._decisions: dict[
            tuple[
                str,
                frozenset[str],
                str,
                tuple[str, ...],
                Classification,
                tuple[str, ...] | None,
                bool,
            ],
            Decision,
        ] = {}

    def applicable(self, principal: Principal, connection: str) -> tuple[PolicyConfig, ...]:
        """The policies that apply to ``principal`` on ``connection`` (as for connecting)."""
        return policies_for(self.policies, principal, connection)

    def rules_for(
        self, principal: Principal, connection: str, grants: tuple[str, ...] = ()
    ) -> tuple[CompiledRule, ...]:
        """The rules judging ``principal`` on ``connection``: its policies', plus those of the
        policies named by its active access grants (``grants``: policy names)."""
        key = (principal.subject, principal.groups, connection, grants)
        rules = self._rules_cache.get(key)
        if rules is None:
            names = [p.name for p in self.applicable(principal, connection)]
            names += [g for g in grants if g in self._rules and g not in names]
            rules = tuple(rule for name in names for rule in self._rules[name])
            if len(self._rules_cache) >= DECISION_CACHE_ENTRIES:
                self._rules_cache.clear()
            self._rules_cache[key] = rules
        return rules

    def http_rules_for(
        self, principal: Principal, connection: str, grants: Iterable[str] = ()
    ) -> HttpRuleSet:
        """The compiled HTTP-capable rules judging ``principal`` on ``connection`` (cached)."""
        granted = grants if isinstance(grants, tuple) else tuple(grants)
        key = (principal.subject, principal.groups, connection, granted)
        found = self._http_sets.get(key)
        if found is None:
            names = [p.name for p in self.applicable(principal, connection)]
            names += [g for g in granted if g in self._rules and g not in names]
            found = HttpRuleSet(
                [rule for name in names for rule in self._http_rules[name]],
                review_possible=self.approvals is None
                or any(a.applies_to(connection) for a in self.approvals),
            )
            if len(self._http_sets) >= DECISION_CACHE_ENTRIES:
                self._http_sets.clear()
            self._http_sets[key] = found
        return found

    def decide_http(
        self,
        principal: Principal,
        connection: str,
        request: HttpRequest,
        *,
        grants: Iterable[str] = (),
    ) -> Decision:
        """Allow, review or deny the HTTP ``request`` for ``principal`` on ``connection``.

        ``request.path`` is the path after the connection prefix; ``grants``: names of the
        policies the caller's active access grants apply. ``request.body`` is needed (buffered)
        when :meth:`needs_request_body` says so; without it, rules with ``json`` conditions fail
        closed (docs/policy.md)."""
        return self.http_rules_for(principal, connection, grants).decide(request)

    def needs_request_body(
        self,
        principal: Principal,
        connection: str,
        method: str,
        path: str,
        *,
        grants: Iterable[str] = (),
    ) -> bool:
        """True when some rule that could match a ``method`` request to ``path`` has ``json``
        conditions: the engine must buffer the body (up to its limit) before deciding."""
        return self.http_rules_for(principal, connection, grants).needs_body(method, path)

    def needs_search_path(self, principal: Principal, connection: str) -> bool:
        """True when some rule for this caller names tables or columns, so unqualified names in
        its statements must be resolved against the session's real search path."""
        return any(
            r.conditions.tables or r.conditions.columns
            for r in self.rules_for(principal, connection)
        )

    def decide_sql(
        self,
        principal: Principal,
        connection: str,
        c: Classification,
        *,
        search_path: Sequence[str] | None = DEFAULT_SEARCH_PATH,
        prepared: Mapping[str, Classification] = _NO_PREPARED,
        has_parameters: bool = False,
        grants: tuple[str, ...] = (),
    ) -> Decision:
        """Allow, review or deny the statement (or batch) ``c`` for ``principal``.

        ``search_path``: the session's effective search path with ``$user`` already expanded
        (unqualified names are judged against every schema in it); ``None`` when it is not
        known (an earlier statement changed it): unqualified names may then be in any schema.
        ``prepared``: the session's SQL-level prepared statements (``PREPARE``), by name, for
        judging ``EXECUTE``.
        """
        key = None
        if not c.executes:  # otherwise the decision depends on the session's prepared bodies
            path = None if search_path is None else tuple(search_path)
            key = (principal.subject, principal.groups, connection, grants, c, path, has_parameters)
            cached = self._decisions.get(key)
            if cached is not None:
                return cached
        decision = self._decide(
            principal, connection, c, search_path, prepared, has_parameters, grants
        )
        if key is not None:
            if len(self._decisions) >= DECISION_CACHE_ENTRIES:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def _decide(
        self,
        principal: Principal,
        connection: str,
        c: Classification,
        search_path: Sequence[str] | None,
        prepared: Mapping[str, Classification],
        has_parameters: bool,
        grants: tuple[str, ...],
    ) -> Decision:
        c = resolve_executes(c, prepared)
        if c.empty:
            return Decision(Verdict.ALLOW, (), "empty statement")
        subject = _subject(c, search_path, has_parameters)
        rules = self.rules_for(principal, connection, grants)

        matched = [rule for rule in rules if _matches(rule, subject)]
        denies = [r for r in matched if r.action == "deny"]
        reviews = [r for r in matched if r.action == "review"]
        allows = [r for r in matched if r.action == "allow"]
        labels = tuple(r.label for r in matched)

        if denies:
            return Decision(Verdict.DENY, labels, f"denied by {denies[0].phrase}")
        covered: set[str] = set()
        for rule in (*allows, *reviews):
            covered |= _covers(rule, c.kinds)
        missing = sorted(c.kinds - covered)
        if missing:
            return Decision(Verdict.DENY, labels, _uncovered_reason(c, missing, matched))
        if reviews:
            if self.approvals is not None and not any(
                a.applies_to(connection) for a in self.approvals
            ):
                return Decision(
                    Verdict.DENY,
                    labels,
                    f"denied: {reviews[0].phrase} asks for review, "
                    "but no approvers are configured for this connection",
                )
            return Decision(Verdict.REVIEW, labels, f"needs approval: {reviews[0].phrase}")
        return Decision(Verdict.ALLOW, labels, f"allowed by {allows[0].phrase}")


def _uncovered_reason(c: Classification, missing: list[str], matched: list[CompiledRule]) -> str:
    if c.parse_error is not None:
        return "denied: the statement could not be parsed, and no rule allows unknown statements"
    if missing == ["unknown"]:
        return (
            "denied: what the statement does cannot be determined (unknown), and no rule allows it"
        )
    if not matched:
        return "denied: no rule allows this statement"
    return f"denied: no rule allows {', '.join(missing)}"


def _covers(rule: CompiledRule, kinds: frozenset[str]) -> frozenset[str]:
    if rule.kinds:
        return rule.kinds & kinds
    return kinds - {"unknown"}  # ``unknown`` is allowed only by name


def _matches(rule: CompiledRule, s: _Subject) -> bool:
    if rule.http_only:
        return False
    c = rule.conditions
    if rule.kinds and not (rule.kinds & s.c.kinds):
        return False
    if c.where == "absent" and not s.c.where_absent:
        return False
    if c.locks is not None and c.locks != s.c.locks:
        return False
    if c.any_parameters and not s.has_parameters:
        return False
    if rule.action == "allow":
        checks = (
            (rule.tables, s.tables),
            (rule.columns, s.columns),
            (rule.functions, s.functions),
        )
        return all(not globs or globs.all_surely_match(items) for globs, items in checks)
    return (
        (not rule.tables or rule.tables.any_could_match(s.tables))
        and (not rule.columns or rule.columns.any_could_match(s.columns))
        and (not rule.functions or rule.functions.any_could_match(s.functions))
    )


def _subject(
    c: Classification, search_path: Sequence[str] | None, has_parameters: bool
) -> _Subject:
    path = tuple(s.strip() for s in search_path or () if s.strip())
    resolver = Resolver(path, path_unknown=search_path is None or c.sets_search_path)
    return _Subject(
        c=c,
        tables=tuple(resolver.table(t) for t in c.tables),
        columns=tuple(resolver.column(col) for col in c.columns),
        functions=tuple(resolver.function(f) for f in c.functions),
        has_parameters=has_parameters,
    )


def resolve_executes(c: Classification, prepared: Mapping[str, Classification]) -> Classification:
    """``c`` with the body of every statement it EXECUTEs merged in.

    A name is looked up among the batch's own PREPAREs and the session's ``prepared``; when both
    have it, both bodies count (the order inside a batch is not tracked, so fail closed). A name
    found nowhere makes the statement ``unknown``.
    """
    if not c.executes:
        if c.statement_count and not c.kinds and c.parse_error is None:
            return replace(c, kinds=frozenset({"unknown"}))
        return c
    in_batch: dict[str, list[Classification]] = {}
    for name, body in c.prepares:
        in_batch.setdefault(name, []).append(body)
    parts = [c]
    for name in c.executes:
        bodies = list(in_batch.get(name, ()))
        known = prepared.get(name)
        if known is not None:
            bodies.append(known)
        if not bodies:
            parts.append(Classification(kinds=frozenset({"unknown"})))
        parts.extend(replace(b, statement_count=0, executes=()) for b in bodies)
    resolved = replace(merge(parts), executes=())
    if not resolved.kinds:
        resolved = replace(resolved, kinds=frozenset({"unknown"}))
    return resolved


def policy_version(
    policies: Sequence[PolicyConfig], approvals: Sequence[ApprovalConfig] = ()
) -> str:
    """A short, stable hash of the policy config: which rules a decision was made under."""
    data = {
        "policies": [p.model_dump(mode="json", by_alias=True) for p in policies],
        "approvals": [
            a.model_dump(mode="json", by_alias=True, exclude={"notify"}) for a in approvals
        ],
    }
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
