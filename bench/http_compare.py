"""Small GET requests directly to a local API and through callgate, in one run, with ratios.

    .venv/bin/python -m bench.http_compare [--duration 10] [--connections 16]
        [--targets direct,callgate-jwt,callgate-key] [--path /json/plain]

The API is the HTTP engine tests' local upstream (uvicorn + starlette, ``tests/engines/http/
upstream_app.py``) in a subprocess. The callgate legs run ``callgate serve`` with an http listener
(plaintext, loopback), a connection ``api`` that injects a header from an ``env:`` secret, an
allow-all policy and ``audit.durability: strict``:

- ``callgate-jwt``: the caller sends an OIDC JWT (RS256) from a local issuer;
- ``callgate-key``: the caller sends a callgate API key.

The load comes from ``bench/httpload.py`` (asyncio protocols on uvloop, N keep-alive
connections, one request in flight on each). Each leg also reports the CPU time the API and
callgate processes used per request while measuring (``/proc/<pid>/stat``): on a shared machine
that figure is steadier than requests/s. Results go to bench/results/http_latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import platform
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.httpload import LoadResult, build_request, process_cpu, run_load
from tests.engines.http.conftest import start_upstream, stop_upstream
from tests.support.gateway import Gateway, GatewayError, build_config

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "http_latest.json"
ALL_TARGETS = ("direct", "callgate-jwt", "callgate-key")
SECRET = "bench-upstream-secret-7d1e2f3a4b5c"


def gateway_config(
    workdir: Path, upstream_url: str, issuer: str | None, durability: str = "strict"
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "gateway": {"audit": {"durability": durability}},
        "listeners": [{"protocol": "http", "allow_plaintext": True}],
        "connections": [
            {
                "name": "api",
                "protocol": "http",
                "upstream": {"url": upstream_url},
                "inject": {"headers": {"X-Api-Key": "env:CALLGATE_BENCH_SECRET"}},
            }
        ],
        "policies": [
            {
                "name": "bench allow all",
                "subjects": {"groups": ["bench"]},
                "connections": ["api"],
                "rules": [{"allow": {}}],
            }
        ],
    }
    if issuer is not None:
        cfg["identity"] = {
            "oidc": [
                {
                    "name": "bench",
                    "issuer": issuer,
                    "audience": "callgate",
                    "groups_claim": "groups",
                }
            ]
        }
    return build_config(workdir, cfg)


def row(name: str, r: LoadResult) -> dict[str, Any]:
    return {
        "target": name,
        "requests": r.requests,
        "errors": r.errors,
        "seconds": round(r.seconds, 3),
        "rps": round(r.rps, 1),
        "p50_ms": round(r.percentile(50), 3),
        "p99_ms": round(r.percentile(99), 3),
        "statuses": {str(k): v for k, v in sorted(r.statuses.items())},
        "cpu_us_per_request": {
            name: round(us, 1)
            for name in sorted(r.cpu_seconds)
            if (us := r.cpu_us_per_request(name)) is not None
        },
    }


def leg(
    name: str,
    port: int,
    path: str,
    headers: dict[str, str],
    args: argparse.Namespace,
    pids: dict[str, int],
) -> dict[str, Any]:
    request = build_request(path, f"127.0.0.1:{port}", headers)
    result = asyncio.run(
        run_load(
            "127.0.0.1",
            port,
            request,
            connections=args.connections,
            duration=args.duration,
            warmup=args.warmup,
            cpu={process: process_cpu(pid) for process, pid in pids.items()},
        )
    )
    out = row(name, result)
    cpu = "   ".join(f"{p} {us:.0f} µs" for p, us in out["cpu_us_per_request"].items())
    print(
        f"  {name:<14} {out['rps']:>10.1f} req/s   p50 {out['p50_ms']:>7.2f} ms   "
        f"p99 {out['p99_ms']:>7.2f} ms   errors {out['errors']}   CPU/request: {cpu}",
        flush=True,
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per leg")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--path", default="/json/plain", help="API path requested (small JSON)")
    p.add_argument("--targets", default=",".join(ALL_TARGETS))
    p.add_argument(
        "--durability",
        choices=("strict", "async"),
        default="strict",
        help="gateway.audit.durability of the callgate legs",
    )
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = p.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    unknown = sorted(set(targets) - set(ALL_TARGETS))
    if unknown:
        p.error(f"unknown targets: {', '.join(unknown)}")
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency
        pass

    results: list[dict[str, Any]] = []
    failed = False
    upstream = start_upstream()
    issuer = None
    try:
        print(
            f"HTTP GET {args.path}: {args.connections} keep-alive connections, "
            f"{args.duration:g}s per leg, audit durability {args.durability} on callgate legs",
            flush=True,
        )
        if "direct" in targets:
            pids = {"api": upstream.proc.pid}
            results.append(leg("direct", upstream.port, args.path, {}, args, pids))
        callgate_legs = [t for t in targets if t.startswith("callgate")]
        if callgate_legs:
            from tests.identity_oidc.issuer import LocalIssuer

            issuer = LocalIssuer().start()
            with tempfile.TemporaryDirectory(prefix="callgate-http-bench-") as tmp:
                workdir = Path(tmp)
                cfg = gateway_config(workdir, upstream.url, issuer.issuer, args.durability)
                gw = Gateway(workdir, cfg, env={"CALLGATE_BENCH_SECRET": SECRET})
                try:
                    gw.start()
                    port = gw.ports["http"]
                    assert gw.proc is not None
                    pids = {"api": upstream.proc.pid, "callgate": gw.proc.pid}
                    for target in callgate_legs:
                        if target == "callgate-jwt":
                            expires = int(dt.datetime.now().timestamp()) + 3600
                            token = issuer.token(sub="bench-fn", groups=["bench"], exp=expires)
                        else:
                            token = gw.create_key("bench-fn", ["bench"])
                        results.append(
                            leg(
                                target,
                                port,
                                f"/api{args.path}",
                                {"Authorization": f"Bearer {token}"},
                                args,
                                pids,
                            )
                        )
                except GatewayError as exc:
                    failed = True
                    print(f"callgate legs could not run: {exc}", file=sys.stderr)
                finally:
                    gw.stop()
    finally:
        if issuer is not None:
            issuer.stop()
        stop_upstream(upstream)

    direct = next((r for r in results if r["target"] == "direct"), None)
    if direct is not None and direct["rps"]:
        print("\nratios (requests/s through callgate / direct):")
        for r in results:
            if r["target"] != "direct":
                r["ratio_vs_direct"] = round(r["rps"] / direct["rps"], 3)
                print(
                    f"  {r['target']:<14} {r['ratio_vs_direct']:.2f}   "
                    f"(p99 {r['p99_ms']:.2f} ms vs {direct['p99_ms']:.2f} ms direct)"
                )
    report = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "path": args.path,
        "connections": args.connections,
        "duration": args.duration,
        "durability": args.durability,
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.output}")
    if any(r["errors"] for r in results):
        print("some requests failed (see errors above)", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
