"""What kind of body a response is: media types, charsets, content codings, and sniffing.

Masking must never be fooled by a label. A ``Content-Type`` only tells callgate where to *start*:
a body labelled JSON that is not JSON fails (502), and a body labelled anything else is looked at
(its first bytes, :func:`looks_like_json` / :func:`looks_like_text`) before callgate decides it
is binary and lets it through unread. See docs/masking.md, "Which bodies are inspected".
"""

from __future__ import annotations

import codecs
import re
import zlib
from typing import Final, Literal

from callgate.masking.errors import MaskingFailed

MediaKind = Literal[
    "json", "ndjson", "event-stream", "form", "multipart", "script", "text", "other"
]

#: bytes of a body's start that :func:`looks_like_json` and :func:`looks_like_text` look at; an
#: engine deciding whether to buffer a body needs at least this much (or the whole body)
SNIFF_BYTES: Final = 1024

#: largest body callgate decompresses to mask it: a few kilobytes of gzip can expand to
#: gigabytes, so the decoded size is bounded like any buffered body
MAX_DECODED_BODY: Final = 64 * 1024 * 1024

_JSON: Final = re.compile(r"application/(?:[\w.-]+\+)?json|text/json")
_NDJSON: Final = frozenset(
    {
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/jsonlines",
        "application/json-seq",
        "application/stream+json",
    }
)
_TEXT: Final = re.compile(
    r"text/.*|application/(?:[\w.-]+\+)?xml|application/(?:x-)?(?:javascript|ecmascript|"
    r"www-form-urlencoded|yaml|x-yaml|graphql|sql|csv|x-sh|x-httpd-php|toml|"
    r"problem\+xml|xhtml\+xml|rtf|x-latex|x-tex|x-csh|x-perl|x-python)"
    r"|image/svg\+xml|message/.*"
)

#: prefixes some APIs put before JSON so that a browser cannot run it as a script (XSSI guards);
#: clients strip them and parse the rest
XSSI_PREFIXES: Final = (")]}'\n", ")]}',\n", ")]}'", "while(1);", "for(;;);", "for (;;);")


def media_type(content_type: str | None) -> str:
    """The lower-cased ``type/subtype`` of a Content-Type (``""`` when there is none)."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def media_kind(content_type: str | None) -> MediaKind:
    media = media_type(content_type)
    if media in SCRIPT_TYPES:
        return "script"
    if media in _NDJSON:
        return "ndjson"
    if media == "text/event-stream":
        return "event-stream"
    if media == "application/x-www-form-urlencoded":
        return "form"
    if media.startswith("multipart/"):
        return "multipart"
    if _JSON.fullmatch(media):
        return "json"
    if _TEXT.fullmatch(media):
        return "text"
    return "other"


def parameter(content_type: str | None, wanted: str) -> str | None:
    """A Content-Type parameter's value (``charset``, ``boundary``), unquoted."""
    if content_type:
        for param in content_type.split(";")[1:]:
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == wanted and value.strip().strip('"'):
                return value.strip().strip('"')
    return None


#: Charsets callgate decodes bodies with (codec names as :func:`codecs.lookup` spells them).
#: In each, a byte below 0x80 is always that ASCII character and never part of a longer one, so
#: the characters that give JSON, scripts and forms their structure (``{ " : \\ ( &``) are
#: the same whichever of these a client decodes with. Charsets where that does not hold (UTF-7,
#: Shift_JIS, EBCDIC, ``unicode_escape`` …) could show a client fields callgate does not see.
ASCII_SAFE_CHARSETS: Final = frozenset(
    {"utf-8", "ascii", "koi8-r", "koi8-u", "mac-roman", "tis-620"}
    | {f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16)}
    | {f"cp{n}" for n in range(1250, 1259)}
)
#: UTF-16 and UTF-32: structure differs from ASCII, but every client that reads them as such
#: sees what callgate sees (a client that reads them as UTF-8 sees no JSON at all).
WIDE_CHARSETS: Final = frozenset(
    {"utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"}
)

#: Byte-order marks, longest first (UTF-32LE's starts like UTF-16LE's).
_BOMS: Final = (
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)


def charset(content_type: str | None, body: bytes | None = None, default: str = "utf-8") -> str:
    """The codec to decode a body with: its byte-order mark's, else UTF-16/32 when its first
    bytes have the zero bytes of ASCII in those (RFC 4627 §3), else its ``charset``
    parameter's, else ``default``. Raises :class:`MaskingFailed` for a charset
    callgate does not know or will not read (see :data:`ASCII_SAFE_CHARSETS`): it cannot mask
    what it cannot read the way every client reads it."""
    if body is not None:
        for bom, codec in _BOMS:
            if body.startswith(bom):
                return codec
        # JSON clients that guess (as RFC 4627 said to) read these as UTF-16/32, whatever the
        # label; clients that follow a label of another charset see no JSON in them at all
        wide = _wide_without_bom(body[:4]) if 0 in body[:4] else None
        if wide is not None:
            return wide
    name = parameter(content_type, "charset")
    if name is None:
        return default
    try:
        codec = codecs.lookup(name).name
    except (LookupError, ValueError):
        raise MaskingFailed(f"the response's charset {name[:40]!r} is not known") from None
    if codec not in ASCII_SAFE_CHARSETS and codec not in WIDE_CHARSETS:
        raise MaskingFailed(
            f"the response's charset {name[:40]!r} is not one callgate reads to mask (UTF-8,"
            " UTF-16, UTF-32 or an ASCII-compatible single-byte charset)"
        )
    if codec in WIDE_CHARSETS and body is not None and len(body) >= 4:
        # labelled UTF-16/32, but without a byte-order mark or the zero bytes of ASCII in it:
        # a client that guesses from the bytes reads it as UTF-8, one that follows the label
        # reads something else, and callgate cannot be both
        raise MaskingFailed(f"the response is labelled {name[:40]!r} but does not read as it")
    return codec


_WIDE_PATTERNS: Final = {
    (True, True, True, False): "utf-32-be",
    (False, True, True, True): "utf-32-le",
    (True, False, True, False): "utf-16-be",
    (False, True, False, True): "utf-16-le",
}


def _wide_without_bom(first: bytes) -> str | None:
    if len(first) < 4:
        return None
    return _WIDE_PATTERNS.get((first[0] == 0, first[1] == 0, first[2] == 0, first[3] == 0))


def _strip_start(text: str) -> str:
    text = text.lstrip("\ufeff \t\r\n\x1e")
    for prefix in XSSI_PREFIXES:
        if text.startswith(prefix):
            return text[len(prefix) :].lstrip(" \t\r\n")
    return text


_WIDE_BOMS: Final = (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff", b"\xff\xfe", b"\xfe\xff")


def _head_text(head: bytes, limit: int = SNIFF_BYTES) -> str:
    for bom in _WIDE_BOMS:
        if head.startswith(bom):
            head = head[len(bom) :]
            break
    else:
        bom = b""
    wide = bool(bom) or (len(head) > 1 and 0 in head[:4])
    if not wide and head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    # white space however long (parsers skip it all), then the first bytes that say something
    head = head.lstrip(b" \t\r\n\x00" if wide else b" \t\r\n")
    if wide:
        # UTF-16/32 (RFC 4627 allowed it for JSON): drop the zero bytes of ASCII characters
        head = head[: 4 * limit].replace(b"\x00", b"")
    return head[:limit].decode("utf-8", "replace")


#: White space and comments (``/* … */``, ``// …``, and ``<!--``, which also starts a line
#: comment in a script) before a script's first statement: one character or one comment per
#: step, possessively, so that matching stays linear.
_SCRIPT_SPACE = (
    r"(?:[\t\n\v\f\r \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
    r"|/\*(?:[^*]|\*(?!/))*\*/|(?://|<!--)[^\n\r\u2028\u2029]*)*+"
)

#: The start of a JSONP response up to its argument: white space and comments (Express writes
#: ``/**/``), an optional ``typeof cb === 'function' &&`` guard, the callback's name (dotted:
#: ``jQuery.cb``) and its opening parenthesis.
JSONP_START: Final = re.compile(
    _SCRIPT_SPACE
    + r"(?:typeof[ \t]+[A-Za-z_$][\w$.]*[ \t]*===?[ \t]*(['\"])function\1[ \t]*&&[ \t]*)?"
    r"[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*[ \t\r\n]*\("
)

_SCRIPT_SPACE_RE: Final = re.compile(_SCRIPT_SPACE)

#: What is left of a head that ends inside the start of a JSONP call: a (dotted) name, maybe
#: after a ``typeof … &&`` guard or inside one, with no parenthesis yet.
_CUT_CALL: Final = re.compile(
    r"typeof(?:[ \t]+(?:[A-Za-z_$][\w$.]*(?:[ \t]*(?:={1,3}(?:[ \t]*(?:(['\"])(?:[a-z]*"
    r"(?:\1(?:[ \t]*(?:&&?(?:[ \t]*(?:[A-Za-z_$][\w$.]*[ \t\r\n]*)?)?)?)?)?)?)?)?)?)?)?)?"
    r"|[A-Za-z_$][\w$.]*[ \t\r\n]*"
)

#: Media types of scripts: a browser runs them, so what they hand to a page is data too.
SCRIPT_TYPES: Final = frozenset(
    {
        "application/javascript",
        "application/x-javascript",
        "application/ecmascript",
        "application/x-ecmascript",
        "text/javascript",
        "text/x-javascript",
        "text/ecmascript",
        "text/jscript",
        "application/jsonp",
    }
)


def jsonp_argument(text: str) -> tuple[int, int] | None:
    """Where the argument of a JSONP body (``cb(<argument>);``) starts and ends in ``text``;
    ``None`` when the text does not start like one or does not end with the call's ``)``
    (an optional ``;`` and white space after it)."""
    start = JSONP_START.match(text)
    if start is None:
        return None
    end = len(text.rstrip(" \t\r\n"))  # by hand: a regex here backtracks on long white space
    if end and text[end - 1] == ";":
        end = len(text[: end - 1].rstrip(" \t\r\n"))
    if end <= start.end() or text[end - 1] != ")":
        return None
    return start.end(), end - 1


def looks_like_jsonp(head: bytes, *, whole: bool = False) -> bool:
    """True when a body starting with ``head`` may be JSONP: a script that calls a function with
    a JSON object or array (``cb({...});``). A browser runs it and hands the function the
    object, so it carries fields exactly as JSON does. ``whole``: ``head`` is the whole body,
    to be looked at past its first :data:`SNIFF_BYTES` (comments before the call)."""
    text = _head_text(head, len(head) if whole else SNIFF_BYTES)
    start = JSONP_START.match(text)
    return start is not None and text[start.end() :].lstrip(" \t\r\n")[:1] in ("{", "[")


def sniff_undecided(head: bytes, more: bool | None = None) -> bool:
    """True when ``head`` is all white space, or ends inside a comment that a script could be
    behind, and more of the body follows (``more``; by default, when ``head`` has at least
    :data:`SNIFF_BYTES`): what follows decides, so the body must be read whole."""
    if not (len(head) >= SNIFF_BYTES if more is None else more):
        return False  # the whole body: nothing follows
    text = _strip_start(_head_text(head))  # a byte-order mark, white space, an XSSI guard
    space = _SCRIPT_SPACE_RE.match(text)
    rest = text[space.end() :] if space is not None else text
    # nothing but white space and comments (a line comment may run on past the head; a
    # character may be cut by it), a block comment that does not end in it, or the start of a
    # JSONP call cut before its parenthesis
    call = JSONP_START.match(rest)
    return (
        # (at most one character cut by the head's end: bytes that are not UTF-8 are not that)
        (len(rest) <= 3 and not rest.rstrip("\ufffd"))
        or (rest.startswith("/*") and "*/" not in rest)
        or _CUT_CALL.fullmatch(rest) is not None
        or (call is not None and not rest[call.end() :].strip(" \t\r\n\ufffd"))
    )


def looks_like_json(head: bytes, *, whole: bool = False) -> bool:
    """True when a body starting with ``head`` may be JSON (an object, an array or a string,
    after a byte-order mark, white space or an XSSI guard). ``whole``: ``head`` is the whole
    body, looked at past its first :data:`SNIFF_BYTES`."""
    text = _strip_start(_head_text(head, len(head) if whole else SNIFF_BYTES))
    return text[:1] in ("{", "[", '"')


#: bytes that do not occur in text (control characters other than tab, newlines, form feed,
#: backspace and escape)
_BINARY_BYTES: Final = bytes(b for b in range(32) if b not in (8, 9, 10, 12, 13, 27)) + b"\x7f"


def looks_like_text(head: bytes) -> bool:
    """True when a body starting with ``head`` may be text in some 8-bit or UTF-8 encoding:
    no NUL byte (unless it starts with a UTF-16 byte-order mark) and almost no other control
    characters. Images, archives, compressed and encrypted data fail this quickly."""
    sample = head[:SNIFF_BYTES]
    if not sample:
        return False
    if sample.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):
        return True
    if b"\x00" in sample:
        return False
    controls = len(sample) - len(sample.translate(None, _BINARY_BYTES))
    return controls * 20 < len(sample)  # under 5 %


# --- content codings ----------------------------------------------------------------------------


def codings(content_encoding: str | None) -> list[str]:
    """The codings applied to a body, in the order they were applied (RFC 9110 §8.4)."""
    if not content_encoding:
        return []
    names = [c.strip().lower() for c in content_encoding.split(",")]
    return [c for c in names if c and c != "identity"]


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    """Inflate ``data``: one gzip member or deflate stream, and nothing after it but zero
    padding. Clients disagree on more (browsers read the first gzip member only, Python's and
    Node's readers every member), so callgate cannot read such a body as all of them do."""
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(data, limit + 1)
    if len(out) > limit or inflater.unconsumed_tail:
        raise MaskingFailed(f"the decompressed response is larger than {limit} bytes")
    if not inflater.eof:
        raise MaskingFailed("the compressed response is truncated")
    if inflater.unused_data.strip(b"\x00"):
        raise MaskingFailed(
            "the compressed response has more after its end (another gzip member or other"
            " data), which clients read differently"
        )
    return out


def decode_content(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """``body`` with its content codings undone. gzip and deflate are understood; any other
    coding (br, zstd, compress) cannot be read, so it cannot be masked: :class:`MaskingFailed`."""
    for coding in reversed(codings(content_encoding)):
        try:
            if coding in ("gzip", "x-gzip"):
                body = _inflate(body, 31, limit)
            elif coding == "deflate":
                # RFC 9110 says zlib-wrapped; some servers send raw deflate
                try:
                    body = _inflate(body, 15, limit)
                except zlib.error:
                    body = _inflate(body, -15, limit)
            else:
                raise MaskingFailed(
                    f"the response is {coding[:20]}-encoded, which callgate cannot decode to mask"
                )
        except zlib.error as exc:
            raise MaskingFailed(f"the {coding}-encoded response is corrupt") from exc
    return body


def decode_head(head: bytes, content_encoding: str | None) -> tuple[bytes, bool] | None:
    """The first bytes of a body's decoded content, from the first bytes of its coded form (to
    sniff what it is), and whether more content follows them; ``None`` for a coding callgate
    cannot read (br, zstd …) or a head that does not inflate."""
    more = False
    for coding in reversed(codings(content_encoding)):
        attempts: tuple[int, ...]
        if coding in ("gzip", "x-gzip"):
            attempts = (31,)
        elif coding == "deflate":
            attempts = (15, -15)
        else:
            return None
        for wbits in attempts:
            inflater = zlib.decompressobj(wbits)
            try:
                decoded = inflater.decompress(head, SNIFF_BYTES)
            except zlib.error:
                continue
            if inflater.eof and (inflater.unused_data or len(head) >= SNIFF_BYTES):
                # more after the end, or maybe more after a member that ends with the head: some
                # readers read on (Python's gzip), others stop; mask_body decides
                return None
            # a long gzip header leaves little or nothing decoded yet: what there is may still
            # be looked at, knowing that more follows
            more = more or not inflater.eof
            head = decoded
            break
        else:
            return None
    return head, more


def encode_content(body: bytes, content_encoding: str | None) -> bytes:
    """``body`` with the codings of ``content_encoding`` applied again."""
    for coding in codings(content_encoding):
        if coding in ("gzip", "x-gzip"):
            compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        else:
            compressor = zlib.compressobj(6, zlib.DEFLATED, 15)
        body = compressor.compress(body) + compressor.flush()
    return body
