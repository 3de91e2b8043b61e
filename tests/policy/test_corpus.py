"""Every corpus case: what the classifier finds, and what the reference policy decides."""

from __future__ import annotations

import pytest

from callgate.policy.classify import Classification, TableRef, classify
from callgate.policy.engine import PolicyEngine, resolve_executes
from tests.policy.corpus import Case, Corpus, load_corpus

CORPUS = load_corpus()
ENGINE = PolicyEngine(CORPUS.config.policies, CORPUS.config.approvals)


def _names(refs: frozenset[TableRef]) -> frozenset[str]:
    return frozenset(str(ref) for ref in refs)


def _check(case: Case, corpus: Corpus, engine: PolicyEngine) -> list[str]:
    prepared = {name: classify(body) for name, body in case.prepared.items()}
    raw = classify(case.sql)
    c: Classification = resolve_executes(raw, prepared)
    problems: list[str] = []

    def expect(what: str, want: object, got: object) -> None:
        if want is not None and want != got:
            problems.append(f"{what}: expected {sorted_(want)}, got {sorted_(got)}")

    expect("kinds", case.kinds, c.kinds)
    expect("tables", case.tables, _names(c.tables_read | c.tables_written))
    expect("functions", case.functions, c.functions)
    expect("written", case.written, _names(c.tables_written))
    expect("columns", case.columns, c.columns)
    expect("where_absent", case.where_absent, c.where_absent)
    expect("locks", case.locks, c.locks)
    expect("sets_search_path", case.sets_search_path, c.sets_search_path)
    expect("statement_count", case.statement_count, c.statement_count)
    decision = engine.decide_sql(
        corpus.principal,
        corpus.connection,
        raw,
        search_path=case.search_path,
        prepared=prepared,
    )
    if decision.verdict.value != case.decision:
        problems.append(
            f"decision: expected {case.decision}, got {decision.verdict.value} "
            f"({decision.reason}; rules {list(decision.rules)})"
        )
    return problems


def sorted_(value: object) -> object:
    return sorted(value) if isinstance(value, frozenset) else value


def test_corpus_size() -> None:
    assert len(CORPUS.cases) >= 120


@pytest.mark.parametrize("case", CORPUS.cases, ids=[case.id for case in CORPUS.cases])
def test_case(case: Case) -> None:
    problems = _check(case, CORPUS, ENGINE)
    assert not problems, f"corpus case {case.id!r} ({case.sql!r}):\n  " + "\n  ".join(problems)


def test_corpus_summary() -> None:
    """One line per failing case, so a broken classifier shows every case it breaks at once."""
    failing = [case.id for case in CORPUS.cases if _check(case, CORPUS, ENGINE)]
    assert not failing, f"{len(failing)} failing corpus cases: {', '.join(failing)}"
