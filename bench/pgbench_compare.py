"""pgbench through nothing, through pgbouncer and through callgate, in one run, with ratios.

    .venv/bin/python -m bench.pgbench_compare [--duration 10] [--rounds 3] [--clients 1,8]
        [--mode simple] [--connect] [--targets direct,pgbouncer,callgate,callgate-async]
        [--scale 10]

Every target is started first; then each round runs every (target, clients) leg in turn, and the
table shows each leg's median over the rounds, so that drift in a shared machine's speed hits
every target alike instead of whichever ran during it.

(``make bench`` runs it with ``BENCH_ARGS``.) Results go to bench/results/latest.json. The callgate
legs run ``callgate serve`` with ``audit.durability: strict`` ("callgate") and ``async``
("callgate-async"), and with no audit at all ("callgate-noaudit": the same gateway with its audit
writes made no-ops by bench/noaudit.py, the baseline issue 7 asks for); if a leg cannot start, it
is reported with the gateway's log and the others run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.pgbouncer import PgbouncerError, running_pgbouncer
from tests.support.gateway import Gateway, GatewayError, build_config
from tests.support.net import libpq_dsn

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "latest.json"
BENCH_DB = "callgate_bench"
ALL_TARGETS = (
    "direct",
    "pgbouncer",
    "callgate",
    "callgate-async",
    "callgate-noaudit",
    "callgate-policy",
)
#: ratios between callgate legs: (numerator, denominator, what it shows)
PAIRS = (
    ("callgate-policy", "callgate", "realistic policy / allow-all (issue 4)"),
    ("callgate", "callgate-async", "strict audit / async audit (issue 7)"),
    ("callgate", "callgate-noaudit", "strict audit / audit off (issue 7)"),
)
CALLGATE_DURABILITY = {
    "callgate": "strict",
    "callgate-async": "async",
    "callgate-noaudit": "strict",  # nothing is written: bench/noaudit.py
    "callgate-policy": "strict",
}
ALLOW_ALL_POLICIES: list[dict[str, Any]] = [
    {
        "name": "bench allow all",
        "subjects": {"groups": ["bench"]},
        "connections": ["bench"],
        "rules": [{"allow": {}}],
    }
]
#: A realistic policy set (issue 4's benchmark): reads allowed on the bench tables, writes held
#: for review, schema/privilege changes and server-side file or network functions denied.
REALISTIC_POLICIES: list[dict[str, Any]] = [
    {
        "name": "functions read",
        "subjects": {"groups": ["bench"]},
        "connections": ["bench"],
        "rules": [
            {"allow": {"kinds": ["select"], "tables": ["public.pgbench_*"]}},
            {"allow": {"kinds": ["transaction", "session"]}},
            {"review": {"kinds": ["insert", "update", "delete", "merge"]}},
            {"deny": {"kinds": ["update", "delete"], "where": "absent"}},
        ],
    },
    {
        "name": "guardrails",
        "subjects": {"groups": ["bench", "ops"]},
        "connections": ["bench"],
        "rules": [
            {"deny": {"kinds": ["ddl", "privilege", "unsafe_io", "procedural"]}},
            {"deny": {"functions": ["pg_read_file", "pg_ls_dir", "dblink*", "lo_*"]}},
            {"deny": {"functions": ["pg_terminate_backend", "set_config"]}},
            {"deny": {"tables": ["pg_catalog.pg_authid", "pg_catalog.pg_shadow"]}},
        ],
    },
    {
        "name": "ops",
        "subjects": {"groups": ["ops"]},
        "connections": ["bench"],
        "rules": [{"allow": {"kinds": ["select", "utility"]}}],
    },
]
POLICIES_OF = {"callgate-policy": REALISTIC_POLICIES}
APPROVALS = [{"connections": ["bench"], "approvers": {"groups": ["dba"]}}]
PGBENCH_GRACE = (
    60  # seconds pgbench may run past --duration (connecting, finishing) before we kill it
)


@dataclass(frozen=True)
class Endpoint:
    """Where pgbench connects for one target. ``password`` goes via PGPASSWORD, never argv."""

    host: str
    port: int
    user: str
    dbname: str
    password: str | None = field(default=None, repr=False)


@dataclass
class LegResult:
    target: str
    clients: int
    ok: bool
    tps: float | None = None
    latency_ms: float | None = None
    transactions: int | None = None
    failed: int | None = None
    error: str | None = None
    #: TPS of each round (the median of which is ``tps``)
    rounds: list[float] = field(default_factory=list)


class LegFailed(RuntimeError):
    pass


# --- preparing the database -----------------------------------------------------------------------


def ensure_bench_db(host: str, port: int, user: str, scale: int) -> str:
    """Create and ``pgbench -i -s SCALE`` the bench database unless it is already at that scale."""
    admin = libpq_dsn(host=host, port=port, user=user, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (BENCH_DB,)
        ).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB)))
    with psycopg.connect(libpq_dsn(host=host, port=port, user=user, dbname=BENCH_DB)) as conn:
        have = conn.execute("SELECT to_regclass('pgbench_branches') IS NOT NULL").fetchone()
        branches = None
        if have and have[0]:
            row = conn.execute("SELECT count(*) FROM pgbench_branches").fetchone()
            branches = row[0] if row else None
    if branches == scale:
        return f"{BENCH_DB} already initialised at scale {scale}"
    print(f"initialising {BENCH_DB} at scale {scale} (pgbench -i) ...", flush=True)
    done = subprocess.run(
        [
            "pgbench",
            "-i",
            "-q",
            "-s",
            str(scale),
            "-h",
            host,
            "-p",
            str(port),
            "-U",
            user,
            BENCH_DB,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"pgbench -i failed ({done.returncode}):\n{done.stderr}")
    return f"{BENCH_DB} initialised at scale {scale}"


# --- running pgbench ------------------------------------------------------------------------------

_TPS = re.compile(r"^tps = ([0-9.]+)", re.M)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)


def parse_pgbench(output: str) -> tuple[float, float, int, int]:
    """(tps, mean latency in ms, transactions, failed) from pgbench's summary."""
    found = [r.search(output) for r in (_TPS, _LATENCY, _PROCESSED)]
    if not all(found):
        raise LegFailed(f"could not parse pgbench output:\n{output[-2000:]}")
    tps, latency, processed = (m.group(1) for m in found if m)
    failed = _FAILED.search(output)
    return float(tps), float(latency), int(processed), int(failed.group(1)) if failed else 0


def run_pgbench(
    target: str, endpoint: Endpoint, clients: int, args: argparse.Namespace
) -> LegResult:
    cmd = [
        "pgbench",
        "-n",  # no VACUUM first: the select-only script only reads; a proxy need not allow it
        "-S",
        "-M", args.mode,
        "-T", str(args.duration),
        "-c", str(clients),
        "-j", str(clients),
        "-h", endpoint.host,
        "-p", str(endpoint.port),
        "-U", endpoint.user,
    ]  # fmt: skip
    if args.connect:
        cmd.append("-C")
    cmd.append(endpoint.dbname)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGSSLMODE"] = args.sslmode
    env["PGCONNECT_TIMEOUT"] = "10"
    if endpoint.password is not None:
        env["PGPASSWORD"] = endpoint.password
    print(f"  {target:<15} clients={clients:<3} {' '.join(cmd)}", flush=True)
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=env,
            timeout=args.duration + PGBENCH_GRACE,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return LegResult(target, clients, ok=False, error="pgbench did not finish in time")
    output = done.stdout + done.stderr
    if done.returncode != 0:
        return LegResult(
            target, clients, ok=False, error=f"pgbench exit {done.returncode}: {output[-1500:]}"
        )
    try:
        tps, latency, processed, failed = parse_pgbench(output)
    except LegFailed as e:
        return LegResult(target, clients, ok=False, error=str(e))
    result = LegResult(target, clients, True, tps, latency, processed, failed)
    if failed or processed == 0:
        result.ok = False
        result.error = f"{failed} failed transactions, {processed} processed"
    return result


# --- targets --------------------------------------------------------------------------------------


def noaudit_exe(workdir: Path) -> Path:
    """A ``callgate`` executable for the audit-off leg: bench/noaudit.py in this interpreter."""
    exe = workdir / "callgate-noaudit"
    exe.write_text(
        "#!/bin/sh\n"
        f'PYTHONPATH="{REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}" '
        f'exec "{sys.executable}" -m bench.noaudit "$@"\n'
    )
    exe.chmod(0o755)
    return exe


@contextmanager
def callgate_endpoint(
    durability: str,
    upstream: Endpoint,
    workdir: Path,
    policies: list[dict[str, Any]] | None = None,
    *,
    audit_off: bool = False,
) -> Iterator[tuple[Endpoint, Gateway]]:
    """``audit_off``: callgate through bench/noaudit.py (no audit writes; issue 7 baseline)."""
    config = build_config(
        workdir,
        {
            "gateway": {"audit": {"durability": durability}},
            "connections": [
                {
                    "name": "bench",
                    "protocol": "postgres",
                    "upstream": {
                        "host": upstream.host,
                        "port": upstream.port,
                        "database": upstream.dbname,
                        "user": upstream.user,
                        "tls": "disable",
                    },
                }
            ],
            "policies": policies or ALLOW_ALL_POLICIES,
            "approvals": APPROVALS,
        },
    )
    gw = Gateway(workdir, config, exe=noaudit_exe(workdir) if audit_off else None)
    try:
        gw.start()
        key = gw.create_key("bench", ["bench"])
        yield Endpoint(gw.host, gw.port, "bench", "bench", password=key), gw
    finally:
        gw.stop()


def start_target(
    stack: ExitStack, target: str, upstream: Endpoint
) -> tuple[Endpoint, Gateway | None]:
    """Start what ``target`` needs (until ``stack`` closes); raises GatewayError/PgbouncerError."""
    if target == "direct":
        return upstream, None
    if target == "pgbouncer":
        bouncer = stack.enter_context(running_pgbouncer(upstream.dbname, upstream.user))
        return Endpoint(bouncer.host, bouncer.port, upstream.user, upstream.dbname), None
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cg-bench-")))
    return stack.enter_context(
        callgate_endpoint(
            CALLGATE_DURABILITY[target],
            upstream,
            workdir,
            POLICIES_OF.get(target),
            audit_off=target == "callgate-noaudit",
        )
    )


def median_leg(legs: list[LegResult]) -> LegResult:
    """One leg from its rounds: the median TPS and latency; failed if any round failed."""
    bad = [leg for leg in legs if not leg.ok]
    if bad:
        return bad[0]
    return LegResult(
        legs[0].target,
        legs[0].clients,
        ok=True,
        tps=statistics.median(leg.tps or 0.0 for leg in legs),
        latency_ms=statistics.median(leg.latency_ms or 0.0 for leg in legs),
        transactions=sum(leg.transactions or 0 for leg in legs),
        failed=sum(leg.failed or 0 for leg in legs),
        rounds=[leg.tps or 0.0 for leg in legs],
    )


def run_all(upstream: Endpoint, args: argparse.Namespace) -> list[LegResult]:
    """Start every target, then run ``--rounds`` rounds of every (target, clients) leg in turn,
    so that a burst of load on a shared machine hits every target alike; report medians."""
    runs: dict[tuple[str, int], list[LegResult]] = {}
    failed: list[LegResult] = []
    with ExitStack() as stack:
        endpoints: dict[str, tuple[Endpoint, Gateway | None]] = {}
        for target in args.target_list:
            try:
                endpoints[target] = start_target(stack, target, upstream)
            except (GatewayError, PgbouncerError) as e:
                print(f"  {target}: FAILED\n{_indent(str(e))}", flush=True)
                failed += [LegResult(target, c, ok=False, error=str(e)) for c in args.client_counts]
        for n in range(args.rounds):
            print(f"round {n + 1} of {args.rounds}:", flush=True)
            for target, (endpoint, gw) in endpoints.items():
                for c in args.client_counts:
                    r = run_pgbench(target, endpoint, c, args)
                    runs.setdefault((target, c), []).append(r)
                    if not r.ok:
                        print(f"  {target} clients={c}: FAILED\n{_indent(r.error or '')}")
                        if gw is not None:
                            print(_indent(gw.log_tail(3000)))
    return failed + [median_leg(legs) for legs in runs.values()]


# --- report ---------------------------------------------------------------------------------------


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _ratio(a: LegResult | None, b: LegResult | None) -> float | None:
    if a is None or b is None or not (a.ok and b.ok) or not a.tps or not b.tps:
        return None
    return a.tps / b.tps


def ratios(results: list[LegResult], clients: Sequence[int]) -> list[dict[str, Any]]:
    by = {(r.target, r.clients): r for r in results}
    out = []
    for c in clients:
        for target in CALLGATE_DURABILITY:
            if (target, c) not in by:
                continue
            out.append(
                {
                    "target": target,
                    "clients": c,
                    "tps_vs_pgbouncer": _ratio(by[(target, c)], by.get(("pgbouncer", c))),
                    "tps_vs_direct": _ratio(by[(target, c)], by.get(("direct", c))),
                }
            )
        for num, den, label in PAIRS:
            if (num, c) in by and (den, c) in by:
                out.append(
                    {
                        "target": f"{num}/{den}",
                        "clients": c,
                        "ratio": _ratio(by[(num, c)], by[(den, c)]),
                        "shows": label,
                    }
                )
        bouncer = by.get(("pgbouncer", c))
        if bouncer is not None:
            out.append(
                {
                    "target": "pgbouncer",
                    "clients": c,
                    "tps_vs_pgbouncer": None,
                    "tps_vs_direct": _ratio(bouncer, by.get(("direct", c))),
                }
            )
    return out


def print_table(results: list[LegResult], ratio_rows: list[dict[str, Any]]) -> None:
    rr = {(r["target"], r["clients"]): r for r in ratio_rows}

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    print()
    header = (
        f"{'target':<15} {'clients':>7} {'tps':>11} {'lat ms':>8} {'failed':>7}"
        f" {'vs pgbouncer':>13} {'vs direct':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in sorted(results, key=lambda r: (r.clients, ALL_TARGETS.index(r.target))):
        ratio = rr.get((r.target, r.clients), {})
        if r.ok:
            print(
                f"{r.target:<15} {r.clients:>7} {fmt(r.tps, '.1f'):>11}"
                f" {fmt(r.latency_ms, '.3f'):>8} {r.failed or 0:>7}"
                f" {fmt(ratio.get('tps_vs_pgbouncer'), '.2f'):>13}"
                f" {fmt(ratio.get('tps_vs_direct'), '.2f'):>10}"
            )
        else:
            print(
                f"{r.target:<15} {r.clients:>7} {'FAILED':>11}  {(r.error or '').splitlines()[0]}"
            )
    print()
    for row in ratio_rows:
        if "ratio" in row:
            print(
                f"{row['target']:<32} clients={row['clients']:<3}"
                f" {fmt(row['ratio'], '.2f'):>6}  ({row['shows']})"
            )
    print()


def _version(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).exists():
        return None
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).splitlines()[0] if done.returncode == 0 else None


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=int, default=10, help="seconds per leg (pgbench -T)")
    p.add_argument(
        "--rounds", type=int, default=3, help="rounds of every leg in turn; medians reported"
    )
    p.add_argument("--clients", default="1,8", help="comma-separated client counts (-c and -j)")
    p.add_argument("--mode", default="simple", choices=["simple", "extended", "prepared"])
    p.add_argument("--connect", action="store_true", help="new connection per transaction (-C)")
    p.add_argument(
        "--targets", default=",".join(ALL_TARGETS), help="subset of " + ",".join(ALL_TARGETS)
    )
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale of callgate_bench")
    p.add_argument("--pg-host", default="127.0.0.1")
    p.add_argument("--pg-port", type=int, default=5432)
    p.add_argument("--pg-user", default="postgres", help="a user the server trusts on loopback")
    p.add_argument("--sslmode", default="disable", help="PGSSLMODE for every leg (same for all)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = p.parse_args(argv)
    try:
        args.client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        p.error("--clients takes integers, e.g. 1,8")
    args.target_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.target_list) - set(ALL_TARGETS)
    if unknown or not args.target_list or not args.client_counts:
        p.error(f"--targets: choose from {', '.join(ALL_TARGETS)}; --clients: at least one")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("pgbench") is None:
        print("pgbench not found (apt: postgresql-15 / postgresql-client)", file=sys.stderr)
        return 2
    upstream = Endpoint(args.pg_host, args.pg_port, args.pg_user, BENCH_DB)
    print(ensure_bench_db(args.pg_host, args.pg_port, args.pg_user, args.scale), flush=True)

    started = dt.datetime.now(dt.UTC)
    results = run_all(upstream, args)

    ratio_rows = ratios(results, args.client_counts)
    print_table(results, ratio_rows)
    report = {
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "clients": args.client_counts,
            "mode": args.mode,
            "connect_per_transaction": args.connect,
            "script": "select-only (-S)",
            "scale": args.scale,
            "sslmode": args.sslmode,
            "upstream": f"{args.pg_host}:{args.pg_port}/{BENCH_DB}",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "pgbench": _version(["pgbench", "--version"]),
            "pgbouncer": _version(["pgbouncer", "--version"])
            or _version(["/usr/sbin/pgbouncer", "--version"]),
        },
        "results": [asdict(r) for r in results],
        "ratios": ratio_rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.output}")
    # A failed callgate leg is reported, not fatal (the gateway may not be built yet); a failed
    # direct or pgbouncer leg means the harness or the machine is broken.
    broken = [r for r in results if not r.ok and r.target in ("direct", "pgbouncer")]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
