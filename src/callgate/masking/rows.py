"""Rewriting result messages so masked values never leave callgate (sans-IO, the hot path).

Given a :class:`RowDescription` and what must be masked in each column (built by
:mod:`callgate.masking.plan`), a :class:`RowRewriter` rewrites

* the RowDescription itself (§55.7 RowDescription): a column masked into text whose type would
  not parse the masked text (``int8`` shown as ``************1111``, ``jsonb`` as
  ``[REDACTED]``) is described as ``text`` (OID 25, typlen -1, typmod -1), and
* each DataRow (§55.7 DataRow: Int16 column count, then per column Int32 length, -1 for NULL,
  and that many bytes): columns are skipped by their length; only masked columns — and, when
  detectors apply, columns whose bytes the detectors' prefilter flags — are decoded.

DataRows are rewritten a run at a time (:meth:`RowRewriter.rewrite_rows`, all the whole DataRows
of what the upstream sent): the detectors' prefilter runs once over the run's bytes, and its
flags (byte positions) are handed to the columns they fall in while the rows are walked, in
place, in the buffer they arrived in. The prefilter looks at nothing outside a possible hit, and
the high byte of a value's length field (0 below 16 MiB) is a byte no trigger looks through, so a
hit's flag always lies inside its own value (or that value's length field); longer values are
scanned whatever the flags say. Email hits (the common detector) are found on the value's bytes
(:func:`~callgate.masking.detectors.email_spans`) without decoding it.

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

from callgate.masking.detectors import (
    _DOMAIN_SHAPES,
    EMAIL_CLASSES,
    NO_LIMIT,
    TAG_BITS,
    TAG_MASK,
    DetectorSet,
    Hit,
    email_at,
    email_spans_in,
)
from callgate.masking.errors import MaskingFailed
from callgate.masking.styles import REDACTED, Style, replace_hits

#: the DataRow loop in C (``_rowscan.c``) for the plans it covers, ``None`` when not built;
#: ``RowRewriter`` looks it up here on every run (tests set it to ``None`` to compare)
REWRITE_RUN_C: Callable[..., bytes | None] | None
try:
    from callgate.masking._rowscan import rewrite_run as REWRITE_RUN_C
except ImportError:  # pragma: no cover - built without a C compiler: Python does every run
    REWRITE_RUN_C = None

_I16: Final = struct.Struct("!h")
_I32: Final = struct.Struct("!i")
_I64: Final = struct.Struct("!q")
_LEN: Final = struct.Struct("!I")
_HEADER: Final = struct.Struct("!BI")
_FIELD: Final = struct.Struct("!ihihih")  # table oid, attnum, type oid, typlen, typmod, format
NULL_FIELD: Final = b"\xff\xff\xff\xff"
#: values (and rows) this long or longer are scanned by every detector, flags or not: the high byte
#: of a shorter value's length field is 0, a byte no trigger looks through, which is what keeps a
#: flag for a hit inside its own value when a whole batch of rows is flagged at once
_LARGE: Final = 1 << 24
#: a position past any buffer
_NOWHERE: Final = 1 << 62

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

# what the DataRow loop does with a column (the loop spells them as literals)
_OP_PASS: Final = 0
_OP_CONSTANT: Final = 1  # a column rule whose masked field is a constant
_OP_WHOLE: Final = 2  # a column rule whose masked field is a function of the value
_OP_PARTIAL: Final = 3  # a column rule in style partial (ASCII values inline, else _OP_WHOLE)
_OP_ALWAYS: Final = 4  # detectors, always
_OP_EMAIL: Final = 5  # a text value, the email detector the only one: where it flagged @
_OP_FLAGGED: Final = 6  # detectors, where the prefilter flagged the value


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
    _always_scan: bool = field(init=False)
    _flagger: DetectorSet | None = field(init=False)
    _all_detectors: set[int] = field(init=False)
    #: per column: what to do (``_OP_*``), and for a column rule the masked field (length and
    #: bytes) as a constant or as a function of the value's bytes, compiled once per result
    _ops: tuple[int, ...] = field(init=False)
    _whole: tuple[bytes | Callable[[bytes], bytes] | None, ...] = field(init=False)
    #: the same split by kind, for the loop: the constant fields (``b""`` elsewhere) and the
    #: functions (:func:`_unchanged` elsewhere)
    _constant: tuple[bytes, ...] = field(init=False)
    _function: tuple[Callable[[bytes], bytes], ...] = field(init=False)
    #: ``(index, op)`` of the columns walked in a row with flags (up to the last one not passed
    #: through), and in a row without (up to the last column rule)
    _walk_flagged: tuple[tuple[int, int], ...] = field(init=False)
    _walk_static: tuple[tuple[int, int], ...] = field(init=False)
    #: the column count as a DataRow starts with it
    _count: bytes = field(init=False)
    #: per column: the email fast path applies (a text value)
    _text: tuple[bool, ...] = field(init=False)
    #: every detector, as the bit set of ``rewrite_rows`` (bit ``i``: detector ``i``)
    _all_bits: int = field(init=False)
    #: the index and bit of the email detector (-1 and 0: not chosen), and its hits'
    #: replacement when that is a constant
    _email_tag: int = field(init=False)
    _email_bit: int = field(init=False)
    _email_hit: bytes | None = field(init=False)
    #: per column in style partial: by value length, the new field's length and stars and where
    #: the kept tail starts (filled as lengths are seen), and ``keep``
    _partial: tuple[dict[int, tuple[bytes, int]], ...] = field(init=False)
    _keep: tuple[int, ...] = field(init=False)
    #: per column: the value kind (``K_*``), -1 when passed through
    _kinds: tuple[int, ...] = field(init=False)
    #: the C loop covers this plan: columns passed through, column rules, and the email detector
    #: alone with a constant replacement (a flagged value of a non-text type goes back)
    _c_plan: bool = field(init=False)

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
        whole = tuple(
            _whole_masker(c.style, c.kind) if c is not None and c.style is not None else None
            for c in cols
        )
        names = self.detectors.names if self.detectors is not None else ()
        ops = []
        for c, w in zip(cols, whole, strict=True):
            if c is None:
                ops.append(_OP_PASS)
            elif c.style is not None:
                if isinstance(w, bytes):
                    ops.append(_OP_CONSTANT)
                elif c.style.name == "partial" and c.kind != K_JSONB_BIN:
                    ops.append(_OP_PARTIAL)
                else:
                    ops.append(_OP_WHOLE)
            elif self.detectors is None or c.scan == SCAN_NEVER:
                ops.append(_OP_PASS)
            elif c.scan == SCAN_ALWAYS:
                ops.append(_OP_ALWAYS)
            elif names == ("email",) and c.kind == K_TEXT:
                ops.append(_OP_EMAIL)
            else:
                ops.append(_OP_FLAGGED)
        setattr_(self, "_partial", tuple({} for _ in ops))
        setattr_(
            self, "_keep", tuple(c.style.keep if c is not None and c.style else 0 for c in cols)
        )
        setattr_(self, "_ops", tuple(ops))
        setattr_(self, "_whole", whole)
        setattr_(self, "_constant", tuple(w if isinstance(w, bytes) else b"" for w in whole))
        setattr_(
            self,
            "_function",
            tuple(w if w is not None and not isinstance(w, bytes) else _unchanged for w in whole),
        )
        walk = tuple(enumerate(ops))
        setattr_(self, "_walk_flagged", walk[: max((i + 1 for i, op in walk if op), default=0)])
        setattr_(self, "_walk_static", walk[: static[-1] + 1 if static else 0])
        setattr_(self, "_count", _I16.pack(len(cols)))
        setattr_(self, "_text", tuple(c is not None and c.kind == K_TEXT for c in cols))
        setattr_(self, "_kinds", tuple(c.kind if c is not None else -1 for c in cols))
        setattr_(self, "_all_bits", (1 << len(names)) - 1)
        setattr_(self, "_email_tag", names.index("email") if "email" in names else -1)
        setattr_(self, "_email_bit", 1 << self._email_tag if "email" in names else 0)
        email_style = self.detector_styles.get("email")
        setattr_(
            self,
            "_email_hit",
            REDACTED.encode("ascii")
            if email_style is not None and email_style.name == "redact"
            else None,
        )
        setattr_(
            self,
            "_c_plan",
            not self._always_scan
            and set(ops)
            <= {_OP_PASS, _OP_CONSTANT, _OP_WHOLE, _OP_PARTIAL, _OP_EMAIL}
            | ({_OP_FLAGGED} if names == ("email",) else set())
            and (_OP_EMAIL not in ops or self._email_hit is not None),
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
        """The DataRow body to send the client; ``body`` itself when nothing in it changes.

        One row through :meth:`rewrite_rows` (the engine hands over whole runs of rows)."""
        if self.is_noop:
            return body
        message = _HEADER.pack(68, len(body) + 4) + body
        parts, _ = self.rewrite_rows(message, 0, len(message))
        if parts is None:
            return body
        return b"".join(parts)[5:]

    def rewrite_rows(self, buf: bytes, pos: int, limit: int) -> tuple[list[bytes] | None, int]:
        """Rewrite the whole DataRow messages (header included) found one after another in
        ``buf[pos:limit]``; stops at the first other or incomplete message.

        Returns the bytes to send for ``buf[pos:stop]`` (``None``: they are unchanged) and
        ``stop``. Unchanged bytes are sent as slices spanning many rows; a changed row is its
        header, the unchanged stretches of its body and the new fields."""
        unpack_len = _LEN.unpack_from
        ends: list[int] = []  # where each row ends, counted from ``pos``
        stop = pos
        large = False  # a row of 16 MiB or more: its values are scanned whatever the flags
        while limit - stop >= 5 and buf[stop] == 68:  # "D"
            end = stop + 1 + unpack_len(buf, stop + 1)[0]
            if end > limit:
                break
            if end - stop > _LARGE:
                large = True
            elif end < stop + 5:
                raise MaskingFailed("a data row's length is shorter than its length field")
            ends.append(end - pos)
            stop = end
        if self.is_noop or not ends:
            return None, stop
        run = buf[pos:stop] if pos or stop < len(buf) else buf
        # where the detectors' triggers fire in the run, and (several detectors) which fired
        flagger = self._flagger
        tags: list[int] | None = None
        if flagger is None:
            at: list[int] = []
        elif self._all_bits == 1:
            at = flagger.positions(run)
        else:
            flags = flagger.flag(run, NO_LIMIT)
            at = [flag >> TAG_BITS for flag in flags]
            tags = [flag & TAG_MASK for flag in flags]
        if not at and not self._always_scan and not self._walk_static and not large:
            return None, stop  # no column rule, and no detector can find anything here
        at.append(_NOWHERE)  # a sentinel: no bounds test per step
        fast = REWRITE_RUN_C
        if fast is not None and self._c_plan and type(run) is bytes:
            new = fast(
                run,
                ends,
                at,
                self._walk_flagged,
                self._walk_static,
                self._count,
                self._constant,
                self._keep,
                self._email_hit,
                EMAIL_CLASSES,
                email_at,
                _DOMAIN_SHAPES,
                self.counts,
                _LARGE,
                self._function,
            )
            if new is not None:
                return ([new] if new else None), stop
            # None: something the C loop leaves to this one (it changed nothing)
        try:
            out = self._rewrite_run(run, ends, at, tags)
        except struct.error as exc:
            raise MaskingFailed("truncated data row") from exc
        return out or None, stop

    def _rewrite_run(
        self, run: bytes, ends: list[int], at: list[int], tags: list[int] | None
    ) -> list[bytes]:
        """:meth:`rewrite_rows` for ``run``, DataRows one after another ending at ``ends``;
        ``at``: where the triggers fired in ``run`` (in order, then a sentinel), ``tags``: which
        detector each is (``None``: there is one). Returns the pieces to send (none: unchanged).

        The hot loop of masking, written for the interpreter: locals, literal op codes, bounds
        checked where a value is read and once per row."""
        walk_flagged = self._walk_flagged
        walk_static = self._walk_static
        constant = self._constant
        function = self._function
        partial = self._partial
        counts = self.counts
        count = self._count
        always = self._always_scan
        unpack = _I32.unpack_from
        header = _HEADER.pack
        large = _LARGE
        fi = 0
        nxt = at[0]  # the position of the next flag not yet handed to a value
        # ``run`` translated for finding emails, and whether it is all ASCII (when first needed)
        classes = b""
        ascii_run: bool | None = None
        out: list[bytes] = []
        mark = 0  # run[mark:pos] is still to be sent as it is
        pos = 0
        for end in ends:
            if nxt < end or always or end - pos > large:
                walk = walk_flagged
            elif walk_static:
                walk = walk_static
            else:
                pos = end
                continue
            if run[pos + 5 : pos + 7] != count:  # (a shorter row fails below, at its end)
                raise MaskingFailed("a data row does not match its row description")
            p = pos + 7
            last = pos + 5  # run[last:p] of this row is unchanged so far
            hslot = -1  # where this row's new header goes in ``out``
            delta = 0  # how much longer the row has become
            for i, op in walk:
                length = unpack(run, p)[0]
                if length < 0:
                    if length != -1:
                        raise MaskingFailed("invalid value length in data row")
                    p += 4  # NULL stays NULL
                    continue
                if not op:
                    p += 4 + length  # checked against the row's end below
                    continue
                vend = p + 4 + length
                if op > 4 and nxt >= vend and length < large:
                    p = vend  # detectors, and no flag in this value
                    continue
                if vend > end:
                    raise MaskingFailed("truncated data row")
                start = p + 4
                new: bytes | None
                if op == 1:  # _OP_CONSTANT
                    new = constant[i]
                elif op == 3:  # _OP_PARTIAL
                    raw = run[start:vend]
                    if raw.isascii():  # characters are bytes: no decoding (the common case)
                        shapes = partial[i]
                        shape = shapes.get(length)
                        if shape is None:
                            shape = _partial_shape(self._keep[i], length, shapes)
                        new = shape[0] + raw[shape[1] :]
                    else:
                        new = function[i](raw)
                elif op == 2:  # _OP_WHOLE
                    new = function[i](run[start:vend])
                elif op == 4 and (
                    # _OP_ALWAYS: a binary number; a card number (13+ digits) is the only hit
                    # digits alone can be, so fewer digits are let through without a look
                    # (8 bytes: an int8, or a numeric too short to matter either way)
                    (length == 8 and -CARD_MIN < _I64.unpack_from(run, start)[0] < CARD_MIN)
                    # a numeric of at most 3 base-10000 digits
                    or (length < 16 and self._kinds[i] == K_NUMERIC_BIN)
                ):
                    p = vend
                    continue
                else:  # detectors
                    # The flags inside this field (one in its length field belongs to a hit that
                    # starts there and runs into the value); flags before it lie in columns
                    # passed through and belong to no value. ``ats``: the email trigger's.
                    while nxt < p:
                        fi += 1
                        nxt = at[fi]
                    ats: list[int] | int = -1
                    bits = 0
                    if tags is None:
                        if nxt < vend:
                            bits = 1
                            ats = nxt  # the common case: one flag
                            fi += 1
                            nxt = at[fi]
                            if nxt < vend:
                                ats = [ats]
                                while nxt < vend:
                                    ats.append(nxt)
                                    fi += 1
                                    nxt = at[fi]
                    else:
                        email_tag = self._email_tag
                        found: list[int] = []
                        while nxt < vend:
                            bits |= 1 << tags[fi]
                            if tags[fi] == email_tag:
                                found.append(nxt)
                            fi += 1
                            nxt = at[fi]
                        ats = found[0] if len(found) == 1 else found
                    if op == 4 or length >= large:
                        new = self._detect(self.columns[i], run[start:vend], self._all_bits)
                    elif not bits:
                        p = vend
                        continue
                    elif op == 5 or (bits == self._email_bit and self._text[i]):
                        if ascii_run is None:
                            classes = run.translate(EMAIL_CLASSES)
                            ascii_run = run.isascii()
                        if not ascii_run and not run[start:vend].isascii():
                            _decode(run[start:vend])  # a flagged value must be UTF-8
                        if not isinstance(ats, int):
                            new = self._mask_emails(run, classes, start, vend, ats)
                        elif (span := email_at(classes, start, vend, ats)) is None:
                            new = None
                        elif (hit := self._email_hit) is not None:
                            # the common case, sent as pieces: the new length, the value up to
                            # the email, the replacement; the rest of the value goes on as is
                            if hslot < 0:
                                if mark < pos:
                                    out.append(run[mark:pos])
                                hslot = len(out)
                                out.append(b"")
                            first, stop = span
                            out.append(run[last:p])
                            out.append(_I32.pack(length - (stop - first) + len(hit)))
                            out.append(run[start:first])
                            out.append(hit)
                            delta += len(hit) - (stop - first)
                            last = stop
                            counts[i] += 1
                            p = vend
                            continue
                        else:
                            new = self._mask_emails(run, classes, start, vend, [ats])
                    else:
                        new = self._detect(self.columns[i], run[start:vend], bits)
                if new is not None:
                    if hslot < 0:
                        if mark < pos:
                            out.append(run[mark:pos])
                        hslot = len(out)
                        out.append(b"")
                    out.append(run[last:p])
                    out.append(new)
                    delta += len(new) - (vend - p)
                    last = vend
                    counts[i] += 1
                p = vend
            if p > end:
                raise MaskingFailed("truncated data row")
            if hslot >= 0:
                out[hslot] = header(68, end - pos - 1 + delta)
                mark = last  # the rest of the row goes with what follows
            while nxt < end:  # flags in columns not walked belong to no value
                fi += 1
                nxt = at[fi]
            pos = end
        if out and mark < pos:
            out.append(run[mark:pos])
        return out

    def _detect(self, col: ColumnMask | None, raw: bytes, bits: int) -> bytes | None:
        """The new field for a value the detectors at ``bits`` flagged, ``None``: unchanged."""
        if col is None:  # pragma: no cover - a flagged column has a ColumnMask
            return None
        which = {index for index in range(bits.bit_length()) if bits >> index & 1}
        return self._mask(col, raw, which)

    def _mask_emails(
        self, run: bytes, classes: bytes, start: int, end: int, ats: list[int]
    ) -> bytes | None:
        """The field for the text value ``run[start:end]`` with the email hits replaced, as
        :func:`~callgate.masking.styles.replace_hits` does on the text; ``None``: no hits.
        ``classes``: ``run`` translated by the email classes; ``ats``: where the trigger flagged
        an ``@`` in the value."""
        spans = email_spans_in(classes, start, end, ats)
        if not spans:
            return None
        constant = self._email_hit
        style = self.detector_styles["email"]
        parts: list[bytes] = []
        mark = start
        for first, last in spans:
            if constant is not None:
                replacement = constant
            else:
                text = style.hit(run[first:last].decode("ascii"), "email")
                if text is None:
                    return NULL_FIELD
                replacement = text.encode("utf-8")
            parts.append(run[mark:first])
            parts.append(replacement)
            mark = last
        parts.append(run[mark:end])
        value = b"".join(parts)
        return _I32.pack(len(value)) + value

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

        shapes: dict[int, tuple[bytes, int]] = {}

        def partial(raw: bytes) -> bytes:
            payload = raw[1:] if jsonb else raw
            if payload.isascii():  # characters are bytes: no decoding (the common case)
                n = len(payload)
                shape = shapes.get(n) or _partial_shape(keep, n, shapes)
                return shape[0] + payload[shape[1] :]
            return _whole_text(style, payload)

        return partial
    return lambda raw: _whole_text(style, raw[1:] if jsonb else raw)


def _unchanged(raw: bytes) -> bytes:  # pragma: no cover - never called: a filler
    return _I32.pack(len(raw)) + raw


def _partial_shape(keep: int, n: int, shapes: dict[int, tuple[bytes, int]]) -> tuple[bytes, int]:
    """Style partial on an ASCII value of ``n`` bytes (:func:`~callgate.masking.styles._partial`):
    the new field's length and stars, and where the kept tail of the value starts; remembered
    in ``shapes`` (at most 1024 lengths)."""
    visible = max(min(keep, n // 2), 0)
    stars = max(n, 4) if visible == 0 else n - visible
    shape = (_I32.pack(stars + visible) + b"*" * stars, n - visible)
    if len(shapes) < 1024:
        shapes[n] = shape
    return shape


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
