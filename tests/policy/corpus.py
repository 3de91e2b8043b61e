"""Load tests/policy/corpus.yaml: the reference policy, the schema, and the cases.

Reusable outside the unit tests: an end-to-end run through a gateway loads the same corpus,
runs ``setup_sql`` on the upstream, serves ``config`` and sends each case's ``sql`` (after
``PREPARE``-ing its ``prepared`` statements), expecting allowed cases with ``run`` to succeed and
every other case never to reach the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from callgate.config import Config, parse_config
from callgate.model import Principal

CORPUS_PATH = Path(__file__).with_name("corpus.yaml")

_REQUIRED = ("id", "sql", "kinds", "tables", "functions", "decision")
_OPTIONAL = (
    "written",
    "columns",
    "where_absent",
    "locks",
    "sets_search_path",
    "statement_count",
    "search_path",
    "prepared",
    "run",
    "note",
)


@dataclass(frozen=True)
class Case:
    id: str
    sql: str
    kinds: frozenset[str]
    tables: frozenset[str]
    functions: frozenset[str]
    decision: str
    written: frozenset[str] | None = None
    columns: frozenset[str] | None = None
    where_absent: bool | None = None
    locks: bool | None = None
    sets_search_path: bool | None = None
    statement_count: int | None = None
    search_path: tuple[str, ...] = ("public",)
    #: statements PREPAREd earlier in the session: name → body
    prepared: Mapping[str, str] = field(default_factory=dict)
    #: send it to a real server when policy allows it
    run: bool = True
    note: str = ""

    @property
    def runnable(self) -> bool:
        return self.decision == "allow" and self.run


@dataclass(frozen=True)
class Corpus:
    setup_sql: str
    config: Config
    principal: Principal
    connection: str
    cases: tuple[Case, ...]


def _case(raw: Mapping[str, Any], position: int) -> Case:
    where = f"cases[{position}] ({raw.get('id', '?')})"
    missing = [key for key in _REQUIRED if key not in raw]
    unknown = [key for key in raw if key not in _REQUIRED + _OPTIONAL]
    if missing or unknown:
        raise ValueError(f"{where}: missing {missing}, unknown {unknown}")

    def names(key: str) -> frozenset[str] | None:
        value = raw.get(key)
        return None if value is None else frozenset(str(v) for v in value)

    return Case(
        id=str(raw["id"]),
        sql=str(raw["sql"]),
        kinds=names("kinds") or frozenset(),
        tables=names("tables") or frozenset(),
        functions=names("functions") or frozenset(),
        decision=str(raw["decision"]),
        written=names("written"),
        columns=names("columns"),
        where_absent=raw.get("where_absent"),
        locks=raw.get("locks"),
        sets_search_path=raw.get("sets_search_path"),
        statement_count=raw.get("statement_count"),
        search_path=tuple(raw.get("search_path", ("public",))),
        prepared={str(k): str(v) for k, v in (raw.get("prepared") or {}).items()},
        run=bool(raw.get("run", True)),
        note=str(raw.get("note", "")),
    )


def load_corpus(path: Path = CORPUS_PATH) -> Corpus:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    principal = data["principal"]
    cases = tuple(_case(raw, i) for i, raw in enumerate(data["cases"]))
    ids = [case.id for case in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate case ids: {duplicates}")
    return Corpus(
        setup_sql=str(data["setup_sql"]),
        config=parse_config(data["config"], path.parent),
        principal=Principal(
            subject=str(principal["subject"]),
            groups=frozenset(principal["groups"]),
            method="corpus",
        ),
        connection=str(principal["connection"]),
        cases=cases,
    )
