"""Masked and unmasked result throughput through callgate vs direct, in one run (issue 6).

    .venv/bin/python -m bench.masking_throughput [--rows 1000000] [--repeat 5]
        [--reader psycopg-binary|psycopg-text|asyncpg|psql] [--json]

On the local PostgreSQL (127.0.0.1:5432, trusted ``postgres``): creates ``callgate_bench_mask``
with a ``customers`` table of ``--rows`` rows and 8 columns (int4, text, text, int8, timestamptz,
text, numeric, bool) unless it is already there, starts one ``callgate serve`` with two callers,
and reads ``SELECT`` of every row and column:

- ``direct``: from the server itself;
- ``callgate, no mask``: a caller no mask rule applies to (results pass in bulk);
- ``callgate, masked``: a caller with ``customers.email`` masked by a column rule (partial) and
  the ``email`` detector (redact), which finds an address in the ``note`` column of every row.

Each leg runs ``--repeat`` times in turn (direct, no mask, masked, …, so a burst of load on the
shared machine hits every leg alike); the median of each leg is reported and judged, the best is
printed beside it. Targets (docs/performance.md): masked ≥ 150,000 rows/s; no mask ≥ 0.7x direct.

The reader must not be the bottleneck: by default psycopg with a binary cursor fetching 10,000
rows at a time (psycopg's C implementation); ``psql`` (C, unaligned output to /dev/null) is the
fastest; ``asyncpg`` decodes every value into Python objects and is the slowest here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psycopg

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from callgate.masking import rows as mask_rows  # noqa: E402
from tests.support.gateway import Gateway, build_config  # noqa: E402
from tests.support.net import libpq_dsn  # noqa: E402

DB = "callgate_bench_mask"
SQL = "SELECT id, email, name, account, created, note, balance, active FROM customers"
TARGET_MASKED = 150_000
TARGET_RATIO = 0.7
FETCH = 10_000

POLICIES: list[dict[str, Any]] = [
    {
        "name": "bench no mask",
        "subjects": {"groups": ["bench"]},
        "connections": ["bench"],
        "rules": [{"allow": {}}],
    },
    {
        "name": "bench masked",
        "subjects": {"groups": ["masked"]},
        "connections": ["bench"],
        "rules": [{"allow": {}}],
        "mask": [
            {"columns": ["customers.email"], "style": "partial", "keep": 4},
            {"detect": ["email"], "style": "redact"},
        ],
    },
]


def ensure_table(host: str, port: int, user: str, rows: int) -> None:
    admin = libpq_dsn(host=host, port=port, user=user, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,)).fetchone():
            conn.execute(f"CREATE DATABASE {DB}")
    with psycopg.connect(libpq_dsn(host=host, port=port, user=user, dbname=DB)) as conn:
        conn.autocommit = True
        conn.execute(
            "CREATE TABLE IF NOT EXISTS customers (id int PRIMARY KEY, email text, name text,"
            " account int8, created timestamptz, note text, balance numeric(12, 2), active bool)"
        )
        have = conn.execute("SELECT count(*) FROM customers").fetchone()
        if have is not None and have[0] == rows:
            return
        print(f"filling {DB}.customers with {rows:,} rows ...", flush=True)
        conn.execute("TRUNCATE customers")
        conn.execute(
            "INSERT INTO customers SELECT i, 'user' || i || '@example.com',"
            " 'Customer Number ' || i, 9000000000 + i,"
            " timestamptz '2024-05-01 12:34:56+00' + i * interval '1 second',"
            " 'called on 2024-05-0' || (i %% 9 + 1) || ', wrote back to person' || i"
            " || '@mail.example.org', (i %% 100000) + (i %% 100) / 100.0, i %% 2 = 0"
            " FROM generate_series(1, %s) i",
            (rows,),
        )
        conn.execute("VACUUM ANALYZE customers")


# --- readers: each returns (rows read, seconds) --------------------------------------------------


def read_psycopg(dsn: str, *, binary: bool) -> tuple[int, float, list[Any]]:
    with psycopg.connect(dsn) as conn:
        start = time.perf_counter()
        cur = conn.cursor(binary=binary)
        cur.execute(SQL)
        n = 0
        first: list[Any] = []
        while rows := cur.fetchmany(FETCH):
            if not first:
                first = list(rows[0])
            n += len(rows)
        return n, time.perf_counter() - start, first


def read_asyncpg(params: dict[str, Any]) -> tuple[int, float, list[Any]]:
    async def run() -> tuple[int, float, list[Any]]:
        conn = await asyncpg.connect(**params)
        try:
            start = time.perf_counter()
            n = 0
            first: list[Any] = []
            async with conn.transaction():
                cur = await conn.cursor(SQL)
                while rows := await cur.fetch(FETCH):
                    if not first:
                        first = list(rows[0].values())
                    n += len(rows)
            return n, time.perf_counter() - start, first
        finally:
            await conn.close()

    return asyncio.run(run())


def read_psql(params: dict[str, Any]) -> tuple[int, float, list[Any]]:
    env = {**os.environ, "PGSSLMODE": "disable"}
    if params.get("password"):
        env["PGPASSWORD"] = str(params["password"])
    argv = ["psql", "-X", "-At", "-h", params["host"], "-p", str(params["port"])]
    argv += ["-U", params["user"], "-d", params["database"], "-c", SQL]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"psql failed: {done.stderr.decode(errors='replace')}")
    lines = done.stdout.splitlines()
    first = lines[0].decode().split("|") if lines else []
    return len(lines), elapsed, first


Reader = Callable[[dict[str, Any]], tuple[int, float, list[Any]]]


def reader_of(name: str) -> Reader:
    def dsn(p: dict[str, Any]) -> str:
        return libpq_dsn(
            host=p["host"],
            port=p["port"],
            user=p["user"],
            dbname=p["database"],
            password=p.get("password"),
            sslmode="disable",
        )

    if name == "psycopg-binary":
        return lambda p: read_psycopg(dsn(p), binary=True)
    if name == "psycopg-text":
        return lambda p: read_psycopg(dsn(p), binary=False)
    if name == "asyncpg":
        return lambda p: read_asyncpg({**p, "ssl": False})
    if name == "psql":
        return read_psql
    raise SystemExit(f"unknown reader {name!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--reader",
        default="psycopg-binary",
        choices=["psycopg-binary", "psycopg-text", "asyncpg", "psql"],
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5432)
    ap.add_argument("--user", default="postgres")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)

    ensure_table(args.host, args.port, args.user, args.rows)
    read = reader_of(args.reader)
    with tempfile.TemporaryDirectory(prefix="callgate-maskbench-") as tmp:
        work = Path(tmp)
        config = build_config(
            work,
            {
                "gateway": {"audit": {"durability": "async"}},
                "connections": [
                    {
                        "name": "bench",
                        "protocol": "postgres",
                        "upstream": {
                            "host": args.host,
                            "port": args.port,
                            "database": DB,
                            "user": args.user,
                            "tls": "disable",
                        },
                    }
                ],
                "policies": POLICIES,
            },
        )
        gw = Gateway(work, config)
        gw.start()
        try:
            through = {"host": "127.0.0.1", "port": gw.port, "database": "bench", "user": "bench"}
            legs: dict[str, dict[str, Any]] = {
                "direct": {
                    "host": args.host,
                    "port": args.port,
                    "database": DB,
                    "user": args.user,
                },
                "callgate, no mask": {**through, "password": gw.create_key("plain", ["bench"])},
                "callgate, masked": {**through, "password": gw.create_key("masked", ["masked"])},
            }
            rates: dict[str, list[float]] = {leg: [] for leg in legs}
            samples: dict[str, list[Any]] = {}
            for _ in range(args.repeat):
                for leg, params in legs.items():
                    n, seconds, first = read(params)
                    if n != args.rows:
                        raise SystemExit(f"{leg}: read {n} rows, expected {args.rows}")
                    rates[leg].append(n / seconds)
                    samples[leg] = first
        finally:
            gw.stop()

    median = {leg: statistics.median(r) for leg, r in rates.items()}
    best = {leg: max(r) for leg, r in rates.items()}
    ratio = median["callgate, no mask"] / median["direct"]
    result = {
        # the gateway runs from this same installation
        "masking_loop": "python" if mask_rows.REWRITE_RUN_C is None else "c",
        "rows": args.rows,
        "reader": args.reader,
        "repeat": args.repeat,
        "rows_per_s": {leg: round(rate) for leg, rate in median.items()},
        "best_rows_per_s": {leg: round(rate) for leg, rate in best.items()},
        "no_mask_vs_direct": round(ratio, 3),
        "masked_vs_direct": round(median["callgate, masked"] / median["direct"], 3),
        "targets": {"masked_rows_per_s": TARGET_MASKED, "no_mask_vs_direct": TARGET_RATIO},
        "ok": median["callgate, masked"] >= TARGET_MASKED and ratio >= TARGET_RATIO,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{args.rows:,} rows x 8 columns, reader {args.reader}, {args.repeat} runs per leg, "
            f"masking loop in {result['masking_loop']}"
        )
        print(f"  {'':<20} {'median':>12}   {'best':>12}")
        for leg, rate in median.items():
            print(f"  {leg:<20} {rate:>12,.0f}   {best[leg]:>12,.0f} rows/s")
        print(f"  no mask / direct     {ratio:>12.2f}   (target >= {TARGET_RATIO})")
        print(
            f"  masked (median)      {median['callgate, masked']:>12,.0f}   "
            f"(target >= {TARGET_MASKED:,} rows/s)"
        )
        print(f"  a masked row: {samples['callgate, masked']}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
