"""Request and response heads: byte fixtures split at every offset, refusals, property tests."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callgate.errors import CallgateError
from callgate.protocols.http import (
    HeadReader,
    HeadTooLarge,
    HttpRequestError,
    HttpResponseError,
    TargetTooLong,
    VersionNotSupported,
    encode_request_head,
    encode_response_head,
    parse_request_head,
    parse_response_head,
)
from callgate.protocols.http.head import MAX_HEAD_BYTES, MAX_HEADER_FIELDS, MAX_REQUEST_LINE

GET = (
    b"GET /orders/v1/charges?limit=3 HTTP/1.1\r\n"
    b"Host: gw.example:18080\r\n"
    b"Authorization: Bearer cgk_abc\r\n"
    b"X-Empty:\r\n"
    b"Accept:   */*  \r\n"
    b"\r\n"
)


def read_split(data: bytes, *cuts: int, request: bool = True) -> tuple[bytes | None, bytes]:
    """Feed ``data`` to a HeadReader cut at ``cuts``; the head and what followed it."""
    reader = HeadReader(request=request)
    points = [0, *cuts, len(data)]
    head = None
    for a, b in itertools.pairwise(points):
        got = reader.feed(data[a:b])
        if got is not None:
            head = got
            rest = reader.leftover + data[b:]
            return head, rest
    return head, b""


def test_parse_request_head() -> None:
    head = parse_request_head(GET)
    assert head.method == "GET"
    assert head.target == "/orders/v1/charges?limit=3"
    assert head.version == (1, 1)
    assert head.fields == (
        ("Host", "gw.example:18080"),
        ("Authorization", "Bearer cgk_abc"),
        ("X-Empty", ""),
        ("Accept", "*/*"),
    )
    assert head.get("accept") == "*/*"
    assert head.get("missing") is None


@pytest.mark.parametrize("cut", range(len(GET) + 20))
def test_head_reader_every_split(cut: int) -> None:
    data = GET + b"BODY"
    head, rest = read_split(data, min(cut, len(data)))
    assert head == GET
    assert rest == b"BODY"


def test_head_reader_every_byte_alone() -> None:
    reader = HeadReader(request=True)
    got = [reader.feed(GET[i : i + 1]) for i in range(len(GET))]
    assert got[:-1] == [None] * (len(GET) - 1)
    assert got[-1] == GET


def test_repeated_fields_are_joined() -> None:
    head = parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
    assert head.get("x-a") == "1, 2"
    assert head.get_all("x-a") == ["1", "2"]


def test_leading_empty_lines_are_ignored() -> None:
    head, _rest = read_split(b"\r\n\r\n" + GET)
    assert head == GET
    with pytest.raises(HttpRequestError):
        HeadReader(request=True).feed(b"\r\n" * 10 + GET)


def test_http10_without_host() -> None:
    head = parse_request_head(b"GET / HTTP/1.0\r\n\r\n")
    assert head.version == (1, 0)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", "obs-fold"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A : 1\r\n\r\n", "whitespace before the colon"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A\t: 1\r\n\r\n", "whitespace before the colon"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", "without a colon"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n", "empty field name"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX(A): 1\r\n\r\n", "not a token"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r2\r\n\r\n", "bare CR"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\x002\r\n\r\n", "control character"),
        (b"GET / HTTP/1.1\r\n\r\n", "without a Host"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host"),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "invalid Host"),
        (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", "invalid Host"),
        (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", "malformed request line"),
        (b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", "malformed request line"),
        (b"GET / HTTX/1.1\r\nHost: a\r\n\r\n", "malformed HTTP version"),
        (b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", "not a token"),
        (b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", "visible ASCII"),
        (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", "visible ASCII"),
    ],
)
def test_request_head_refusals(raw: bytes, problem: str) -> None:
    with pytest.raises(HttpRequestError) as info:
        head, _ = read_split(raw)
        assert head is not None
        parse_request_head(head)
    assert problem in info.value.message
    assert info.value.http_status == 400


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\n\n",
    ],
)
def test_bare_lf_refused_as_soon_as_seen(raw: bytes) -> None:
    # No CRLFCRLF ever comes: the reader must refuse without waiting for the size limit.
    reader = HeadReader(request=True)
    with pytest.raises(HttpRequestError, match="bare LF"):
        reader.feed(raw)


def test_version_not_supported() -> None:
    with pytest.raises(VersionNotSupported) as info:
        parse_request_head(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n")
    assert info.value.http_status == 505


def test_limits() -> None:
    long_line = b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    with pytest.raises(TargetTooLong) as too_long:
        parse_request_head(long_line)
    assert too_long.value.http_status == 414
    with pytest.raises(TargetTooLong):  # seen before the line even ends
        HeadReader(request=True).feed(long_line[: MAX_REQUEST_LINE + 10])
    many = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * MAX_HEADER_FIELDS + b"\r\n"
    with pytest.raises(HeadTooLarge) as too_many:
        parse_request_head(many)
    assert too_many.value.http_status == 431
    big = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: " + b"v" * MAX_HEAD_BYTES + b"\r\n"
    reader = HeadReader(request=True)
    with pytest.raises(HeadTooLarge):
        for i in range(0, len(big), 4096):
            reader.feed(big[i : i + 4096])


def test_response_head() -> None:
    raw = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n"
    head = parse_response_head(raw)
    assert (head.status, head.reason, head.version) == (201, "Created", (1, 1))
    assert head.get_all("set-cookie") == ["a=1", "b=2"]
    assert parse_response_head(b"HTTP/1.0 204\r\n\r\n").status == 204
    assert parse_response_head(b"HTTP/1.1 200 \r\n\r\n").reason == ""


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 099 Odd\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX : 1\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
    ],
)
def test_response_head_refusals(raw: bytes) -> None:
    with pytest.raises(HttpResponseError) as info:
        parse_response_head(raw)
    assert info.value.http_status == 502


def test_response_bare_lf_is_upstream_error() -> None:
    with pytest.raises(HttpResponseError):
        HeadReader(request=False).feed(b"HTTP/1.1 200 OK\nX: 1\n\n")


def test_encode_round_trip() -> None:
    fields = (("Host", "api.example"), ("X-Forwarded-For", "10.0.0.1"))
    raw = encode_request_head("POST", "/v1/x?a=1", fields)
    head = parse_request_head(raw)
    assert (head.method, head.target, head.fields) == ("POST", "/v1/x?a=1", fields)
    resp = parse_response_head(encode_response_head(404, "Not Found", (("A", "b"),)))
    assert (resp.status, resp.reason, resp.fields) == (404, "Not Found", (("A", "b"),))


# --- properties -----------------------------------------------------------------------------------

token = st.text(alphabet="!#$%&'*+-.^_`|~abcdefXYZ0123456789", min_size=1, max_size=12)
value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(
    str.strip
)


@settings(max_examples=200)
@given(
    st.sampled_from(["GET", "POST", "DELETE", "PATCH"]),
    st.lists(st.tuples(token, value), max_size=20),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
)
def test_any_head_any_split(method: str, fields: list[tuple[str, str]], cuts: list[int]) -> None:
    fields = [(n, v) for n, v in fields if n.lower() != "host"]
    all_fields = (("Host", "h"), *fields)
    raw = encode_request_head(method, "/p", all_fields)
    head, rest = read_split(raw + b"tail", *sorted({min(c, len(raw) + 4) for c in cuts}))
    assert head == raw and rest == b"tail"
    parsed = parse_request_head(raw)
    assert parsed.fields == all_fields


@settings(max_examples=400)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=4))
def test_garbage_raises_only_callgate_errors(data: bytes, cuts: list[int]) -> None:
    for request in (True, False):
        reader = HeadReader(request=request)
        points = [0, *sorted({min(c, len(data)) for c in cuts}), len(data)]
        try:
            for a, b in itertools.pairwise(points):
                head = reader.feed(data[a:b])
                if head is not None:
                    if request:
                        parse_request_head(head)
                    else:
                        parse_response_head(head)
                    break
        except CallgateError as exc:
            assert exc.http_status in ((400, 414, 431, 505) if request else (502,))


# Pieces of header lines, valid and not: a block made of them is accepted by the one-pass field
# parser exactly when every CRLF-terminated line is a valid field line on its own.
_LINE_PIECES = st.sampled_from(
    [
        "X-A: 1",
        "x-b:",
        "Name:  spaced value \t",
        "Obs: \xe9t\xe9",
        " folded",
        "\tfolded",
        "No-Colon",
        ": empty-name",
        "Space : before",
        "Bad\x00: nul",
        "V: nul\x00inside",
        "V: bare\rcr",
        "V: bare\nlf",
        "V: esc\x1b",
        "V: del\x7f",
        "X-C: 2\r",
        "\n",
        "\r",
        "",
    ]
)


@settings(max_examples=500)
@given(st.lists(st.lists(_LINE_PIECES, min_size=1, max_size=3).map("".join), max_size=6))
def test_field_section_accepted_exactly_when_every_line_is_a_field(lines: list[str]) -> None:
    from callgate.protocols.http.head import _FIELD_LINE

    block = "".join(line + "\r\n" for line in lines).encode("latin-1")
    raw = b"HTTP/1.1 200 OK\r\n" + block + b"\r\n"
    every_line_valid = not block or all(
        _FIELD_LINE.fullmatch(line) for line in block[:-2].split(b"\r\n")
    )
    try:
        parsed = parse_response_head(raw)
    except HttpResponseError:
        assert not every_line_valid
    else:
        assert every_line_valid
        # Pieces may join into a CRLF: the block's own lines are what count.
        real_lines = block[:-2].decode("latin-1").split("\r\n") if block else []
        assert len(parsed.fields) == len(real_lines)
        for (name, value), line in zip(parsed.fields, real_lines, strict=True):
            assert line.startswith(f"{name}:")
            assert value == line.partition(":")[2].strip(" \t")


_LINE_BYTES = st.binary(max_size=14).filter(lambda b: b"\r\n" not in b)


@settings(max_examples=1000)
@given(
    st.lists(
        st.one_of(
            _LINE_BYTES,
            st.tuples(
                st.sampled_from([b"X-A", b"x", b"A b", b"", b"\xe9", b" X"]),
                st.sampled_from([b":", b" :", b""]),
                _LINE_BYTES,
            ).map(b"".join),
        ),
        max_size=5,
    )
)
def test_any_bytes_field_section_accepted_exactly_when_every_line_is_a_field(
    lines: list[bytes],
) -> None:
    from callgate.protocols.http.head import _FIELD_LINE

    block = b"".join(line + b"\r\n" for line in lines)
    expected = [_FIELD_LINE.fullmatch(line) for line in lines]
    raw = b"HTTP/1.1 200 OK\r\n" + block + b"\r\n"
    try:
        parsed = parse_response_head(raw)
    except HttpResponseError:
        assert not all(expected)
    else:
        assert all(expected)
        assert parsed.fields == tuple(
            (m.group(1).decode("latin-1"), m.group(2).decode("latin-1"))
            for m in expected
            if m is not None
        )
        assert parsed.names == tuple(name.lower() for name, _ in parsed.fields)


@settings(max_examples=300)
@given(st.binary(max_size=200), st.booleans())
def test_head_end_agrees_with_head_reader(data: bytes, request: bool) -> None:
    from callgate.protocols.http import head_end

    end = head_end(data, request=request)
    reader = HeadReader(request=request)
    try:
        head = reader.feed(data)
    except CallgateError:
        head = None
        assert end == -1
    if end > 0:
        assert head == data[:end]
        assert reader.leftover == data[end:]


def test_head_end_leaves_pieces_and_oversized_heads_to_the_reader() -> None:
    from callgate.protocols.http import head_end

    assert head_end(GET, request=True) == len(GET)
    assert head_end(GET[:-1], request=True) == -1
    assert head_end(b"\r\n" + GET, request=True) == -1  # a leading empty line: the reader's job
    big = b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n"
    assert head_end(big, request=True) == -1
    with pytest.raises(HeadTooLarge):
        HeadReader(request=True).feed(big)
