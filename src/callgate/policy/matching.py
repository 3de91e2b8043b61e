"""Glob matching of tables, columns and functions against policy rules, failing closed.

A name the statement wrote may stand for several objects: ``orders`` is ``public.orders`` or
``evil.orders`` depending on the search path, ``email`` is a column of one of the FROM tables.
Each written name therefore becomes a set of *candidates*, pairs ``(qualifier, name)`` where a
qualifier of ``None`` means "could be any". A rule condition is checked in one of two modes:

- ``exists`` (deny and review rules): the condition holds if **any** candidate of **any** item
  matches a glob. An unknown qualifier matches every qualifier glob.
- ``every`` (allow rules): the condition holds only if **every** candidate of **every** item
  matches some glob. An unknown qualifier only matches a qualifier glob that is all ``*``.

So ambiguity can only make a deny or review rule match more, and an allow rule match less.
See docs/policy.md for the resolution of unqualified names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import translate
from typing import Final

from callgate.policy.classify import TableRef

#: (qualifier or None for "unknown", name); for columns, name ``*`` means every column
Candidate = tuple[str | None, str]

#: the schema of PostgreSQL's built-in objects, searched before the path unless listed in it
PG_CATALOG: Final = "pg_catalog"


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(translate(pattern))  # case-sensitive, like fnmatchcase


@dataclass(frozen=True, slots=True)
class Glob:
    """One ``qualifier.name`` glob; a glob without a dot has qualifier ``*``."""

    text: str
    qualifier: re.Pattern[str]
    name: re.Pattern[str]
    any_qualifier: bool
    any_name: bool

    @classmethod
    def compile(cls, text: str, *, split_last: bool = False) -> Glob:
        """Tables and functions split at the first dot (``schema.name``), columns at the last
        (``table.column``)."""
        if "." in text:
            qualifier, name = text.rsplit(".", 1) if split_last else text.split(".", 1)
        else:
            qualifier, name = "*", text
        return cls(
            text=text,
            qualifier=_compile(qualifier),
            name=_compile(name),
            any_qualifier=set(qualifier) == {"*"},
            any_name=set(name) == {"*"},
        )

    def could_match(self, candidate: Candidate, *, wildcard_name: bool = False) -> bool:
        """``exists`` mode: unknowns are assumed to be whatever matches."""
        qualifier, name = candidate
        if qualifier is not None and not self.qualifier.match(qualifier):
            return False
        return (wildcard_name and name == "*") or bool(self.name.match(name))

    def surely_matches(self, candidate: Candidate, *, wildcard_name: bool = False) -> bool:
        """``every`` mode: unknowns match only a glob part that matches anything."""
        qualifier, name = candidate
        if qualifier is None and not self.any_qualifier:
            return False
        if qualifier is not None and not self.qualifier.match(qualifier):
            return False
        if wildcard_name and name == "*":
            return self.any_name
        return bool(self.name.match(name))


@dataclass(frozen=True, slots=True)
class GlobSet:
    globs: tuple[Glob, ...]
    #: for columns: a candidate name ``*`` stands for every column of its table
    wildcard_names: bool = False

    @classmethod
    def compile(cls, patterns: Sequence[str], *, columns: bool = False) -> GlobSet:
        globs = tuple(Glob.compile(p, split_last=columns) for p in patterns)
        return cls(globs, wildcard_names=columns)

    def __bool__(self) -> bool:
        return bool(self.globs)

    def any_could_match(self, items: Iterable[Sequence[Candidate]]) -> bool:
        return any(
            glob.could_match(candidate, wildcard_name=self.wildcard_names)
            for candidates in items
            for candidate in candidates
            for glob in self.globs
        )

    def all_surely_match(self, items: Iterable[Sequence[Candidate]]) -> bool:
        return all(
            any(
                glob.surely_matches(candidate, wildcard_name=self.wildcard_names)
                for glob in self.globs
            )
            for candidates in items
            for candidate in candidates
        )


@dataclass(frozen=True, slots=True)
class Resolver:
    """Turns names as written into candidates, given the session's search path.

    ``path_unknown``: the statement itself changes the search path (``SET search_path …; SELECT
    … FROM orders``), so an unqualified name may live in any schema.
    """

    search_path: tuple[str, ...]
    path_unknown: bool = False

    def table(self, ref: TableRef) -> tuple[Candidate, ...]:
        if ref.schema is not None:
            return ((ref.schema, ref.name),)
        if self.path_unknown:
            return ((None, ref.name),)
        schemas = list(self.search_path)
        # System catalogs all start with pg_ and pg_catalog is searched first unless listed:
        # ``pg_authid`` means pg_catalog.pg_authid. Other names cannot be in pg_catalog (only a
        # superuser could create them), so they are not ambiguous with it.
        if ref.name.startswith("pg_") and PG_CATALOG not in schemas:
            schemas.insert(0, PG_CATALOG)
        if not schemas:
            return ((None, ref.name),)
        return tuple((schema, ref.name) for schema in schemas)

    def function(self, written: str) -> tuple[Candidate, ...]:
        parts = written.split(".")
        if len(parts) >= 2:
            return ((parts[-2], parts[-1]),)
        if self.path_unknown:
            return ((None, written),)
        schemas = list(self.search_path)
        # pg_catalog is searched first for functions unless it is listed; pg_temp never is.
        if PG_CATALOG not in schemas:
            schemas.insert(0, PG_CATALOG)
        return tuple((schema, written) for schema in schemas if schema != "pg_temp")

    @staticmethod
    def column(written: str) -> tuple[Candidate, ...]:
        if "." in written:
            table, column = written.rsplit(".", 1)
            return ((table, column),)
        return ((None, written),)
