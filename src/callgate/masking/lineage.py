"""Column lineage: which source columns feed each output column of a statement.

Built from PostgreSQL's own parse tree (pglast JSON, read with :mod:`callgate.policy.sqltree`).
For every statement that returns rows — ``SELECT`` (CTEs, subqueries, set operations, ``VALUES``,
``LATERAL``), ``INSERT/UPDATE/DELETE/MERGE … RETURNING``, ``COPY (query) TO STDOUT``,
``COPY table TO STDOUT``, ``DECLARE … CURSOR FOR query`` (rows arrive with ``FETCH``), ``PREPARE``
(rows arrive with ``EXECUTE``) — each output column gets the set of :class:`Source` columns whose
values can flow into it, and an ``unknown`` flag when something it depends on cannot be seen
through.

Rules (docs/masking.md has the long form):

- any column reference inside an expression feeds it: ``lower(email)``, ``email || ''``,
  ``CASE WHEN … THEN email END``, ``array_agg(email)``, ``(SELECT email …)`` all carry ``email``;
  window ``OVER`` clauses, aggregate ``ORDER BY`` and ``FILTER`` do not (they order or filter,
  like ``WHERE``);
- a call to a function that is not a known pure built-in (:mod:`callgate.masking.builtins`) is
  *unknown*: it may read any table itself;
- a relation the catalog says is a view, a materialized view or anything but a table, or one the
  catalog does not know, is *unknown*: callgate cannot see what feeds its columns;
- ``*`` expands with the catalog (``columns_of``); where the width cannot be known, the output
  keeps a :class:`StarGroup` that later takes whatever columns the RowDescription has left;
- a whole-row reference (``SELECT c FROM customers c``, ``row_to_json(c)``) is fed by every
  column of the row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Final, Literal

from pglast import parser

from callgate.masking.builtins import SET_RETURNING_NAMES, SET_RETURNING_WIDTH, transparent
from callgate.policy import sqltree as t
from callgate.policy.sqltree import Fields
from callgate.policy.sqlwalk import parse

#: how often a recursive CTE is re-evaluated to reach its fixed point before it is ``unknown``
MAX_RECURSIVE_PASSES: Final = 6
#: nesting depth of expressions and subqueries before the statement is ``unknown``
MAX_DEPTH: Final = 200


@dataclass(frozen=True, slots=True, order=True)
class Source:
    """A column of a relation; ``schema`` is ``None`` when it was not resolved, ``column`` is
    ``*`` when it is some column of ``table`` that cannot be named."""

    schema: str | None
    table: str
    column: str

    def __str__(self) -> str:
        prefix = f"{self.schema}." if self.schema is not None else ""
        return f"{prefix}{self.table}.{self.column}"


@dataclass(frozen=True, slots=True)
class ColumnLineage:
    """What feeds one output column."""

    name: str
    sources: frozenset[Source] = frozenset()
    #: something feeds it that callgate cannot see through (view, function, unknown relation)
    unknown: bool = False

    def union(self, other: ColumnLineage, name: str | None = None) -> ColumnLineage:
        return ColumnLineage(
            self.name if name is None else name,
            self.sources | other.sources,
            self.unknown or other.unknown,
        )


@dataclass(frozen=True, slots=True)
class StarGroup:
    """Output columns whose number is not known (``t.*`` of a relation of unknown width)."""

    sources: frozenset[Source] = frozenset()
    unknown: bool = True

    def column(self) -> ColumnLineage:
        return ColumnLineage("?column?", self.sources, self.unknown)


Item = ColumnLineage | StarGroup
UNKNOWN_COLUMN: Final = ColumnLineage("?column?", frozenset(), True)


@dataclass(frozen=True, slots=True)
class RelationInfo:
    """What the catalog says about a relation (``pg_class.relkind`` r/p/f: ``table``)."""

    schema: str
    name: str
    kind: Literal["table", "view", "other"]
    columns: tuple[str, ...]


#: ``columns_of(schema or None, name)``: the relation the name resolves to on the session's
#: search path, or ``None`` when there is no such relation (it is then treated as unknown)
ColumnsOf = Callable[[str | None, str], RelationInfo | None]


def no_catalog(schema: str | None, name: str) -> RelationInfo | None:
    """A ``columns_of`` that knows nothing: every relation is unknown (everything fails closed)."""
    return None


@dataclass(frozen=True, slots=True)
class CopyFormat:
    """The options of a ``COPY … TO STDOUT`` that decide how its rows are written."""

    format: Literal["text", "csv", "binary"] = "text"
    delimiter: str = "\t"
    null: str = "\\N"
    quote: str = '"'
    escape: str = '"'
    header: bool = False


@dataclass(frozen=True, slots=True)
class StatementLineage:
    """One statement: its output columns (``None``: it returns no rows) and what it touches."""

    items: tuple[Item, ...] | None
    #: every source column the statement reads or writes anywhere (WHERE, joins, SET, …)
    referenced: frozenset[Source] = frozenset()
    #: part of the statement cannot be seen through (a function, a view, DO, CALL, …): messages
    #: the server sends about it may carry any value
    opaque: bool = False
    #: ``COPY … TO STDOUT``: the format of its CopyData rows
    copy: CopyFormat | None = None
    #: ``("cursor", name)`` for DECLARE, ``("prepared", name)`` for PREPARE: ``body`` is what a
    #: later FETCH/EXECUTE returns
    defines: tuple[str, str] | None = None
    body: StatementLineage | None = None
    #: ``("cursor", name)`` for FETCH, ``("prepared", name)`` for EXECUTE: the rows are those of
    #: the named body (see :class:`SessionLineage`)
    uses: tuple[str, str] | None = None

    @property
    def returns_rows(self) -> bool:
        return self.items is not None or self.uses is not None

    def columns(self, count: int) -> tuple[ColumnLineage, ...]:
        """The lineage of each of ``count`` output columns (the RowDescription's count).

        A count that does not fit the statement makes every column unknown (fail closed).
        """
        items = self.items
        if items is None:
            return (UNKNOWN_COLUMN,) * count
        groups = [index for index, item in enumerate(items) if isinstance(item, StarGroup)]
        if not groups:
            if len(items) == count:
                return tuple(item for item in items if isinstance(item, ColumnLineage))
            return (UNKNOWN_COLUMN,) * count
        if len(groups) == 1:
            index = groups[0]
            width = count - (len(items) - 1)
            group = items[index]
            if width < 0 or not isinstance(group, StarGroup):
                return (UNKNOWN_COLUMN,) * count
            fixed = [item for item in items if isinstance(item, ColumnLineage)]
            return (*fixed[:index], *(group.column(),) * width, *fixed[index:])
        merged = _merge_all(items)
        return (merged,) * count


UNKNOWN_STATEMENT: Final = StatementLineage(items=(StarGroup(),), opaque=True)


def _merge_all(items: Iterable[Item]) -> ColumnLineage:
    sources: set[Source] = set()
    unknown = False
    for item in items:
        sources |= item.sources
        unknown = unknown or item.unknown
    return ColumnLineage("?column?", frozenset(sources), unknown)


def statement_lineages(sql: str, columns_of: ColumnsOf) -> tuple[StatementLineage, ...]:
    """The lineage of each statement of ``sql``, in order. Never raises: what cannot be parsed
    or walked is one :data:`UNKNOWN_STATEMENT`."""
    if "\0" in sql:
        return (UNKNOWN_STATEMENT,)
    try:
        stmts = parse(sql)
    except (parser.ParseError, RecursionError, ValueError, UnicodeError):
        return (UNKNOWN_STATEMENT,)
    except Exception:  # whatever the parser raises: fail closed
        return (UNKNOWN_STATEMENT,)
    out: list[StatementLineage] = []
    for stmt in stmts:
        try:
            out.append(_Walker(columns_of).statement(stmt))
        except (RecursionError, _TooDeep):
            out.append(UNKNOWN_STATEMENT)
        except Exception:  # a tree shape this walker did not expect: fail closed, never crash
            out.append(UNKNOWN_STATEMENT)
    return tuple(out)


def statement_lineage(sql: str, columns_of: ColumnsOf) -> StatementLineage:
    """The lineage of a text that holds one statement (extended-protocol Parse); a text with
    several statements is merged into one whose every column is fed by all of them."""
    parts = statement_lineages(sql, columns_of)
    if len(parts) == 1:
        return parts[0]
    return StatementLineage(
        items=(StarGroup(frozenset(), True),),
        referenced=frozenset().union(*(p.referenced for p in parts)),
        opaque=True,
    )


class SessionLineage:
    """Remembers, per session, what ``DECLARE`` and ``PREPARE`` defined, so that ``FETCH`` and
    ``EXECUTE`` get the lineage of the rows they return. Not thread-safe (one per session)."""

    __slots__ = ("_bodies",)

    def __init__(self) -> None:
        self._bodies: dict[tuple[str, str], StatementLineage] = {}

    def effective(self, lineage: StatementLineage) -> StatementLineage:
        """The lineage that describes the rows ``lineage``'s statement returns."""
        if lineage.defines is not None and lineage.body is not None:
            self._bodies[lineage.defines] = lineage.body
            return lineage
        if lineage.uses is not None:
            body = self._bodies.get(lineage.uses)
            if body is None:
                return replace(UNKNOWN_STATEMENT, uses=lineage.uses)
            return replace(
                body,
                referenced=body.referenced | lineage.referenced,
                opaque=body.opaque or lineage.opaque,
            )
        return lineage

    def forget(self, kind: str, name: str) -> None:
        """``CLOSE name`` / ``DEALLOCATE name``; ``name == "*"`` forgets every one of ``kind``."""
        if name == "*":
            for key in [key for key in self._bodies if key[0] == kind]:
                del self._bodies[key]
        else:
            self._bodies.pop((kind, name), None)


# --- the walker ----------------------------------------------------------------------------------


class _TooDeep(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Rel:
    """A FROM item as column references see it."""

    alias: str
    #: its columns by position; ``None`` when their names/number are not known
    columns: tuple[ColumnLineage, ...] | None
    #: the base relation behind it, when it is one: unknown names resolve to ``table.name``
    table: tuple[str | None, str] | None = None
    #: when ``columns`` is None: whether what a name resolves to is beyond sight
    unknown: bool = False
    #: when ``columns`` is None: what feeds the row as a whole
    whole: frozenset[Source] = frozenset()

    def lookup(self, name: str) -> ColumnLineage | None:
        """The column ``name`` of this item, ``None`` if it surely has none."""
        if self.columns is not None:
            found = [c for c in self.columns if c.name == name]
            if not found:
                return None
            out = found[0]
            for other in found[1:]:
                out = out.union(other)
            return out
        if self.table is not None:
            return ColumnLineage(name, frozenset({Source(*self.table, name)}), self.unknown)
        return ColumnLineage(name, self.whole, self.unknown)

    def star(self) -> tuple[Item, ...]:
        if self.columns is not None:
            return self.columns
        sources = set(self.whole)
        if self.table is not None:
            sources.add(Source(*self.table, "*"))
        return (StarGroup(frozenset(sources), self.unknown),)

    def row(self) -> ColumnLineage:
        """The whole row as one value."""
        return _merge_all(self.star())

    def renamed(self, alias: Fields | None) -> _Rel:
        if alias is None:
            return self
        name = t.str_(alias, "aliasname") or self.alias
        colnames = t.strings(t.list_(alias, "colnames")) or ()
        columns = self.columns
        if colnames and columns is not None:
            columns = tuple(
                replace(col, name=colnames[i]) if i < len(colnames) else col
                for i, col in enumerate(columns)
            )
        elif colnames:
            # renamed columns of unknown position: every name may be any column
            whole = self.whole | (
                {Source(*self.table, "*")} if self.table is not None else frozenset()
            )
            return _Rel(name, None, None, self.unknown, frozenset(whole))
        return replace(self, alias=name, columns=columns)


def _from_items(rel: _Rel, items: tuple[Item, ...]) -> _Rel:
    if all(isinstance(item, ColumnLineage) for item in items):
        return replace(rel, columns=tuple(i for i in items if isinstance(i, ColumnLineage)))
    merged = _merge_all(items)
    return replace(rel, columns=None, unknown=merged.unknown, whole=merged.sources)


@dataclass
class _Level:
    rels: list[_Rel] = field(default_factory=list)
    star: list[Item] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Scope:
    levels: tuple[_Level, ...] = ()
    ctes: tuple[tuple[str, tuple[Item, ...]], ...] = ()

    def cte(self, name: str) -> tuple[Item, ...] | None:
        for cte_name, items in reversed(self.ctes):
            if cte_name == name:
                return items
        return None

    def push(self, level: _Level) -> _Scope:
        return replace(self, levels=(*self.levels, level))


class _Acc:
    """Sources and the unknown flag collected for one expression."""

    __slots__ = ("sources", "unknown")

    def __init__(self) -> None:
        self.sources: set[Source] = set()
        self.unknown = False

    def add(self, col: ColumnLineage) -> None:
        self.sources |= col.sources
        self.unknown = self.unknown or col.unknown

    def lineage(self, name: str) -> ColumnLineage:
        return ColumnLineage(name, frozenset(self.sources), self.unknown)


_DML: Final = ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt")


class _Walker:
    def __init__(self, columns_of: ColumnsOf) -> None:
        self.columns_of = columns_of
        self.referenced: set[Source] = set()
        self.opaque = False
        self.depth = 0

    # -- statements -------------------------------------------------------------------------

    def statement(self, raw: object) -> StatementLineage:
        node = t.unwrap(raw.get("stmt") if isinstance(raw, dict) else None)
        if node is None:
            return StatementLineage(items=None)
        name, f = node
        scope = _Scope()
        copy: CopyFormat | None = None
        defines: tuple[str, str] | None = None
        uses: tuple[str, str] | None = None
        body: StatementLineage | None = None
        items: tuple[Item, ...] | None = None
        if name == "SelectStmt":
            result = self.select(f, scope)
            items = None if f.get("intoClause") is not None else result
        elif name in _DML:
            items = self.dml(name, f, scope)
        elif name == "CopyStmt":
            items, copy = self.copy(f, scope)
        elif name == "DeclareCursorStmt":
            inner = _Walker(self.columns_of)
            query = inner.query(f.get("query"), scope)
            body = StatementLineage(query, frozenset(inner.referenced), inner.opaque)
            defines = ("cursor", t.str_(f, "portalname") or "")
            self.referenced |= inner.referenced
        elif name == "FetchStmt":
            if not f.get("ismove"):
                uses = ("cursor", t.str_(f, "portalname") or "")
        elif name == "PrepareStmt":
            body = _Walker(self.columns_of).statement({"stmt": f.get("query")})
            defines = ("prepared", t.str_(f, "name") or "")
        elif name == "ExecuteStmt":
            uses = ("prepared", t.str_(f, "name") or "")
            self.expr(f.get("params"), scope, _Acc())
        elif name == "ExplainStmt":
            self.walk_any(f.get("query"), scope)
            items = (ColumnLineage("QUERY PLAN"),)
        elif name == "VariableShowStmt":
            items = (ColumnLineage(t.str_(f, "name") or "?column?"),)
        elif name == "CallStmt":
            self.opaque = True
            self.walk_any(f, scope)
            items = (StarGroup(frozenset(), True),)
        elif name in ("DoStmt", "CreateFunctionStmt"):
            self.opaque = True
        else:
            self.walk_any(f, scope)
        return StatementLineage(
            items=items,
            referenced=frozenset(self.referenced),
            opaque=self.opaque,
            copy=copy,
            defines=defines,
            body=body,
            uses=uses,
        )

    def walk_any(self, node: object, scope: _Scope) -> None:
        """Visit a statement part only for what it references (no output of its own)."""
        unwrapped = t.unwrap(node)
        if unwrapped is not None and (unwrapped[0] == "SelectStmt" or unwrapped[0] in _DML):
            self.query(node, scope)
            return
        self.expr(node, scope, _Acc())

    def query(self, node: object, scope: _Scope) -> tuple[Item, ...]:
        """Output items of a query node (SELECT or DML with RETURNING)."""
        unwrapped = t.unwrap(node)
        if unwrapped is None:
            return (StarGroup(),)
        name, f = unwrapped
        if name == "SelectStmt":
            return self.select(f, scope)
        if name in _DML:
            return self.dml(name, f, scope) or ()
        self.opaque = True
        return (StarGroup(),)

    def with_clause(self, f: Fields, scope: _Scope) -> _Scope:
        clause = t.get(f, "withClause")
        if clause is None:
            return scope
        recursive = bool(clause.get("recursive", False))
        for item in t.list_(clause, "ctes"):
            node = t.unwrap(item)
            if node is None or node[0] != "CommonTableExpr":
                continue
            cte = node[1]
            name = t.str_(cte, "ctename") or ""
            colnames = t.strings(t.list_(cte, "aliascolnames")) or ()
            if recursive:
                items = self._recursive_cte(name, cte, scope)
            else:
                items = self.query(cte.get("ctequery"), scope)
            if colnames:
                items = _rename(items, colnames)
            scope = replace(scope, ctes=(*scope.ctes, (name, items)))
        return scope

    def _recursive_cte(self, name: str, cte: Fields, scope: _Scope) -> tuple[Item, ...]:
        query = cte.get("ctequery")
        colnames = t.strings(t.list_(cte, "aliascolnames")) or ()
        unwrapped = t.unwrap(query)
        start: tuple[Item, ...] = ()
        if unwrapped is not None and unwrapped[0] == "SelectStmt":
            larg = t.get(unwrapped[1], "larg")
            if larg is not None:
                start = self.select(larg, scope)
        current = _rename(start, colnames) if colnames else start
        for _ in range(MAX_RECURSIVE_PASSES):
            inner = replace(scope, ctes=(*scope.ctes, (name, current)))
            result = self.query(query, inner)
            result = _rename(result, colnames) if colnames else result
            if result == current:
                return result
            current = result
        return (StarGroup(frozenset(_merge_all(current).sources), True),)

    def select(self, f: Fields, scope: _Scope) -> tuple[Item, ...]:
        self._enter()
        try:
            scope = self.with_clause(f, scope)
            op = f.get("op")
            if op not in (None, "SETOP_NONE"):
                left = self.select(t.get(f, "larg") or {}, scope)
                right = self.select(t.get(f, "rarg") or {}, scope)
                self._clauses(f, scope)
                return _zip_union(left, right)
            level = self.from_clause(t.list_(f, "fromClause"), scope)
            inner = scope.push(level)
            values = t.list_(f, "valuesLists")
            if values:
                return self._values(values, inner)
            self._clauses(f, inner)
            return self.targets(t.list_(f, "targetList"), inner)
        finally:
            self.depth -= 1

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _TooDeep

    def _clauses(self, f: Fields, scope: _Scope) -> None:
        for key in (
            "whereClause",
            "havingClause",
            "groupClause",
            "sortClause",
            "distinctClause",
            "windowClause",
            "limitOffset",
            "limitCount",
            "lockingClause",
        ):
            self.expr(f.get(key), scope, _Acc())

    def _values(self, rows: list[object], scope: _Scope) -> tuple[Item, ...]:
        columns: list[_Acc] = []
        for row in rows:
            node = t.unwrap(row)
            exprs = t.list_(node[1], "items") if node is not None else []
            for index, value in enumerate(exprs):
                if index == len(columns):
                    columns.append(_Acc())
                self.expr(value, scope, columns[index])
        return tuple(acc.lineage(f"column{i + 1}") for i, acc in enumerate(columns))

    def targets(self, targets: list[object], scope: _Scope) -> tuple[Item, ...]:
        out: list[Item] = []
        for target in targets:
            node = t.unwrap(target)
            if node is None or node[0] != "ResTarget":
                continue
            value = node[1].get("val")
            star = self._star(value, scope)
            if star is not None:
                out.extend(star)
                continue
            acc = _Acc()
            self.expr(value, scope, acc)
            out.append(acc.lineage(t.str_(node[1], "name") or _figure_name(value)))
        return tuple(out)

    def _star(self, value: object, scope: _Scope) -> tuple[Item, ...] | None:
        node = t.unwrap(value)
        if node is None or node[0] != "ColumnRef":
            return None
        parts = t.list_(node[1], "fields")
        if not parts or (t.unwrap(parts[-1]) or ("", {}))[0] != "A_Star":
            return None
        names = t.strings(parts[:-1])
        if names is None:
            return (StarGroup(),)
        if not names:
            level = scope.levels[-1] if scope.levels else _Level()
            items = tuple(level.star)
            for item in items:
                self.referenced |= item.sources
            return items
        rel = _find_rel(scope, names)
        if rel is None:
            return (StarGroup(),)
        items = rel.star()
        for item in items:
            self.referenced |= item.sources
        return items

    # -- data-modifying statements ----------------------------------------------------------

    def dml(self, name: str, f: Fields, scope: _Scope) -> tuple[Item, ...] | None:
        self._enter()
        try:
            return self._dml(name, f, scope)
        finally:
            self.depth -= 1

    def _dml(self, name: str, f: Fields, scope: _Scope) -> tuple[Item, ...] | None:
        scope = self.with_clause(f, scope)
        relation = t.get(f, "relation")
        level = _Level()
        target = self.relation(relation or {}, scope) if relation is not None else None
        if target is not None:
            level.rels.append(target)
            level.star.extend(target.star())
            for alias in ("old", "new", "excluded"):
                level.rels.append(replace(target, alias=alias))
        if name == "InsertStmt":
            cols = t.list_(f, "cols")
            if target is not None:
                if cols:
                    for col in cols:
                        node = t.unwrap(col)
                        colname = t.str_(node[1], "name") if node else None
                        found = target.lookup(colname) if colname else None
                        if found is not None:
                            self.referenced |= found.sources
                else:
                    for item in target.star():
                        self.referenced |= item.sources
            self.walk_any(f.get("selectStmt"), scope)
        others = {
            "UpdateStmt": "fromClause",
            "DeleteStmt": "usingClause",
            "MergeStmt": "sourceRelation",
        }.get(name)
        if others is not None:
            extra = f.get(others)
            extra_level = self.from_clause(extra if isinstance(extra, list) else [extra], scope)
            level.rels.extend(extra_level.rels)
            level.star.extend(extra_level.star)
        inner = scope.push(level)
        if name in ("UpdateStmt", "MergeStmt") and target is not None:
            for set_target in _set_targets(f):
                found = target.lookup(set_target)
                if found is not None:
                    self.referenced |= found.sources
        for key in (
            "targetList",
            "whereClause",
            "onConflictClause",
            "mergeWhenClauses",
            "joinCondition",
        ):
            self.expr(f.get(key), inner, _Acc())
        returning = f.get("returningList")
        if returning is None:
            clause = t.get(f, "returningClause")
            returning = clause.get("exprs") if clause is not None else None
        if not isinstance(returning, list) or not returning:
            return None
        return self.targets(returning, inner)

    def copy(self, f: Fields, scope: _Scope) -> tuple[tuple[Item, ...] | None, CopyFormat | None]:
        fmt = _copy_format(t.list_(f, "options"))
        query = f.get("query")
        to_client = not f.get("is_from") and not f.get("is_program") and f.get("filename") is None
        if query is not None:
            items: tuple[Item, ...] | None = self.query(query, scope)
        else:
            rel = self.relation(t.get(f, "relation") or {}, scope)
            names = t.strings(t.list_(f, "attlist"))
            if names:
                looked = [rel.lookup(n) for n in names]
                items = tuple(c if c is not None else UNKNOWN_COLUMN for c in looked)
            else:
                items = rel.star()
            for item in items:
                self.referenced |= item.sources
        if not to_client:
            return None, None
        return items, fmt

    # -- FROM -------------------------------------------------------------------------------

    def from_clause(self, items: list[object], scope: _Scope) -> _Level:
        level = _Level()
        for item in items:
            # LATERAL items see the ones before them: give every item that view (fail closed)
            self.from_item(item, scope.push(level), level)
        return level

    def from_item(self, node: object, scope: _Scope, level: _Level) -> None:
        unwrapped = t.unwrap(node)
        if unwrapped is None:
            return
        name, f = unwrapped
        if name == "RangeVar":
            rel = self.relation(f, scope)
            level.rels.append(rel)
            level.star.extend(rel.star())
        elif name == "RangeSubselect":
            items = self.query(f.get("subquery"), scope)
            rel = _from_items(_Rel("", None), items).renamed(t.get(f, "alias"))
            level.rels.append(rel)
            level.star.extend(rel.star())
        elif name == "JoinExpr":
            self._join(f, scope, level)
        elif name == "RangeFunction":
            rel = self._range_function(f, scope)
            level.rels.append(rel)
            level.star.extend(rel.star())
        elif name == "RangeTableSample":
            self.from_item(f.get("relation"), scope, level)
            self.expr(f.get("args"), scope, _Acc())
        elif name == "RangeTableFunc":
            acc = _Acc()
            self.expr(f.get("docexpr"), scope, acc)
            self.expr(f.get("rowexpr"), scope, acc)
            self.expr(f.get("namespaces"), scope, acc)
            cols: list[ColumnLineage] = []
            for col in t.list_(f, "columns"):
                col_node = t.unwrap(col)
                if col_node is None:
                    continue
                col_acc = _Acc()
                col_acc.add(acc.lineage(""))
                self.expr(col_node[1].get("colexpr"), scope, col_acc)
                cols.append(col_acc.lineage(t.str_(col_node[1], "colname") or "?column?"))
            rel = _Rel("", tuple(cols)).renamed(t.get(f, "alias"))
            level.rels.append(rel)
            level.star.extend(rel.star())
        else:  # JSON_TABLE and anything newer: fed by everything inside it, width unknown
            acc = _Acc()
            self.expr(f, scope, acc)
            alias = t.get(f, "alias")
            rel = _Rel(
                t.str_(alias, "aliasname") or "" if alias else "",
                None,
                unknown=acc.unknown,
                whole=frozenset(acc.sources),
            )
            level.rels.append(rel)
            level.star.extend(rel.star())

    def relation(self, f: Fields, scope: _Scope) -> _Rel:
        ref = t.relation(f)
        alias = t.get(f, "alias")
        if ref is None:
            self.opaque = True
            return _Rel("", None, unknown=True)
        schema, name = ref
        if schema is None:
            cte = scope.cte(name)
            if cte is not None:
                return _from_items(_Rel(name, None), cte).renamed(alias)
        info = self.columns_of(schema, name)
        if info is None:
            self.opaque = True
            return _Rel(name, None, table=(schema, name), unknown=True).renamed(alias)
        if info.kind == "table":
            cols = tuple(
                ColumnLineage(c, frozenset({Source(info.schema, info.name, c)}))
                for c in info.columns
            )
            return _Rel(name, cols, table=(info.schema, info.name)).renamed(alias)
        self.opaque = True
        cols = tuple(
            ColumnLineage(c, frozenset({Source(info.schema, info.name, c)}), True)
            for c in info.columns
        )
        return _Rel(name, cols, table=(info.schema, info.name), unknown=True).renamed(alias)

    def _join(self, f: Fields, scope: _Scope, level: _Level) -> None:
        left, right = _Level(), _Level()
        self.from_item(f.get("larg"), scope, left)
        self.from_item(f.get("rarg"), scope.push(left), right)
        level.rels.extend(left.rels)
        level.rels.extend(right.rels)
        using = list(t.strings(t.list_(f, "usingClause")) or ())
        if f.get("isNatural"):
            lnames = _names(left.star)
            rnames = _names(right.star)
            if lnames is None or rnames is None:
                merged = _merge_all([*left.star, *right.star])
                star: list[Item] = [StarGroup(merged.sources, merged.unknown)]
                self._join_alias(f, star, level)
                return
            using = [n for n in lnames if n in rnames]
        star = []
        for colname in using:
            acc = _Acc()
            for rel in (*left.rels, *right.rels):
                found = rel.lookup(colname)
                if found is not None:
                    acc.add(found)
            star.append(acc.lineage(colname))
        for side in (left.star, right.star):
            star.extend(
                item
                for item in side
                if not (isinstance(item, ColumnLineage) and item.name in using)
            )
        inner = scope.push(_Level([*left.rels, *right.rels], star))
        self.expr(f.get("quals"), inner, _Acc())
        self._join_alias(f, star, level)

    def _join_alias(self, f: Fields, star: list[Item], level: _Level) -> None:
        alias = t.get(f, "alias")
        if alias is not None:
            level.rels.append(_from_items(_Rel("", None), tuple(star)).renamed(alias))
        level.star.extend(star)

    def _range_function(self, f: Fields, scope: _Scope) -> _Rel:
        cols: list[ColumnLineage] = []
        known_width = True
        everything = _Acc()
        for entry in t.list_(f, "functions"):
            node = t.unwrap(entry)
            parts = t.list_(node[1], "items") if node is not None and node[0] == "List" else []
            call = parts[0] if parts else None
            coldefs = parts[1] if len(parts) > 1 and isinstance(parts[1], list) else []
            if not coldefs and len(t.list_(f, "functions")) == 1:
                coldefs = t.list_(f, "coldeflist")
            acc = _Acc()
            self.expr(call, scope, acc)  # an unknown function marks acc unknown
            everything.add(acc.lineage(""))
            width, names = _function_shape(call, len(coldefs))
            if width is None:
                known_width = False
                continue
            for index in range(width):
                cols.append(acc.lineage(names[index] if index < len(names) else "?column?"))
        if f.get("ordinality"):
            cols.append(ColumnLineage("ordinality"))
        alias = t.get(f, "alias")
        if not known_width:
            colnames = t.strings(t.list_(alias, "colnames")) if alias else None
            if colnames:
                cols = [everything.lineage(name) for name in colnames]
                return _Rel(t.str_(alias, "aliasname") or "" if alias else "", tuple(cols))
            rel = _Rel("", None, unknown=everything.unknown, whole=frozenset(everything.sources))
            return rel.renamed(alias)
        if len(cols) == 1 and alias is not None and not t.list_(alias, "colnames"):
            # ``unnest(a) AS x``: the single column is named after the alias too
            cols = [replace(cols[0], name=t.str_(alias, "aliasname") or cols[0].name)]
        return _Rel("", tuple(cols)).renamed(alias)

    # -- expressions --------------------------------------------------------------------------

    def expr(self, node: object, scope: _Scope, acc: _Acc) -> None:
        if isinstance(node, list):
            for item in node:
                self.expr(item, scope, acc)
            return
        if not isinstance(node, dict):
            return
        unwrapped = t.unwrap(node)
        if unwrapped is None:
            for value in node.values():
                if isinstance(value, (dict, list)):
                    self.expr(value, scope, acc)
            return
        name, f = unwrapped
        self._enter()
        try:
            handler = _EXPR.get(name)
            if handler is not None:
                handler(self, f, scope, acc)
                return
            if name == "SelectStmt" or name in _DML:
                for item in self.query(node, scope):
                    acc.add(item.column() if isinstance(item, StarGroup) else item)
                return
            for key, value in f.items():
                if key != "location" and isinstance(value, (dict, list)):
                    self.expr(value, scope, acc)
        finally:
            self.depth -= 1

    def column_ref(self, f: Fields, scope: _Scope, acc: _Acc) -> None:
        parts = t.list_(f, "fields")
        names = t.strings(parts)
        if names is None:  # ``t.*`` inside an expression: the whole row
            star = self._star({"ColumnRef": f}, scope)
            for item in star or (StarGroup(),):
                acc.add(item.column() if isinstance(item, StarGroup) else item)
            return
        found = self._resolve(names, scope)
        self.referenced |= found.sources
        acc.add(found)

    def _resolve(self, names: tuple[str, ...], scope: _Scope) -> ColumnLineage:
        if len(names) == 1:
            return _unqualified(names[0], scope)
        rel = _find_rel(scope, names[:-1])
        if rel is None:
            return UNKNOWN_COLUMN
        found = rel.lookup(names[-1])
        return found if found is not None else UNKNOWN_COLUMN

    def func_call(self, f: Fields, scope: _Scope, acc: _Acc) -> None:
        parts = t.strings(t.list_(f, "funcname")) or ()
        if transparent(parts) is None:
            acc.unknown = True
            self.opaque = True
        self.expr(f.get("args"), scope, acc)
        # ORDER BY inside an aggregate, FILTER and OVER order or filter: walk them only for
        # what they reference
        for key in ("agg_order", "agg_filter", "over"):
            self.expr(f.get(key), scope, _Acc())

    def sub_link(self, f: Fields, scope: _Scope, acc: _Acc) -> None:
        kind = f.get("subLinkType")
        items = self.query(f.get("subselect"), scope)
        if kind == "EXISTS_SUBLINK":
            return
        for item in items:
            acc.add(item.column() if isinstance(item, StarGroup) else item)
        self.expr(f.get("testexpr"), scope, acc)

    def indirection(self, f: Fields, scope: _Scope, acc: _Acc) -> None:
        arg = t.unwrap(f.get("arg"))
        steps = t.list_(f, "indirection")
        first = t.unwrap(steps[0]) if steps else None
        if arg is not None and arg[0] == "ColumnRef" and first is not None and first[0] == "String":
            names = t.strings(t.list_(arg[1], "fields"))
            rel = _find_rel(scope, names) if names else None
            field_name = t.str_(first[1], "sval")
            if rel is not None and field_name is not None and names is not None:
                is_column = any(
                    rel_ is not rel and rel_.lookup(names[-1]) is not None
                    for level in scope.levels
                    for rel_ in level.rels
                )
                found = rel.lookup(field_name)
                if found is not None and not is_column and len(names) == 1:
                    # ``(c).email`` where c is a FROM item: that one column
                    self.referenced |= found.sources
                    acc.add(found)
                    self.expr(steps[1:], scope, acc)
                    return
        self.expr(f.get("arg"), scope, acc)
        self.expr(steps, scope, acc)

    def a_expr(self, f: Fields, scope: _Scope, acc: _Acc) -> None:
        op = t.strings(t.list_(f, "name")) or ()
        if len(op) > 1 and op[0] != "pg_catalog":
            # ``OPERATOR(myschema.+)``: a user operator runs a user function
            acc.unknown = True
            self.opaque = True
        self.expr(f.get("lexpr"), scope, acc)
        self.expr(f.get("rexpr"), scope, acc)


Handler = Callable[[_Walker, Fields, _Scope, _Acc], None]

_EXPR: Final[dict[str, Handler]] = {
    "ColumnRef": _Walker.column_ref,
    "FuncCall": _Walker.func_call,
    "SubLink": _Walker.sub_link,
    "A_Indirection": _Walker.indirection,
    "A_Expr": _Walker.a_expr,
    "A_Const": lambda w, f, s, a: None,
    "ParamRef": lambda w, f, s, a: None,
    "TypeName": lambda w, f, s, a: None,
    "WindowDef": lambda w, f, s, a: w.expr(
        [f.get("partitionClause"), f.get("orderClause")], s, _Acc()
    ),
}


# --- helpers -------------------------------------------------------------------------------------


def _find_rel(scope: _Scope, qualifier: tuple[str, ...]) -> _Rel | None:
    """The FROM item a qualifier names (``c``, ``customers``, ``public.customers``)."""
    alias = qualifier[-1]
    schema = qualifier[-2] if len(qualifier) >= 2 else None
    for level in reversed(scope.levels):
        for rel in reversed(level.rels):
            if rel.alias == alias and (
                schema is None or rel.table is None or rel.table[0] in (None, schema)
            ):
                return rel
    return None


def _unqualified(name: str, scope: _Scope) -> ColumnLineage:
    """An unqualified column name: the innermost level that surely has it wins; levels that
    only may have it (relations of unknown columns) add their candidates and the search goes on.
    """
    acc = _Acc()
    found_any = False
    for level in reversed(scope.levels):
        sure = False
        for rel in level.rels:
            if rel.alias in ("old", "new", "excluded") and rel.table is not None:
                continue  # RETURNING's old/new are the target table, already a member
            col = rel.lookup(name)
            if col is None:
                continue
            found_any = True
            acc.add(col)
            if rel.columns is not None:
                sure = True
        if sure:
            break
    for level in reversed(scope.levels):
        for rel in level.rels:
            if rel.alias == name:
                # a whole-row reference (``SELECT c FROM customers c``)
                acc.add(rel.row())
                found_any = True
                break
    if not found_any:
        return ColumnLineage(name, frozenset(), True)  # a name nobody has: fail closed
    return acc.lineage(name)


def _zip_union(left: tuple[Item, ...], right: tuple[Item, ...]) -> tuple[Item, ...]:
    if (
        len(left) == len(right)
        and all(isinstance(i, ColumnLineage) for i in left)
        and all(isinstance(i, ColumnLineage) for i in right)
    ):
        return tuple(
            a.union(b)
            for a, b in zip(left, right, strict=True)
            if isinstance(a, ColumnLineage) and isinstance(b, ColumnLineage)
        )
    merged = _merge_all((*left, *right))
    return (StarGroup(merged.sources, merged.unknown),)


def _rename(items: tuple[Item, ...], names: tuple[str, ...]) -> tuple[Item, ...]:
    out: list[Item] = []
    for index, item in enumerate(items):
        if isinstance(item, ColumnLineage) and index < len(names):
            out.append(replace(item, name=names[index]))
        else:
            out.append(item)
    return tuple(out)


def _names(items: list[Item]) -> list[str] | None:
    if all(isinstance(i, ColumnLineage) for i in items):
        return [i.name for i in items if isinstance(i, ColumnLineage)]
    return None


def _set_targets(f: Fields) -> list[str]:
    names: list[str] = []
    for target in t.list_(f, "targetList"):
        node = t.unwrap(target)
        name = t.str_(node[1], "name") if node is not None else None
        if name:
            names.append(name)
    for clause in t.list_(f, "mergeWhenClauses"):
        node = t.unwrap(clause)
        if node is not None:
            names.extend(_set_targets(node[1]))
    return names


def _function_shape(call: object, coldefs: int) -> tuple[int | None, tuple[str, ...]]:
    """How many columns a FROM function yields, and their names, when known."""
    node = t.unwrap(call)
    if coldefs:
        return coldefs, ()
    if node is None or node[0] != "FuncCall":
        return None, ()
    parts = t.strings(t.list_(node[1], "funcname")) or ()
    name = transparent(parts)
    if name is None:
        return None, ()
    if name in SET_RETURNING_WIDTH:
        width = SET_RETURNING_WIDTH[name]
        if width is None:
            width = len(t.list_(node[1], "args"))
        return width, SET_RETURNING_NAMES.get(name, (name,))
    return 1, (name,)  # a scalar function in FROM yields one column


def _figure_name(value: object) -> str:
    """The column name PostgreSQL would give an expression (FigureColname), roughly."""
    node = t.unwrap(value)
    while node is not None:
        name, f = node
        if name == "ColumnRef":
            names = t.strings(t.list_(f, "fields"))
            return names[-1] if names else "?column?"
        if name == "FuncCall":
            parts = t.strings(t.list_(f, "funcname"))
            return parts[-1] if parts else "?column?"
        if name == "TypeCast":
            inner = t.unwrap(f.get("arg"))
            if inner is None or inner[0] == "A_Const":
                type_name = t.get(f, "typeName") or {}
                parts = t.strings(t.list_(type_name, "names"))
                return parts[-1] if parts else "?column?"
            node = inner
            continue
        if name == "A_Indirection":
            steps = t.list_(f, "indirection")
            last = t.unwrap(steps[-1]) if steps else None
            if last is not None and last[0] == "String":
                return t.str_(last[1], "sval") or "?column?"
            node = t.unwrap(f.get("arg"))
            continue
        if name == "CaseExpr":
            return "case"
        return "?column?"
    return "?column?"


def _copy_format(options: list[object]) -> CopyFormat:
    values: dict[str, str | None] = {}
    for option in options:
        node = t.unwrap(option)
        if node is None or node[0] != "DefElem":
            continue
        key = t.str_(node[1], "defname") or ""
        arg = t.unwrap(node[1].get("arg"))
        text: str | None = None
        if arg is not None and arg[0] == "String":
            text = t.str_(arg[1], "sval")
        elif arg is not None:
            text = t.constant_value(node[1].get("arg"))
        values[key] = text
    fmt = (values.get("format") or "text").lower()
    if "csv" in values:  # old syntax: ``COPY … TO STDOUT CSV``
        fmt = "csv"
    if "binary" in values:
        fmt = "binary"
    if fmt == "csv":
        quote = values.get("quote") or '"'
        return CopyFormat(
            format="csv",
            delimiter=values.get("delimiter") or ",",
            null=values.get("null") or "",
            quote=quote,
            escape=values.get("escape") or quote,
            header="header" in values and t.is_true(_arg_node(values.get("header"))),
        )
    if fmt == "binary":
        return CopyFormat(format="binary")
    null = values.get("null")
    return CopyFormat(
        format="text",
        delimiter=values.get("delimiter") or "\t",
        null="\\N" if null is None else null,
        header="header" in values and t.is_true(_arg_node(values.get("header"))),
    )


def _arg_node(value: str | None) -> object:
    return None if value is None else {"String": {"sval": value}}
