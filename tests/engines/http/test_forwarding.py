"""The HTTP engine end to end: a real gateway between httpx/curl and a real API (issue 8)."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.engines.http.conftest import (
    ALLOW_APPS,
    API_SECRET,
    MakeThrough,
    Through,
    Upstream,
    api_connection,
)
from tests.engines.http.upstream_app import PATTERN
from tests.support.net import free_port

pytestmark = pytest.mark.integration


def raw(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection; everything read until the gateway closes it (or
    ``timeout`` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
        return out


def headers_of(entry: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in entry["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


# --- credentials ------------------------------------------------------------------------------


def test_caller_token_never_forwarded_and_credential_injected(shared: Through) -> None:
    through = shared
    with through.client() as c:
        r = c.get("/api/echo/x", params={"a": "1"})
    assert r.status_code == 200
    [entry] = through.upstream.log()
    seen = headers_of(entry)
    assert entry["path"] == "/echo/x" and entry["query"] == "a=1"
    assert "authorization" not in seen  # the caller's Bearer credential stayed at callgate
    assert through.key not in json.dumps(entry)
    assert seen["x-api-key"] == [API_SECRET]  # callgate's own credential arrived
    # The echo endpoint reflects every header: callgate overwrote its own secret in the answer.
    assert API_SECRET not in r.text
    assert API_SECRET not in json.dumps(dict(r.headers))
    assert '"x-api-key","' + "*" * len(API_SECRET) + '"' in r.text


def test_injected_header_replaces_a_caller_copy(shared: Through) -> None:
    through = shared
    with through.client(headers={"X-Api-Key": "caller-chosen-value"}) as c:
        assert c.get("/api/echo").status_code == 200
    [entry] = through.upstream.log()
    assert headers_of(entry)["x-api-key"] == [API_SECRET]


def test_hop_by_hop_removed_and_forwarding_headers_set(shared: Through) -> None:
    through = shared
    with through.client() as c:
        r = c.get(
            "/api/echo",
            headers={
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "connection-only",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "Proxy-Authorization": "Basic Zm9vOmJhcg==",
                "X-Forwarded-For": "6.6.6.6",
                "Forwarded": "for=6.6.6.6",
                "X-End-To-End": "kept",
            },
        )
    assert r.status_code == 200
    seen = headers_of(through.upstream.log()[0])
    for name in ("x-hop", "keep-alive", "te", "proxy-authorization", "forwarded"):
        assert name not in seen, name
    assert seen["x-forwarded-for"] == ["127.0.0.1"]  # never the caller's claim
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == [f"127.0.0.1:{through.port}"]
    assert seen["x-end-to-end"] == ["kept"]
    assert seen["host"] == [f"127.0.0.1:{through.upstream.port}"]


# --- refusals before the upstream ---------------------------------------------------------------


def test_missing_or_bad_credential_is_401(shared: Through) -> None:
    through = shared
    for headers in ({}, {"Authorization": "Bearer cgk_nope"}, {"Authorization": "Basic eDp5"}):
        r = httpx.get(f"{through.base}/api/echo", headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["error"]["code"] == "unauthorized"
    assert through.upstream.log() == []


def test_unknown_connection_404_and_not_allowed_403(shared: Through) -> None:
    through = shared
    with through.client() as c:
        r = c.get("/nosuch/echo")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"
    other = through.gw.create_key("outsider", ["nobody"])
    r = httpx.get(f"{through.base}/api/echo", headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 403
    assert "not allowed to use connection" in r.json()["error"]["message"]
    assert through.upstream.log() == []


# --- keep-alive, chunked, Expect ------------------------------------------------------------------


def test_keep_alive_one_connection_one_session(through: Through) -> None:
    with through.client() as c:
        for i in range(20):
            assert c.get("/api/echo", params={"i": str(i)}).status_code == 200
    assert len(through.upstream.log()) == 20
    sessions = [s for s in through.sessions() if s["protocol"] == "http"]
    assert len(sessions) == 1  # 20 requests on one TCP connection: one recorded session


def _read_response(s: socket.socket) -> bytes:
    """One whole response with a Content-Length body from ``s``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed mid-head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, "closed mid-body"
        body += chunk
    return head + b"\r\n\r\n" + body


def test_idle_keep_alive_connection_closed_after_idle_timeout(make_through: MakeThrough) -> None:
    th = make_through(
        {"listeners": [{"protocol": "http", "allow_plaintext": True, "idle_timeout": "1s"}]}
    )
    request = f"GET /api/json/plain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {th.key}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", th.port), timeout=10) as s:
        s.sendall(request.encode())
        assert _read_response(s).startswith(b"HTTP/1.1 200")
        time.sleep(0.5)  # within the idle timeout: the connection still serves
        s.sendall(request.encode())
        assert _read_response(s).startswith(b"HTTP/1.1 200")
        answered = time.monotonic()
        s.settimeout(10)
        assert s.recv(1) == b""  # closed by callgate, with nothing sent
        idle = time.monotonic() - answered
    assert 0.9 <= idle <= 3.0, idle  # the timeout, to within the watchdog's tick
    ended = [x for x in th.sessions() if x["protocol"] == "http"]
    assert len(ended) == 1 and ended[0]["ended_at"] is not None, ended
    assert ended[0]["end_reason"] == "idle for 1 s between requests: closed by callgate"


def test_pipelined_requests_answered_in_order(shared: Through) -> None:
    through = shared
    auth = f"Authorization: Bearer {through.key}\r\n".encode()
    one = b"GET /api/echo/first HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
    two = b"GET /api/echo/second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + auth + b"\r\n"
    out = raw(through.port, one + two)
    assert out.count(b"HTTP/1.1 200") == 2
    assert out.index(b"/echo/first") < out.index(b"/echo/second")


def test_http10_caller(shared: Through) -> None:
    through = shared
    req = f"GET /api/json/plain HTTP/1.0\r\nAuthorization: Bearer {through.key}\r\n\r\n"
    out = raw(through.port, req.encode())
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body) == {"hello": "world"}


def test_chunked_upload_and_download(shared: Through) -> None:
    through = shared
    blocks = [bytes([i]) * (10_000 + i) for i in range(30)]
    expected = hashlib.sha256(b"".join(blocks)).hexdigest()
    with through.client() as c:
        r = c.post("/api/upload", content=iter(blocks))  # a generator: sent chunked
        assert r.status_code == 200, r.text
        assert r.json() == {"bytes": sum(map(len, blocks)), "sha256": expected}
        r = c.get("/api/download", params={"size": "1000003", "chunked": "1"})
        assert r.status_code == 200
        assert r.headers.get("transfer-encoding") == "chunked"
        assert r.content == (PATTERN * 4)[:1000003]
    seen = headers_of(through.upstream.log()[0])
    assert seen.get("transfer-encoding") == ["chunked"]


def test_head_204_304_and_no_body(shared: Through) -> None:
    through = shared
    with through.client() as c:
        r = c.head("/api/download", params={"size": "12345"})
        assert r.status_code == 200 and r.headers["content-length"] == "12345" and r.content == b""
        assert c.get("/api/status/204").status_code == 204
        assert c.get("/api/status/304").status_code == 304
        r = c.post("/api/status/201")
        assert r.status_code == 201 and r.json() == {"status": 201}


def test_curl_expect_100_continue(shared: Through, tmp_path: Path, curl: str) -> None:
    through = shared
    body = tmp_path / "body.bin"
    body.write_bytes(b"z" * 300_000)
    done = subprocess.run(
        [
            curl,
            "-sS",
            "-v",
            "-H",
            "Expect: 100-continue",
            "-H",
            f"Authorization: Bearer {through.key}",
            "--data-binary",
            f"@{body}",
            f"{through.base}/api/upload",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "HTTP/1.1 100 Continue" in done.stderr
    assert json.loads(done.stdout)["bytes"] == 300_000


def test_curl_reuses_the_connection_and_sees_no_secret(shared: Through, curl: str) -> None:
    through = shared
    done = subprocess.run(
        [
            curl,
            "-sS",
            "-v",
            "-H",
            f"Authorization: Bearer {through.key}",
            f"{through.base}/api/echo/one",
            f"{through.base}/api/echo/two",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Re-using existing connection" in done.stderr or "Reusing existing" in done.stderr
    assert API_SECRET not in done.stdout + done.stderr
    assert len(through.upstream.log()) == 2


def test_refused_expect_gets_no_continue(make_through: MakeThrough) -> None:
    th = make_through(
        {"policies": [{**ALLOW_APPS, "rules": [{"deny": {"methods": ["POST"]}}, {"allow": {}}]}]}
    )
    req = (
        "POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
        f"Expect: 100-continue\r\nAuthorization: Bearer {th.key}\r\n\r\n"
    )
    out = raw(th.port, req.encode())  # the body is never sent
    assert out.startswith(b"HTTP/1.1 403")
    assert b"100 Continue" not in out
    assert th.upstream.log() == []


# --- upstream failures ------------------------------------------------------------------------


def test_upstream_unreachable_is_502(make_through: MakeThrough, upstream_api: Upstream) -> None:
    dead = free_port()
    conn = api_connection(upstream_api)
    conn["upstream"] = {"url": f"http://127.0.0.1:{dead}"}
    th = make_through({"connections": [conn]})
    with th.client() as c:
        r = c.get("/api/echo")
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "bad_gateway"


def test_upstream_timeout_is_504(make_through: MakeThrough, upstream_api: Any) -> None:
    conn = api_connection(upstream_api)
    conn["upstream"]["timeouts"] = {"read": "1s"}
    th = make_through({"connections": [conn]})
    with th.client() as c:
        started = time.monotonic()
        r = c.get("/api/slow", params={"delay": "5"})
        assert r.status_code == 504
        assert time.monotonic() - started < 4
        assert r.json()["error"]["code"] == "gateway_timeout"
        # the same caller connection goes on working
        assert c.get("/api/json/plain").status_code == 200


class BadUpstream:
    """A TCP server that answers every request with fixed bytes, then closes."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(65536)
                    conn.sendall(self.answer)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def bad_upstream() -> Iterator[type[BadUpstream]]:
    made: list[BadUpstream] = []

    def make(answer: bytes) -> BadUpstream:
        up = BadUpstream(answer)
        made.append(up)
        return up

    yield make  # type: ignore[misc]
    for up in made:
        up.close()


SMUGGLING_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n"
)


@pytest.mark.parametrize(
    "answer",
    [
        SMUGGLING_RESPONSE,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nX: a\r\n  folded\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
        b"garbage\r\n\r\n",
        b"",
    ],
)
def test_bad_upstream_response_is_502(
    make_through: MakeThrough, bad_upstream: Any, upstream_api: Upstream, answer: bytes
) -> None:
    up = bad_upstream(answer)
    conn = api_connection(upstream_api)
    conn["upstream"] = {"url": f"http://127.0.0.1:{up.port}"}
    th = make_through({"connections": [conn]})
    with th.client() as c:
        r = c.get("/api/x")
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "bad_gateway"
        assert c.get("/api/y").status_code == 502  # the caller's connection is still usable


def test_truncated_upstream_body_cuts_the_caller_off(
    make_through: MakeThrough, bad_upstream: Any, upstream_api: Upstream
) -> None:
    up = bad_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort")
    conn = api_connection(upstream_api)
    conn["upstream"] = {"url": f"http://127.0.0.1:{up.port}"}
    th = make_through({"connections": [conn]})
    with th.client() as c, pytest.raises(httpx.RemoteProtocolError):
        c.get("/api/x")  # the head was sent: only cutting the connection says "incomplete"


def test_until_close_response_is_rechunked(
    make_through: MakeThrough, bad_upstream: Any, upstream_api: Upstream
) -> None:
    up = bad_upstream(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nread until close")
    conn = api_connection(upstream_api)
    conn["upstream"] = {"url": f"http://127.0.0.1:{up.port}"}
    th = make_through({"connections": [conn]})
    with th.client() as c:
        r = c.get("/api/x")
        assert r.status_code == 200 and r.text == "read until close"
        assert r.headers["transfer-encoding"] == "chunked"
        assert c.get("/api/y").status_code == 200  # the caller's connection is still good


def test_host_mapping_routes_without_prefix(
    make_through: MakeThrough, upstream_api: Upstream
) -> None:
    th = make_through({"connections": [api_connection(upstream_api, hosts=["api.internal"])]})
    with th.client(headers={"Host": "api.internal"}) as c:
        r = c.get("/echo/mapped")
        assert r.status_code == 200
        assert r.json()["path"] == "/echo/mapped"
    with th.client(headers={"Host": f"api.internal:{th.port}"}) as c:
        assert c.get("/json/plain").json() == {"hello": "world"}
    with th.client() as c:  # any other Host: the path prefix still routes
        assert c.get("/api/json/plain").status_code == 200
    assert [e["path"] for e in th.upstream.log()] == ["/echo/mapped", "/json/plain", "/json/plain"]


def test_drain_lets_a_request_in_flight_finish(make_through: MakeThrough) -> None:
    th = make_through({"gateway": {"drain_timeout": "20s"}})
    result: dict[str, Any] = {}

    def call() -> None:
        with th.client(timeout=30) as c:
            r = c.get("/api/slow", params={"delay": "2"})
            result["status"] = r.status_code
            result["connection"] = r.headers.get("connection")

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.8)
    assert th.gw.stop() == 0
    t.join(30)
    assert result == {"status": 200, "connection": "close"}


def test_refused_upload_still_reads_the_answer(make_through: MakeThrough) -> None:
    # The caller keeps sending a body callgate refused to read: the lingering close lets it
    # read the 403 instead of a connection reset.
    th = make_through(
        {"policies": [{**ALLOW_APPS, "rules": [{"deny": {"methods": ["PUT"]}}, {"allow": {}}]}]}
    )
    body = b"b" * 600_000
    head = (
        f"PUT /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        f"Authorization: Bearer {th.key}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", th.port), timeout=10) as s:
        sender = threading.Thread(target=lambda: s.sendall(head + body), daemon=True)
        sender.start()
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(65536)
            assert chunk, "connection closed before the answer"
            answer += chunk
        sender.join(10)
    assert answer.startswith(b"HTTP/1.1 403")
    assert th.upstream.log() == []
