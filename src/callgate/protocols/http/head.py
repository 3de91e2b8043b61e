"""Request and response heads: the start line and header fields of an HTTP/1.1 message.

Strict on purpose: callgate sits between a caller and an API that may read an ambiguous head
differently, and any difference is a smuggling or policy-bypass lever (RFC 9112 §11.2). So:

- lines end in CRLF; a bare LF or CR anywhere in a head is refused (RFC 9112 §2.2 lets a
  recipient accept a bare LF; callgate does not, since the upstream might not);
- a field line that starts with whitespace (obs-fold, RFC 9112 §5.2) is refused;
- whitespace between a field name and its colon is refused (RFC 9112 §5.1: MUST be 400);
- field names are tokens, field values visible characters, SP, HTAB and obs-text only
  (RFC 9110 §5.5: CR, LF and NUL are never valid; other controls are refused too);
- sizes are bounded (the constants below).

Caller-side problems raise :class:`~callgate.protocols.http.errors.HttpRequestError` (or a
subclass with its own status); upstream-side problems raise
:class:`~callgate.protocols.http.errors.HttpResponseError`.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

from callgate.protocols.http.errors import (
    HeadTooLarge,
    HttpRequestError,
    HttpResponseError,
    TargetTooLong,
    VersionNotSupported,
)

#: Largest head (start line and every field line) accepted, requests and responses alike.
#: nginx serves 4 x 8 KiB header buffers by default and Apache ~100 lines of 8 KiB; 64 KiB holds
#: any real head (large cookies, JWTs) while bounding what one connection can make us hold.
MAX_HEAD_BYTES: Final = 64 * 1024
#: Longest request line. RFC 9112 §3 asks for at least 8000 octets; longer is almost always an
#: attack or a bug, and is refused with 414.
MAX_REQUEST_LINE: Final = 16 * 1024
#: Most field lines in one head (Apache's LimitRequestFields default). Each costs a tuple; a
#: flood of tiny fields is a CPU lever, not a real request.
MAX_HEADER_FIELDS: Final = 100
#: Responses may carry more fields (many Set-Cookie lines, CDN headers).
MAX_RESPONSE_HEADER_FIELDS: Final = 256
#: CRLFs tolerated before a request line (RFC 9112 §2.2: a server SHOULD ignore at least one
#: empty line received before the request line, some clients send one after a POST body).
MAX_LEADING_EMPTY_LINES: Final = 4

_TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE: Final = re.compile(_TOKEN)
# RFC 9112 §5.1: field-line = field-name ":" OWS field-value OWS. The value has no leading or
# trailing whitespace and only field-vchar / SP / HTAB inside (RFC 9110 §5.5).
_FIELD_LINE: Final = re.compile(
    rb"(" + _TOKEN + rb"):[ \t]*"
    rb"((?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?)"
    rb"[ \t]*"
)
_FIELD_STR: Final = (
    r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*"
    r"((?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?)"
    r"[ \t]*\r\n"
)
# The same field line on the latin-1 text of a whole header section, with its CRLF, anchored at
# the start of a line: one ``findall`` splits a section and, with a count of its lines, checks it.
_FIELD_LINES: Final = re.compile("^" + _FIELD_STR, re.MULTILINE)
# RFC 9112 §3: request-line = method SP request-target SP HTTP-version, single spaces. The target
# is checked in detail by callgate.protocols.http.target; here: visible ASCII only.
_REQUEST_LINE: Final = re.compile(
    "(" + _TOKEN.decode("ascii") + r") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])"
)
# RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]. Some servers leave
# out the SP before an empty reason; that is accepted (the reason is ignored anyway).
_STATUS_LINE: Final = re.compile(
    r"HTTP/([0-9])\.([0-9]) ([1-9][0-9]{2})(?: ([\t\x20-\x7e\x80-\xff]*))?"
)
_HOST: Final = re.compile(
    r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]{0,5})?", re.ASCII
)

Fields = tuple[tuple[str, str], ...]


class RequestHead(NamedTuple):
    """A parsed request head. ``fields`` keep the caller's name case and order; ``names`` are
    the same names in lower case (``names[i]`` is ``fields[i][0].lower()``). Immutable (a
    named tuple: cheap to build, once per request)."""

    method: str
    target: str
    #: ``(1, 1)`` or ``(1, 0)``
    version: tuple[int, int]
    fields: Fields
    names: tuple[str, ...]

    def get(self, name: str) -> str | None:
        """The value of the one field ``name`` (lower case), ``None`` if absent. With several
        lines of that name, their values joined by ``", "`` (RFC 9110 §5.3)."""
        return _get(self.fields, self.names, name)

    def get_all(self, name: str) -> list[str]:
        return _get_all(self.fields, self.names, name)

    def count(self, name: object) -> int:
        """How many field lines are called ``name`` (lower case)."""
        return self.names.count(name)


class ResponseHead(NamedTuple):
    status: int
    reason: str
    version: tuple[int, int]
    fields: Fields
    names: tuple[str, ...]

    def get(self, name: str) -> str | None:
        return _get(self.fields, self.names, name)

    def get_all(self, name: str) -> list[str]:
        return _get_all(self.fields, self.names, name)

    def count(self, name: object) -> int:
        return self.names.count(name)


_new: Final = tuple.__new__


def _get(fields: Fields, names: tuple[str, ...], name: str) -> str | None:
    """``name``'s value, several lines joined by ``", "``; ``None`` if absent."""
    # Most lookups are for a field that is absent or appears once: tuple searches in C.
    if name not in names:
        return None
    if names.count(name) == 1:
        return fields[names.index(name)][1]
    return ", ".join(_get_all(fields, names, name))


def _get_all(fields: Fields, names: tuple[str, ...], name: str) -> list[str]:
    if name not in names:
        return []
    return [fields[i][1] for i, n in enumerate(names) if n == name]


def tokens(value: str | None) -> list[str]:
    """The comma-separated list ``value`` as lower-case items, empty ones dropped
    (RFC 9110 §5.6.1: a recipient MUST accept and ignore empty list elements)."""
    if not value:
        return []
    return [t for t in (part.strip(" \t").lower() for part in value.split(",")) if t]


# --- finding the end of a head ----------------------------------------------------------------


def head_end(data: bytes, *, request: bool) -> int:
    """Where a head that arrived whole in one read ends: the index just past its CRLFCRLF, when
    ``data`` holds all of it within :data:`MAX_HEAD_BYTES` and it needs none of what
    :class:`HeadReader` does for heads in pieces (a request's leading empty lines); else -1,
    and the bytes go to a HeadReader. The usual case, without building one."""
    if request and data[:2] == b"\r\n":
        return -1
    end = data.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
    return end + 4 if end >= 0 else -1


class HeadReader:
    """Collects bytes until a whole head (up to and including the empty line) has arrived.

    ``feed`` returns ``None`` until then; afterwards the head bytes, with :attr:`leftover`
    holding what came after it (the start of the body, or a pipelined request). Refuses a head
    over ``max_bytes`` and a bare LF as soon as it is seen, without waiting for more.
    """

    __slots__ = ("_buf", "_request", "_skipped", "leftover", "max_bytes")

    def __init__(self, *, request: bool, max_bytes: int = MAX_HEAD_BYTES) -> None:
        self._buf = bytearray()
        self._request = request
        self._skipped = 0
        self.max_bytes = max_bytes
        self.leftover = b""

    @property
    def started(self) -> bool:
        """True once any byte of a head arrived (an idle keep-alive connection has none)."""
        return bool(self._buf) or self._skipped > 0

    def feed(self, data: bytes) -> bytes | None:
        buf = self._buf
        if not buf and self._request and data[:2] == b"\r\n":
            data = self._skip_empty_lines(data)
            if not data:
                return None
        if not buf:
            # The usual case: a whole head in one read, taken without copying it into the buffer.
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                if end + 4 > self.max_bytes:
                    raise self._too_large()
                self.leftover = data[end + 4 :]
                return data[: end + 4]
        start = max(0, len(buf) - 3)
        buf += data
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            self._check_partial(start)
            return None
        head = bytes(buf[: end + 4])
        self.leftover = bytes(buf[end + 4 :])
        buf.clear()
        if len(head) > self.max_bytes:
            raise self._too_large()
        return head

    def _skip_empty_lines(self, data: bytes) -> bytes:
        while data[:2] == b"\r\n":
            self._skipped += 1
            if self._skipped > MAX_LEADING_EMPTY_LINES:
                raise HttpRequestError("too many empty lines before the request line")
            data = data[2:]
        return data

    def _check_partial(self, start: int) -> None:
        buf = self._buf
        if len(buf) > self.max_bytes:
            raise self._too_large()
        # A head written with bare LFs would never show CRLFCRLF: say so now, not at the limit.
        at = buf.find(b"\n", start)
        while at >= 0:
            if at == 0 or buf[at - 1] != 0x0D:
                raise self._bare_lf()
            at = buf.find(b"\n", at + 1)
        if self._request and b"\r\n" not in buf and len(buf) > MAX_REQUEST_LINE:
            raise TargetTooLong(f"request line longer than {MAX_REQUEST_LINE} bytes")

    def _too_large(self) -> HttpRequestError | HttpResponseError:
        if self._request:
            return HeadTooLarge(f"request head larger than {self.max_bytes} bytes")
        return HttpResponseError(f"upstream response head larger than {self.max_bytes} bytes")

    def _bare_lf(self) -> HttpRequestError | HttpResponseError:
        if self._request:
            return HttpRequestError("request head line ends in a bare LF; CRLF is required")
        return HttpResponseError("upstream response head line ends in a bare LF")


# --- parsing --------------------------------------------------------------------------------------


def _fields(text: str, *, request: bool, limit: int) -> tuple[Fields, tuple[str, ...]]:
    """The field lines of a head: ``text`` is every line with its CRLF (the empty line not
    included), decoded as latin-1. Checked and split by one regex pass over the whole block (no
    per-line Python loop); only a block that fails is looked at line by line, to say what is
    wrong.

    Why one pass is enough: a match starts at the start of a line (``^``) and can hold no CR or
    LF before the CRLF that ends it, so each match is exactly one whole line. The block ends in
    CRLF, so it has as many lines as LFs; as many matches as LFs means every line is a valid
    field line (and no CR or LF stands anywhere else)."""
    pairs: list[tuple[str, str]] = _FIELD_LINES.findall(text)
    if len(pairs) != text.count("\n"):
        err: type[HttpRequestError] | type[HttpResponseError] = (
            HttpRequestError if request else HttpResponseError
        )
        for line in text[:-2].encode("latin-1").split(b"\r\n"):
            if not _FIELD_LINE.fullmatch(line):
                raise err(_field_problem(line, request=request))
        raise err("malformed header section")  # pragma: no cover - a line fails above
    if len(pairs) > limit:
        if request:
            raise HeadTooLarge(f"more than {limit} header fields")
        raise HttpResponseError(f"upstream response has more than {limit} header fields")
    return tuple(pairs), tuple([name.lower() for name, _ in pairs])


def _field_problem(line: bytes, *, request: bool) -> str:
    who = "request" if request else "upstream response"
    if line[:1] in (b" ", b"\t"):
        # RFC 9112 §5.2: obs-fold is deprecated; a server MUST reject or unfold. We reject.
        return f"{who} header uses line folding (obs-fold), which is not accepted"
    colon = line.find(b":")
    if colon < 0:
        return f"{who} header line without a colon"
    if colon == 0:
        return f"{who} header line with an empty field name"
    name = line[:colon]
    if name[-1:] in (b" ", b"\t"):
        return f"{who} header has whitespace before the colon (RFC 9112 §5.1)"
    if not _TOKEN_RE.fullmatch(name):
        return f"{who} header field name is not a token"
    if b"\r" in line or b"\n" in line:
        return f"{who} header contains a bare CR or LF"
    return f"{who} header field value contains a control character"


def _start_line(head: bytes) -> tuple[str, str]:
    """The start line and the field lines (each with its CRLF) of a head ending in CRLFCRLF,
    decoded as latin-1 (one byte, one character: patterns see exactly the bytes sent)."""
    text = head.decode("latin-1")
    end = text.find("\r\n")
    return text[:end], text[end + 2 : -2]


def parse_request_head(head: bytes) -> RequestHead:
    """Parse a request head (what :class:`HeadReader` returned, with its CRLFCRLF)."""
    line, block = _start_line(head)
    if len(line) > MAX_REQUEST_LINE:
        raise TargetTooLong(f"request line longer than {MAX_REQUEST_LINE} bytes")
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        raise HttpRequestError(_request_line_problem(line.encode("latin-1")))
    method, target, major, minor = m.groups()
    if major != "1":
        raise VersionNotSupported(f"HTTP/{major}.{minor} is not supported; use HTTP/1.1")
    fields, names = _fields(block, request=True, limit=MAX_HEADER_FIELDS)
    version = (1, 0) if minor == "0" else (1, 1)
    # tuple.__new__ directly: a named tuple's own __new__ is a Python-level lambda.
    head_ = _new(RequestHead, (method, target, version, fields, names))
    _check_host(head_)
    return head_


def _request_line_problem(line: bytes) -> str:
    if b"\r" in line or b"\n" in line:
        return "request line contains a bare CR or LF"
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        return "malformed request line (expected METHOD SP TARGET SP HTTP/1.1, single spaces)"
    if not _TOKEN_RE.fullmatch(parts[0]):
        return "request method is not a token"
    if not re.fullmatch(rb"HTTP/[0-9]\.[0-9]", parts[2]):
        return "malformed HTTP version in the request line"
    return "request target contains characters outside visible ASCII"


def _check_host(head: RequestHead) -> None:
    # RFC 9112 §3.2: a server MUST respond 400 to an HTTP/1.1 request without Host, with more
    # than one Host line, or with an invalid Host value.
    names = head.names
    n = names.count("host")
    if n > 1:
        raise HttpRequestError("more than one Host header")
    if n == 0:
        if head.version >= (1, 1):
            raise HttpRequestError("HTTP/1.1 request without a Host header")
        return
    host = head.fields[names.index("host")][1]
    if not _HOST.fullmatch(host):
        raise HttpRequestError("invalid Host header")


def parse_response_head(head: bytes) -> ResponseHead:
    line, block = _start_line(head)
    m = _STATUS_LINE.fullmatch(line)
    if m is None:
        raise HttpResponseError("upstream sent a malformed status line")
    major, minor, status, reason = m.groups()
    if major != "1":
        raise HttpResponseError(f"upstream answered with HTTP/{major}.{minor}")
    fields, names = _fields(block, request=False, limit=MAX_RESPONSE_HEADER_FIELDS)
    version = (1, 0) if minor == "0" else (1, 1)
    return _new(ResponseHead, (int(status), reason or "", version, fields, names))


# --- writing --------------------------------------------------------------------------------------


def encode_request_head(method: str, target: str, fields: Fields) -> bytes:
    """``METHOD target HTTP/1.1`` and the fields. The caller validated every part (fields that
    came from a parsed head, or callgate's own)."""
    if not fields:
        return f"{method} {target} HTTP/1.1\r\n\r\n".encode("latin-1")
    lines = "\r\n".join(map(": ".join, fields))
    return f"{method} {target} HTTP/1.1\r\n{lines}\r\n\r\n".encode("latin-1")


def encode_response_head(status: int, reason: str, fields: Fields) -> bytes:
    if not fields:
        return f"HTTP/1.1 {status} {reason}\r\n\r\n".encode("latin-1")
    lines = "\r\n".join(map(": ".join, fields))
    return f"HTTP/1.1 {status} {reason}\r\n{lines}\r\n\r\n".encode("latin-1")


_SAFE_VALUE: Final = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_SAFE_NAME: Final = re.compile(_TOKEN.decode("ascii"))


def valid_field(name: str, value: str) -> bool:
    """True when ``name: value`` can be written in a head without changing its framing (used
    for fields callgate adds from config or an injector, never trusted blindly)."""
    return bool(_SAFE_NAME.fullmatch(name)) and bool(_SAFE_VALUE.fullmatch(value))
