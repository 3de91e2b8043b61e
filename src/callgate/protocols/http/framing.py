"""Message bodies: how long one is (RFC 9112 §6.3), reading it incrementally, writing chunks.

:func:`request_framing` and :func:`response_framing` decide how a body is delimited, refusing
every ambiguity a front end and a back end might resolve differently (request smuggling,
RFC 9112 §11.2): both Content-Length and Transfer-Encoding, several Content-Length lines or a
list, a Transfer-Encoding whose final coding is not ``chunked``.

The readers turn framed bytes into payload bytes: ``feed(data)`` returns the payload found in
``data``; :attr:`done` turns true at the end of the message, and :attr:`leftover` then holds the
bytes that followed it (a pipelined request, or bytes the upstream should not have sent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, NamedTuple

from callgate.protocols.http.errors import (
    ExpectationFailed,
    HttpRequestError,
    HttpResponseError,
    UnsupportedRequest,
)
from callgate.protocols.http.head import (
    _FIELD_LINE,
    RequestHead,
    ResponseHead,
    tokens,
)

#: Longest chunk-size line, extensions included. Extensions carry nothing callgate forwards;
#: a long one is only ever a way to make us buffer.
MAX_CHUNK_LINE: Final = 4096
#: Hex digits of a chunk size: 16 cover 2**64 - 1. More (even leading zeros) is refused rather
#: than parsed into a huge integer (the overflow behind several smuggling CVEs).
MAX_CHUNK_SIZE_DIGITS: Final = 16
#: Bytes of trailer fields after the last chunk (parsed and checked, then dropped).
MAX_TRAILER_BYTES: Final = 16 * 1024
#: Digits of a Content-Length: 18 stay under 2**63 for any peer's integer type.
MAX_LENGTH_DIGITS: Final = 18

# RFC 9112 §7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
_TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED: Final = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE: Final = re.compile(
    rb"([0-9A-Fa-f]{1,%d})" % MAX_CHUNK_SIZE_DIGITS
    + rb"(?:[ \t]*;[ \t]*"
    + _TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:"
    + _TOKEN
    + rb"|"
    + _QUOTED
    + rb"))?)*"
)


# --- how a body is delimited ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoBody:
    pass


class Length(NamedTuple):
    length: int


@dataclass(frozen=True, slots=True)
class Chunked:
    pass


@dataclass(frozen=True, slots=True)
class UntilClose:
    """A response body delimited by the connection closing (RFC 9112 §6.3, rule 8)."""


Framing = NoBody | Length | Chunked | UntilClose

NO_BODY: Final = NoBody()
CHUNKED: Final = Chunked()
UNTIL_CLOSE: Final = UntilClose()


def _content_length(values: list[str], *, request: bool) -> int:
    err = HttpRequestError if request else HttpResponseError
    who = "request" if request else "upstream response"
    if len(values) > 1:
        # RFC 9110 §8.6 lets a recipient accept identical repeats; refusing every repeat leaves
        # no room for "5" and "5, 6" to be read differently by two parsers.
        raise err(f"{who} has more than one Content-Length header")
    value = values[0]
    # 1*DIGIT (RFC 9110 §8.6) without a regex call: ASCII digits only (str.isdigit alone takes
    # other scripts' digits), 1 to MAX_LENGTH_DIGITS of them.
    if not (value.isascii() and value.isdigit() and len(value) <= MAX_LENGTH_DIGITS):
        raise err(f"{who} has an invalid Content-Length")
    return int(value)


def _transfer_codings(head: RequestHead | ResponseHead) -> list[str]:
    return [c for v in head.get_all("transfer-encoding") for c in tokens(v)]


def request_framing(head: RequestHead) -> NoBody | Length | Chunked:
    """How the request's body is delimited (RFC 9112 §6.3), or raise."""
    has_te = "transfer-encoding" in head.names
    has_cl = "content-length" in head.names
    if has_te:
        if head.version < (1, 1):
            # RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing.
            raise HttpRequestError("Transfer-Encoding in an HTTP/1.0 request")
        if has_cl:
            # RFC 9112 §6.3 rule 3: a smuggling attempt unless proven otherwise; refuse.
            raise HttpRequestError("request has both Content-Length and Transfer-Encoding")
        codings = _transfer_codings(head)
        if not codings or codings[-1] != "chunked":
            # RFC 9112 §6.3: the length cannot be determined; MUST respond 400 and close.
            raise HttpRequestError("request Transfer-Encoding does not end with chunked")
        if len(codings) > 1:
            # RFC 9112 §6.1: a coding we do not understand SHOULD get 501.
            raise UnsupportedRequest(
                f"request transfer coding {', '.join(codings[:-1])} is not supported"
            )
        return CHUNKED
    if has_cl:
        n = _content_length(head.get_all("content-length"), request=True)
        return Length(n) if n else NO_BODY
    return NO_BODY


def response_framing(head: ResponseHead, request_method: str) -> Framing:
    """How a response to ``request_method`` is delimited (RFC 9112 §6.3), or raise."""
    status = head.status
    if request_method == "HEAD" or status < 200 or status in (204, 304):
        # Rule 1: never a body, whatever the fields say. Content-Length on a HEAD response
        # describes the GET representation and is forwarded as it is.
        return NO_BODY
    has_te = "transfer-encoding" in head.names
    has_cl = "content-length" in head.names
    if has_te:
        if has_cl:
            # Rule 3 says Transfer-Encoding wins but "ought to be handled as an error".
            raise HttpResponseError(
                "upstream response has both Content-Length and Transfer-Encoding"
            )
        codings = _transfer_codings(head)
        if codings == ["chunked"]:
            return CHUNKED
        if codings and codings[-1] == "chunked":
            raise HttpResponseError(
                f"upstream used the transfer coding {', '.join(codings[:-1])}, "
                "which callgate does not decode"
            )
        # Rule 4 would read such a body until the connection closes; callgate cannot tell
        # whether it decoded it as the upstream meant, so it refuses.
        raise HttpResponseError("upstream response Transfer-Encoding does not end with chunked")
    if has_cl:
        names = head.names
        if names.count("content-length") > 1:
            raise HttpResponseError("upstream response has more than one Content-Length header")
        n = _content_length([head.fields[names.index("content-length")][1]], request=False)
        return Length(n) if n else NO_BODY
    return UNTIL_CLOSE


# --- connection semantics ---------------------------------------------------------------------


def request_keep_alive(head: RequestHead) -> bool:
    """Whether the caller wants the connection kept after this exchange (RFC 9112 §9.3):
    HTTP/1.1 unless ``Connection: close``; HTTP/1.0 only with ``Connection: keep-alive``."""
    options = tokens(head.get("connection"))
    if "close" in options:
        return False
    if head.version >= (1, 1):
        return True
    return "keep-alive" in options


def response_keep_alive(head: ResponseHead) -> bool:
    options = tokens(head.get("connection"))
    if "close" in options:
        return False
    if head.version >= (1, 1):
        return True
    return "keep-alive" in options


def expects_continue(head: RequestHead) -> bool:
    """True for ``Expect: 100-continue`` on HTTP/1.1; raise 417 for any other expectation.

    RFC 9110 §10.1.1: an HTTP/1.0 request's 100-continue MUST be ignored; other expectations
    MAY be answered with 417.
    """
    value = head.get("expect")
    if value is None:
        return False
    expectations = tokens(value)
    if expectations != ["100-continue"]:
        raise ExpectationFailed("only Expect: 100-continue is supported")
    return head.version >= (1, 1)


def connection_options(value: str | None) -> frozenset[str]:
    """The field names listed in a Connection header, lower case (hop-by-hop for this hop)."""
    return frozenset(tokens(value))


# --- readers ------------------------------------------------------------------------------------


class LengthReader:
    """A body of a known length (Content-Length)."""

    __slots__ = ("done", "leftover", "remaining")

    def __init__(self, length: int) -> None:
        self.remaining = length
        self.done = length == 0
        self.leftover = b""

    def feed(self, data: bytes) -> bytes:
        remaining = self.remaining
        if len(data) < remaining:
            self.remaining = remaining - len(data)
            return data
        self.remaining = 0
        self.done = True
        self.leftover = data[remaining:]
        return data[:remaining] if self.leftover else data

    def eof(self) -> None:
        """The connection closed; raise unless the body was complete."""
        if not self.done:
            raise _truncated(self)


class BodyIncomplete(EOFError):
    """The connection closed before the end of a body that has a defined end."""


def _truncated(reader: object) -> BodyIncomplete:
    return BodyIncomplete("the connection closed before the end of the body")


class UntilCloseReader:
    """A response body that ends when the upstream closes the connection."""

    __slots__ = ("done", "leftover")

    def __init__(self) -> None:
        self.done = False
        self.leftover = b""

    def feed(self, data: bytes) -> bytes:
        return data

    def eof(self) -> None:
        self.done = True


_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedReader:
    """The chunked transfer coding (RFC 9112 §7.1), strictly: CRLF after every size line, chunk
    and trailer line; hex sizes of at most :data:`MAX_CHUNK_SIZE_DIGITS` digits; well-formed
    extensions (ignored); trailer fields checked like header fields, kept in :attr:`trailers`.

    ``request`` picks the error type (400 for a caller, 502 for an upstream).
    """

    __slots__ = (
        "_err",
        "_line",
        "_remaining",
        "_state",
        "_trailer_bytes",
        "done",
        "leftover",
        "trailers",
    )

    def __init__(self, *, request: bool) -> None:
        self._err: type[HttpRequestError] | type[HttpResponseError] = (
            HttpRequestError if request else HttpResponseError
        )
        self._state = _SIZE
        self._line = bytearray()
        self._remaining = 0
        self._trailer_bytes = 0
        self.done = False
        self.leftover = b""
        self.trailers: list[tuple[str, str]] = []

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        pos, n = 0, len(data)
        while pos < n:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, n - pos)
                out.append(data[pos : pos + take] if take < n or pos else data)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _DATA_END
            elif state in (_SIZE, _TRAILER):
                line, pos = self._take_line(data, pos)
                if line is None:
                    break
                if state == _SIZE:
                    self._size_line(line)
                else:
                    self._trailer_line(line)
                    if self._state == _DONE:
                        self.leftover = data[pos:]
                        break
            elif state == _DATA_END:
                # Exactly CRLF after the chunk data; anything else means the size lied.
                need = 2 - len(self._line)
                self._line += data[pos : pos + need]
                pos += min(need, n - pos)
                if len(self._line) == 2:
                    if self._line != b"\r\n":
                        raise self._err("chunk data is not followed by CRLF")
                    self._line.clear()
                    self._state = _SIZE
                elif self._line != b"\r":
                    raise self._err("chunk data is not followed by CRLF")
            else:  # _DONE: leftover was set when the state was reached
                break
        if len(out) == 1:
            return out[0]
        return b"".join(out)

    def _take_line(self, data: bytes, pos: int) -> tuple[bytes | None, int]:
        """The next line without its CRLF, or ``None`` (kept for later) if it is incomplete."""
        end = data.find(b"\n", pos)
        limit = MAX_CHUNK_LINE if self._state == _SIZE else MAX_TRAILER_BYTES
        if end < 0:
            self._line += data[pos:]
            if len(self._line) > limit:
                raise self._err(
                    "chunk size line too long"
                    if self._state == _SIZE
                    else "trailer section too large"
                )
            return None, len(data)
        self._line += data[pos : end + 1]
        line = bytes(self._line)
        self._line.clear()
        if len(line) > limit + 2:
            raise self._err(
                "chunk size line too long" if self._state == _SIZE else "trailer section too large"
            )
        if len(line) < 2 or line[-2] != 0x0D:
            raise self._err("chunked body line ends in a bare LF; CRLF is required")
        return line[:-2], end + 1

    def _size_line(self, line: bytes) -> None:
        m = _CHUNK_LINE.fullmatch(line)
        if m is None:
            raise self._err("invalid chunk size line")
        size = int(m.group(1), 16)
        if size == 0:
            self._state = _TRAILER
        else:
            self._remaining = size
            self._state = _DATA

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            self._state = _DONE
            self.done = True
            return
        self._trailer_bytes += len(line) + 2
        if self._trailer_bytes > MAX_TRAILER_BYTES:
            raise self._err("trailer section too large")
        m = _FIELD_LINE.fullmatch(line)
        if m is None:
            raise self._err("malformed trailer field")
        self.trailers.append((m.group(1).decode("ascii"), m.group(2).decode("latin-1")))

    def eof(self) -> None:
        if not self.done:
            raise _truncated(self)


BodyReader = LengthReader | ChunkedReader | UntilCloseReader


def body_reader(framing: Framing, *, request: bool) -> BodyReader | None:
    """A reader for ``framing``; ``None`` when there is no body."""
    if isinstance(framing, Length):
        return LengthReader(framing.length)
    if isinstance(framing, Chunked):
        return ChunkedReader(request=request)
    if isinstance(framing, UntilClose):
        return UntilCloseReader()
    return None


# --- writing chunks -----------------------------------------------------------------------------

#: The last chunk with no trailer fields (RFC 9112 §7.1).
LAST_CHUNK: Final = b"0\r\n\r\n"
_CRLF: Final = b"\r\n"


def chunk_parts(data: bytes) -> tuple[bytes, bytes, bytes]:
    """One chunk as three buffers (size line, data, CRLF) for ``writelines``, so a large
    payload is never copied into a new bytes object. ``data`` must not be empty (an empty chunk
    is the last one)."""
    return (b"%x\r\n" % len(data), data, _CRLF)


def encode_chunk(data: bytes) -> bytes:
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)
