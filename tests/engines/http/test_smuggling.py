"""Smuggling attempts and malformed requests get a 4xx, end the connection and reach no upstream.

Every case is sent on a raw socket (no client library would send these bytes), followed in the
same write by a second, well-formed request to ``/api/echo/smuggled``: whatever a lenient parser
might read as a request hidden in the first one must never be forwarded either. The upstream's
request log proves it.
"""

from __future__ import annotations

import json
import re
import socket
import time

import pytest

from tests.engines.http.conftest import Through

pytestmark = pytest.mark.integration


def exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
        return out


def follow_up(key: str) -> bytes:
    return (
        f"GET /api/echo/smuggled HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
    ).encode()


CASES: list[tuple[str, str, int]] = [
    # (name, request with {auth} for the Authorization line, expected status)
    (
        "CL.TE",
        "POST /api/echo HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 6\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        400,
    ),
    (
        "TE.CL",
        "POST /api/echo HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n"
        "Content-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "duplicate Content-Length",
        "POST /api/echo HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 5\r\n"
        "Content-Length: 5\r\n\r\nhello",
        400,
    ),
    (
        "conflicting Content-Length",
        "POST /api/echo HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 5\r\n"
        "Content-Length: 50\r\n\r\nhello",
        400,
    ),
    (
        "Content-Length list",
        "POST /api/echo HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 5, 5\r\n\r\nhello",
        400,
    ),
    (
        "signed Content-Length",
        "POST /api/echo HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: +5\r\n\r\nhello",
        400,
    ),
    (
        "TE not final chunked",
        "POST /api/echo HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked, identity"
        "\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "TE obfuscated",
        "POST /api/echo HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: xchunked\r\n\r\n",
        400,
    ),
    (
        "TE with space before colon",
        "POST /api/echo HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "TE folded",
        "POST /api/echo HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding:\r\n chunked\r\n\r\n"
        "0\r\n\r\n",
        400,
    ),
    (
        "TE in HTTP/1.0",
        "POST /api/echo HTTP/1.0\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "TE gzip, chunked",
        "POST /api/echo HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: gzip, chunked\r\n\r\n"
        "0\r\n\r\n",
        501,
    ),
    (
        "bare LF",
        "GET /api/echo HTTP/1.1\nHost: x\n{auth_lf}\n",
        400,
    ),
    (
        "bare LF in chunk size",
        "POST /api/echo HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
        "5\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "invalid chunk size",
        "POST /api/echo HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
        "5x\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk size overflow",
        "POST /api/echo HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
        "10000000000000005\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk longer than its size",
        "POST /api/echo HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
        "3\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    ("no Host", "GET /api/echo HTTP/1.1\r\n{auth}\r\n", 400),
    ("two Hosts", "GET /api/echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n{auth}\r\n", 400),
    ("dot segments", "GET /api/echo/../_log HTTP/1.1\r\nHost: x\r\n{auth}\r\n", 400),
    ("encoded dot segments", "GET /api/echo/%2e%2e/_log HTTP/1.1\r\nHost: x\r\n{auth}\r\n", 400),
    ("encoded slash dots", "GET /api/echo%2f..%2f_log HTTP/1.1\r\nHost: x\r\n{auth}\r\n", 400),
    ("space in target", "GET /api/echo x HTTP/1.1\r\nHost: x\r\n{auth}\r\n", 400),
    ("HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("CONNECT", "CONNECT api:443 HTTP/1.1\r\nHost: api:443\r\n{auth}\r\n", 501),
    ("TRACE", "TRACE /api/echo HTTP/1.1\r\nHost: x\r\n{auth}\r\n", 405),
    ("Expect other", "GET /api/echo HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n{auth}\r\n", 417),
    ("NUL in header", "GET /api/echo HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n{auth}\r\n", 400),
    (
        "huge header",
        "GET /api/echo HTTP/1.1\r\nHost: x\r\nX-A: " + "a" * 70000 + "\r\n{auth}\r\n",
        431,
    ),
]


@pytest.mark.parametrize(("name", "template", "status"), CASES, ids=[c[0] for c in CASES])
def test_refused_and_never_forwarded(
    shared: Through, name: str, template: str, status: int
) -> None:
    through = shared
    auth = f"Authorization: Bearer {through.key}\r\n"
    data = template.replace("{auth}", auth).replace("{auth_lf}", auth.replace("\r\n", "\n"))
    out = exchange(through.port, data.encode("latin-1") + follow_up(through.key))
    head, _, body = out.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    assert status_line.startswith(f"HTTP/1.1 {status} ".encode()), (name, out[:300])
    assert json.loads(body)["error"]["message"]
    assert b"connection: close" in head.lower()
    # exactly one answer: the connection was closed, the follow-up never read
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    assert len(body) == length
    assert through.upstream.log() == [], name


def test_well_formed_request_after_them_still_works(shared: Through) -> None:
    through = shared
    out = exchange(
        through.port, follow_up(through.key).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    )
    assert out.startswith(b"HTTP/1.1 200")
    assert [e["path"] for e in through.upstream.log()] == ["/echo/smuggled"]
