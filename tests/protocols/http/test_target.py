"""Request targets: forms, refusals that keep policy paths unambiguous, query masking."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callgate.protocols.http import (
    HttpRequestError,
    UnsupportedRequest,
    join_path,
    mask_query,
    parse_target,
    split_prefix,
)
from callgate.protocols.http.target import Target


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", Target("/", None)),
        ("/a/b?x=1&y", Target("/a/b", "x=1&y")),
        ("/a?", Target("/a", "")),
        ("/a%20b/c:d@e", Target("/a%20b/c:d@e", None)),
        ("http://api.example:8080/v1?q=1", Target("/v1", "q=1", "api.example:8080")),
        ("http://api.example", Target("/", None, "api.example")),
        ("HTTP://api.example?x", Target("/", "x", "api.example")),
        ("/a/.well-known/x", Target("/a/.well-known/x", None)),
        ("/a/...", Target("/a/...", None)),
    ],
)
def test_parse_target(raw: str, expected: Target) -> None:
    assert parse_target("GET", raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "/a/../b",
        "/a/./b",
        "/..",
        "/a/%2e%2E/b",
        "/a/%2e/b",
        "/a/.%2e",
        "/a%2f..%2fadmin",
        "/a%5c..%5cadmin",
        "/a/b#frag",
        "/a b",
        "/a\\b",
        "/a|b",
        "/a%zz",
        "/a%2",
        "ftp://x/y",
        "http://user@host/",
        "example.com/x",
    ],
)
def test_refused_targets(raw: str) -> None:
    with pytest.raises(HttpRequestError):
        parse_target("GET", raw)


def test_unsupported_forms() -> None:
    with pytest.raises(UnsupportedRequest):
        parse_target("CONNECT", "example.com:443")
    with pytest.raises(UnsupportedRequest):
        parse_target("OPTIONS", "*")


def test_split_prefix_and_join() -> None:
    assert split_prefix("/orders/v1/x") == ("orders", "/v1/x")
    assert split_prefix("/orders") == ("orders", "/")
    assert split_prefix("/orders/") == ("orders", "/")
    assert split_prefix("/") == ("", "/")
    assert join_path("", "/v1") == "/v1"
    assert join_path("/", "/v1") == "/v1"
    assert join_path("/base/", "/v1") == "/base/v1"
    assert join_path("/base", "/v1") == "/base/v1"


@pytest.mark.parametrize(
    ("query", "masked"),
    [
        ("", ""),
        ("a=1&b=2", "a=1&b=2"),
        ("api_key=s3cr3t&q=x", "api_key=***&q=x"),
        ("access_token=abc", "access_token=***"),
        (
            "X-Amz-Signature=ff&X-Amz-Credential=AK%2F&X-Amz-Date=1",
            ("X-Amz-Signature=***&X-Amz-Credential=***&X-Amz-Date=1"),
        ),
        ("PASSWORD=x&user=bob", "PASSWORD=***&user=bob"),
        ("client%5Fsecret=x", "client%5Fsecret=***"),
        ("token", "token"),
    ],
)
def test_mask_query(query: str, masked: str) -> None:
    assert mask_query(query) == masked


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz=&%_", max_size=60))
def test_mask_query_keeps_structure(query: str) -> None:
    masked = mask_query(query)
    assert masked.count("&") == query.count("&")
    assert [p.partition("=")[0] for p in masked.split("&")] == [
        p.partition("=")[0] for p in query.split("&")
    ]


# RFC 3986's path grammar written the direct way: what parse_target's faster check must equal.
_RFC3986_PATH = re.compile(r"/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*", re.ASCII)


@given(st.text(alphabet="/aZ9-._~!$&'()*+,;=:@%2fFgG \"<>[]\\^`{|}\x7f\xe9", max_size=24))
def test_path_characters_checked_as_rfc3986_says(tail: str) -> None:
    path = "/" + tail
    try:
        target = parse_target("GET", path)
    except HttpRequestError as exc:
        # Refused for its characters exactly when the grammar says no (else for dot segments).
        refused_for_characters = "percent-encoded" in exc.message
        assert refused_for_characters == (_RFC3986_PATH.fullmatch(path) is None)
    else:
        assert _RFC3986_PATH.fullmatch(path)
        assert target.path == path
