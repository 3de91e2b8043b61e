"""Micro-benchmark of result masking (callgate.masking.rows) as the engine runs it, without I/O.

An 8-column text-format result (int4, text, text, int8, timestamptz, text, numeric, bool) with
two masked columns: ``customers.email`` by a column rule (style partial) and a free-text ``note``
column in which the email detector finds an address in every row (style redact; the
``credit_card`` detector is on as well). Every row has different values. Also measured: a
binary-format variant, the binary result with the email detector alone (the policy of
``bench.masking_throughput``, issue 6), a column rule alone, and no masked column (the bulk pass).

The rows, framed as the server sends them (RowDescription, DataRows, CommandComplete,
ReadyForQuery), are cut into ``--chunk``-byte pieces at arbitrary offsets (the reads of the
engine) and fed to the engine's :class:`~callgate.engines.postgres.masker.ResultMasker`.

    .venv/bin/python -m bench.masking_bench [--rows 200000] [--chunk 65536] [--loop c|python]
        [--json]

Prints rows/s (wall clock, best of ``--repeat``) and CPU µs per row for each case; the issue's
target through the whole gateway is 150,000 rows/s, so masking alone should stay far above it.
On a shared machine the CPU time per row is the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from collections.abc import Callable

from callgate.engines.postgres.masker import ResultMasker, StatementMask
from callgate.masking import rows as rows_module
from callgate.masking.catalog import CatalogColumn
from callgate.masking.detectors import DetectorSet
from callgate.masking.lineage import RelationInfo, statement_lineage
from callgate.masking.plan import ColumnGlob, ColumnRule, DetectRule, MaskRules
from callgate.masking.rows import FieldDescription, RowDescription, encode_row_description
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


BY_ATTR = {
    (TABLE_OID, i + 1): CatalogColumn("public", "customers", name) for i, name in enumerate(COLUMNS)
}


def statement_mask(
    masked: bool, detectors: tuple[str, ...] = ("email", "credit_card")
) -> StatementMask:
    mask = MaskRules()
    if masked:
        mask = MaskRules.compile(
            rules().columns,
            [DetectRule("bench / mask[1]", detectors, Style("redact"))] if detectors else [],
        )
    return StatementMask(mask.plan(statement_lineage(SQL, catalog)), BY_ATTR)


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def stream(fmt: int, rows: list[bytes]) -> bytes:
    """A whole result as the server sends it."""
    return b"".join(
        [
            message(b"T", encode_row_description(description(fmt))),
            *(message(b"D", body) for body in rows),
            message(b"C", f"SELECT {len(rows)}\0".encode()),
            message(b"Z", b"I"),
        ]
    )


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def run(pieces: list[bytes], mask: StatementMask) -> bytes:
    """Feed the pieces to a fresh ResultMasker (one simple Query); what the caller receives."""
    masker = ResultMasker(mask, max_decoded=1 << 24, on_masked=lambda seq, masked: None)
    masker.query([mask], None)
    return b"".join([masker.process(piece) for piece in pieces])


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


def measure(nrows: int, work: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(best rows/s by the wall clock, best CPU µs per row) over ``repeat`` runs."""
    best = 0.0
    cpu = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        cpu_start = time.process_time()
        work()
        cpu = min(cpu, (time.process_time() - cpu_start) / nrows * 1e6)
        best = max(best, nrows / (time.perf_counter() - start))
    return best, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=65536, help="bytes per read")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--loop",
        choices=("c", "python"),
        default="c",
        help="the DataRow loop: the C extension (the default, where it is built) or Python",
    )
    args = parser.parse_args(argv)
    if args.loop == "python":
        rows_module.REWRITE_RUN_C = None
    loop_name = "python" if rows_module.REWRITE_RUN_C is None else "c"
    text = chunks(stream(0, [text_row(i) for i in range(args.rows)]), args.chunk)
    binary = chunks(stream(1, [binary_row(i) for i in range(args.rows)]), args.chunk)
    # sanity: the masked output really is masked, and the unmasked output is untouched
    for pieces in (text, binary):
        sample = run(pieces, statement_mask(True))
        if b"user7@example.com" in sample or b"person7@mail.example.org" in sample:
            print("masking left an address in the output", file=sys.stderr)
            return 1
        if run(pieces, statement_mask(False)) != b"".join(pieces):
            print("the unmasked output differs from the input", file=sys.stderr)
            return 1
    DetectorSet.compile(["email"])  # warm the regex cache outside the timings
    cases: dict[str, tuple[list[bytes], StatementMask]] = {
        "text, 2 of 8 columns masked (rule + detector)": (text, statement_mask(True)),
        "binary, 2 of 8 columns masked (rule + detector)": (binary, statement_mask(True)),
        "binary, 2 of 8 columns masked (rule + email detector alone)": (
            binary,
            statement_mask(True, ("email",)),
        ),
        "text, 1 of 8 columns masked (column rule only)": (text, statement_mask(True, ())),
        "text, no masked column (bulk pass)": (text, statement_mask(False)),
    }
    results = {
        name: measure(args.rows, lambda p=pieces, m=mask: run(p, m), args.repeat)
        for name, (pieces, mask) in cases.items()
    }
    loop = calibration()
    if args.json:
        print(
            json.dumps(
                {
                    **{
                        k: {"rows/s": round(r), "cpu_us/row": round(c, 3)}
                        for k, (r, c) in results.items()
                    },
                    "loop/s": round(loop),
                    "masking_loop": loop_name,
                }
            )
        )
    else:
        for name, (rate, cpu) in results.items():
            print(f"{rate:>12,.0f} rows/s  {cpu:6.2f} CPU µs/row  {name}")
        print(f"{loop:>12,.0f} loop/s  calibration: `for i in range(N): total += i`")
        print(f"masking loop: {loop_name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
