"""Rewriting ``COPY … TO STDOUT`` rows (CopyData messages, §55.2.6: always one row per message).

The columns of a COPY result are only known by position (CopyOutResponse gives their count and
format, no types and no origins), so the plan comes from the statement's lineage alone.

* text format: fields split at the delimiter; ``\\``-escapes (``\\t``, ``\\n``, ``\\\\``, octal,
  ``\\x``) undone before masking and applied again after; the NULL string stays NULL, a value
  masked to ``null`` becomes the NULL string;
* CSV: quoted fields (quote and escape characters from the statement's options), a masked value
  is always written quoted, NULL is the unquoted NULL string;
* binary: a masked column becomes NULL (-1). Content detectors cannot tell text from other binary
  values, so a binary COPY is refused when detectors apply.

The header line of ``HEADER`` is passed through (column names, not values).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from callgate.masking.detectors import DetectorSet
from callgate.masking.errors import MaskingFailed
from callgate.masking.lineage import CopyFormat
from callgate.masking.styles import Style, replace_hits

_I16: Final = struct.Struct("!h")
_I32: Final = struct.Struct("!i")
BINARY_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\0"

_UNESCAPE: Final = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_ESCAPE_TEXT: Final = re.compile(r"\\(x[0-9A-Fa-f]{1,2}|[0-7]{1,3}|.)", re.DOTALL)


def decode_copy_out_response(body: bytes) -> tuple[int, tuple[int, ...]]:
    """CopyOutResponse (§55.7): the overall format (0 text, 1 binary) and each column's."""
    if len(body) < 3:
        raise MaskingFailed("truncated CopyOutResponse")
    overall = body[0]
    count = _I16.unpack_from(body, 1)[0]
    if count < 0 or len(body) != 3 + 2 * count:
        raise MaskingFailed("malformed CopyOutResponse")
    return overall, tuple(_I16.unpack_from(body, 3 + 2 * i)[0] for i in range(count))


@dataclass
class _CopyState:
    header_pending: bool
    counts: list[int]
    binary_header: bool = True


@dataclass(frozen=True, slots=True)
class CopyRewriter:
    """Rewrites the CopyData rows of one ``COPY … TO STDOUT``."""

    copy_format: CopyFormat | None
    styles: tuple[Style | None, ...]
    detectors: DetectorSet | None = None
    detector_styles: Mapping[str, Style] = field(default_factory=dict)
    state: _CopyState = field(init=False)

    def __post_init__(self) -> None:
        fmt = self.copy_format
        object.__setattr__(
            self,
            "state",
            _CopyState(bool(fmt and fmt.header), [0] * len(self.styles)),
        )
        if self.is_noop:
            return
        if fmt is None:
            raise MaskingFailed("the format of this COPY is not known")
        if fmt.format == "binary" and self.detectors is not None:
            raise MaskingFailed(
                "content detectors cannot scan a binary COPY; use COPY … (FORMAT text) or csv"
            )

    @property
    def is_noop(self) -> bool:
        return self.detectors is None and all(style is None for style in self.styles)

    @property
    def counts(self) -> list[int]:
        return self.state.counts

    def rewrite_copy_data(self, body: bytes) -> bytes:
        """The CopyData body to send the client."""
        if self.is_noop:
            return body
        fmt = self.copy_format
        assert fmt is not None  # checked in __post_init__
        if fmt.format == "binary":
            return self._binary(body)
        if self.state.header_pending:
            self.state.header_pending = False
            return body
        if all(style is None for style in self.styles) and (
            self.detectors is None or not self.detectors.may_match(body)
        ):
            return body
        try:
            line = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MaskingFailed("a COPY row is not valid UTF-8") from exc
        if not line.endswith("\n"):
            raise MaskingFailed("a COPY row does not end with a newline")
        out = self._csv(line[:-1], fmt) if fmt.format == "csv" else self._text(line[:-1], fmt)
        return body if out is None else (out + "\n").encode("utf-8")

    # -- text format --------------------------------------------------------------------------

    def _text(self, line: str, fmt: CopyFormat) -> str | None:
        raw = _split_text(line, fmt.delimiter)
        self._check_width(len(raw))
        changed = False
        for index, text in enumerate(raw):
            if text == fmt.null:
                continue
            value = _unescape(text)
            new = self._mask(index, value)
            if new is _KEEP:
                continue
            changed = True
            raw[index] = fmt.null if new is None else _escape_text(str(new), fmt.delimiter)
        return fmt.delimiter.join(raw) if changed else None

    # -- CSV ----------------------------------------------------------------------------------

    def _csv(self, line: str, fmt: CopyFormat) -> str | None:
        fields = _split_csv(line, fmt)
        self._check_width(len(fields))
        changed = False
        out: list[str] = []
        for index, (raw, value, quoted) in enumerate(fields):
            if not quoted and value == fmt.null:
                out.append(raw)
                continue
            new = self._mask(index, value)
            if new is _KEEP:
                out.append(raw)
                continue
            changed = True
            if new is None:
                out.append(fmt.null)
            else:
                text = str(new)
                escaped = "".join(
                    fmt.escape + ch if ch in (fmt.quote, fmt.escape) else ch for ch in text
                )
                out.append(fmt.quote + escaped + fmt.quote)
        return fmt.delimiter.join(out) if changed else None

    # -- binary -------------------------------------------------------------------------------

    def _binary(self, body: bytes) -> bytes:
        pos = 0
        prefix = b""
        if self.state.binary_header:
            self.state.binary_header = False
            if not body.startswith(BINARY_SIGNATURE) or len(body) < 19:
                raise MaskingFailed("a binary COPY does not start with its signature")
            ext = _I32.unpack_from(body, 15)[0]
            pos = 19 + ext
            if ext < 0 or pos > len(body):
                raise MaskingFailed("malformed binary COPY header")
            prefix = body[:pos]
            if pos == len(body):
                return body
        if len(body) - pos < 2:
            raise MaskingFailed("truncated binary COPY row")
        count = _I16.unpack_from(body, pos)[0]
        if count == -1:
            return body
        self._check_width(count)
        parts = [prefix, body[pos : pos + 2]]
        pos += 2
        for index in range(count):
            if pos + 4 > len(body):
                raise MaskingFailed("truncated binary COPY row")
            length = _I32.unpack_from(body, pos)[0]
            end = pos + 4 + max(length, 0)
            if length < -1 or end > len(body):
                raise MaskingFailed("malformed binary COPY row")
            if self.styles[index] is not None and length >= 0:
                parts.append(b"\xff\xff\xff\xff")
                self.state.counts[index] += 1
            else:
                parts.append(body[pos:end])
            pos = end
        if pos != len(body):
            raise MaskingFailed("trailing bytes in a binary COPY row")
        return b"".join(parts)

    # -- shared -------------------------------------------------------------------------------

    def _check_width(self, width: int) -> None:
        if width != len(self.styles):
            raise MaskingFailed("a COPY row does not have the announced number of columns")

    def _mask(self, index: int, value: str) -> str | object | None:
        style = self.styles[index]
        if style is not None:
            self.state.counts[index] += 1
            return style.whole(value)
        if self.detectors is None:
            return _KEEP
        hits = self.detectors.find(value)
        if not hits:
            return _KEEP
        self.state.counts[index] += 1
        return replace_hits(value, hits, self.detector_styles)


_KEEP: Final = object()


def _split_text(line: str, delimiter: str) -> list[str]:
    if "\\" not in line:
        return line.split(delimiter)
    fields: list[str] = []
    start = 0
    i = 0
    n = len(line)
    while i < n:
        ch = line[i]
        if ch == "\\":
            i += 2
            continue
        if ch == delimiter:
            fields.append(line[start:i])
            start = i + 1
        i += 1
    fields.append(line[start:])
    return fields


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text

    def one(match: re.Match[str]) -> str:
        seq = match.group(1)
        if seq[0] == "x" and len(seq) > 1:
            return chr(int(seq[1:], 16))
        if seq[0] in "01234567":
            return chr(int(seq, 8) & 0xFF)
        return _UNESCAPE.get(seq, seq)

    return _ESCAPE_TEXT.sub(one, text)


def _escape_text(value: str, delimiter: str) -> str:
    out: list[str] = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == delimiter:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _split_csv(line: str, fmt: CopyFormat) -> list[tuple[str, str, bool]]:
    """(raw text, value, was quoted) per field."""
    fields: list[tuple[str, str, bool]] = []
    n = len(line)
    i = 0
    while True:
        start = i
        if i < n and line[i] == fmt.quote:
            i += 1
            value: list[str] = []
            while True:
                if i >= n:
                    raise MaskingFailed("unterminated quoted field in a CSV COPY row")
                ch = line[i]
                if (
                    ch == fmt.escape
                    and i + 1 < n
                    and line[i + 1] in (fmt.quote, fmt.escape)
                    and (fmt.escape != fmt.quote or line[i + 1] == fmt.quote)
                ):
                    value.append(line[i + 1])
                    i += 2
                    continue
                if ch == fmt.quote:
                    i += 1
                    break
                value.append(ch)
                i += 1
            fields.append((line[start:i], "".join(value), True))
        else:
            end = line.find(fmt.delimiter, i)
            end = n if end < 0 else end
            fields.append((line[i:end], line[i:end], False))
            i = end
        if i >= n:
            break
        if line[i] != fmt.delimiter:
            raise MaskingFailed("malformed CSV COPY row")
        i += 1
        if i == n:
            fields.append(("", "", False))
            break
    return fields
