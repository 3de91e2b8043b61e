"""A 1 GiB upload and a 1 GiB download stream through the HTTP engine while the gateway's
memory stays flat (resident set size of the ``callgate serve`` process, sampled throughout)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engines.http.conftest import Through
from tests.engines.http.upstream_app import BLOCK, PATTERN

pytestmark = pytest.mark.integration

GIB = 1 << 30
#: Growth of the gateway's RSS allowed while 1 GiB goes through. Streaming holds a few socket
#: buffers (~1 MiB); anything near the body's size would mean it was buffered.
MAX_GROWTH = 48 << 20


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def blocks(total: int) -> Iterator[bytes]:
    left = total
    while left > 0:
        n = min(left, BLOCK)
        yield PATTERN[:n]
        left -= n


def expected_sha256(total: int) -> str:
    digest = hashlib.sha256()
    for block in blocks(total):
        digest.update(block)
    return digest.hexdigest()


@pytest.fixture
def gateway_pid(through: Through) -> int:
    assert through.gw.proc is not None
    with through.client() as c:  # warm up: imports, first session, pools
        assert c.get("/api/json/plain").status_code == 200
        assert c.post("/api/upload", content=b"x" * 100_000).status_code == 200
    return through.gw.proc.pid


def test_1gib_upload_streams_with_flat_memory(through: Through, gateway_pid: int) -> None:
    baseline = rss(gateway_pid)
    with RssSampler(gateway_pid) as sampler, through.client(timeout=300) as c:
        r = c.post(
            "/api/upload",
            content=blocks(GIB),
            headers={"Content-Length": str(GIB), "Content-Type": "application/octet-stream"},
        )
    assert r.status_code == 200, r.text
    assert r.json() == {"bytes": GIB, "sha256": expected_sha256(GIB)}
    growth = sampler.peak - baseline
    print(f"\nupload: gateway RSS {baseline >> 20} MiB, peak {sampler.peak >> 20} MiB")
    assert growth < MAX_GROWTH, f"gateway RSS grew by {growth >> 20} MiB during a 1 GiB upload"


def test_1gib_download_streams_with_flat_memory(through: Through, gateway_pid: int) -> None:
    baseline = rss(gateway_pid)
    digest = hashlib.sha256()
    received = 0
    with (
        RssSampler(gateway_pid) as sampler,
        through.client(timeout=300) as c,
        c.stream("GET", "/api/download", params={"size": str(GIB)}) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-length"] == str(GIB)
        for piece in r.iter_raw():
            digest.update(piece)
            received += len(piece)
    assert received == GIB
    assert digest.hexdigest() == expected_sha256(GIB)
    growth = sampler.peak - baseline
    print(f"\ndownload: gateway RSS {baseline >> 20} MiB, peak {sampler.peak >> 20} MiB")
    assert growth < MAX_GROWTH, f"gateway RSS grew by {growth >> 20} MiB during a 1 GiB download"
