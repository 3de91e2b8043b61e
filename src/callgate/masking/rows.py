"""Rewriting result messages so masked values never leave callgate (sans-IO, the hot path).

Given a :class:`RowDescription` and what must be masked in each column (built by
:mod:`callgate.masking.plan`), a :class:`RowRewriter` rewrites

* the RowDescription itself (§55.7 RowDescription): a column masked into text whose type would
  not parse the masked text (``int8`` shown as ``************1111``, ``jsonb`` as
  ``[REDACTED]``) is described as ``text`` (OID 25, typlen -1, typmod -1), and
* each DataRow (§55.7 DataRow: Int16 column count, then per column Int32 length, -1 for NULL,
  and that many bytes): columns are skipped by their length; only masked columns — and, when
  detectors apply, columns whose bytes the detectors' prefilter flags — are decoded.

Format codes (§55.2.3): text values are UTF-8 text (callgate requires ``client_encoding`` UTF8
from the upstream). Binary values of text-like types (text, varchar, bpchar, name, unknown, json,
xml) are the same UTF-8 bytes, ``jsonb`` is a version byte 1 and its text; they are rewritten in
place. Any other binary value that must be masked becomes NULL.

Anything that cannot be parsed raises :class:`~callgate.masking.errors.MaskingFailed`: the
engine then sends nothing more of the result (fail closed).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

from callgate.masking.detectors import TAG_BITS, TAG_MASK, DetectorSet, Hit
from callgate.masking.errors import MaskingFailed
from callgate.masking.styles import REDACTED, Style, replace_hits

_I16: Final = struct.Struct("!h")
_I32: Final = struct.Struct("!i")
_LEN: Final = struct.Struct("!I")
_HEADER: Final = struct.Struct("!BI")
_FIELD: Final = struct.Struct("!ihihih")  # table oid, attnum, type oid, typlen, typmod, format
NULL_FIELD: Final = b"\xff\xff\xff\xff"
_NO_FLAGS: Final[list[int]] = []

TEXT_OID: Final = 25
JSON_OID: Final = 114
JSONB_OID: Final = 3802
INT8_OID: Final = 20
NUMERIC_OID: Final = 1700
#: the first OID of objects created by users (extension types: citext, hstore, enums, domains…)
FIRST_USER_OID: Final = 16384

#: values of these types are plain text in both formats and may be rewritten in place
TEXT_TYPES: Final = frozenset(
    {TEXT_OID, 1043, 1042, 19, 705, 142}
)  # varchar bpchar name unknown xml
#: types whose text form cannot hold any detector's hit: never scanned
UNSCANNED_TYPES: Final = frozenset(
    {
        16,
        17,
        21,
        22,
        23,
        24,
        26,
        27,
        28,
        29,
        30,
        700,
        701,
        790,
        1082,
        1083,
        1114,
        1184,
        1186,
        1266,
        1560,
        1562,
        2205,
        2206,
        2950,
        3220,
        600,
        601,
        602,
        603,
        604,
        628,
        718,
    }
)

# value kinds: how a column's bytes are read
K_TEXT: Final = 0  # UTF-8 text, rewritten in place
K_JSON: Final = 1  # JSON text: hits replaced so that it stays JSON
K_JSONB_BIN: Final = 2  # version byte 1 + JSON text
K_OTHER_TEXT: Final = 3  # text form of another type: a hit makes the value NULL
K_INT8_BIN: Final = 4  # binary int8: decoded to digits to be scanned
K_NUMERIC_BIN: Final = 5  # binary numeric: decoded to digits to be scanned
K_OTHER_BIN: Final = 6  # any other binary value: scanned loosely; masked means NULL

#: the smallest 13-digit number: integers below it cannot be card numbers
CARD_MIN: Final = 10**12

SCAN_NEVER: Final = 0
SCAN_FLAGGED: Final = 1  # when the prefilter flags bytes inside the value
SCAN_ALWAYS: Final = 2  # the prefilter cannot see the digits (binary int8/numeric)

# what the DataRow loop does with a column
_OP_PASS: Final = 0
_OP_WHOLE: Final = 1  # a column rule: the whole value
_OP_FLAGGED: Final = 2  # detectors, where the prefilter flagged the value
_OP_ALWAYS: Final = 3  # detectors, always


@dataclass(frozen=True, slots=True)
class FieldDescription:
    """One column of a RowDescription (§55.7)."""

    name: str
    table_oid: int
    attnum: int
    type_oid: int
    typlen: int
    typmod: int
    format: int


@dataclass(frozen=True, slots=True)
class RowDescription:
    fields: tuple[FieldDescription, ...]

    def __len__(self) -> int:
        return len(self.fields)


def decode_row_description(body: bytes) -> RowDescription:
    if len(body) < 2:
        raise MaskingFailed("truncated RowDescription")
    count = _I16.unpack_from(body, 0)[0]
    if count < 0:
        raise MaskingFailed("negative column count in RowDescription")
    pos = 2
    fields: list[FieldDescription] = []
    for _ in range(count):
        end = body.find(b"\0", pos)
        if end < 0 or end + 1 + _FIELD.size > len(body):
            raise MaskingFailed("truncated RowDescription")
        try:
            name = body[pos:end].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MaskingFailed("a column name is not UTF-8") from exc
        table_oid, attnum, type_oid, typlen, typmod, fmt = _FIELD.unpack_from(body, end + 1)
        fields.append(
            FieldDescription(
                name, table_oid & 0xFFFFFFFF, attnum, type_oid & 0xFFFFFFFF, typlen, typmod, fmt
            )
        )
        pos = end + 1 + _FIELD.size
    if pos != len(body):
        raise MaskingFailed("trailing bytes in RowDescription")
    return RowDescription(tuple(fields))


def encode_row_description(desc: RowDescription) -> bytes:
    parts = [_I16.pack(len(desc.fields))]
    for f in desc.fields:
        parts.append(f.name.encode("utf-8") + b"\0")
        parts.append(
            _FIELD.pack(
                _signed(f.table_oid), f.attnum, _signed(f.type_oid), f.typlen, f.typmod, f.format
            )
        )
    return b"".join(parts)


def _signed(oid: int) -> int:
    return oid - (1 << 32) if oid >= 1 << 31 else oid


def value_kind(type_oid: int, fmt: int) -> int:
    if fmt == 0:
        if type_oid in (JSON_OID, JSONB_OID):
            return K_JSON
        if type_oid in TEXT_TYPES or type_oid >= FIRST_USER_OID:
            return K_TEXT
        return K_OTHER_TEXT
    if type_oid in TEXT_TYPES:
        return K_TEXT
    if type_oid == JSON_OID:
        return K_JSON
    if type_oid == JSONB_OID:
        return K_JSONB_BIN
    if type_oid == INT8_OID:
        return K_INT8_BIN
    if type_oid == NUMERIC_OID:
        return K_NUMERIC_BIN
    return K_OTHER_BIN


def needs_retype(type_oid: int, style: Style | None) -> bool:
    """Whether a column masked whole in ``style`` must be described as ``text``."""
    return style is not None and style.name != "null" and type_oid not in TEXT_TYPES


@dataclass(frozen=True, slots=True)
class ColumnMask:
    """What happens to one column's values."""

    #: a column rule's style for the whole value, ``None`` if no column rule covers it
    style: Style | None
    kind: int
    scan: int
    #: for audit: why the column is masked (``public.customers.email``, ``unknown source``)
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RowRewriter:
    """Rewrites the RowDescription and DataRows of one result. Build with
    :meth:`callgate.masking.plan.MaskPlan.for_row_description`."""

    description: RowDescription
    #: per column: ``None`` when the column is passed through untouched
    columns: tuple[ColumnMask | None, ...]
    detectors: DetectorSet | None = None
    detector_styles: Mapping[str, Style] = field(default_factory=dict)
    #: per column: how many values were changed (for audit); the only mutable part
    counts: list[int] = field(default_factory=list)
    is_noop: bool = field(init=False)
    #: per column: covered by a column rule (masked whole)
    masked: tuple[bool, ...] = field(init=False)
    #: per column: content detectors look at it
    scanned: tuple[bool, ...] = field(init=False)
    #: per column: described to the client as ``text`` instead of its own type
    retyped: tuple[bool, ...] = field(init=False)
    _last_static: int = field(init=False)
    _always_scan: bool = field(init=False)
    _flagger: DetectorSet | None = field(init=False)
    _all_detectors: set[int] = field(init=False)
    #: per column: what to do (``_OP_*``), and for a column rule the masked field (length and
    #: bytes) as a constant or as a function of the value's bytes, compiled once per result
    _ops: tuple[int, ...] = field(init=False)
    _whole: tuple[bytes | Callable[[bytes], bytes] | None, ...] = field(init=False)

    def __post_init__(self) -> None:
        cols = self.columns
        if len(cols) != len(self.description.fields):
            raise ValueError("one ColumnMask (or None) per column is needed")
        if not self.counts:
            self.counts.extend([0] * len(cols))
        masked = tuple(c is not None and c.style is not None for c in cols)
        scanned = tuple(
            c is not None and c.scan != SCAN_NEVER and self.detectors is not None for c in cols
        )
        static = [i for i, m in enumerate(masked) if m]
        setattr_ = object.__setattr__
        setattr_(self, "masked", masked)
        setattr_(self, "scanned", scanned)
        setattr_(
            self,
            "retyped",
            tuple(
                needs_retype(f.type_oid, c.style if c else None)
                for f, c in zip(self.description.fields, cols, strict=True)
            ),
        )
        setattr_(self, "_last_static", static[-1] if static else -1)
        setattr_(
            self,
            "_always_scan",
            any(c is not None and c.scan == SCAN_ALWAYS for c in cols) and any(scanned),
        )
        setattr_(self, "_flagger", self.detectors if any(scanned) else None)
        setattr_(
            self,
            "_all_detectors",
            set(range(len(self.detectors.names))) if self.detectors is not None else set(),
        )
        setattr_(self, "is_noop", not any(masked) and not any(scanned))
        ops = []
        for c in cols:
            if c is None:
                ops.append(_OP_PASS)
            elif c.style is not None:
                ops.append(_OP_WHOLE)
            elif self.detectors is None or c.scan == SCAN_NEVER:
                ops.append(_OP_PASS)
            else:
                ops.append(_OP_ALWAYS if c.scan == SCAN_ALWAYS else _OP_FLAGGED)
        setattr_(self, "_ops", tuple(ops))
        setattr_(
            self,
            "_whole",
            tuple(
                _whole_masker(c.style, c.kind) if c is not None and c.style is not None else None
                for c in cols
            ),
        )

    # -- RowDescription -----------------------------------------------------------------------

    def rewrite_row_description(self, body: bytes) -> bytes:
        """The RowDescription to send the client (``body`` unchanged when nothing is retyped)."""
        if not any(self.retyped):
            return body
        fields = tuple(
            FieldDescription(f.name, f.table_oid, f.attnum, TEXT_OID, -1, -1, f.format)
            if retype
            else f
            for f, retype in zip(self.description.fields, self.retyped, strict=True)
        )
        return encode_row_description(RowDescription(fields))

    # -- DataRow ------------------------------------------------------------------------------

    def rewrite_data_row(self, body: bytes) -> bytes:
        """The DataRow body to send the client; ``body`` itself when nothing in it changes."""
        if self.is_noop:
            return body
        flagger = self._flagger
        flags = flagger.flag(body) if flagger is not None else _NO_FLAGS
        ops = self._ops
        ncols = len(ops)
        always = self._always_scan
        last_static = self._last_static
        if flags or always:
            stop = ncols
        else:
            stop = last_static + 1
            if stop == 0:
                return body
        n = len(body)
        if n < 2 or ((body[0] << 8) | body[1]) != ncols:
            raise MaskingFailed("a data row does not match its row description")
        unpack = _I32.unpack_from
        whole = self._whole
        counts = self.counts
        pos = 2
        last = 0
        out: list[bytes] | None = None
        fi = 0
        nflags = len(flags)
        try:
            for i in range(stop):
                length = unpack(body, pos)[0]
                start = pos + 4
                if length < 0:
                    if length != -1:
                        raise MaskingFailed("invalid value length in data row")
                    pos = start  # NULL stays NULL
                    continue
                end = start + length
                if end > n:
                    raise MaskingFailed("truncated data row")
                op = ops[i]
                if op == _OP_PASS:
                    pos = end
                    continue
                new: bytes | None
                if op == _OP_WHOLE:
                    w = whole[i]
                    new = w if isinstance(w, bytes) else w(body[start:end])  # type: ignore[misc]
                else:
                    which: set[int] | None = None
                    if op == _OP_FLAGGED:
                        if fi < nflags:
                            # A flag in this column's length field belongs to a hit that starts
                            # there and runs into the value.
                            low = pos << TAG_BITS
                            while fi < nflags and flags[fi] < low:
                                fi += 1
                            high = end << TAG_BITS
                            while fi < nflags and flags[fi] < high:
                                if which is None:
                                    which = set()
                                which.add(flags[fi] & TAG_MASK)
                                fi += 1
                    else:
                        which = self._all_detectors
                    col = self.columns[i]
                    new = (
                        self._mask(col, body[start:end], which)
                        if which is not None and col is not None
                        else None
                    )
                if new is not None:
                    if out is None:
                        out = []
                    out.append(body[last:pos])
                    out.append(new)
                    last = end
                    counts[i] += 1
                pos = end
                if fi >= nflags and i >= last_static and not always:
                    break  # nothing left to mask: the rest of the row goes as it is
        except struct.error as exc:
            raise MaskingFailed("truncated data row") from exc
        if out is None:
            return body
        out.append(body[last:])
        return b"".join(out)

    def rewrite_rows(self, buf: bytes, pos: int, limit: int) -> tuple[list[bytes] | None, int]:
        """Rewrite the whole DataRow messages (header included) found one after another in
        ``buf[pos:limit]``; stops at the first other or incomplete message.

        Returns the bytes to send for ``buf[pos:stop]`` (``None``: they are unchanged) and
        ``stop``. One call for a run of rows keeps the per-row cost of the engine down."""
        out: list[bytes] | None = None
        mark = pos
        unpack = _LEN.unpack_from
        rewrite = self.rewrite_data_row
        header = _HEADER.pack
        while limit - pos >= 5 and buf[pos] == 68:  # "D"
            end = pos + 1 + unpack(buf, pos + 1)[0]
            if end > limit:
                break
            body = buf[pos + 5 : end]
            new = rewrite(body)
            if new is not body:
                if out is None:
                    out = []
                out.append(buf[mark:pos])
                out.append(header(68, len(new) + 4))
                out.append(new)
                mark = end
            pos = end
        if out is not None and mark < pos:
            out.append(buf[mark:pos])
        return out, pos

    def _mask(self, col: ColumnMask, raw: bytes, which: set[int] | None) -> bytes | None:
        """The new field (length + bytes) for one value, ``None`` to keep it as it is.

        ``which``: the detectors (by index) that flagged the value, to run on it."""
        style = col.style
        if style is not None:
            w = _whole_masker(style, col.kind)
            return w if isinstance(w, bytes) else w(raw)
        kind = col.kind
        detectors = self.detectors
        if detectors is None or which is None:  # pragma: no cover - callers check
            return None
        if kind == K_TEXT:
            text = _decode(raw)
            hits = detectors.find_only(text, which)
            if not hits:
                return None
            new = replace_hits(text, hits, self.detector_styles)
            return NULL_FIELD if new is None else _field(new.encode("utf-8"))
        if kind in (K_JSON, K_JSONB_BIN):
            prefix = raw[:1] if kind == K_JSONB_BIN else b""
            text = _decode(raw[1:] if kind == K_JSONB_BIN else raw)
            hits = detectors.find_only(text, which)
            if not hits:
                return None
            new = mask_json_text(text, hits, self.detector_styles)
            return NULL_FIELD if new is None else _field(prefix + new.encode("utf-8"))
        if kind == K_INT8_BIN:
            number = _int8(raw)
            if -CARD_MIN < number < CARD_MIN:
                return None  # fewer than 13 digits: no card number (the only digits-only hit)
            text = str(number)
        elif kind == K_NUMERIC_BIN:
            if len(raw) < 16:
                return None  # at most 3 base-10000 digits: fewer than 13 decimal digits
            text = decode_numeric(raw)
        elif kind == K_OTHER_TEXT:
            text = _decode(raw)
        else:
            text = raw.decode("utf-8", "replace")
        return NULL_FIELD if detectors.find(text) else None


def _field(data: bytes) -> bytes:
    return _I32.pack(len(data)) + data


def _whole_masker(style: Style, kind: int) -> bytes | Callable[[bytes], bytes]:
    """What a value of ``kind`` masked whole in ``style`` becomes: a constant field, or a
    function of the value's bytes giving the field (length and bytes)."""
    name = style.name
    if name == "null" or kind >= K_INT8_BIN:
        return NULL_FIELD
    if name == "redact":
        return _REDACTED_FIELD
    jsonb = kind == K_JSONB_BIN
    pack = _I32.pack
    if name == "hash":

        def hashed(raw: bytes) -> bytes:
            token = style.token(raw[1:] if jsonb else raw).encode("ascii")
            return pack(len(token)) + token

        return hashed
    if name == "partial":
        keep = style.keep

        def partial(raw: bytes) -> bytes:
            payload = raw[1:] if jsonb else raw
            if payload.isascii():  # characters are bytes: no decoding (the common case)
                n = len(payload)
                visible = min(keep, n // 2)
                if visible <= 0:
                    data = b"*" * max(n, 4)
                else:
                    data = b"*" * (n - visible) + payload[n - visible :]
                return pack(len(data)) + data
            return _whole_text(style, payload)

        return partial
    return lambda raw: _whole_text(style, raw[1:] if jsonb else raw)


def _whole_text(style: Style, payload: bytes) -> bytes:
    masked = style.whole(_decode(payload))
    return NULL_FIELD if masked is None else _field(masked.encode("utf-8"))


_REDACTED_FIELD: Final = _field(REDACTED.encode("ascii"))


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MaskingFailed("a value to be masked is not valid UTF-8") from exc


def _int8(raw: bytes) -> int:
    if len(raw) != 8:
        raise MaskingFailed("a binary int8 value is not 8 bytes")
    value: int = struct.unpack("!q", raw)[0]
    return value


def decode_numeric(raw: bytes) -> str:
    """The text form of a binary ``numeric`` (ndigits, weight, sign, dscale, base-10000 digits)."""
    if len(raw) < 8:
        raise MaskingFailed("truncated binary numeric")
    ndigits, weight, sign, _dscale = struct.unpack_from("!hhHh", raw, 0)
    if ndigits < 0 or len(raw) != 8 + 2 * ndigits:
        raise MaskingFailed("malformed binary numeric")
    if sign == 0xC000:
        return "NaN"
    if sign in (0xD000, 0xF000):
        return "Infinity" if sign == 0xD000 else "-Infinity"
    digits = struct.unpack_from(f"!{ndigits}H", raw, 8)
    value = Decimal(0)
    for index, digit in enumerate(digits):
        value += Decimal(digit).scaleb(4 * (weight - index))
    text = f"{value:f}"
    if sign == 0x4000:
        text = "-" + text
    return text


_JSON_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_TOKEN_CHARS: Final = frozenset("0123456789+-.eE")


def mask_json_text(text: str, hits: Sequence[Hit], styles: Mapping[str, Style]) -> str | None:
    """JSON text with every hit replaced so that the result is still JSON: inside a string the
    replacement is escaped; a hit in a number turns the whole number into a string. ``None``
    (the value becomes NULL) when a style says so or the result would not be JSON."""
    strings = [m.span() for m in _JSON_STRING.finditer(text)]
    parts: list[str] = []
    last = 0
    for start, end, detector in hits:
        replacement = styles[detector].hit(text[start:end], detector)
        if replacement is None:
            return None
        inside = any(a < start and end < b for a, b in strings)
        if inside:
            encoded = json.dumps(replacement, ensure_ascii=False)[1:-1]
        else:
            if any(a < end and start < b for a, b in strings):
                return None
            while start > 0 and text[start - 1] in _JSON_TOKEN_CHARS:
                start -= 1
            while end < len(text) and text[end] in _JSON_TOKEN_CHARS:
                end += 1
            encoded = json.dumps(replacement, ensure_ascii=False)
        if start < last:
            return None
        parts.append(text[last:start])
        parts.append(encoded)
        last = end
    parts.append(text[last:])
    result = "".join(parts)
    try:
        json.loads(result)
    except ValueError:
        return None
    return result
