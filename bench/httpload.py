"""A small HTTP/1.1 load generator: N keep-alive connections, one request in flight on each.

asyncio protocols on uvloop, no HTTP library: each connection writes its request, parses the
response head just enough to find Content-Length, and sends the next request as soon as the body
is in. Latency is measured per request (send → last byte). Only for fixed-size responses with a
Content-Length (what the benchmark's endpoint returns); anything else counts as an error.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)", re.IGNORECASE)
_STATUS = re.compile(rb"HTTP/1\.[01] ([0-9]{3})")


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies: list[float] = field(repr=False)
    statuses: dict[int, int]
    #: CPU seconds each watched process used while measuring (see ``run_load(cpu=...)``)
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    def cpu_us_per_request(self, name: str) -> float | None:
        """Microseconds of CPU process ``name`` spent per request answered while measuring."""
        used = self.cpu_seconds.get(name)
        if used is None or not self.requests:
            return None
        return used / self.requests * 1e6

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        """Latency percentile in milliseconds."""
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        k = min(len(data) - 1, max(0, round(p / 100.0 * (len(data) - 1))))
        return data[k] * 1000.0


class _Conn(asyncio.Protocol):
    def __init__(self, request: bytes, run: _Run) -> None:
        self.request = request
        self.run = run
        self.buf = bytearray()
        self.need = -1
        self.sent_at = 0.0
        self.status = 0
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.buf.clear()
        self.need = -1
        self.sent_at = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[: end + 2])
            m = _LENGTH.search(head)
            s = _STATUS.match(head)
            if m is None or s is None:
                self.run.errors += 1
                assert self.transport is not None
                self.transport.close()
                return
            self.status = int(s.group(1))
            self.need = end + 4 + int(m.group(1))
        if len(self.buf) >= self.need:
            now = time.perf_counter()
            run = self.run
            if run.measuring:
                run.requests += 1
                run.latencies.append(now - self.sent_at)
                run.statuses[self.status] = run.statuses.get(self.status, 0) + 1
                if self.status >= 400:
                    run.errors += 1
            if run.stopping:
                assert self.transport is not None
                self.transport.close()
                return
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.run.stopping:
            self.run.errors += 1
        if not self.closed.done():
            self.closed.set_result(None)


@dataclass
class _Run:
    requests: int = 0
    errors: int = 0
    measuring: bool = False
    stopping: bool = False
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)


async def run_load(
    host: str,
    port: int,
    request: bytes,
    *,
    connections: int = 16,
    duration: float = 10.0,
    warmup: float = 1.0,
    cpu: Mapping[str, Callable[[], float]] | None = None,
) -> LoadResult:
    """Drive ``request`` (whole bytes, keep-alive) at ``host:port`` for ``duration`` seconds
    after ``warmup``, on ``connections`` connections. ``cpu``: name → a function returning a
    process's CPU seconds so far, read at the start and the end of the measured window."""
    loop = asyncio.get_running_loop()
    run = _Run()
    conns: list[_Conn] = []
    for _ in range(connections):
        _, proto = await loop.create_connection(lambda: _Conn(request, run), host, port)
        conns.append(proto)
    await asyncio.sleep(warmup)
    probes = dict(cpu or {})
    run.measuring = True
    start = time.perf_counter()
    cpu_start = {name: probe() for name, probe in probes.items()}
    await asyncio.sleep(duration)
    run.measuring = False
    seconds = time.perf_counter() - start
    cpu_used = {name: probe() - cpu_start[name] for name, probe in probes.items()}
    run.stopping = True
    await asyncio.wait([c.closed for c in conns], timeout=5.0)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return LoadResult(run.requests, run.errors, seconds, run.latencies, run.statuses, cpu_used)


def process_cpu(pid: int) -> Callable[[], float]:
    """A probe for ``run_load(cpu=...)``: CPU seconds (user + system, every thread) process
    ``pid`` has used, from ``/proc/<pid>/stat`` (Linux)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")

    def probe() -> float:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
        rest = stat[stat.rindex(b")") + 2 :].split()
        return (int(rest[11]) + int(rest[12])) / tick

    return probe


def build_request(path: str, host: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
