"""Content detectors: what each one finds, and what it must not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callgate.masking.detectors import (
    DETECTORS,
    DetectorSet,
    _find_emails,
    email_spans,
    iban_valid,
    luhn_valid,
)

ALL = DetectorSet.compile(DETECTORS)


def found(text: str, names: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    detectors = ALL if names is None else DetectorSet.compile(names)
    return [(text[a:b], name) for a, b, name in detectors.find(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to alice.smith+tag@example.co.uk now", ("alice.smith+tag@example.co.uk", "email")),
        ("<bob@mail.example.org>", ("bob@mail.example.org", "email")),
        ("card 4111 1111 1111 1111 exp", ("4111 1111 1111 1111", "credit_card")),
        ("card 4111-1111-1111-1111", ("4111-1111-1111-1111", "credit_card")),
        ("amex 378282246310005.", ("378282246310005", "credit_card")),
        ("amex 3782 822463 10005", ("3782 822463 10005", "credit_card")),
        ("iban DE89 3704 0044 0532 0130 00 ok", ("DE89 3704 0044 0532 0130 00", "iban")),
        ("iban GB82WEST12345698765432", ("GB82WEST12345698765432", "iban")),
        ("ssn 123-45-6789.", ("123-45-6789", "us_ssn")),
        ("call +44 20 7946 0958 today", ("+44 20 7946 0958", "phone")),
        ("call +14155552671", ("+14155552671", "phone")),
        ("call (415) 555-2671", ("(415) 555-2671", "phone")),
        ("call 415-555-2671", ("415-555-2671", "phone")),
        ("from 192.168.10.254:5432", ("192.168.10.254", "ipv4")),
        ("host 2001:db8::8a2e:370:7334 up", ("2001:db8::8a2e:370:7334", "ipv6")),
        ("host fe80::1", ("fe80::1", "ipv6")),
        (
            "host 2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", "ipv6"),
        ),
        (
            "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl end",
            ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl", "jwt"),
        ),
        ("key AKIAIOSFODNN7EXAMPLE", ("AKIAIOSFODNN7EXAMPLE", "aws_access_key")),
        (
            "stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "api_key"),
        ),
        (
            "gh ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "api_key"),
        ),
        ("slack xoxb-1234567890-abcdefghij", ("xoxb-1234567890-abcdefghij", "api_key")),
        (
            "google AIzaSyA1234567890abcdefghijklmnopqrstuv",
            ("AIzaSyA1234567890abcdefghijklmnopqrstuv", "api_key"),
        ),
        ("callgate cgk_abcdefghijklmnop1234", ("cgk_abcdefghijklmnop1234", "api_key")),
    ],
)
def test_true_positives(text: str, expected: tuple[str, str]) -> None:
    assert expected in found(text)


@pytest.mark.parametrize(
    "text",
    [
        "no at sign here",
        "user@localhost",  # no dot in the domain
        "4111 1111 1111 1112",  # Luhn-invalid
        "order 1234567890123",  # 13 digits, Luhn-invalid
        "2024-05-01 12:34:56.789+00",  # a timestamp
        "id 9000000001 total 12345.67",  # ordinary numbers
        "DE00 3704 0044 0532 0130 00",  # IBAN with a wrong check
        "000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000",  # never-issued SSNs
        "call 5552671 or 4155552671",  # bare digits: not phone numbers
        "+1 555 0100",  # not a valid number
        "version 1.2.3.4.5 and 999.1.1.1",  # not IPv4
        "time 12:30:45 and mac 00:1a:2b:3c:4d:5e",  # not IPv6
        "a :: b",  # no hex digit
        "eyJ alone is not a token",
        "AKIA is a prefix only",
        "sk-short",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
    ],
)
def test_false_positives(text: str) -> None:
    assert found(text) == []


def test_pem_private_key_whole_block() -> None:
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAK\nabc\n-----END RSA PRIVATE KEY-----"
    assert found(f"key: {pem} trailing") == [(pem, "private_key")]
    cut = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg"  # no END line: up to the end
    assert found(cut) == [(cut, "private_key")]


def test_aws_secret_next_to_key_id() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    assert (secret, "aws_access_key") in found(f"AKIAIOSFODNN7EXAMPLE {secret}")
    assert found(f"just a 40 char string {secret}") == []


def test_only_chosen_detectors_run() -> None:
    text = "a@b.com 4111 1111 1111 1111"
    assert found(text, ("email",)) == [("a@b.com", "email")]
    assert found(text, ("credit_card",)) == [("4111 1111 1111 1111", "credit_card")]


def test_rejected_candidate_does_not_hide_another_hit() -> None:
    # the Luhn-invalid "card" candidate overlaps a valid phone number
    assert ("+14155552671", "phone") in found("x +14155552671 y")


def test_hits_do_not_overlap_and_are_sorted() -> None:
    hits = ALL.find("a@b.com then 4111111111111111 then c@d.org")
    assert [h[2] for h in hits] == ["email", "credit_card", "email"]
    assert all(hits[i][1] <= hits[i + 1][0] for i in range(len(hits) - 1))


def test_checks() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert iban_valid("GB82 WEST 1234 5698 7654 32")
    assert not iban_valid("GB83 WEST 1234 5698 7654 32")


def test_unknown_detector_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown detector"):
        DetectorSet.compile(["email", "nope"])


def _luhn_complete(prefix: str) -> str:
    for last in "0123456789":
        if luhn_valid(prefix + last):
            return prefix + last
    raise AssertionError


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40),
    st.integers(min_value=10**14, max_value=10**15 - 1),
    st.sampled_from([" ", "-", ""]),
)
def test_a_card_is_found_in_any_surroundings(before: str, after: str, n: int, sep: str) -> None:
    card = _luhn_complete(str(n))
    written = sep.join(card[i : i + 4] for i in range(0, 16, 4))
    text = f"{before} {written} {after}"
    start = len(before) + 1
    spans = [(a, b) for a, b, name in ALL.find(text)]
    assert any(a <= start and start + len(written) <= b for a, b in spans), (text, spans)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_flags_never_miss_a_hit(text: str) -> None:
    """The byte-level trigger of every detector fires wherever its detector finds a hit."""
    raw = text.encode("utf-8", "surrogatepass")
    hits = ALL.find(text)
    if hits:
        assert ALL.flag(raw)


# --- the triggers and the email finder --------------------------------------------------------


hit_words = st.sampled_from(
    [
        "",
        "note",
        "é",
        "bob@example.com",
        "x..y@ex.org",
        "4111 1111 1111 1111",
        "6011000990139424124",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "DE89 3704 0044 0532 0130 00",
        "123-45-6789",
        "+44 20 7946 0958",
        "(415) 555-2671",
        "10.1.2.3",
        "2001:db8::1",
        "1:2:3:4:5:6:7:8",
        "AKIAIOSFODNN7EXAMPLE",
        "-----BEGIN PRIVATE KEY-----",
        "sk_live_abcdefghijklmnop1234",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "0",
        "-",
    ]
)


def near_bytes(max_size: int, min_size: int = 0) -> st.SearchStrategy[bytes]:
    """Bytes, mostly ones a trigger looks at (digits, separators, letters, @, dots)."""
    likely = list(b"0123456789 -.:@_aZ") + [0, 0x80, 0xFF]
    return st.lists(
        st.one_of(st.sampled_from(likely), st.integers(0, 255)),
        min_size=min_size,
        max_size=max_size,
    ).map(bytes)


@settings(max_examples=500, deadline=None)
@given(
    value=st.lists(hit_words, max_size=6).map(" ".join),
    before=near_bytes(8),
    low=near_bytes(3, min_size=3),
    after=near_bytes(8),
)
def test_property_a_hit_keeps_its_flag_whatever_surrounds_its_value(
    value: str, before: bytes, low: bytes, after: bytes
) -> None:
    """Any bytes before a value's length field (whose high byte is 0) and after the value: every
    detector with a hit in the value still has a flag inside the field."""
    raw = value.encode()
    buf = before + b"\x00" + low + raw + after
    field_start, field_end = len(before), len(before) + 4 + len(raw)
    for name in DETECTORS:
        single = DetectorSet.compile([name])
        if single.find(value):
            positions = single.positions(buf)
            assert any(field_start <= p < field_end for p in positions), (name, buf)


email_text = st.text(alphabet="ab.@-_x9 Z!+é日\u00a0", max_size=40)


@settings(max_examples=500, deadline=None)
@given(email_text)
def test_property_the_byte_level_email_finder_agrees_with_the_text_one(text: str) -> None:
    raw = text.encode()
    expected = [
        (len(text[:start].encode()), len(text[:end].encode()))
        for start, end, _ in _find_emails(text)
    ]
    assert email_spans(raw) == expected


def test_long_local_parts_are_read_back_256_characters() -> None:
    text = "x" * 300 + "@example.com and " + "." * 3 + "y..z@b.org"
    expected = [(s, e) for s, e, _ in _find_emails(text)]
    assert email_spans(text.encode()) == expected == [(44, 312), (323, 330)]
