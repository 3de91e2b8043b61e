"""DataRows rewritten a run at a time (RowRewriter.rewrite_rows, the engine's hot path).

The run is walked in place with the detectors' triggers run once over all of it; these tests hold
it to the per-value rules (``RowRewriter._mask``, which decodes each value and runs the
detectors on its text): the same bytes out for every row, whatever the layout, the values, the
styles and where the run starts and stops.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callgate.engines.postgres.masker import ResultMasker, StatementMask
from callgate.masking import rows as rows_module
from callgate.masking.detectors import DetectorSet
from callgate.masking.errors import MaskingFailed
from callgate.masking.plan import DetectRule, MaskRules
from callgate.masking.rows import (
    K_INT8_BIN,
    K_NUMERIC_BIN,
    SCAN_ALWAYS,
    SCAN_FLAGGED,
    SCAN_NEVER,
    UNSCANNED_TYPES,
    ColumnMask,
    FieldDescription,
    RowDescription,
    RowRewriter,
    encode_row_description,
    value_kind,
)
from callgate.masking.styles import REDACTED, Style
from tests.masking.helpers import SECRET, data_row, parse_row

TEXT, VARCHAR, INT4, INT8, NUMERIC, JSON, JSONB, INET, TIMESTAMPTZ = (
    25,
    1043,
    23,
    20,
    1700,
    114,
    3802,
    869,
    1184,
)
STYLES = ["redact", "partial", "hash", "null", "email"]
DETECTOR_SETS: list[tuple[str, ...]] = [
    ("email",),
    ("email", "credit_card"),
    ("credit_card",),
    ("jwt",),
    ("email", "credit_card", "jwt", "ipv4", "us_ssn", "api_key"),
]
CARD = "4111 1111 1111 1111"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def rewriter(
    columns: Sequence[tuple[int, int, str | None]],
    detectors: Sequence[str] = (),
    detect_style: str = "redact",
    keep: int = 4,
) -> RowRewriter:
    """``columns``: (type oid, format, column rule style or None); scanned as the plan would."""
    fields = tuple(
        FieldDescription(f"c{i}", 0, 0, oid, -1, -1, fmt) for i, (oid, fmt, _) in enumerate(columns)
    )
    chosen = DetectorSet.compile(detectors) if detectors else None
    masks: list[ColumnMask | None] = []
    for oid, fmt, style in columns:
        kind = value_kind(oid, fmt)
        scan = SCAN_NEVER
        if chosen is not None and oid not in UNSCANNED_TYPES:
            if kind not in (K_INT8_BIN, K_NUMERIC_BIN):
                scan = SCAN_FLAGGED
            elif "credit_card" in chosen.names:
                scan = SCAN_ALWAYS
        column_style = Style(style, keep=keep, secret=SECRET) if style else None  # type: ignore[arg-type]
        masks.append(
            None
            if column_style is None and scan == SCAN_NEVER
            else ColumnMask(column_style, kind, scan, "test")
        )
    styles = {name: Style(detect_style, keep=keep, secret=SECRET) for name in detectors}  # type: ignore[arg-type]
    return RowRewriter(RowDescription(fields), tuple(masks), chosen, styles)


def expected_row(rw: RowRewriter, values: Sequence[bytes | None]) -> bytes:
    """The row as the per-value rules mask it (raises MaskingFailed as they do)."""
    out = [struct.pack("!h", len(values))]
    detectors = rw.detectors
    every = set(range(len(detectors.names))) if detectors is not None else set()
    for col, value in zip(rw.columns, values, strict=True):
        if value is None:
            out.append(b"\xff\xff\xff\xff")
            continue
        field = struct.pack("!i", len(value)) + value
        new = None
        if col is not None and col.style is not None:
            new = rw._mask(col, value, None)
        elif (
            col is not None
            and detectors is not None
            and (col.scan == SCAN_ALWAYS or (col.scan == SCAN_FLAGGED and detectors.flag(value)))
        ):
            new = rw._mask(col, value, every)
        out.append(field if new is None else new)
    return b"".join(out)


def valid_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --- values ---------------------------------------------------------------------------------------

words = st.sampled_from(
    [
        "",
        " ",
        "note",
        "é",
        "日本",
        "bob@example.com",
        "a.b@mail.example.org",
        "x..y@ex.org",
        ".lead@ex.org",
        "@ex.org",
        "a@",
        "a@b",
        "a@b.c",
        "a@b.co",
        "a@-b.com",
        "_x@c.org",
        "user@ex.com_more",
        "q@ex.com@r.org",
        "é@ex.org",
        "éa@ex.org",
        CARD,
        "4111111111111111",
        "6011000990139424124",
        "4111-1111",
        JWT,
        "eyJ",
        "10.1.2.3",
        "123-45-6789",
        "sk_live_abcdefghijklmnop1234",
        "0",
        "12345678901234567890",
        "-",
        ".",
        "@",
        "@@",
        "\u00a0@x.org",
    ]
)
text_value = st.lists(words, max_size=5).map(lambda ws: " ".join(ws).encode())
junk = st.binary(max_size=12)


@st.composite
def value_for(draw: st.DrawFn, oid: int, fmt: int) -> bytes | None:
    if draw(st.integers(0, 9)) == 0:
        return None
    if fmt == 1 and oid == INT4:
        return struct.pack("!i", draw(st.integers(-(2**31), 2**31 - 1)))
    if fmt == 1 and oid == INT8:
        return struct.pack(
            "!q", draw(st.sampled_from([0, 7, 10**12 - 1, 4111111111111111, -(10**15), 2**62]))
        )
    if fmt == 1 and oid == NUMERIC:
        digits = draw(st.lists(st.integers(0, 9999), max_size=6))
        return struct.pack(f"!hhHh{len(digits)}H", len(digits), len(digits) - 1, 0, 0, *digits)
    if fmt == 1 and oid == JSONB:
        return b"\x01" + draw(st.sampled_from([b'{"a": 1}', b'"bob@example.com"', b"[]"]))
    if fmt == 1 and oid == INET:
        return draw(junk)
    if oid == JSON:
        return draw(st.sampled_from([b'{"a": "bob@example.com"}', b"[1, 2]", b'"x"']))
    if oid in (INT4, INT8, NUMERIC):
        return str(draw(st.sampled_from([0, 42, 4111111111111111, -(10**15)]))).encode()
    if draw(st.integers(0, 7)) == 0:
        return draw(junk)  # not necessarily UTF-8
    return draw(text_value)


column = st.tuples(
    st.sampled_from([TEXT, TEXT, VARCHAR, INT4, INT8, NUMERIC, JSON, JSONB, INET, TIMESTAMPTZ]),
    st.sampled_from([0, 1]),
    st.sampled_from([None, None, None, *STYLES]),
)


@st.composite
def batches(
    draw: st.DrawFn,
) -> tuple[RowRewriter, list[list[bytes | None]]]:
    columns = draw(st.lists(column, min_size=1, max_size=7))
    detectors = draw(st.sampled_from([(), *DETECTOR_SETS]))
    rw = rewriter(columns, detectors, draw(st.sampled_from(STYLES)), draw(st.integers(0, 6)))
    return rw, draw(rows_for(columns, max_rows=6))


def rows_for(
    columns: Sequence[tuple[int, int, str | None]], max_rows: int
) -> st.SearchStrategy[list[list[bytes | None]]]:
    """Rows of values that fit ``columns`` ((type oid, format, style) each)."""
    return st.lists(
        st.tuples(*(value_for(oid, fmt) for oid, fmt, _ in columns)).map(list),
        min_size=1,
        max_size=max_rows,
    )


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), before=st.sampled_from([b"", message(b"C", b"SELECT 1\0")]), data=st.data())
def test_property_a_run_of_rows_is_masked_as_each_value_alone(
    batch: tuple[RowRewriter, list[list[bytes | None]]], before: bytes, data: st.DataObject
) -> None:
    rw, rows = batch
    run = b"".join(message(b"D", data_row(values)) for values in rows)
    after = data.draw(
        st.sampled_from([b"", message(b"C", b"SELECT 1\0"), message(b"D", data_row(rows[0]))[:-1]])
    )
    buf = before + run + after
    try:
        expected = [expected_row(rw, values) for values in rows]
    except MaskingFailed:
        expected = None
    try:
        parts, stop = rw.rewrite_rows(buf, len(before), len(buf))
    except MaskingFailed:
        # only a value the triggers flagged that is not UTF-8 (the run's flags may be more than
        # each value's own: a length byte next to a value counts as a neighbour)
        assert any(v is not None and not valid_utf8(v) for values in rows for v in values)
        return
    assert expected is not None, "the per-value rules fail this run, the batch does not"
    assert stop == len(before) + len(run)
    out = b"".join(parts) if parts is not None else run
    assert out == b"".join(message(b"D", body) for body in expected)
    if parts is None:
        assert all(body == data_row(values) for body, values in zip(expected, rows, strict=True))


# --- known gaps of flagging a whole row, closed --------------------------------------------------


def test_many_trigger_hits_in_one_column_do_not_hide_a_hit_in_another() -> None:
    """Flags were kept up to 64 per needle for a whole row: a column full of ``eyJ`` used them up
    and a token in a later column went out unmasked."""
    rw = rewriter([(TEXT, 0, None)] * 3, ("jwt",))
    row = data_row([b"eyJ " * 70, b"x", f"token {JWT}".encode()])
    out = parse_row(rw.rewrite_data_row(row))
    assert out[2] == f"token {REDACTED}".encode()


def test_a_digit_next_to_a_value_does_not_hide_a_card_in_it() -> None:
    """A 49-byte value's length field ends in ``0x31`` (``1``): read with the bytes around it, a
    19-digit card at the value's start became a 20-digit run and was not flagged."""
    card = "6011000990139424124"  # 19 digits, Luhn-valid
    assert DetectorSet.compile(["credit_card"]).find(card)
    value = (card + " is the card on file").encode().ljust(49, b".")
    assert struct.pack("!i", len(value))[-1:] == b"1"
    rw = rewriter([(INT4, 0, None), (TEXT, 0, None)], ("credit_card",))
    out = parse_row(rw.rewrite_data_row(data_row([b"1", value])))
    assert out[1] is not None and card.encode() not in out[1]


# --- values next to each other ----------------------------------------------------------------


def test_hits_never_span_two_values() -> None:
    rw = rewriter([(TEXT, 0, None)] * 4, ("email", "credit_card"))
    row = data_row([b"write to bob", b"@example.com", b"4111 1111", b"1111 1111"])
    assert rw.rewrite_data_row(row) == row


def test_an_at_sign_next_to_a_length_byte_is_not_an_address() -> None:
    # 65 bytes: the length field ends in "A", a character a local part may end with
    value = b"@example.com " + b"x" * 52
    # the last column's @ is followed by the next message's "D"
    tail = b"mail me at bob@"
    rw = rewriter([(TEXT, 0, None), (TEXT, 0, None)], ("email",))
    run = message(b"D", data_row([value, tail])) + message(b"D", data_row([b"a", b"b"]))
    parts, stop = rw.rewrite_rows(run, 0, len(run))
    assert parts is None and stop == len(run)


def test_rows_with_and_without_hits_nulls_and_empty_values() -> None:
    rw = rewriter([(INT4, 1, None), (TEXT, 1, "partial"), (TEXT, 1, None)], ("email",))
    rows = [
        [struct.pack("!i", 1), b"alice@example.com", b"wrote to bob@example.org"],
        [struct.pack("!i", 2), None, b"nothing here"],
        [None, b"", b""],
        [struct.pack("!i", 4), b"ab", None],
        [struct.pack("!i", 5), "ünïcödé@example.com".encode(), "— é bob@ex.org ü".encode()],
    ]
    run = b"".join(message(b"D", data_row(values)) for values in rows)
    parts, _ = rw.rewrite_rows(run, 0, len(run))
    assert parts is not None
    out = b"".join(parts)
    assert out == b"".join(message(b"D", expected_row(rw, values)) for values in rows)
    bodies = []
    pos = 0
    while pos < len(out):
        end = pos + 1 + struct.unpack_from("!I", out, pos + 1)[0]
        bodies.append(parse_row(out[pos + 5 : end]))
        pos = end
    assert bodies[0][1:] == [b"*************.com", f"wrote to {REDACTED}".encode()]
    assert bodies[1][1:] == [None, b"nothing here"]
    assert bodies[2] == [None, b"****", b""]
    assert bodies[3][1:] == [b"*b", None]  # partial never shows more than half
    assert bodies[4][2] == f"— é {REDACTED} ü".encode()
    assert rw.counts == [0, 4, 2]


def test_a_malformed_row_after_good_ones_fails_the_run() -> None:
    rw = rewriter([(TEXT, 0, "redact"), (TEXT, 0, None)], ("email",))
    good = message(b"D", data_row([b"a", b"b"]))
    for bad in (
        message(b"D", data_row([b"a"])),  # too few columns
        message(b"D", b"\x00\x02\x00\x00\x00\x05abc"),  # a value runs past its row
        message(b"D", b"\x00\x02\xff\xff\xff\xfe"),  # a negative length other than -1
        message(b"D", b"\x00\x02\x00\x00\x00\x01a\x00\x00\x00\x09b@ex.com"),
        b"D\x00\x00\x00\x02" + good,  # a message length shorter than its length field
    ):
        run = good + bad + good
        with pytest.raises(MaskingFailed):
            rw.rewrite_rows(run, 0, len(run))


def test_values_of_16_mib_are_scanned_whatever_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only below 16 MiB does the high byte of a length field (0) keep a trigger's run from
    reaching into the value from the bytes before it; longer values are scanned regardless. Shown
    with the limit lowered and a trigger that never fires."""
    email = DetectorSet.compile(["email"])
    silent = DetectorSet(email.names, email.compiled, (lambda raw, out, cap: None,))
    rw = RowRewriter(
        RowDescription((FieldDescription("c", 0, 0, TEXT, -1, -1, 0),)),
        (ColumnMask(None, value_kind(TEXT, 0), SCAN_FLAGGED),),
        silent,
        {"email": Style("redact")},
    )
    monkeypatch.setattr(rows_module, "_LARGE", 40)
    short = b"to bob@example.com"
    long = short + b" " * 30
    assert rw.rewrite_data_row(data_row([short])) == data_row([short])  # no flag: not looked at
    assert parse_row(rw.rewrite_data_row(data_row([long])))[0] == (
        f"to {REDACTED}".encode() + b" " * 30
    )


# --- the engine: any reads, any number of results -------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 400), min_size=1, max_size=30),
    nrows=st.integers(0, 40),
    results=st.integers(1, 3),
)
def test_property_the_masker_gives_the_same_bytes_for_any_reads(
    cuts: list[int], nrows: int, results: int
) -> None:
    """Reads cut anywhere (a row, a header, a length field), several results in one stream."""
    fields = tuple(FieldDescription(f"c{i}", 0, 0, TEXT, -1, -1, 0) for i in range(3))
    desc = RowDescription(fields)
    detect = MaskRules.compile([], [DetectRule("t", ("email", "credit_card"), Style("redact"))])
    mask = StatementMask(detect.plan(None), None)
    rw = detect.plan(None).for_row_description(desc)
    rows = [
        [f"{i}".encode(), f"row {i} bob{i}@ex.org".encode() if i % 3 else None, CARD.encode()]
        for i in range(nrows)
    ]
    one = b"".join(
        [
            message(b"T", encode_row_description(desc)),
            *(message(b"D", data_row(values)) for values in rows),
            message(b"C", f"SELECT {nrows}\0".encode()),
        ]
    )
    stream = one * results + message(b"Z", b"I")
    expected = b"".join(
        [
            message(b"T", encode_row_description(desc)),
            *(message(b"D", rw.rewrite_data_row(data_row(values))) for values in rows),
            message(b"C", f"SELECT {nrows}\0".encode()),
        ]
    )
    masker = ResultMasker(mask, max_decoded=1 << 20, on_masked=lambda seq, masked: None)
    masker.query([mask] * results, None)
    out = []
    pos = 0
    index = 0
    while pos < len(stream):
        size = cuts[index % len(cuts)]
        out.append(masker.process(stream[pos : pos + size]))
        pos += size
        index += 1
    assert b"".join(out) == expected * results + message(b"Z", b"I")
    assert masker.at_boundary
