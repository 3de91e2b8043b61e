"""Audit throughput: N concurrent sessions recording statements through the audit service.

Each session loops ``statement()`` (awaited, so under ``strict`` it waits for its group commit)
then ``statement_done()`` (queued), for a few seconds. Prints events/s (median of the runs) and the
single-session ``statement()`` round trip. Run::

    .venv/bin/python bench/audit_throughput.py --sessions 200 --seconds 3 --durability strict
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from callgate.audit import AuditService
from callgate.model import ALLOW_ALL, Principal, SessionInfo, SqlCommand
from callgate.store import SqliteStore

PRINCIPAL = Principal("bench", frozenset({"functions"}), "api_key", credential_id="bench")
T = TypeVar("T")

COMMAND = SqlCommand(
    "SELECT id, total FROM orders WHERE customer_id = $1", (b"42",), (0,), "s1", "execute"
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


async def throughput(path: Path, sessions: int, seconds: float, durability: str) -> float:
    store = SqliteStore(path)
    audit = AuditService(store, durability=durability)
    counts: list[int] = []
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(_session(audit, deadline, counts) for _ in range(sessions)))
    await audit.close()  # every queued event is written before we stop the clock
    return sum(counts) / (time.perf_counter() - start)


async def round_trip(path: Path, n: int) -> tuple[float, float]:
    """Median and 99th percentile of one session's strict ``statement()``, in microseconds."""
    store = SqliteStore(path)
    audit = AuditService(store, durability="strict")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--durability", choices=["strict", "async"], default="strict")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--round-trips", type=int, default=5000)
    args = parser.parse_args()

    def run(coro: Coroutine[Any, Any, T]) -> T:
        if args.loop == "uvloop":
            import uvloop

            return uvloop.run(coro)
        return asyncio.run(coro)

    with tempfile.TemporaryDirectory() as tmp:
        rates = []
        for i in range(args.runs):
            path = Path(tmp) / f"run{i}.db"
            rate = run(throughput(path, args.sessions, args.seconds, args.durability))
            rates.append(rate)
            print(f"run {i + 1}: {rate:,.0f} events/s")
        print(
            f"{args.sessions} sessions, {args.durability}, {args.loop}: "
            f"median {statistics.median(rates):,.0f} events/s"
        )
        p50, p99 = run(round_trip(Path(tmp) / "rt.db", args.round_trips))
        print(f"single session strict statement(): median {p50:.0f} us, p99 {p99:.0f} us")


if __name__ == "__main__":
    main()
