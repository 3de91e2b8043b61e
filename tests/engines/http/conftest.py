"""Fixtures for end-to-end tests of the HTTP engine: a real gateway in front of a real API.

- ``upstream_api``: the local API of ``upstream_app.py`` (uvicorn in a subprocess, one per test
  session); its request log is cleared before each test that uses ``through``.
- ``through``: a gateway with an http listener and a connection ``api`` to it (header injection
  of :data:`API_SECRET`), an allow-all policy for group ``apps`` and an API key in that group.
- ``make_through(extra, **kw)``: the same with config merged over the defaults.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import GatewayFactory, unavailable
from tests.support.gateway import REPO_ROOT, Gateway, GatewayError, build_config
from tests.support.net import free_port, wait_port
from tests.support.tls import CertPaths

#: what callgate injects; a test fails if a caller ever sees it
API_SECRET = "upstream-secret-4f1c9a7be2d85306"
ENV = {"CALLGATE_TEST_API_SECRET": API_SECRET}


@dataclass
class Upstream:
    url: str
    port: int
    proc: subprocess.Popen[bytes]

    def log(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/_log", timeout=10) as resp:
            data: list[dict[str, Any]] = json.loads(resp.read())
            return data

    def clear(self) -> None:
        req = urllib.request.Request(f"{self.url}/_log", method="DELETE")
        with urllib.request.urlopen(req, timeout=10):
            pass


def start_upstream(port: int | None = None, tls: tuple[Path, Path] | None = None) -> Upstream:
    port = port or free_port()
    args = [sys.executable, "-m", "tests.engines.http.upstream_app", str(port)]
    if tls is not None:
        args += ["--tls", str(tls[0]), str(tls[1])]
    proc = subprocess.Popen(
        args,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    if not wait_port("127.0.0.1", port, 20.0, alive=lambda: proc.poll() is None):
        proc.kill()
        raise RuntimeError("the test API did not start")
    scheme = "https" if tls else "http"
    return Upstream(f"{scheme}://127.0.0.1:{port}", port, proc)


def stop_upstream(up: Upstream) -> None:
    up.proc.terminate()
    try:
        up.proc.wait(10)
    except subprocess.TimeoutExpired:
        up.proc.kill()
        up.proc.wait(5)


@pytest.fixture(scope="session")
def curl() -> str:
    """The curl executable (skipped locally without it, a failure in CI)."""
    path = shutil.which("curl")
    if path is None:
        unavailable("curl is not installed (apt: curl)")
    return path


@pytest.fixture(scope="session")
def upstream_api() -> Iterator[Upstream]:
    up = start_upstream()
    try:
        yield up
    finally:
        stop_upstream(up)


@dataclass
class Through:
    """A gateway with an http listener in front of ``upstream``, and a caller's API key."""

    gw: Gateway
    key: str
    upstream: Upstream

    @property
    def port(self) -> int:
        return self.gw.ports["http"]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key}"}
        headers.update(kw.pop("headers", {}))
        kw.setdefault("timeout", 30)
        return httpx.Client(base_url=self.base, headers=headers, **kw)

    def sessions(self) -> list[dict[str, Any]]:
        done = self.gw.cli("sessions", "list", "--json")
        assert done.returncode == 0, done.stderr
        data: list[dict[str, Any]] = json.loads(done.stdout)
        return data

    def events(self, session_id: str) -> list[dict[str, Any]]:
        done = self.gw.cli("sessions", "show", session_id, "--json")
        assert done.returncode == 0, done.stderr
        data: list[dict[str, Any]] = json.loads(done.stdout)["events"]
        return data


ALLOW_APPS = {
    "name": "apps",
    "subjects": {"groups": ["apps"]},
    "connections": ["api"],
    "rules": [{"allow": {}}],
}


def api_connection(upstream: Upstream, **extra: Any) -> dict[str, Any]:
    conn: dict[str, Any] = {
        "name": "api",
        "protocol": "http",
        "upstream": {"url": upstream.url},
        "inject": {"headers": {"X-Api-Key": "env:CALLGATE_TEST_API_SECRET"}},
    }
    conn.update(extra)
    return conn


def http_config(upstream: Upstream, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "listeners": [{"protocol": "http", "allow_plaintext": True}],
        "connections": [api_connection(upstream)],
        "policies": [ALLOW_APPS],
    }
    cfg.update(extra or {})
    return cfg


MakeThrough = Callable[..., Through]


@pytest.fixture
def make_through(gateway: GatewayFactory, upstream_api: Upstream) -> MakeThrough:
    def make(
        extra: dict[str, Any] | None = None, *, upstream: Upstream | None = None, **kw: Any
    ) -> Through:
        up = upstream or upstream_api
        env = {**ENV, **kw.pop("env", {})}
        gw = gateway(http_config(up, extra), env=env, **kw)
        return Through(gw, gw.create_key("fn1", ["apps"]), up)

    upstream_api.clear()
    return make


@pytest.fixture
def through(make_through: MakeThrough) -> Through:
    return make_through()


@pytest.fixture(scope="module")
def module_through(
    tmp_path_factory: pytest.TempPathFactory, gateway_tls: CertPaths, upstream_api: Upstream
) -> Iterator[Through]:
    """One default gateway for a whole module (tests that do not change its config)."""
    workdir = tmp_path_factory.mktemp("http-gateway")
    gw = Gateway(
        workdir, build_config(workdir, http_config(upstream_api), tls=gateway_tls), env=ENV
    )
    try:
        gw.start()
    except GatewayError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield Through(gw, gw.create_key("fn1", ["apps"]), upstream_api)
    finally:
        gw.stop()


@pytest.fixture
def shared(module_through: Through) -> Through:
    """The module's gateway, with the upstream's request log cleared."""
    module_through.upstream.clear()
    return module_through
