"""COPY … TO STDOUT rows: text, CSV and binary."""

from __future__ import annotations

import struct

import pytest

from callgate.masking.copy import BINARY_SIGNATURE, decode_copy_out_response
from callgate.masking.errors import MaskingFailed
from callgate.masking.lineage import statement_lineage
from callgate.masking.plan import MaskRules
from callgate.masking.styles import REDACTED
from tests.masking.helpers import columns_of, rules

EMAIL_RULE = rules([("customers.email", "redact")], [(("credit_card",), "partial")])


def copier(sql: str, r: MaskRules = EMAIL_RULE, width: int = 3):  # type: ignore[no-untyped-def]
    lineage = statement_lineage(sql, columns_of)
    return r.plan(lineage).for_copy(lineage.copy, width)


def test_text_format() -> None:
    c = copier("COPY (SELECT id, email, note FROM customers) TO STDOUT")
    row = b"1\ta\\tb@c.com\tcard 4111111111111111 \\\\ ok\n"
    assert c.rewrite_copy_data(row) == f"1\t{REDACTED}\tcard ************1111 \\\\ ok\n".encode()
    assert c.rewrite_copy_data(b"2\t\\N\t\\N\n") == b"2\t\\N\t\\N\n"
    assert c.counts == [0, 1, 1]


def test_text_format_null_style_and_custom_delimiter() -> None:
    c = copier(
        "COPY (SELECT id, email, note FROM customers) TO STDOUT (DELIMITER '|', NULL 'nil')",
        rules([("customers.email", "null")]),
    )
    assert c.rewrite_copy_data(b"1|a\\|b|x\n") == b"1|nil|x\n"


def test_text_format_escapes_masked_values() -> None:
    c = copier(
        "COPY (SELECT id, email, note FROM customers) TO STDOUT",
        rules([("customers.email", "partial")]),
    )
    assert c.rewrite_copy_data(b"1\tabcd\\tfgh\tx\n") == b"1\t****\\tfgh\tx\n"


def test_csv_with_header() -> None:
    c = copier("COPY (SELECT id, email, note FROM customers) TO STDOUT (FORMAT csv, HEADER)")
    assert c.rewrite_copy_data(b"id,email,note\n") == b"id,email,note\n"
    row = b'1,"a,""b""@c.com","line\nbreak 4111-1111-1111-1111"\n'
    out = c.rewrite_copy_data(row).decode()
    assert out == f'1,"{REDACTED}","line\nbreak ****************1111"\n'.replace(
        "****************1111", "***************1111"
    )
    assert c.rewrite_copy_data(b'2,,""\n') == b'2,,""\n'  # NULL and empty string stay


def test_table_copy_uses_column_positions() -> None:
    c = copier("COPY customers TO STDOUT", width=5)
    assert (
        c.rewrite_copy_data(b"1\tx@y.z\tBob\t\\N\t\\N\n")
        == f"1\t{REDACTED}\tBob\t\\N\t\\N\n".encode()
    )


def test_binary_copy() -> None:
    c = copier(
        "COPY (SELECT id, email, name FROM customers) TO STDOUT (FORMAT binary)",
        rules([("customers.email", "redact")]),
    )
    header = BINARY_SIGNATURE + struct.pack("!ii", 0, 0)
    row = struct.pack("!h", 3) + b"".join(
        struct.pack("!i", len(v)) + v for v in (b"\0\0\0\1", b"a@b.c", b"Bob")
    )
    out = c.rewrite_copy_data(header + row)
    assert out.startswith(header) and b"a@b.c" not in out and b"Bob" in out
    assert c.rewrite_copy_data(b"\xff\xff") == b"\xff\xff"
    with pytest.raises(MaskingFailed, match="binary COPY"):
        copier(
            "COPY customers TO STDOUT (FORMAT binary)", rules(detect=[(("email",), "redact")]), 5
        )


def test_wrong_width_fails_closed() -> None:
    c = copier("COPY (SELECT id, email, note FROM customers) TO STDOUT")
    with pytest.raises(MaskingFailed):
        c.rewrite_copy_data(b"1\ta@b.c\n")


def test_copy_out_response() -> None:
    assert decode_copy_out_response(b"\x00\x00\x02\x00\x00\x00\x00") == (0, (0, 0))
    with pytest.raises(MaskingFailed):
        decode_copy_out_response(b"\x00\x00\x02\x00\x00")
