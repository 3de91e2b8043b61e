"""The secret scrubber: every copy of an injected secret overwritten, whatever the read splits."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from callgate.engines.http.scrub import HEADER_REPLACEMENT, MIN_SECRET_LENGTH, SecretScrubber

SECRETS = ("upstream-secret-0123456789", "dG9rZW46c2VjcmV0LXZhbHVl")


def scrub_all(scrubber: SecretScrubber, pieces: list[bytes]) -> bytes:
    out = b"".join(scrubber.feed(p) for p in pieces)
    return out + scrubber.flush()


def expected(data: bytes) -> bytes:
    for secret in sorted(SECRETS, key=len, reverse=True):
        needle = secret.encode()
        data = data.replace(needle, b"*" * len(needle))
    return data


@settings(max_examples=300)
@given(
    st.lists(
        st.one_of(st.binary(max_size=40), st.sampled_from([s.encode() for s in SECRETS])),
        max_size=12,
    ),
    st.lists(st.integers(min_value=0, max_value=600), max_size=8),
)
def test_any_split_same_output_same_length(parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    points = [0, *sorted({min(c, len(data)) for c in cuts}), len(data)]
    pieces = [data[a:b] for a, b in itertools.pairwise(points)]
    scrubber = SecretScrubber(SECRETS)
    out = scrub_all(scrubber, pieces)
    assert out == expected(data)
    assert len(out) == len(data)  # Content-Length stays true
    for secret in SECRETS:
        assert secret.encode() not in out


def test_headers_and_whole_bodies() -> None:
    scrubber = SecretScrubber(SECRETS)
    assert scrubber.text(f"Bearer {SECRETS[0]}") == f"Bearer {HEADER_REPLACEMENT}"
    assert scrubber.text("nothing here") == "nothing here"
    body = f'{{"auth": "{SECRETS[1]}"}}'.encode()
    assert SECRETS[1].encode() not in scrubber.whole(body)
    assert scrubber.hits == 2


def test_short_secrets_are_not_searched() -> None:
    scrubber = SecretScrubber(["x" * (MIN_SECRET_LENGTH - 1)])
    assert not scrubber.active
    assert scrubber.feed(b"xxxxxxx") == b"xxxxxxx"


def test_header_fields_are_scrubbed_only_where_a_secret_is() -> None:
    scrubber = SecretScrubber(SECRETS)
    clean = [("Server", "uvicorn"), ("Content-Type", "application/json")]
    assert scrubber.fields(clean) is clean  # nothing to replace: the same list, untouched
    echoed = [
        ("Server", "uvicorn"),
        ("X-Echo", f"Bearer {SECRETS[0]}"),
        ("X-Both", f"{SECRETS[1]},{SECRETS[0]}"),
    ]
    assert scrubber.fields(echoed) == [
        ("Server", "uvicorn"),
        ("X-Echo", f"Bearer {HEADER_REPLACEMENT}"),
        ("X-Both", f"{HEADER_REPLACEMENT},{HEADER_REPLACEMENT}"),
    ]
    assert scrubber.hits == 3
    # A secret split across two values is not in either of them: nothing to replace.
    half = len(SECRETS[0]) // 2
    split = [("A", SECRETS[0][:half]), ("B", SECRETS[0][half:])]
    assert scrubber.fields(split) == split
