"""Which fields cross callgate: hop-by-hop removal against a direct reading of RFC 9110 §7.6.1."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from callgate.protocols.http import HOP_BY_HOP, end_to_end, tokens

_NAMES = st.sampled_from(
    [
        "host",
        "accept",
        "x-trace",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
        "proxy-authorization",
        "proxy-connection",
        "proxy",
        "x-proxy-id",
        "content-length",
        "x-listed",
    ]
)
_VALUES = st.sampled_from(["", "close", "x-listed", "X-Listed, keep-alive", "accept ,, host", "1"])


def reference(fields: tuple[tuple[str, str], ...], drop: frozenset[str]) -> list[tuple[str, str]]:
    listed = {t for name, value in fields if name.lower() == "connection" for t in tokens(value)}
    return [
        (name, value)
        for name, value in fields
        if name.lower() not in HOP_BY_HOP | listed | drop and not name.lower().startswith("proxy-")
    ]


@settings(max_examples=500)
@given(
    st.lists(st.tuples(_NAMES, _VALUES), max_size=8),
    st.sets(st.sampled_from(["content-length", "host", "x-trace"])),
    st.booleans(),
)
def test_end_to_end_keeps_exactly_the_end_to_end_fields(
    pairs: list[tuple[str, str]], drop: set[str], upper: bool
) -> None:
    fields = tuple((name.title() if upper else name, value) for name, value in pairs)
    names = tuple(name.lower() for name, _ in fields)
    expected = reference(fields, frozenset(drop))
    assert end_to_end(fields, names, drop=frozenset(drop)) == expected
    assert end_to_end(fields, names, drop=sorted(drop)) == expected


def test_nothing_to_remove_gives_the_fields_as_they_are() -> None:
    fields = (("Host", "a"), ("Accept", "*/*"), ("X-Proxy-Id", "7"))
    assert end_to_end(fields, ("host", "accept", "x-proxy-id")) == list(fields)
