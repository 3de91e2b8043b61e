"""Connection setup cost: ``pgbench -C -S`` (a new connection for every transaction) through
pgbouncer and through callgate with a JWT credential, in one run, with the ratio.

    .venv/bin/python -m bench.connect_bench [--duration 15] [--clients 4]
        [--targets direct,pgbouncer,callgate-jwt] [--scale 10]

Identity is where connection setup costs: each connection to callgate presents a JWT from a real
OpenID provider (tests/oidc_provider, started here; needs Node 20+ and npm) as its password. The
same token is used by every connection, so after the first one the gateway's verified-token cache
answers (a SHA-256 and a dictionary lookup), as it does for a function that reuses its token.
Target: callgate-jwt at least 0.5x pgbouncer's connections per second.

Legs (``--targets``): ``direct`` (the server), ``pgbouncer`` (session pooling, trust),
``callgate-jwt`` (the JWT), ``callgate-key`` (a ``cgk_`` API key, for comparison). Results go to
bench/results/connect-latest.json.

Reading the figures: pgbouncer hands each new client one of its already-open server connections;
callgate does the same (session pooling, reset with ``DISCARD ALL``, docs/postgres.md), so neither
pays PostgreSQL's fork and authentication per client. ``direct`` does, every time.
``callgate-jwt`` close to ``callgate-key`` means identity is not what costs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.pgbench_compare import (
    BENCH_DB,
    Endpoint,
    LegResult,
    ensure_bench_db,
    run_pgbench,
)
from bench.pgbouncer import PgbouncerError, running_pgbouncer
from tests.identity_oidc.provider import Client, OIDCProvider, ProviderUnavailable
from tests.support.gateway import Gateway, GatewayError, build_config

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "connect-latest.json"
ALL_TARGETS = ("direct", "pgbouncer", "callgate-jwt", "callgate-key")
#: direct is in by default: pgbouncer reuses its server connections, callgate opens one upstream
#: connection per caller connection, so direct is the floor callgate's figure is bounded by
DEFAULT_TARGETS = ("direct", "pgbouncer", "callgate-jwt")
TARGET_RATIO = 0.5
#: the provider's access token lifetime (s): longer than any run, so no token expires mid-leg
TOKEN_TTL = 3600
BENCH_CLIENT = Client("bench-fn", {"groups": ["bench"]})


@contextmanager
def oidc_provider() -> Iterator[OIDCProvider]:
    workdir = Path(tempfile.mkdtemp(prefix="cg-bench-oidc-"))
    provider = OIDCProvider(workdir, [BENCH_CLIENT], access_token_ttl=TOKEN_TTL)
    try:
        provider.start()
        yield provider
    finally:
        provider.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def callgate_endpoint(
    upstream: Endpoint, workdir: Path, provider: OIDCProvider | None
) -> Iterator[tuple[Endpoint, Gateway]]:
    """``callgate serve`` in front of the bench database; the credential is the provider's JWT
    when ``provider`` is given, else an API key."""
    overrides: dict[str, Any] = {
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
        "policies": [
            {
                "name": "bench allow all",
                "subjects": {"groups": ["bench"]},
                "connections": ["bench"],
                "rules": [{"allow": {}}],
            }
        ],
    }
    if provider is not None:
        overrides["identity"] = {
            "oidc": [{"name": "bench-idp", "issuer": provider.issuer, "audience": "callgate"}]
        }
    gw = Gateway(workdir, build_config(workdir, overrides))
    try:
        gw.start()
        if provider is not None:
            credential = provider.token(BENCH_CLIENT.client_id)
        else:
            credential = gw.create_key("bench", ["bench"])
        yield Endpoint(gw.host, gw.port, "bench", "bench", password=credential), gw
    finally:
        gw.stop()


def run_leg(target: str, upstream: Endpoint, args: argparse.Namespace) -> LegResult:
    with ExitStack() as stack:
        gw: Gateway | None = None
        try:
            if target == "direct":
                endpoint = upstream
            elif target == "pgbouncer":
                bouncer = stack.enter_context(running_pgbouncer(upstream.dbname, upstream.user))
                endpoint = Endpoint(bouncer.host, bouncer.port, upstream.user, upstream.dbname)
            else:
                provider = None
                if target == "callgate-jwt":
                    provider = stack.enter_context(oidc_provider())
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cg-bench-")))
                endpoint, gw = stack.enter_context(callgate_endpoint(upstream, workdir, provider))
        except (GatewayError, PgbouncerError, ProviderUnavailable) as exc:
            print(f"  {target}: FAILED to start\n{_indent(str(exc))}", flush=True)
            return LegResult(target, args.clients, ok=False, error=str(exc))
        result = run_pgbench(target, endpoint, args.clients, args)
        if not result.ok:
            print(f"  {target}: FAILED\n{_indent(result.error or '')}", flush=True)
            if gw is not None:
                print(_indent(gw.log_tail(3000)), flush=True)
        return result


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def ratio(results: dict[str, LegResult], target: str, base: str = "pgbouncer") -> float | None:
    a, b = results.get(target), results.get(base)
    if a is None or b is None or not (a.ok and b.ok) or not a.tps or not b.tps:
        return None
    return a.tps / b.tps


def print_table(results: dict[str, LegResult]) -> None:
    print()
    header = (
        f"{'target':<14} {'clients':>7} {'connections/s':>14} {'lat ms':>8}"
        f" {'vs pgbouncer':>13} {'vs direct':>10}"
    )
    print(header)
    print("-" * len(header))
    for target, r in results.items():
        if not r.ok:
            first = (r.error or "").splitlines()[0] if r.error else ""
            print(f"{target:<14} {r.clients:>7} {'FAILED':>14}  {first}")
            continue
        vs, vd = ratio(results, target), ratio(results, target, "direct")
        print(
            f"{target:<14} {r.clients:>7} {r.tps or 0:>14.1f} {r.latency_ms or 0:>8.3f}"
            f" {'-' if vs is None else format(vs, '.2f'):>13}"
            f" {'-' if vd is None else format(vd, '.2f'):>10}"
        )
    jwt = ratio(results, "callgate-jwt")
    if jwt is not None:
        verdict = "meets" if jwt >= TARGET_RATIO else "MISSES"
        print(f"\ncallgate-jwt / pgbouncer = {jwt:.2f} ({verdict} the {TARGET_RATIO}x target)")
    print()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=int, default=15, help="seconds per leg (pgbench -T)")
    p.add_argument("--clients", type=int, default=4, help="pgbench -c and -j")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help=", ".join(ALL_TARGETS))
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale of callgate_bench")
    p.add_argument("--pg-host", default="127.0.0.1")
    p.add_argument("--pg-port", type=int, default=5432)
    p.add_argument("--pg-user", default="postgres", help="a user the server trusts on loopback")
    p.add_argument("--sslmode", default="disable", help="PGSSLMODE for every leg (same for all)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = p.parse_args(argv)
    args.target_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not args.target_list or set(args.target_list) - set(ALL_TARGETS):
        p.error(f"--targets: choose from {', '.join(ALL_TARGETS)}")
    if args.clients < 1 or args.duration < 1:
        p.error("--clients and --duration must be at least 1")
    # what run_pgbench reads: simple protocol, a new connection per transaction
    args.mode = "simple"
    args.connect = True
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("pgbench") is None:
        print("pgbench not found (apt: postgresql-15 / postgresql-client)", file=sys.stderr)
        return 2
    upstream = Endpoint(args.pg_host, args.pg_port, args.pg_user, BENCH_DB)
    print(ensure_bench_db(args.pg_host, args.pg_port, args.pg_user, args.scale), flush=True)
    started = dt.datetime.now(dt.UTC)
    results: dict[str, LegResult] = {}
    for target in args.target_list:
        print(f"{target}:", flush=True)
        results[target] = run_leg(target, upstream, args)
    print_table(results)
    report = {
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": {
            "duration_s": args.duration,
            "clients": args.clients,
            "script": "select-only (-S), a new connection per transaction (-C)",
            "scale": args.scale,
            "sslmode": args.sslmode,
            "upstream": f"{args.pg_host}:{args.pg_port}/{BENCH_DB}",
        },
        "machine": {"cpus": os.cpu_count()},
        "results": [asdict(r) for r in results.values()],
        "connections_per_s": {t: r.tps for t, r in results.items() if r.ok},
        "ratios_vs_pgbouncer": {t: ratio(results, t) for t in results if t != "pgbouncer"},
        "ratios_vs_direct": {t: ratio(results, t, "direct") for t in results if t != "direct"},
        "target_ratio": TARGET_RATIO,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.output}")
    broken = [r for r in results.values() if not r.ok and r.target in ("direct", "pgbouncer")]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
