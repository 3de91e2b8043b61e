"""Walk PostgreSQL's own parse tree (pglast, as JSON) and collect what a statement does.

This is the mechanism under :mod:`callgate.policy.classify`; the semantics are documented in
docs/policy.md. The walk is generic: every node of the tree is visited, so a statement hidden
anywhere (CTE, subquery, rule action, EXPLAIN ANALYZE, PREPARE body, function argument of a
dynamic-SQL function) contributes its kinds. Handlers exist only for the nodes that add facts.
The shape of the tree is described in :mod:`callgate.policy.sqltree`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Final

from pglast import parser

from callgate.policy import functions as fn
from callgate.policy import sqltree as t
from callgate.policy.facts import Facts, Level, Scope
from callgate.policy.sqltree import Fields

#: how deep dynamic SQL (``query_to_xml('…')``) may nest before the statement is ``unknown``
MAX_DYNAMIC_DEPTH: Final = 3


#: parts of a statement that are stored, not run now: ``ALTER ROLE r SET role = x`` does not
#: change this session's role
_NOT_RUN_NOW: Final[dict[str, tuple[str, ...]]] = {
    "AlterRoleSetStmt": ("setstmt",),
    "AlterDatabaseSetStmt": ("setstmt",),
    "AlterSystemStmt": ("setstmt",),
}


class WalkError(Exception):
    """The tree cannot be walked (too deep); the statement is then ``unknown``."""


def parse(sql: str) -> list[object]:
    """The raw statements of ``sql`` (pglast JSON). Raises pglast's ParseError."""
    tree: object = json.loads(parser.parse_sql_json(sql))
    if not isinstance(tree, dict):
        raise WalkError("unexpected parse tree")
    stmts = tree.get("stmts", [])
    return stmts if isinstance(stmts, list) else []


def walk_statements(stmts: list[object], scope: Scope | None = None) -> Facts:
    walker = _Walker()
    scope = scope or Scope()
    for stmt in stmts:
        walker.facts.statement_count += 1
        if isinstance(stmt, dict):
            walker.node("RawStmt", stmt, scope)
    return walker.facts


# --- small readers of the JSON tree -------------------------------------------------------------


Handler = Callable[["_Walker", Fields, Scope], None]


class _Walker:
    def __init__(self) -> None:
        self.facts = Facts()

    # -- generic traversal ----------------------------------------------------------------------

    def visit(self, node: object, scope: Scope) -> None:
        if isinstance(node, list):
            for item in node:
                self.visit(item, scope)
            return
        if not isinstance(node, dict):
            return
        unwrapped = t.unwrap(node)
        if unwrapped is not None:
            self.node(unwrapped[0], unwrapped[1], scope)
        else:
            self.fields(None, node, scope)

    def node(self, type_name: str, fields: Fields, scope: Scope) -> None:
        handler = _HANDLERS.get(type_name)
        if type_name.endswith("Stmt"):
            kinds = t.STATEMENT_KINDS.get(type_name)
            if kinds is not None:
                self.kind(scope, *kinds)
            elif type_name not in t.HANDLED_STATEMENTS:
                self.kind(scope, "unknown")  # a statement this walker does not know: fail closed
        if handler is not None:
            handler(self, fields, scope)
        else:
            self.fields(type_name, fields, scope, skip=_NOT_RUN_NOW.get(type_name, ()))

    def fields(
        self, type_name: str | None, fields: Fields, scope: Scope, skip: tuple[str, ...] = ()
    ) -> None:
        for key, value in fields.items():
            if key in skip:
                continue
            if isinstance(value, dict) and type_name is not None:
                typed = t.TYPED_FIELDS.get((type_name, key))
                if typed is not None:
                    self.node(typed, value, scope)
                    continue
            if isinstance(value, (dict, list)):
                self.visit(value, scope)

    # -- recording ------------------------------------------------------------------------------

    def kind(self, scope: Scope, *kinds: str) -> None:
        if scope.effective:
            self.facts.kinds.update(kinds)

    def table(self, scope: Scope, ref: tuple[str | None, str] | None, *, write: bool) -> None:
        if ref is None:
            return
        if write and scope.effective:
            self.facts.written.add(ref)
        else:
            self.facts.read.add(ref)
        if ref[0] in (None, "pg_catalog") and ref[1] in fn.SETTINGS_VIEWS and write:
            # UPDATE pg_settings SET setting = … WHERE name = 'role' is set_config in disguise
            self.kind(scope, "session", "privilege")
            if scope.effective:
                self.facts.sets_search_path = True

    # -- scopes ---------------------------------------------------------------------------------

    def with_clause(self, fields: Fields, scope: Scope) -> Scope:
        """Walk the CTEs of ``fields["withClause"]``; returns the scope the statement body sees."""
        with_clause = t.get(fields, "withClause")
        if with_clause is None:
            return scope
        recursive = bool(with_clause.get("recursive", False))
        ctes: list[tuple[str, Fields]] = []
        for item in t.list_(with_clause, "ctes"):
            node = t.unwrap(item)
            if node is not None and node[0] == "CommonTableExpr":
                ctes.append((t.str_(node[1], "ctename") or "", node[1]))
        every = scope.ctes | {name for name, _ in ctes}
        seen = set(scope.ctes)
        for name, cte in ctes:
            # A non-recursive CTE sees only the CTEs before it: ``WITH orders AS (SELECT * FROM
            # orders)`` reads the real table.
            inner = replace(scope, ctes=frozenset(every if recursive else seen))
            self.visit(cte.get("ctequery"), inner)
            seen.add(name)
        return replace(scope, ctes=frozenset(every))

    def level(self, items: list[object], scope: Scope) -> Level:
        level: Level = {}
        for item in items:
            self._level_item(item, scope, level)
        return level

    def _level_item(self, item: object, scope: Scope, level: Level) -> None:
        node = t.unwrap(item)
        if node is None:
            return
        name, fields = node
        if name == "RangeVar":
            ref = t.relation(fields)
            if ref is None:
                return
            is_cte = ref[0] is None and ref[1] in scope.ctes
            level[t.alias(fields) or ref[1]] = None if is_cte else ref[1]
        elif name == "JoinExpr":
            self._level_item(fields.get("larg"), scope, level)
            self._level_item(fields.get("rarg"), scope, level)
            alias = t.alias(fields)
            if alias:
                level[alias] = None
        elif name in ("RangeSubselect", "RangeFunction", "RangeTableFunc", "JsonTable"):
            alias = t.alias(fields)
            if alias:
                level[alias] = None
            else:
                level[f"\0{len(level)}"] = None  # unnamed: still makes bare columns ambiguous

    def column(self, parts: list[object], scope: Scope) -> None:
        names: list[str] = []
        for part in parts:
            node = t.unwrap(part)
            if node is None:
                return
            if node[0] == "A_Star":
                names.append("*")
            elif node[0] == "String":
                names.append(t.str_(node[1], "sval") or "")
        if not names:
            return
        innermost = scope.levels[-1] if scope.levels else {}
        col = names[-1]
        if len(names) == 1:
            here = [table for table in innermost.values() if table is not None]
            if col == "*":
                # only this level's FROM items; derived ones (CTE, subquery) were recorded inside
                self.facts.columns.update(f"{table}.*" for table in here)
                return
            anywhere = {table for level in scope.levels for table in level.values() if table}
            if len(innermost) == 1 and len(here) == 1 and anywhere == {here[0]}:
                self.facts.columns.add(f"{here[0]}.{col}")
            elif anywhere:
                # several tables could have it, including outer ones (a correlated reference)
                self.facts.columns.add(col)
            # ``SELECT c FROM customers c`` is a whole-row reference to every column
            for level in reversed(scope.levels):
                if col in level:
                    target = level[col]
                    if target is not None:
                        self.facts.columns.add(f"{target}.*")
                    break
            return
        qualifier = names[-2]
        if len(names) == 2:
            for level in reversed(scope.levels):
                if qualifier in level:
                    target = level[qualifier]
                    if target is not None:  # else a CTE or subquery: recorded inside it
                        self.facts.columns.add(f"{target}.{col}")
                    return
        self.facts.columns.add(f"{qualifier}.{col}")

    def target_columns(self, table: str | None, targets: list[object], scope: Scope) -> None:
        """INSERT column lists and UPDATE SET targets: ``table.column``."""
        for target in targets:
            node = t.unwrap(target)
            if node is None:
                continue
            name = t.str_(node[1], "name")
            if name and table:
                self.facts.columns.add(f"{table}.{name}")
            self.visit(node[1].get("val"), scope)
            self.visit(node[1].get("indirection"), scope)

    def where(self, fields: Fields, scope: Scope) -> None:
        """WHERE of UPDATE/DELETE: missing, or without any column reference, counts as absent."""
        clause = fields.get("whereClause")
        if scope.effective and (
            clause is None
            or not (t.contains(clause, "ColumnRef") or t.contains(clause, "CurrentOfExpr"))
        ):
            self.facts.where_absent = True
        self.visit(clause, scope)

    def statement_body(
        self, type_name: str, fields: Fields, scope: Scope, skip: tuple[str, ...]
    ) -> None:
        self.fields(type_name, fields, scope, skip=("withClause", *skip))


# --- handlers ------------------------------------------------------------------------------------


def _raw_stmt(w: _Walker, f: Fields, scope: Scope) -> None:
    w.visit(f.get("stmt"), scope)


def _select(w: _Walker, f: Fields, scope: Scope, *, insert_source: bool = False) -> None:
    # ``INSERT … VALUES (…)`` is a plain insert: its VALUES list reads nothing
    values_only = "valuesLists" in f and not (f.get("targetList") or f.get("fromClause"))
    if not (insert_source and values_only):
        w.kind(scope, "select")
    scope = w.with_clause(f, scope)
    level = w.level(t.list_(f, "fromClause"), scope)
    inner = replace(scope, levels=(*scope.levels, level))
    if t.list_(f, "lockingClause") and scope.effective:
        w.facts.locks = True
    into = t.get(f, "intoClause")
    if into is not None:
        w.kind(scope, "ddl")
        w.table(scope, t.relation(t.get(into, "rel")), write=True)
    for key in ("larg", "rarg"):
        sub = t.get(f, key)
        if sub is not None:
            _select(w, sub, scope)
    w.statement_body("SelectStmt", f, inner, skip=("intoClause", "larg", "rarg"))


def _insert(w: _Walker, f: Fields, scope: Scope) -> None:
    w.kind(scope, "insert")
    scope = w.with_clause(f, scope)
    ref = t.relation(t.get(f, "relation"))
    w.table(scope, ref, write=True)
    table = ref[1] if ref else None
    alias = t.alias(t.get(f, "relation") or {}) or table
    cols = t.list_(f, "cols")
    if cols:
        w.target_columns(table, cols, scope)
    elif table:
        w.facts.columns.add(f"{table}.*")
    source = t.unwrap(f.get("selectStmt"))
    if source is not None and source[0] == "SelectStmt":
        _select(w, source[1], scope, insert_source=True)
    own: Level = {alias: table} if alias else {}
    inner = replace(scope, levels=(*scope.levels, own))
    conflict = t.get(f, "onConflictClause")
    if conflict is not None:
        if conflict.get("action") == "ONCONFLICT_UPDATE":
            w.kind(scope, "update")
        excluded = replace(scope, levels=(*scope.levels, {**own, "excluded": table}))
        w.target_columns(table, t.list_(conflict, "targetList"), excluded)
        w.visit(conflict.get("whereClause"), excluded)
        w.visit(conflict.get("infer"), excluded)
    w.fields(
        "InsertStmt",
        f,
        inner,
        skip=("withClause", "relation", "cols", "selectStmt", "onConflictClause"),
    )


def _update(w: _Walker, f: Fields, scope: Scope) -> None:
    w.kind(scope, "update")
    scope = w.with_clause(f, scope)
    relation = t.get(f, "relation") or {}
    ref = t.relation(relation)
    w.table(scope, ref, write=True)
    table = ref[1] if ref else None
    level = w.level(t.list_(f, "fromClause"), scope)
    if table:
        level[t.alias(relation) or table] = table
    inner = replace(scope, levels=(*scope.levels, level))
    w.target_columns(table, t.list_(f, "targetList"), inner)
    w.where(f, inner)
    w.fields("UpdateStmt", f, inner, skip=("withClause", "relation", "targetList", "whereClause"))


def _delete(w: _Walker, f: Fields, scope: Scope) -> None:
    w.kind(scope, "delete")
    scope = w.with_clause(f, scope)
    relation = t.get(f, "relation") or {}
    ref = t.relation(relation)
    w.table(scope, ref, write=True)
    level = w.level(t.list_(f, "usingClause"), scope)
    if ref:
        level[t.alias(relation) or ref[1]] = ref[1]
    inner = replace(scope, levels=(*scope.levels, level))
    w.where(f, inner)
    w.fields("DeleteStmt", f, inner, skip=("withClause", "relation", "whereClause"))


_MERGE_KINDS: Final = {"CMD_UPDATE": "update", "CMD_INSERT": "insert", "CMD_DELETE": "delete"}


def _merge(w: _Walker, f: Fields, scope: Scope) -> None:
    w.kind(scope, "merge")
    scope = w.with_clause(f, scope)
    relation = t.get(f, "relation") or {}
    ref = t.relation(relation)
    w.table(scope, ref, write=True)
    table = ref[1] if ref else None
    level = w.level([f.get("sourceRelation")], scope)
    if table:
        level[t.alias(relation) or table] = table
    inner = replace(scope, levels=(*scope.levels, level))
    for clause in t.list_(f, "mergeWhenClauses"):
        node = t.unwrap(clause)
        if node is None:
            continue
        kind = _MERGE_KINDS.get(str(node[1].get("commandType")))
        if kind:
            w.kind(scope, kind)
        w.target_columns(table, t.list_(node[1], "targetList"), inner)
        w.fields("MergeWhenClause", node[1], inner, skip=("targetList",))
    w.fields("MergeStmt", f, inner, skip=("withClause", "relation", "mergeWhenClauses"))


def _range_var(w: _Walker, f: Fields, scope: Scope) -> None:
    ref = t.relation(f)
    if ref is not None and not (ref[0] is None and ref[1] in scope.ctes):
        w.table(scope, ref, write=False)


def _column_ref(w: _Walker, f: Fields, scope: Scope) -> None:
    w.column(t.list_(f, "fields"), scope)


def _func_call(w: _Walker, f: Fields, scope: Scope) -> None:
    parts = t.strings(t.list_(f, "funcname"))
    args = t.list_(f, "args")
    if parts:
        w.facts.functions.add(".".join(parts))
        builtin = fn.builtin_name(parts)
        if builtin is not None:
            _builtin_call(w, builtin, args, scope)
    w.fields("FuncCall", f, scope, skip=("funcname",))


def _arg(args: list[object], index: int, names: tuple[str, ...]) -> object | None:
    """The argument at ``index``, or the named argument ``name => …``; ``None`` if neither."""
    for arg in args:
        node = t.unwrap(arg)
        if node is not None and node[0] == "NamedArgExpr" and node[1].get("name") in names:
            return node[1].get("arg")
    if index < len(args) and (t.unwrap(args[index]) or ("", {}))[0] != "NamedArgExpr":
        return args[index]
    return None


def _builtin_call(w: _Walker, name: str, args: list[object], scope: Scope) -> None:
    if fn.is_unsafe_io(name):
        w.kind(scope, "unsafe_io")
    if name == fn.SET_CONFIG:
        w.facts.literal_sensitive = True
        w.kind(scope, "session")
        setting = t.constant_text(_arg(args, 0, ("setting_name",)))
        setting = None if setting is None else setting.strip().lower()
        if setting is None or setting in fn.PRIVILEGE_SETTINGS:
            w.kind(scope, "privilege")  # a setting we cannot read may be the role
        if (setting is None or setting == fn.SEARCH_PATH) and scope.effective:
            w.facts.sets_search_path = True
        if setting is None or setting in fn.LEXING_SETTINGS:
            value = t.constant_value(_arg(args, 1, ("new_value",)))
            if setting is None or not fn.safe_lexing_value(setting, value):
                w.kind(scope, "unknown")
    elif name in fn.DYNAMIC_SQL_FUNCTIONS:
        w.facts.literal_sensitive = True
        text = t.constant_text(_arg(args, fn.DYNAMIC_SQL_FUNCTIONS[name], ("query", "sqlquery")))
        _dynamic_sql(w, text, scope)
    elif name in fn.TABLE_BY_NAME_FUNCTIONS:
        w.facts.literal_sensitive = True
        text = t.constant_text(_arg(args, fn.TABLE_BY_NAME_FUNCTIONS[name], ("tbl",)))
        _table_by_name(w, text, scope)
    elif name in fn.READS_ANY_TABLE_FUNCTIONS:
        w.kind(scope, "unknown")


def _dynamic_sql(w: _Walker, text: str | None, scope: Scope) -> None:
    if text is None or scope.depth >= MAX_DYNAMIC_DEPTH:
        w.kind(scope, "unknown")
        return
    try:
        stmts = parse(text)
    except Exception:  # the server rejects it too; we cannot tell what it is
        w.kind(scope, "unknown")
        return
    sub = walk_statements(stmts, Scope(effective=scope.effective, depth=scope.depth + 1))
    sub.statement_count = 0
    w.facts.merge(sub)


def _table_by_name(w: _Walker, text: str | None, scope: Scope) -> None:
    ref: tuple[str | None, str] | None = None
    if text is not None:
        try:
            stmts = parse(f"TABLE {text}")
        except Exception:  # not a table name
            stmts = []
        if len(stmts) == 1 and isinstance(stmts[0], dict):
            select = t.unwrap(stmts[0].get("stmt"))
            items = t.list_(select[1], "fromClause") if select and select[0] == "SelectStmt" else []
            only = t.unwrap(items[0]) if len(items) == 1 else None
            if only is not None and only[0] == "RangeVar":
                ref = t.relation(only[1])
    if ref is None:
        w.kind(scope, "unknown")
    else:
        w.table(scope, ref, write=False)
        w.facts.columns.add(f"{ref[1]}.*")


def _copy(w: _Walker, f: Fields, scope: Scope) -> None:
    is_from = bool(f.get("is_from", False))
    w.kind(scope, "copy_from" if is_from else "copy_to")
    if f.get("is_program") or f.get("filename") is not None:
        w.kind(scope, "unsafe_io")
    relation = t.get(f, "relation")
    ref = t.relation(relation)
    w.table(scope, ref, write=is_from)
    if ref is not None:
        names = t.strings(t.list_(f, "attlist")) or ("*",)
        w.facts.columns.update(f"{ref[1]}.{name}" for name in names)
        scope = replace(scope, levels=(*scope.levels, {ref[1]: ref[1]}))
    w.fields("CopyStmt", f, scope, skip=("relation", "attlist"))


def _explain(w: _Walker, f: Fields, scope: Scope) -> None:
    w.kind(scope, "explain")
    analyze = False
    for option in t.list_(f, "options"):
        node = t.unwrap(option)
        if node is not None and node[0] == "DefElem" and node[1].get("defname") == "analyze":
            w.facts.literal_sensitive = True
            analyze = t.is_true(node[1].get("arg"))
    inner = scope if analyze else replace(scope, effective=False)
    w.visit(f.get("query"), inner)


def _create_table_as(w: _Walker, f: Fields, scope: Scope) -> None:
    into = t.get(f, "into")
    if into is not None:
        w.table(scope, t.relation(t.get(into, "rel")), write=True)
    w.fields("CreateTableAsStmt", f, scope, skip=("into",))


def _view(w: _Walker, f: Fields, scope: Scope) -> None:
    w.table(scope, t.relation(t.get(f, "view")), write=True)
    w.fields("ViewStmt", f, scope, skip=("view",))


def _rule(w: _Walker, f: Fields, scope: Scope) -> None:
    relation = t.get(f, "relation")
    ref = t.relation(relation)
    w.table(scope, ref, write=True)
    if ref is not None:
        # rule actions see the table as OLD and NEW
        scope = replace(scope, levels=(*scope.levels, {"old": ref[1], "new": ref[1]}))
    w.fields("RuleStmt", f, scope, skip=("relation",))


def _prepare(w: _Walker, f: Fields, scope: Scope) -> None:
    body = _Walker()
    body.visit(f.get("query"), scope)
    w.facts.merge(body.facts)  # a PREPARE has the kinds of what it prepares (fail closed)
    w.facts.prepares.append((t.str_(f, "name") or "", body.facts))
    w.visit(f.get("argtypes"), scope)


def _execute(w: _Walker, f: Fields, scope: Scope) -> None:
    if scope.effective:
        w.facts.executes.append(t.str_(f, "name") or "")
    w.visit(f.get("params"), scope)


def _deallocate(w: _Walker, f: Fields, scope: Scope) -> None:
    if scope.effective:
        w.facts.deallocates.append("*" if f.get("isall") else (t.str_(f, "name") or ""))


def _variable_set(w: _Walker, f: Fields, scope: Scope) -> None:
    name = (t.str_(f, "name") or "").lower()  # setting names are case-insensitive, even quoted
    kind = t.str_(f, "kind")
    if name in fn.PRIVILEGE_SETTINGS:
        w.kind(scope, "privilege")
    elif name in ("transaction", "session characteristics"):
        w.kind(scope, "transaction")
    else:
        w.kind(scope, "session")
    if (name == fn.SEARCH_PATH or kind == "VAR_RESET_ALL") and scope.effective:
        w.facts.sets_search_path = True
    if name in fn.LEXING_SETTINGS and kind == "VAR_SET_VALUE":
        w.facts.literal_sensitive = True
        args = t.list_(f, "args")
        value = t.constant_value(args[0]) if len(args) == 1 else None
        if not fn.safe_lexing_value(name, value):
            w.kind(scope, "unknown")
    w.fields("VariableSetStmt", f, scope)


def _truncate(w: _Walker, f: Fields, scope: Scope) -> None:
    w.kind(scope, "delete")
    if scope.effective:
        w.facts.where_absent = True
    for item in t.list_(f, "relations"):
        node = t.unwrap(item)
        if node is not None and node[0] == "RangeVar":
            w.table(scope, t.relation(node[1]), write=True)


def _lock(w: _Walker, f: Fields, scope: Scope) -> None:
    w.kind(scope, "utility")
    if scope.effective:
        w.facts.locks = True
    w.fields("LockStmt", f, scope)


def _discard(w: _Walker, f: Fields, scope: Scope) -> None:
    w.kind(scope, "utility")
    if f.get("target") == "DISCARD_ALL":
        # DISCARD ALL includes SET SESSION AUTHORIZATION DEFAULT and RESET ALL
        w.kind(scope, "privilege")
        if scope.effective:
            w.facts.sets_search_path = True


def _declare_cursor(w: _Walker, f: Fields, scope: Scope) -> None:
    w.visit(f.get("query"), scope)


def _drop(w: _Walker, f: Fields, scope: Scope) -> None:
    if f.get("removeType") in t.DROPPED_RELATIONS:
        for item in t.list_(f, "objects"):
            node = t.unwrap(item)
            parts = t.strings(t.list_(node[1], "items")) if node and node[0] == "List" else None
            if parts:
                w.table(scope, (parts[-2] if len(parts) > 1 else None, parts[-1]), write=True)
    w.fields("DropStmt", f, scope, skip=("objects",))


def _alter_table(w: _Walker, f: Fields, scope: Scope) -> None:
    w.table(scope, t.relation(t.get(f, "relation")), write=True)
    w.fields("AlterTableStmt", f, scope, skip=("relation",))


def _create(w: _Walker, f: Fields, scope: Scope) -> None:
    relation = t.get(f, "relation")
    ref = t.relation(relation)
    w.table(scope, ref, write=True)
    if ref is not None:
        scope = replace(scope, levels=(*scope.levels, {ref[1]: ref[1]}))
    w.fields("CreateStmt", f, scope, skip=("relation",))


def _index(w: _Walker, f: Fields, scope: Scope) -> None:
    ref = t.relation(t.get(f, "relation"))
    w.table(scope, ref, write=True)
    if ref is not None:
        scope = replace(scope, levels=(*scope.levels, {ref[1]: ref[1]}))
    w.fields("IndexStmt", f, scope, skip=("relation",))


_HANDLERS: Final[dict[str, Handler]] = {
    "RawStmt": _raw_stmt,
    "SelectStmt": _select,
    "InsertStmt": _insert,
    "UpdateStmt": _update,
    "DeleteStmt": _delete,
    "MergeStmt": _merge,
    "RangeVar": _range_var,
    "ColumnRef": _column_ref,
    "FuncCall": _func_call,
    "CopyStmt": _copy,
    "ExplainStmt": _explain,
    "CreateTableAsStmt": _create_table_as,
    "ViewStmt": _view,
    "RuleStmt": _rule,
    "PrepareStmt": _prepare,
    "ExecuteStmt": _execute,
    "DeallocateStmt": _deallocate,
    "VariableSetStmt": _variable_set,
    "TruncateStmt": _truncate,
    "LockStmt": _lock,
    "DiscardStmt": _discard,
    "DeclareCursorStmt": _declare_cursor,
    "DropStmt": _drop,
    "AlterTableStmt": _alter_table,
    "CreateStmt": _create,
    "IndexStmt": _index,
}
