"""TLS on both sides of the HTTP engine: callers over https (plaintext refused where not allowed),
and an https upstream verified against a CA file."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.engines.http.conftest import (
    MakeThrough,
    Upstream,
    api_connection,
    start_upstream,
    stop_upstream,
)
from tests.support.tls import issue_server_cert, make_ca, write_pem_pair

pytestmark = pytest.mark.integration


def insecure() -> ssl.SSLContext:
    # The gateway's dev pair is made per test session; these tests check that TLS is spoken,
    # not the test CA's chain (the upstream test below checks verification).
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_https_caller_and_plaintext_refused(make_through: MakeThrough) -> None:
    th = make_through({"listeners": [{"protocol": "http"}]})  # allow_plaintext: false
    url = f"https://127.0.0.1:{th.port}/api/json/plain"
    r = httpx.get(url, headers={"Authorization": f"Bearer {th.key}"}, verify=insecure())
    assert r.status_code == 200 and r.json() == {"hello": "world"}
    plain = httpx.get(f"http://127.0.0.1:{th.port}/api/json/plain")
    assert plain.status_code == 403
    assert "TLS" in plain.json()["error"]["message"]
    [session] = [s for s in th.sessions() if s["protocol"] == "http"]
    assert session["tls"] is True


@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Upstream, Path]]:
    out = tmp_path_factory.mktemp("upstream-tls")
    ca = make_ca("callgate test upstream CA")
    (out / "ca.pem").write_bytes(ca.cert_pem())
    cert, key = issue_server_cert(ca)
    pair = write_pem_pair(cert, key, out / "api.pem", out / "api-key.pem")
    up = start_upstream(tls=(pair.cert, pair.key))
    try:
        yield up, out / "ca.pem"
    finally:
        stop_upstream(up)


def test_https_upstream_verified_with_ca_file(
    make_through: MakeThrough, tls_upstream: tuple[Upstream, Path]
) -> None:
    up, ca_file = tls_upstream
    conn = api_connection(up)
    conn["upstream"] = {"url": up.url, "ca_file": str(ca_file)}
    th = make_through({"connections": [conn]}, upstream=up)
    with th.client() as c:
        r = c.get("/api/json/plain")
    assert r.status_code == 200 and r.json() == {"hello": "world"}


def test_https_upstream_with_unknown_ca_is_502(
    make_through: MakeThrough, tls_upstream: tuple[Upstream, Path]
) -> None:
    up, _ = tls_upstream
    conn = api_connection(up)
    conn["upstream"] = {"url": up.url}  # the system store does not know the test CA
    th = make_through({"connections": [conn]}, upstream=up)
    with th.client() as c:
        r = c.get("/api/json/plain")
    assert r.status_code == 502
    assert "certificate" in r.json()["error"]["message"]
