"""Micro-benchmark of the row rewriter (callgate.masking.rows), without any I/O.

An 8-column text-format result (int4, text, text, int8, timestamptz, text, numeric, bool) with
two masked columns: ``customers.email`` by a column rule (style partial) and a free-text ``note``
column in which the email detector finds an address in every row (style redact). Every row has
different values. Also measured: the same rows with no masked column (the bulk pass) and a
binary-format variant.

    .venv/bin/python -m bench.masking_bench [--rows 200000] [--json]

Prints rows/s for each case; the issue's target through the whole gateway is 150,000 rows/s, so
the rewriter alone should stay far above it.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from collections.abc import Callable

from callgate.masking.catalog import CatalogColumn, resolve_columns
from callgate.masking.detectors import DetectorSet
from callgate.masking.lineage import RelationInfo, statement_lineage
from callgate.masking.plan import ColumnGlob, ColumnRule, DetectRule, MaskRules
from callgate.masking.rows import FieldDescription, RowDescription, RowRewriter
from callgate.masking.styles import Style

SQL = "SELECT id, email, name, account, created, note, balance, active FROM customers"
COLUMNS = ("id", "email", "name", "account", "created", "note", "balance", "active")
TYPES = (23, 25, 25, 20, 1184, 25, 1700, 16)
TABLE_OID = 16400


def catalog(schema: str | None, name: str) -> RelationInfo | None:
    if name == "customers" and schema in (None, "public"):
        return RelationInfo("public", "customers", "table", COLUMNS)
    return None


def description(fmt: int) -> RowDescription:
    return RowDescription(
        tuple(
            FieldDescription(name, TABLE_OID, i + 1, oid, -1, -1, fmt)
            for i, (name, oid) in enumerate(zip(COLUMNS, TYPES, strict=True))
        )
    )


def text_row(i: int) -> bytes:
    values = [
        str(i).encode(),
        f"user{i}@example.com".encode(),
        f"Customer Number {i}".encode(),
        str(9_000_000_000 + i).encode(),
        b"2024-05-01 12:34:56.789+00",
        f"called on 2024-05-0{i % 9 + 1}, wrote back to person{i}@mail.example.org".encode(),
        f"{i % 100000}.{i % 100:02d}".encode(),
        b"t" if i % 2 else b"f",
    ]
    return _row(values)


def binary_row(i: int) -> bytes:
    values = [
        struct.pack("!i", i),
        f"user{i}@example.com".encode(),
        f"Customer Number {i}".encode(),
        struct.pack("!q", 9_000_000_000 + i),
        struct.pack("!q", 767_795_696_789_000),
        f"called on 2024-05-0{i % 9 + 1}, wrote back to person{i}@mail.example.org".encode(),
        struct.pack("!hhHhH", 1, 0, 0, 0, i % 10000),
        b"\x01" if i % 2 else b"\x00",
    ]
    return _row(values)


def _row(values: list[bytes]) -> bytes:
    return struct.pack("!h", len(values)) + b"".join(struct.pack("!i", len(v)) + v for v in values)


def rules() -> MaskRules:
    secret = b"bench-secret"
    return MaskRules.compile(
        [
            ColumnRule(
                "bench / mask[0]",
                (ColumnGlob.compile("customers.email"),),
                Style("partial", keep=4, secret=secret),
                False,
            )
        ],
        [DetectRule("bench / mask[1]", ("email", "credit_card"), Style("redact"))],
    )


def rewriter(fmt: int, masked: bool, detectors: bool = True) -> RowRewriter:
    desc = description(fmt)
    if not masked:
        return RowRewriter(desc, (None,) * len(desc))
    by_attr = {
        (TABLE_OID, i + 1): CatalogColumn("public", "customers", name)
        for i, name in enumerate(COLUMNS)
    }
    mask = rules() if detectors else MaskRules.compile(rules().columns, [])
    plan = mask.plan(statement_lineage(SQL, catalog))
    return plan.for_row_description(desc, resolve_columns(desc, by_attr))


def calibration() -> float:
    """Simple Python loop iterations per second: compare machines (and load) by this."""
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = max(best, 1_000_000 / (time.perf_counter() - start))
    return best


def measure(rows: list[bytes], rewrite: Callable[[bytes], bytes], repeat: int) -> float:
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        for body in rows:
            rewrite(body)
        elapsed = time.perf_counter() - start
        best = max(best, len(rows) / elapsed)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    text_rows = [text_row(i) for i in range(args.rows)]
    binary_rows = [binary_row(i) for i in range(args.rows)]
    # sanity: the masked output really is masked
    sample = rewriter(0, True).rewrite_data_row(text_rows[7])
    if b"user7@example.com" in sample or b"person7@mail.example.org" in sample:
        print("the rewriter did not mask the sample row", file=sys.stderr)
        return 1
    DetectorSet.compile(["email"])  # warm the regex cache outside the timings
    results = {
        "text, 2 of 8 columns masked (rule + detector)": measure(
            text_rows, rewriter(0, True).rewrite_data_row, args.repeat
        ),
        "binary, 2 of 8 columns masked (rule + detector)": measure(
            binary_rows, rewriter(1, True).rewrite_data_row, args.repeat
        ),
        "text, 1 of 8 columns masked (column rule only)": measure(
            text_rows, rewriter(0, True, detectors=False).rewrite_data_row, args.repeat
        ),
        "text, no masked column (bulk pass)": measure(
            text_rows, rewriter(0, False).rewrite_data_row, args.repeat
        ),
    }
    loop = calibration()
    if args.json:
        print(json.dumps({**{k: round(v) for k, v in results.items()}, "loop/s": round(loop)}))
    else:
        for name, rate in results.items():
            print(f"{rate:>12,.0f} rows/s  {name}")
        print(f"{loop:>12,.0f} loop/s  calibration: `for i in range(N): total += i`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
