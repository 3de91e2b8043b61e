"""The request head callgate sends upstream: what an injector may add is checked, framing is
callgate's own (exchange._encode_upstream_head)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from callgate.engines.http.exchange import _encode_upstream_head
from callgate.engines.http.inject import Outgoing
from callgate.engines.http.upstream import UpstreamAddress
from callgate.errors import InternalError

URL = "http://api.internal:8080/v1/x?q=1"
POOL: Any = SimpleNamespace(address=UpstreamAddress.from_url("http://api.internal:8080"))
OURS = [("Host", "api.internal:8080"), ("Accept", "*/*"), ("X-Forwarded-For", "10.0.0.1")]


def encode(
    headers: list[tuple[str, str]],
    valid: dict[tuple[str, str], None],
    *,
    body: bytes | None = b"",
    body_length: int | None = 0,
    url: str = URL,
    method: str = "GET",
) -> tuple[bytes, bool]:
    out = Outgoing(method, url, headers, body, body_length)
    return _encode_upstream_head(out, POOL, URL, "/v1/x?q=1", OURS, valid)


def test_injected_field_checked_then_remembered() -> None:
    valid: dict[tuple[str, str], None] = {}
    head, chunked = encode([*OURS, ("X-Api-Key", "k-123")], valid)
    assert head == (
        b"GET /v1/x?q=1 HTTP/1.1\r\nHost: api.internal:8080\r\nAccept: */*\r\n"
        b"X-Forwarded-For: 10.0.0.1\r\nX-Api-Key: k-123\r\n\r\n"
    )
    assert not chunked
    assert valid == {("X-Api-Key", "k-123"): None}  # callgate's own fields are not remembered


@pytest.mark.parametrize(
    "field",
    [("X-Api-Key", "k\r\nX-Evil: 1"), ("X-Api-Key", "k\x00"), ("Bad Name", "v"), ("", "v")],
)
def test_an_invalid_injected_field_is_refused_and_not_remembered(
    field: tuple[str, str],
) -> None:
    valid: dict[tuple[str, str], None] = {("X-Api-Key", "k-123"): None}
    with pytest.raises(InternalError, match="invalid header"):
        encode([*OURS, ("X-Api-Key", "k-123"), field], valid)
    assert field not in valid


def test_framing_is_callgates_own() -> None:
    valid: dict[tuple[str, str], None] = {}
    injected = [*OURS, ("Content-Length", "999"), ("Transfer-Encoding", "chunked")]
    head, chunked = encode(injected, valid, body=b"abc", body_length=3, method="POST")
    assert b"Content-Length: 3\r\n" in head
    assert b"999" not in head and b"Transfer-Encoding" not in head
    assert not chunked
    head, chunked = encode(list(OURS), valid, body=None, body_length=None, method="POST")
    assert head.endswith(b"Transfer-Encoding: chunked\r\n\r\n")
    assert chunked


def test_the_injector_cannot_move_the_request_elsewhere() -> None:
    with pytest.raises(InternalError, match="upstream address"):
        encode(list(OURS), {}, url="http://elsewhere.example:8080/v1/x?q=1")
    with pytest.raises(InternalError, match="invalid request target"):
        encode(list(OURS), {}, url="http://api.internal:8080/v1/x y")
