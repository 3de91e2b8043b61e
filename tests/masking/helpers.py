"""Small builders shared by the masking tests."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from callgate.masking.catalog import CatalogColumn
from callgate.masking.lineage import RelationInfo
from callgate.masking.plan import ColumnGlob, ColumnRule, DetectRule, MaskRules
from callgate.masking.rows import FieldDescription, RowDescription
from callgate.masking.styles import Style

SECRET = b"test-secret"

#: a small schema: public.customers (a table), public.orders, public.v_customers (a view)
RELATIONS: dict[tuple[str, str], RelationInfo] = {
    ("public", "customers"): RelationInfo(
        "public", "customers", "table", ("id", "email", "name", "card", "note")
    ),
    ("public", "orders"): RelationInfo(
        "public", "orders", "table", ("id", "customer_id", "total", "memo")
    ),
    ("public", "v_customers"): RelationInfo("public", "v_customers", "view", ("id", "email")),
    ("billing", "accounts"): RelationInfo("billing", "accounts", "table", ("id", "iban")),
}
OIDS = {
    ("public", "customers"): 16400,
    ("public", "orders"): 16410,
    ("public", "v_customers"): 16420,
}


def columns_of(schema: str | None, name: str) -> RelationInfo | None:
    return RELATIONS.get((schema or "public", name))


def by_attr() -> dict[tuple[int, int], CatalogColumn]:
    out: dict[tuple[int, int], CatalogColumn] = {}
    for key, oid in OIDS.items():
        info = RELATIONS[key]
        for attnum, column in enumerate(info.columns, start=1):
            out[(oid, attnum)] = CatalogColumn(
                info.schema, info.name, column, "table" if info.kind == "table" else "view"
            )
    return out


def data_row(values: Sequence[bytes | None]) -> bytes:
    parts = [struct.pack("!h", len(values))]
    for value in values:
        parts.append(
            b"\xff\xff\xff\xff" if value is None else struct.pack("!i", len(value)) + value
        )
    return b"".join(parts)


def parse_row(body: bytes) -> list[bytes | None]:
    count = struct.unpack_from("!h", body, 0)[0]
    pos = 2
    out: list[bytes | None] = []
    for _ in range(count):
        length = struct.unpack_from("!i", body, pos)[0]
        pos += 4
        if length == -1:
            out.append(None)
        else:
            out.append(body[pos : pos + length])
            pos += length
    assert pos == len(body), "trailing bytes"
    return out


def description(
    columns: Sequence[tuple[str, int]],
    fmt: int = 0,
    table: tuple[str, str] | None = ("public", "customers"),
) -> RowDescription:
    """``columns``: (name, type oid); origins point at ``table``'s columns of the same name."""
    fields = []
    for name, type_oid in columns:
        oid, attnum = 0, 0
        if table is not None and name in RELATIONS[table].columns:
            oid = OIDS[table]
            attnum = RELATIONS[table].columns.index(name) + 1
        fields.append(FieldDescription(name, oid, attnum, type_oid, -1, -1, fmt))
    return RowDescription(tuple(fields))


def rules(
    columns: Sequence[tuple[str, str]] = (),
    detect: Sequence[tuple[tuple[str, ...], str]] = (),
    *,
    deny_unknown: bool = False,
    keep: int = 4,
) -> MaskRules:
    """``columns``: (glob, style); ``detect``: (detector names, style)."""
    return MaskRules.compile(
        [
            ColumnRule(
                f"t / mask[{i}]", (ColumnGlob.compile(glob),), _style(style, keep), deny_unknown
            )
            for i, (glob, style) in enumerate(columns)
        ],
        [
            DetectRule(f"t / detect[{i}]", tuple(names), _style(style, keep))
            for i, (names, style) in enumerate(detect)
        ],
    )


def _style(name: str, keep: int) -> Style:
    return Style(name, keep=keep, secret=SECRET)  # type: ignore[arg-type]
