"""Classify SQL text: which statement kinds, tables, columns and functions it involves.

The parser is PostgreSQL's own grammar (pglast), so comments, dollar quoting, Unicode escapes and
identifier case come out exactly as the server sees them. What does not parse is ``unknown``.
Results are cached by exact text and by *normalized* text (constants replaced by ``$n``), so
repeated statement shapes cost a dictionary lookup. A result that depended on a constant's value
(``set_config('role', …)``, ``EXPLAIN (ANALYZE false)``, ``query_to_xml('…')``) is never cached
by shape. Semantics: docs/policy.md.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from pglast import parser

from callgate.policy.facts import Facts
from callgate.policy.sqlwalk import WalkError, parse, walk_statements

#: statement shapes kept; a classification is a few hundred bytes
CACHE_ENTRIES: Final = 10_000
#: longer texts are classified every time: a cache of 10,000 megabyte statements would be a
#: memory exhaustion lever for a caller, and long texts rarely repeat
MAX_CACHED_CHARS: Final = 16_384


@dataclass(frozen=True, slots=True)
class TableRef:
    """A table as written: ``schema`` is ``None`` when the name was unqualified."""

    schema: str | None
    name: str

    def __str__(self) -> str:
        return self.name if self.schema is None else f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class Classification:
    """What one SQL text (a statement or a batch) does. See docs/policy.md for each field."""

    #: SPEC §2 statement kinds; a statement has every kind any part of it has
    kinds: frozenset[str]
    tables_read: frozenset[TableRef] = frozenset()
    tables_written: frozenset[TableRef] = frozenset()
    #: ``table.column`` where the FROM list tells the table, else ``column``; ``*`` for all
    columns: frozenset[str] = frozenset()
    #: as PostgreSQL folds them (quoted names keep their case); ``schema.name`` if qualified
    functions: frozenset[str] = frozenset()
    #: some UPDATE/DELETE has no WHERE (or one without any column reference), or a TRUNCATE
    where_absent: bool = False
    #: row or table locks: SELECT … FOR UPDATE/SHARE/…, LOCK TABLE
    locks: bool = False
    statement_count: int = 0
    #: SQL-level ``PREPARE name AS body``, in order
    prepares: tuple[tuple[str, Classification], ...] = ()
    #: SQL-level ``EXECUTE name`` (also under EXPLAIN ANALYZE), in order
    executes: tuple[str, ...] = ()
    #: ``DEALLOCATE name``; ``*`` for ``DEALLOCATE ALL``
    deallocates: tuple[str, ...] = ()
    #: the search path may change: SET/RESET search_path, set_config, RESET ALL, DISCARD ALL
    sets_search_path: bool = False
    #: why the text did not parse; then ``kinds == {"unknown"}``
    parse_error: str | None = None

    @property
    def tables(self) -> frozenset[TableRef]:
        return self.tables_read | self.tables_written

    @property
    def empty(self) -> bool:
        """Nothing to run: an empty string, only comments or semicolons."""
        return self.statement_count == 0 and self.parse_error is None and not self.kinds


K = TypeVar("K")
V = TypeVar("V")


class _LRU(Generic[K, V]):
    """A bounded least-recently-used map, safe to share between threads."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


_BY_TEXT: _LRU[str, Classification] = _LRU(CACHE_ENTRIES)
#: quick shape (integer literals replaced by a cheap scan) → classification
_BY_QUICK: _LRU[str, Classification] = _LRU(CACHE_ENTRIES)
#: normalized text → the classification, or ``None`` stored as a miss marker is not needed:
#: shapes whose result depended on a constant are simply never stored here
_BY_SHAPE: _LRU[str, Classification] = _LRU(CACHE_ENTRIES)


def classify(sql: str) -> Classification:
    """Classify ``sql``. Never raises: what cannot be parsed is ``unknown``."""
    cacheable = len(sql) <= MAX_CACHED_CHARS
    if cacheable:
        hit = _BY_TEXT.get(sql)
        if hit is not None:
            return hit
    quick = _quick_shape(sql) if cacheable else None
    if quick is not None:
        hit = _BY_QUICK.get(quick)
        if hit is not None:
            return hit
    shape = _normalize(sql) if cacheable else None
    if shape is not None:
        hit = _BY_SHAPE.get(shape)
        if hit is not None:
            _BY_TEXT.put(sql, hit)
            return hit
    result, literal_sensitive = classify_uncached(sql)
    if cacheable:
        _BY_TEXT.put(sql, result)
        if shape is not None and not literal_sensitive:
            _BY_SHAPE.put(shape, result)
        if quick is not None and not literal_sensitive:
            _BY_QUICK.put(quick, result)
    return result


def clear_cache() -> None:
    _BY_TEXT.clear()
    _BY_SHAPE.clear()
    _BY_QUICK.clear()


# Statements that differ only in integer literals (pgbench's "... WHERE aid = 12345") are the
# common case; PostgreSQL's normalize costs 10-20 µs each. This cheaper key is used only where
# the text has no string, quoted identifier, dollar quote, escape, comment or parameter, so the
# only tokens that can contain digits are identifiers, numbers and operators; a run of ASCII digits
# not touching an identifier character, a dot or a dollar sign is then exactly an integer literal.
# A shape is stored only when its classification did not depend on any constant's value.
_QUICK_BAIL = re.compile(r"['\"$\\\x00]|--|/\*")
_QUICK_INT = re.compile(r"(?<![\w$.])[0-9]+(?![\w$.])")


def _quick_shape(sql: str) -> str | None:
    if _QUICK_BAIL.search(sql):
        return None
    # The placeholder is a NUL, which no text reaching this line contains: no collisions.
    return _QUICK_INT.sub("\x00", sql)


def _normalize(sql: str) -> str | None:
    if "\0" in sql:
        return None
    try:
        return parser.normalize(sql)
    except Exception:  # whatever pglast raises: do not cache by shape
        return None


def unknown(reason: str) -> Classification:
    return Classification(kinds=frozenset({"unknown"}), parse_error=reason)


def classify_uncached(sql: str) -> tuple[Classification, bool]:
    """The classification, and whether it depended on a constant's value."""
    if "\0" in sql:
        # The parser (and the server) would stop at the NUL and see only a prefix.
        return unknown("the statement contains a NUL character"), False
    try:
        stmts = parse(sql)
        facts = walk_statements(stmts)
    except parser.ParseError as exc:
        return unknown(str(exc.args[0]) if exc.args else "syntax error"), False
    except RecursionError:
        return unknown("the statement is nested too deeply"), False
    except (WalkError, UnicodeError, ValueError) as exc:
        return unknown(f"the statement cannot be parsed: {type(exc).__name__}"), False
    except Exception as exc:  # a tree this walker did not expect: fail closed, never crash
        return unknown(f"the statement could not be classified: {type(exc).__name__}"), False
    return _freeze(facts), facts.literal_sensitive


def _freeze(facts: Facts) -> Classification:
    return Classification(
        kinds=frozenset(facts.kinds),
        tables_read=frozenset(TableRef(s, n) for s, n in facts.read),
        tables_written=frozenset(TableRef(s, n) for s, n in facts.written),
        columns=frozenset(facts.columns),
        functions=frozenset(facts.functions),
        where_absent=facts.where_absent,
        locks=facts.locks,
        statement_count=facts.statement_count,
        prepares=tuple((name, _freeze(body)) for name, body in facts.prepares),
        executes=tuple(facts.executes),
        deallocates=tuple(facts.deallocates),
        sets_search_path=facts.sets_search_path,
    )


def merge(parts: list[Classification]) -> Classification:
    """The union of several classifications (a batch judged as one)."""
    if len(parts) == 1:
        return parts[0]
    errors = [p.parse_error for p in parts if p.parse_error]
    return Classification(
        kinds=frozenset().union(*(p.kinds for p in parts)),
        tables_read=frozenset().union(*(p.tables_read for p in parts)),
        tables_written=frozenset().union(*(p.tables_written for p in parts)),
        columns=frozenset().union(*(p.columns for p in parts)),
        functions=frozenset().union(*(p.functions for p in parts)),
        where_absent=any(p.where_absent for p in parts),
        locks=any(p.locks for p in parts),
        statement_count=sum(p.statement_count for p in parts),
        prepares=tuple(x for p in parts for x in p.prepares),
        executes=tuple(x for p in parts for x in p.executes),
        deallocates=tuple(x for p in parts for x in p.deallocates),
        sets_search_path=any(p.sets_search_path for p in parts),
        parse_error=errors[0] if errors else None,
    )
