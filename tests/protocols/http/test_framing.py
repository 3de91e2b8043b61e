"""Body framing (RFC 9112 §6, §7): length rules, smuggling refusals, chunked decoding at every
split, keep-alive and Expect semantics."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callgate.errors import CallgateError
from callgate.protocols.http import (
    CHUNKED,
    LAST_CHUNK,
    NO_BODY,
    UNTIL_CLOSE,
    BodyIncomplete,
    ChunkedReader,
    ExpectationFailed,
    HttpRequestError,
    HttpResponseError,
    Length,
    LengthReader,
    UnsupportedRequest,
    UntilCloseReader,
    chunk_parts,
    encode_chunk,
    expects_continue,
    parse_request_head,
    parse_response_head,
    request_framing,
    request_keep_alive,
    response_framing,
    response_keep_alive,
)
from callgate.protocols.http.framing import MAX_CHUNK_LINE, MAX_TRAILER_BYTES


def req(*fields: str, version: str = "1.1", method: str = "POST") -> bytes:
    lines = [f"{method} /x HTTP/{version}", "Host: a", *fields, "", ""]
    return "\r\n".join(lines).encode("latin-1")


def resp(status: int, *fields: str) -> bytes:
    return "\r\n".join([f"HTTP/1.1 {status} X", *fields, "", ""]).encode("latin-1")


# --- request framing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ((), NO_BODY),
        (("Content-Length: 0",), NO_BODY),
        (("Content-Length: 12",), Length(12)),
        (("Transfer-Encoding: chunked",), CHUNKED),
        (("Transfer-Encoding: Chunked",), CHUNKED),
        (("Transfer-Encoding: ,chunked",), CHUNKED),
    ],
)
def test_request_framing(fields: tuple[str, ...], expected: object) -> None:
    assert request_framing(parse_request_head(req(*fields))) == expected


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        (("Content-Length: 5", "Transfer-Encoding: chunked"), "both Content-Length and"),
        (("Transfer-Encoding: chunked", "Content-Length: 5"), "both Content-Length and"),
        (("Content-Length: 5", "Content-Length: 5"), "more than one Content-Length"),
        (("Content-Length: 5", "Content-Length: 6"), "more than one Content-Length"),
        (("Content-Length: 5, 5",), "invalid Content-Length"),
        (("Content-Length: +5",), "invalid Content-Length"),
        (("Content-Length: -1",), "invalid Content-Length"),
        (("Content-Length: 0x10",), "invalid Content-Length"),
        (("Content-Length: 1 2",), "invalid Content-Length"),
        (("Content-Length: 1234567890123456789",), "invalid Content-Length"),
        (("Content-Length: \xb2",), "invalid Content-Length"),  # superscript two, a digit to str
        (("Transfer-Encoding: chunked, gzip",), "does not end with chunked"),
        (("Transfer-Encoding: gzip",), "does not end with chunked"),
        (("Transfer-Encoding: chunked ; q=1",), "does not end with chunked"),
        (("Transfer-Encoding: xchunked",), "does not end with chunked"),
        (("Transfer-Encoding:",), "does not end with chunked"),
    ],
)
def test_request_framing_refusals(fields: tuple[str, ...], problem: str) -> None:
    with pytest.raises(HttpRequestError) as info:
        request_framing(parse_request_head(req(*fields)))
    assert problem in info.value.message
    assert info.value.http_status == 400


def test_transfer_encoding_in_http10_refused() -> None:
    with pytest.raises(HttpRequestError, match=r"HTTP/1\.0"):
        request_framing(parse_request_head(req("Transfer-Encoding: chunked", version="1.0")))


def test_unknown_coding_before_chunked_is_501() -> None:
    with pytest.raises(UnsupportedRequest) as info:
        request_framing(parse_request_head(req("Transfer-Encoding: gzip, chunked")))
    assert info.value.http_status == 501
    with pytest.raises(UnsupportedRequest):
        request_framing(
            parse_request_head(req("Transfer-Encoding: gzip", "Transfer-Encoding: chunked"))
        )


# --- response framing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "fields", "method", "expected"),
    [
        (200, ("Content-Length: 3",), "GET", Length(3)),
        (200, ("Content-Length: 3",), "HEAD", NO_BODY),
        (200, ("Transfer-Encoding: chunked",), "GET", CHUNKED),
        (200, (), "GET", UNTIL_CLOSE),
        (204, ("Content-Length: 3",), "GET", NO_BODY),
        (304, (), "GET", NO_BODY),
        (100, (), "GET", NO_BODY),
    ],
)
def test_response_framing(
    status: int, fields: tuple[str, ...], method: str, expected: object
) -> None:
    assert response_framing(parse_response_head(resp(status, *fields)), method) == expected


@pytest.mark.parametrize(
    "fields",
    [
        ("Content-Length: 3", "Transfer-Encoding: chunked"),
        ("Content-Length: 3", "Content-Length: 4"),
        ("Content-Length: 3", "Content-Length: 3"),
        ("Content-Length: x",),
        ("Content-Length: \xb3",),
        ("Content-Length: 1234567890123456789",),
        ("Content-Length: ",),
        ("Transfer-Encoding: gzip",),
        ("Transfer-Encoding: gzip, chunked",),
    ],
)
def test_response_framing_refusals(fields: tuple[str, ...]) -> None:
    with pytest.raises(HttpResponseError) as info:
        response_framing(parse_response_head(resp(200, *fields)), "GET")
    assert info.value.http_status == 502


# --- keep-alive, Expect ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "fields", "keep"),
    [
        ("1.1", (), True),
        ("1.1", ("Connection: close",), False),
        ("1.1", ("Connection: keep-alive, Close",), False),
        ("1.0", (), False),
        ("1.0", ("Connection: keep-alive",), True),
    ],
)
def test_keep_alive(version: str, fields: tuple[str, ...], keep: bool) -> None:
    assert request_keep_alive(parse_request_head(req(*fields, version=version))) is keep


def test_response_keep_alive() -> None:
    assert response_keep_alive(parse_response_head(resp(200)))
    assert not response_keep_alive(parse_response_head(resp(200, "Connection: close")))
    assert not response_keep_alive(parse_response_head(b"HTTP/1.0 200 OK\r\n\r\n"))


def test_expect() -> None:
    assert expects_continue(parse_request_head(req("Expect: 100-continue")))
    assert expects_continue(parse_request_head(req("Expect: 100-Continue")))
    assert not expects_continue(parse_request_head(req()))
    # RFC 9110 §10.1.1: ignored in HTTP/1.0
    assert not expects_continue(parse_request_head(req("Expect: 100-continue", version="1.0")))
    with pytest.raises(ExpectationFailed) as info:
        expects_continue(parse_request_head(req("Expect: something-else")))
    assert info.value.http_status == 417


# --- readers --------------------------------------------------------------------------------------


def test_length_reader_leftover() -> None:
    r = LengthReader(5)
    assert r.feed(b"abc") == b"abc" and not r.done
    assert r.feed(b"deGET /") == b"de" and r.done
    assert r.leftover == b"GET /"
    with pytest.raises(BodyIncomplete):
        LengthReader(3).eof()


def test_until_close_reader() -> None:
    r = UntilCloseReader()
    assert r.feed(b"abc") == b"abc"
    r.eof()
    assert r.done


CHUNKED_BODY = (
    b"5\r\nhello\r\n"
    b'6;name=value;quoted="a \\" b"\r\n world\r\n'
    b"A \t; ext\r\n0123456789\r\n"
    b"000\r\n"
    b"X-Checksum: abc\r\n"
    b"X-Other: 1\r\n"
    b"\r\n"
)


def decode(data: bytes, cuts: list[int], *, request: bool = True) -> tuple[bytes, ChunkedReader]:
    r = ChunkedReader(request=request)
    points = [0, *cuts, len(data)]
    out = b""
    for a, b in itertools.pairwise(points):
        out += r.feed(data[a:b])
        if r.done:
            return out, r
    return out, r


@pytest.mark.parametrize("cut", range(len(CHUNKED_BODY) + 1))
def test_chunked_every_split(cut: int) -> None:
    body, r = decode(CHUNKED_BODY + b"NEXT", [cut])
    assert body == b"hello world0123456789"
    assert r.done
    assert r.trailers == [("X-Checksum", "abc"), ("X-Other", "1")]
    assert r.leftover + (CHUNKED_BODY + b"NEXT")[max(cut, len(CHUNKED_BODY)) :] == b"NEXT" or (
        r.leftover == b"NEXT"
    )


def test_chunked_every_byte_alone() -> None:
    r = ChunkedReader(request=True)
    out = b"".join(r.feed(CHUNKED_BODY[i : i + 1]) for i in range(len(CHUNKED_BODY)))
    assert out == b"hello world0123456789" and r.done and r.leftover == b""


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"x\r\n", "invalid chunk size"),
        (b"-5\r\nhello\r\n", "invalid chunk size"),
        (b"+5\r\nhello\r\n", "invalid chunk size"),
        (b"0x5\r\nhello\r\n", "invalid chunk size"),
        (b" 5\r\nhello\r\n", "invalid chunk size"),
        (b"5 \r\nhello\r\n", "invalid chunk size"),
        (b"\r\n", "invalid chunk size"),
        (b"1" * 17 + b"\r\n", "invalid chunk size"),
        (b"ffffffffffffffffff\r\n", "invalid chunk size"),
        (b"5;\r\nhello\r\n", "invalid chunk size"),
        (b"5;a=\r\nhello\r\n", "invalid chunk size"),
        (b'5;a="x\r\nhello\r\n', "invalid chunk size"),
        (b"5\nhello\r\n", "bare LF"),
        (b"5\r\nhelloXY", "not followed by CRLF"),
        (b"5\r\nhello\n", "not followed by CRLF"),
        (b"3\r\nhello\r\n", "not followed by CRLF"),
        (b"0\r\nX : 1\r\n\r\n", "malformed trailer"),
        (b"0\r\n folded\r\n\r\n", "malformed trailer"),
        (b"0\r\n\n", "bare LF"),
        (b"5\r\r\nhello\r\n", "invalid chunk size"),
    ],
)
def test_chunked_refusals(data: bytes, problem: str) -> None:
    for request, err in ((True, HttpRequestError), (False, HttpResponseError)):
        for step in (1, len(data)):
            r = ChunkedReader(request=request)
            with pytest.raises(err) as info:
                for i in range(0, len(data), step):
                    r.feed(data[i : i + step])
            assert problem in info.value.message


def test_chunked_limits() -> None:
    with pytest.raises(HttpRequestError, match="too long"):
        ChunkedReader(request=True).feed(b"5;" + b"a" * MAX_CHUNK_LINE)
    with pytest.raises(HttpRequestError, match="trailer section too large"):
        r = ChunkedReader(request=True)
        r.feed(b"0\r\n")
        for _ in range(MAX_TRAILER_BYTES // 9 + 2):
            r.feed(b"X-A: 12\r\n")
    with pytest.raises(BodyIncomplete):
        r = ChunkedReader(request=True)
        r.feed(b"5\r\nhel")
        r.eof()


def test_encoders() -> None:
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n"
    assert encode_chunk(b"") == b""
    assert b"".join(chunk_parts(b"x" * 300)) == b"12c\r\n" + b"x" * 300 + b"\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"


# --- properties -----------------------------------------------------------------------------------

ext = st.sampled_from([b"", b";a", b";a=b", b' ;q="x y"', b";a=1;b=2"])


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.binary(min_size=1, max_size=200), ext), max_size=10),
    st.lists(st.integers(min_value=0, max_value=3000), max_size=8),
    st.binary(max_size=20),
)
def test_chunked_round_trip_any_split(
    chunks: list[tuple[bytes, bytes]], cuts: list[int], after: bytes
) -> None:
    wire = b"".join(b"%x%b\r\n%b\r\n" % (len(c), e, c) for c, e in chunks) + LAST_CHUNK
    stream = wire + after
    body, r = decode(stream, sorted({min(c, len(stream)) for c in cuts}))
    assert r.done
    assert body == b"".join(c for c, _ in chunks)
    # Whatever followed the message is handed back, never eaten.
    consumed_to = len(stream) - len(r.leftover)
    assert consumed_to <= len(stream)


@settings(max_examples=300)
@given(
    st.lists(st.binary(min_size=1, max_size=100), max_size=6),
    st.integers(min_value=1, max_value=64),
)
def test_chunked_leftover_exact(chunks: list[bytes], step: int) -> None:
    wire = b"".join(encode_chunk(c) for c in chunks) + LAST_CHUNK
    stream = wire + b"GET / HTTP/1.1\r\n"
    r = ChunkedReader(request=True)
    out = b""
    i = 0
    while not r.done:
        out += r.feed(stream[i : i + step])
        i += step
    assert out == b"".join(chunks)
    assert r.leftover + stream[i:] == b"GET / HTTP/1.1\r\n"


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_chunked_garbage_raises_only_protocol_errors(data: bytes) -> None:
    r = ChunkedReader(request=True)
    try:
        r.feed(data)
    except CallgateError as exc:
        assert exc.http_status == 400


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=500), st.lists(st.integers(0, 600), max_size=5))
def test_length_reader_any_split(n: int, cuts: list[int]) -> None:
    payload = bytes(range(256)) * 2
    stream = payload[:n] + b"rest"
    r = LengthReader(n)
    points = [0, *sorted({min(c, len(stream)) for c in cuts}), len(stream)]
    out = b""
    tail = b""
    for a, b in itertools.pairwise(points):
        if r.done:
            tail += stream[a:b]
            continue
        out += r.feed(stream[a:b])
        if r.done:
            tail += r.leftover
    assert out == payload[:n]
    assert tail == b"rest"
