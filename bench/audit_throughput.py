"""Audit throughput: N concurrent sessions recording statements through the audit service, into
SQLite and into PostgreSQL.

Each session loops ``statement()`` (awaited, so under ``strict`` it waits for its group commit)
then ``statement_done()`` (queued), for a few seconds, with signed checkpoints on (interval and
session end). Prints events/s per backend (median of the runs) and the single-session ``strict``
``statement()`` round trip. Run::

    .venv/bin/python bench/audit_throughput.py --sessions 200 --seconds 3 --durability strict
    .venv/bin/python bench/audit_throughput.py --backend postgresql --pg-url postgresql://...

Without ``--pg-url`` the PostgreSQL leg creates (and afterwards drops) a scratch database on the
local server (127.0.0.1:5432, user postgres, trust), as ``bench/pgbench_compare.py`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from cryptography.hazmat.primitives.asymmetric import ed25519

from callgate.audit import AuditService
from callgate.model import ALLOW_ALL, Principal, SessionInfo, SqlCommand
from callgate.store import CheckpointSigner, Store, open_store

PRINCIPAL = Principal("bench", frozenset({"functions"}), "api_key", credential_id="bench")
T = TypeVar("T")
#: the issue's bar, per backend
TARGET = 20_000

COMMAND = SqlCommand(
    "SELECT id, total FROM orders WHERE customer_id = $1", (b"42",), (0,), "s1", "execute"
)
SIGNER = CheckpointSigner(ed25519.Ed25519PrivateKey.generate())


def _audit(store: Store, durability: str, sign: bool) -> AuditService:
    return AuditService(
        store,
        durability=durability,
        signer=SIGNER if sign else None,
        checkpoint_interval=1.0,
        gateway_id="bench",
    )


async def _session(audit: AuditService, deadline: float, counts: list[int]) -> None:
    info = SessionInfo(str(uuid.uuid4()), PRINCIPAL, "orders", "postgres", "127.0.0.1:5000", True)
    recorder = await audit.open_session(info)
    n = 2  # start + end
    while time.perf_counter() < deadline:
        seq = await recorder.statement(COMMAND, ALLOW_ALL)
        recorder.statement_done(
            seq, tag="SELECT 1", rows=1, error_sqlstate=None, error_message=None, duration_ms=0.2
        )
        n += 2
    await recorder.end("client closed", bytes_from_client=100, bytes_to_client=200)
    counts.append(n)


async def throughput(url: str, sessions: int, seconds: float, durability: str, sign: bool) -> float:
    store = open_store(url)
    audit = _audit(store, durability, sign)
    counts: list[int] = []
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(_session(audit, deadline, counts) for _ in range(sessions)))
    await audit.close()  # every queued event is written before we stop the clock
    return sum(counts) / (time.perf_counter() - start)


async def round_trip(url: str, n: int) -> tuple[float, float]:
    """Median and 99th percentile of one session's strict ``statement()``, in microseconds."""
    store = open_store(url)
    audit = _audit(store, "strict", True)
    info = SessionInfo(str(uuid.uuid4()), PRINCIPAL, "orders", "postgres", "127.0.0.1:5000", True)
    recorder = await audit.open_session(info)
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        await recorder.statement(COMMAND, ALLOW_ALL)
        samples.append(time.perf_counter() - t)
    await recorder.end("done", bytes_from_client=0, bytes_to_client=0)
    await audit.close()
    samples.sort()
    return statistics.median(samples) * 1e6, samples[int(len(samples) * 0.99)] * 1e6


class ScratchDatabase:
    """A fresh PostgreSQL database per run on the admin URL's server."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.names: list[str] = []

    async def create(self) -> str:
        name = f"callgate_audit_bench_{secrets.token_hex(4)}"
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self.names.append(name)
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{name}"

    async def drop_all(self) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            for name in self.names:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--durability", choices=["strict", "async"], default="strict")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument(
        "--pg-admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="server on which scratch databases are made (without --pg-url)",
    )
    parser.add_argument("--pg-url", help="use this (migrated, emptyable) database as is")
    parser.add_argument("--no-sign", action="store_true", help="without signed checkpoints")
    args = parser.parse_args()

    def run(coro: Coroutine[Any, Any, T]) -> T:
        if args.loop == "uvloop":
            import uvloop

            return uvloop.run(coro)
        return asyncio.run(coro)

    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    summary: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = ScratchDatabase(args.pg_admin_url)
        try:
            for backend in backends:
                urls: Callable[[str], str]
                if backend == "sqlite":
                    urls = lambda run_name: f"sqlite:///{Path(tmp) / (run_name + '.db')}"  # noqa: E731
                elif args.pg_url:
                    urls = lambda run_name: args.pg_url  # noqa: E731
                else:
                    urls = lambda run_name: run(scratch.create())  # noqa: E731
                rates = []
                for i in range(args.runs):
                    url = urls(f"run{i}")
                    rate = run(
                        throughput(
                            url, args.sessions, args.seconds, args.durability, not args.no_sign
                        )
                    )
                    rates.append(rate)
                    print(f"{backend} run {i + 1}: {rate:,.0f} events/s")
                summary[backend] = statistics.median(rates)
                p50, p99 = run(round_trip(urls("rt"), args.round_trips))
                print(
                    f"{backend}: {args.sessions} sessions, {args.durability}, {args.loop}: "
                    f"median {summary[backend]:,.0f} events/s; single session strict "
                    f"statement(): median {p50:.0f} us, p99 {p99:.0f} us"
                )
        finally:
            if scratch.names:
                run(scratch.drop_all())
    print()
    for backend, rate in summary.items():
        verdict = "ok" if rate >= TARGET else f"BELOW {TARGET:,}"
        print(f"{backend:<11} {rate:>10,.0f} events/s (median of {args.runs})  {verdict}")


if __name__ == "__main__":
    main()
