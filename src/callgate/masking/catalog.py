"""What the upstream's catalog says about relations and columns, for masking.

Two questions need the catalog:

* lineage (:mod:`callgate.masking.lineage`) asks ``columns_of(schema, name)``: is this name a
  table or a view, and what are its columns (to expand ``*``)?
* a RowDescription names, for each column that is a plain column reference, the table's OID and
  the attribute number (§55.7 RowDescription); :func:`resolve_columns` turns them into
  ``schema.table.column``.

The engine runs :data:`CATALOG_SQL` on its upstream connection (once per connection, again after
DDL) and builds a :class:`CatalogSnapshot` from the rows with the session's search path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from callgate.masking.lineage import RelationInfo, Source
from callgate.masking.rows import RowDescription

RelKind = Literal["table", "view", "other"]

#: one row per column of every table, view, materialized view and foreign table:
#: ``(oid, schema, relation, relkind, attnum, column)``
CATALOG_SQL: Final = """\
SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text, a.attnum::int4,
       a.attname::text
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm')
ORDER BY c.oid, a.attnum"""

#: ``pg_class.relkind`` values whose columns hold their own values
_TABLE_KINDS: Final = frozenset({"r", "p", "f"})
_VIEW_KINDS: Final = frozenset({"v", "m"})


def rel_kind(relkind: str) -> RelKind:
    if relkind in _TABLE_KINDS:
        return "table"
    if relkind in _VIEW_KINDS:
        return "view"
    return "other"


@dataclass(frozen=True, slots=True)
class CatalogColumn:
    """``schema.table.column`` and what kind of relation the table is."""

    schema: str
    table: str
    column: str
    kind: RelKind = "table"

    @property
    def source(self) -> Source:
        return Source(self.schema, self.table, self.column)


@dataclass(frozen=True, slots=True)
class ColumnOrigin:
    """Where a RowDescription column comes from.

    ``expression``: table OID 0, the value is computed (lineage decides); ``column``: a column of
    ``column`` (a table's value exactly, or a view's); ``unresolved``: an OID the catalog does
    not know (treated as unknown: masked, or refused with ``on_unknown: deny``).
    """

    status: Literal["expression", "column", "unresolved"]
    column: CatalogColumn | None = None


EXPRESSION: Final = ColumnOrigin("expression")
UNRESOLVED: Final = ColumnOrigin("unresolved")


def resolve_columns(
    row_description: RowDescription, catalog: Mapping[tuple[int, int], CatalogColumn]
) -> tuple[ColumnOrigin, ...]:
    """Each column's origin, from its table OID and attribute number."""
    out: list[ColumnOrigin] = []
    for f in row_description.fields:
        if f.table_oid == 0 or f.attnum <= 0:
            out.append(EXPRESSION)
            continue
        found = catalog.get((f.table_oid, f.attnum))
        out.append(UNRESOLVED if found is None else ColumnOrigin("column", found))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class CatalogSnapshot:
    """The catalog at one moment, with the session's search path. Build with :meth:`from_rows`.

    ``search_path``: the schemas as the session resolves unqualified names (``$user`` expanded);
    ``pg_catalog`` is searched first unless listed, and ``pg_temp`` first of all, as in
    PostgreSQL.
    """

    by_attr: Mapping[tuple[int, int], CatalogColumn]
    relations: Mapping[tuple[str, str], RelationInfo]
    search_path: tuple[str, ...] = ("public",)
    #: the session's own temporary schema (``pg_my_temp_schema()::regnamespace``), if it has one
    temp_schema: str | None = None

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[Sequence[object]],
        search_path: Sequence[str] = ("public",),
        temp_schema: str | None = None,
    ) -> CatalogSnapshot:
        by_attr: dict[tuple[int, int], CatalogColumn] = {}
        columns: dict[tuple[str, str], list[str]] = {}
        kinds: dict[tuple[str, str], RelKind] = {}
        for oid, schema, table, relkind, attnum, column in rows:
            kind = rel_kind(str(relkind))
            key = (str(schema), str(table))
            by_attr[(int(str(oid)), int(str(attnum)))] = CatalogColumn(
                key[0], key[1], str(column), kind
            )
            columns.setdefault(key, []).append(str(column))
            kinds[key] = kind
        relations = {
            key: RelationInfo(key[0], key[1], kinds[key], tuple(cols))
            for key, cols in columns.items()
        }
        return cls(by_attr, relations, tuple(search_path), temp_schema)

    def with_search_path(self, search_path: Sequence[str]) -> CatalogSnapshot:
        return CatalogSnapshot(self.by_attr, self.relations, tuple(search_path), self.temp_schema)

    def columns_of(self, schema: str | None, name: str) -> RelationInfo | None:
        """The relation ``name`` resolves to (see :data:`callgate.masking.lineage.ColumnsOf`)."""
        temp = self.temp_schema
        if schema is not None:
            if schema == "pg_temp":
                return None if temp is None else self.relations.get((temp, name))
            return self.relations.get((schema, name))
        path = [s for s in self.search_path if s != "pg_temp"]
        if "pg_catalog" not in path:
            path.insert(0, "pg_catalog")
        if temp is not None:
            path.insert(0, temp)  # the session's temporary tables come first
        for candidate in path:
            found = self.relations.get((candidate, name))
            if found is not None:
                return found
        return None
