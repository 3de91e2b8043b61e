"""HTTP body formats, masked: JSON, JSON lines, server-sent events, multipart, forms, text.

:class:`BodyMasker` turns a body and its Content-Type into the masked body (the same object when
nothing needed masking), choosing how to read it from the media type and, where the type does not
settle it, from the body itself (:mod:`callgate.masking.media`). It raises
:class:`~callgate.masking.errors.MaskingFailed` for anything it cannot read but must. Used by
:class:`~callgate.masking.http.HttpMaskPlan`; docs/masking.md, "HTTP responses".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from callgate.masking.detectors import DetectorSet
from callgate.masking.errors import MaskingFailed, NotJson
from callgate.masking.jsonmask import JsonMasker
from callgate.masking.media import (
    WIDE_CHARSETS,
    XSSI_PREFIXES,
    charset,
    jsonp_argument,
    looks_like_json,
    looks_like_jsonp,
    looks_like_text,
    media_kind,
    parameter,
)
from callgate.masking.styles import REDACTED


@dataclass(frozen=True, slots=True)
class BodyMasker:
    """Masks whole bodies with one :class:`JsonMasker` (path rules and detectors)."""

    masker: JsonMasker

    @property
    def detectors(self) -> DetectorSet | None:
        return self.masker.detectors

    def payload(self, body: bytes, content_type: str | None, _depth: int = 0) -> bytes:
        """``body`` (no content coding) masked as its type says, or as it looks when the type
        does not settle it; the same object when nothing changed."""
        kind = media_kind(content_type)
        if kind == "json":
            return self._json_body(body, content_type, lines=False)
        if kind == "ndjson":
            return self._json_body(body, content_type, lines=True)
        if kind == "event-stream":
            return self._event_stream(body, content_type)
        if kind == "multipart":
            return self._multipart(body, content_type, _depth)
        if kind == "form" and self.detectors is not None:
            return self._form(body, content_type)
        if kind == "script":
            return self._script(body, content_type)
        if looks_like_json(body, whole=True):
            # JSON under another label (or none) is masked as JSON, also for detectors only: a
            # hit replaced in the raw text could break it (a card number written as a number)
            try:
                return self._json_body(body, content_type, lines=False)
            except NotJson:
                pass  # read, but not JSON: a client's JSON parser would not read it either
        if looks_like_jsonp(body, whole=True):
            # without a type (or a generic one) a page may well run it as a script; under a
            # text type, something that only starts like JSONP (``Note (see [1])``) is text
            masked = self._jsonp_body(body, content_type, strict=kind == "other")
            if masked is not None:
                return masked
        if self.detectors is not None and (kind == "text" or looks_like_text(body)):
            return self._text(body, content_type)
        return body

    def _json_body(self, body: bytes, content_type: str | None, *, lines: bool) -> bytes:
        """Raises :class:`NotJson` when the body reads but is not JSON (nor JSON lines nor
        JSONP), :class:`MaskingFailed` when it cannot be read."""
        codec = charset(content_type, body)
        try:
            text = body.decode(codec)
        except UnicodeError as exc:
            raise MaskingFailed(f"a JSON body is not valid {codec}") from exc
        scan = self._may_hit(body, codec)
        new: str | None
        if not lines:
            try:
                new = self._json_text(text, scan)
            except NotJson:
                # ``application/json`` used for JSON lines, or for JSONP
                new = self._json_lines(text, scan) if "\n" in text.strip() else None
                if new is None and looks_like_jsonp(body):
                    new = self._jsonp_text(text, scan)
                if new is None:
                    raise
        else:
            new = self._json_lines(text, scan)
            if new is None:
                raise NotJson("a JSON-lines body has a line that is not JSON")
        if new is text:
            return body
        return _encode(new, codec)

    def _json_lines(self, text: str, scan: bool) -> str | None:
        parts = re.split(r"(\r?\n|\x1e)", text)
        changed = False
        for index in range(0, len(parts), 2):
            line = parts[index]
            if not line.strip():
                continue
            try:
                new = self._json_text(line, scan)
            except NotJson:
                return None
            if new is not line:
                parts[index] = new
                changed = True
        return "".join(parts) if changed else text

    def _script(self, body: bytes, content_type: str | None) -> bytes:
        """A script (``application/javascript`` …): masked as JSON when it is JSON (with or
        without an XSSI guard), as JSONP when it is JSONP; otherwise, with path rules, refused,
        since callgate cannot tell what a script hands to the page that runs it; with detectors
        only, scanned as text."""
        if looks_like_json(body, whole=True):
            try:
                return self._json_body(body, content_type, lines=False)
            except NotJson:
                pass
        masked = self._jsonp_body(body, content_type, strict=True)
        if masked is not None:
            return masked
        return self._text(body, content_type)  # no path rules (else _jsonp_body raised)

    def _jsonp_body(self, body: bytes, content_type: str | None, *, strict: bool) -> bytes | None:
        """A JSONP body (:func:`looks_like_jsonp`) with its argument masked as JSON; ``None``
        when it is not JSONP with a JSON argument, unless ``strict`` (a script's label) and the
        plan has path rules: then it raises :class:`MaskingFailed`, since a browser would run the
        script and could read fields callgate cannot find."""
        codec = charset(content_type, body)
        try:
            text = body.decode(codec)
        except UnicodeError as exc:
            raise MaskingFailed(f"a JSONP body is not valid {codec}") from exc
        new = self._jsonp_text(text, self._may_hit(body, codec))
        if new is None:
            if strict and self.masker.rules:
                raise MaskingFailed(
                    "a script response that is not JSONP with a JSON argument: callgate cannot"
                    " mask it"
                )
            return None
        return body if new is text else _encode(new, codec)

    def _jsonp_text(self, text: str, scan: bool) -> str | None:
        """``cb(<JSON>);`` with the JSON masked (``text`` itself when nothing changed); ``None``
        when ``text`` is not one call of one function with one JSON argument."""
        found = jsonp_argument(text)
        if found is None:
            return None
        begin, end = found
        argument = text[begin:end]
        if argument.lstrip(" \t\r\n")[:1] not in ("{", "["):
            return None  # a string can be code to a page (``eval``, ``document.write``)
        try:
            # ``"__proto__": {…}`` in an object literal sets the object's prototype: the page
            # reads the fields under it as the object's own, where no path rule looks
            doc = json.loads(argument, parse_float=_float, object_pairs_hook=_no_proto)
        except json.JSONDecodeError:
            return None
        except (ValueError, RecursionError) as exc:
            # JSON a page reads (1e400, a huge number, deep nesting, a prototype) and callgate
            # cannot mask
            raise MaskingFailed("a JSONP argument callgate cannot read") from exc
        out = self._masked_json(doc, scan)
        return text if out is None else text[:begin] + out + text[end:]

    def _masked_json(self, doc: object, scan: bool) -> str | None:
        """A parsed document masked and written back; ``None`` when nothing changed."""
        new, _count = self.masker.mask(doc, scan=scan)
        if new is doc:
            return None
        try:
            out = json.dumps(new, ensure_ascii=False, separators=(",", ":"))
            if not out.isascii():
                try:
                    out.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate from a ``\\ud800`` escape
                    out = json.dumps(new, ensure_ascii=True, separators=(",", ":"))
            return out
        except (ValueError, RecursionError) as exc:  # pragma: no cover - parsed JSON dumps
            raise MaskingFailed("a masked JSON body could not be written") from exc

    def _json_text(self, text: str, scan: bool) -> str:
        """One JSON document (with an optional byte-order mark and XSSI guard) masked; ``text``
        itself when nothing changed. Raises :class:`MaskingFailed` when it is not JSON."""
        start = len(text) - len(text.lstrip("\ufeff \t\r\n\x1e"))
        prefix_end = start
        for guard in XSSI_PREFIXES:
            if text.startswith(guard, start):
                prefix_end = start + len(guard)
                break
        document = text[prefix_end:]
        if not document.strip():
            if prefix_end == start:
                return text  # nothing but white space: nothing to leak
            raise NotJson("a JSON body has nothing after its guard prefix")
        try:
            doc = json.loads(document, parse_float=_float)
        except json.JSONDecodeError as exc:
            raise NotJson("a JSON body is not valid JSON") from exc
        except ValueError as exc:
            if not _json_syntax(document):
                raise NotJson("a JSON body is not valid JSON") from exc
            # valid JSON to a JavaScript client (1e400, a 5,000-digit number)
            raise MaskingFailed("a JSON body holds a number callgate cannot read") from exc
        except RecursionError as exc:
            raise MaskingFailed("a JSON body is nested deeper than callgate reads") from exc
        out = self._masked_json(doc, scan)
        return text if out is None else text[:prefix_end] + out

    def _event_stream(self, body: bytes, content_type: str | None) -> bytes:
        """Server-sent events (text/event-stream, WHATWG HTML §9.2): the ``data`` lines of each
        event are joined and masked as JSON when they are JSON, as text otherwise; other lines
        (event names, ids, comments) as text. Works on any run of whole events. Event streams
        are always UTF-8 (clients ignore a ``charset``), so they are read as UTF-8 here too."""
        codec = "utf-8"
        text = body.decode(codec, "surrogateescape")
        bom = "\ufeff" if text.startswith("\ufeff") else ""  # ignored by clients
        events = _EVENT_END.split(text[len(bom) :])
        changed = False
        for index in range(0, len(events), 2):
            event = events[index]
            new = self._event(event)
            if new is not event:
                events[index] = new
                changed = True
        if not changed:
            return body
        return (bom + "".join(events)).encode(codec, "surrogateescape")

    def _event(self, event: str) -> str:
        lines = re.split(r"\r\n|\n|\r", event)
        data = [line[5:].removeprefix(" ") for line in lines if line.startswith("data:")]
        other = [line for line in lines if not line.startswith("data:")]
        payload = "\n".join(data)
        new_payload = payload
        if data and looks_like_json(payload.encode("utf-8", "surrogateescape")):
            try:
                new_payload = self._json_text(payload, scan=True)
            except NotJson:
                new_payload = payload
        if new_payload is payload and self.detectors is not None:
            new_payload = self.detect_text(payload)
        new_other = [self.detect_text(line) for line in other]
        if new_payload is payload and all(a is b for a, b in zip(new_other, other, strict=True)):
            return event
        out = [line for line in new_other if line]
        out += ["data: " + line for line in new_payload.split("\n")] if data else []
        return "\n".join(out)

    def _multipart(self, body: bytes, content_type: str | None, depth: int = 0) -> bytes:
        """``multipart/*`` (RFC 2046 §5.1): each part masked by its own Content-Type. A part
        callgate cannot read (base64 or quoted-printable transfer encoding) fails the body."""
        boundary = parameter(content_type, "boundary")
        if boundary is None:
            raise MaskingFailed("a multipart body has no boundary")
        if depth >= MAX_MULTIPART_DEPTH:
            raise MaskingFailed("multipart bodies are nested too deeply")
        delimiter = b"--" + boundary.encode("latin-1", "replace")
        # a delimiter counts only at the start of a line (RFC 2046 §5.1.1), as MIME parsers read it
        # and only as the whole line: ``--b`` or ``--b--``, then optional blanks and the line end
        pieces = re.split(
            rb"(?:\A|(?<=\n))" + re.escape(delimiter) + rb"(?=(?:--)?[ \t]*(?:\r?\n|\Z))", body
        )
        # a line that only starts like one (``--bX``) is a delimiter to some parsers
        # (requests-toolbelt splits on ``\r\n--b`` anywhere): callgate cannot read it as all do
        if re.search(
            rb"(?:\A|(?<=\n))" + re.escape(delimiter) + rb"(?!(?:--)?[ \t]*(?:\r?\n|\Z))", body
        ):
            raise MaskingFailed("a multipart body has a line that starts like its boundary")
        changed = False
        # pieces[0] is the preamble; the last piece starts with "--" (the close delimiter)
        for index in range(1, len(pieces)):
            piece = pieces[index]
            if piece.startswith(b"--"):
                break
            new = self._part(piece, depth)
            if new is not piece:
                pieces[index] = new
                changed = True
        return delimiter.join(pieces) if changed else body

    def _part(self, piece: bytes, depth: int) -> bytes:
        split = re.search(rb"\r?\n\r?\n", piece)
        if split is None:
            return piece
        head, content = piece[: split.end()], piece[split.end() :]
        # the CRLF before the next delimiter belongs to the delimiter (RFC 2046 §5.1.1)
        tail = b"\r\n" if content.endswith(b"\r\n") else b"\n" if content.endswith(b"\n") else b""
        content = content[: len(content) - len(tail)]
        fields: dict[str, str] = {}
        for line in head.decode("latin-1").splitlines():
            name, colon, value = line.partition(":")
            if colon:
                key = name.strip().lower()
                if key in _PART_READING and key in fields and fields[key] != value.strip():
                    # parsers disagree on which one counts: callgate cannot read it as all do
                    raise MaskingFailed(f"a multipart part has two different {key[:40]} fields")
                fields[key] = value.strip()
        encoding = fields.get("content-transfer-encoding", "").lower()
        if encoding not in ("", "7bit", "8bit", "binary"):
            raise MaskingFailed(f"a multipart part is {encoding[:20]}-encoded")
        new = self.payload(content, fields.get("content-type"), depth + 1)
        return piece if new is content else head + new + tail

    def _form(self, body: bytes, content_type: str | None) -> bytes:
        """``application/x-www-form-urlencoded``: detectors on each decoded name and value (an
        ``@`` written ``%40`` is still an email)."""
        codec = charset(content_type, body)
        try:
            text = body.decode(codec, "surrogateescape")
        except UnicodeError as exc:
            raise MaskingFailed(f"a form body is not valid {codec}") from exc
        out: list[str] = []
        changed = False
        for pair in text.split("&"):
            name, eq, value = pair.partition("=")
            plain_name = unquote(name.replace("+", " "), errors="surrogateescape")
            plain_value = unquote(value.replace("+", " "), errors="surrogateescape")
            new_name = self.detect_text(plain_name)
            new_value = self.detect_text(plain_value)
            if new_name is plain_name and new_value is plain_value:
                out.append(pair)
            else:
                changed = True
                out.append(quote_text(new_name) + eq + quote_text(new_value))
        return "&".join(out).encode("ascii") if changed else body

    def _text(self, body: bytes, content_type: str | None) -> bytes:
        codec = charset(content_type, body)
        try:
            # surrogateescape: bytes that are not valid in the charset go back out as they came
            text = body.decode(codec, "surrogateescape")
        except UnicodeError as exc:  # UTF-16/32 cut mid-character: not text in that charset
            raise MaskingFailed(f"a text body is not valid {codec}") from exc
        new = self.detect_text(text)
        if new is text:
            return body
        try:
            return new.encode(codec, "surrogateescape")
        except UnicodeError as exc:
            raise MaskingFailed(f"the masked body cannot be written in {codec}") from exc

    def detect_text(self, text: str) -> str:
        detectors = self.detectors
        if detectors is None or not text:
            return text
        hits = detectors.find(text)
        if not hits:
            return text
        styles = self.masker.detector_styles
        parts: list[str] = []
        last = 0
        for start, end, name in hits:
            parts.append(text[last:start])
            # free text has no null: the hit is redacted
            parts.append(styles[name].hit(text[start:end], name) or REDACTED)
            last = end
        parts.append(text[last:])
        return "".join(parts)

    def _may_hit(self, body: bytes, codec: str) -> bool:
        """False when no detector can find anything in the JSON text ``body`` (in ``codec``):
        its triggers found nothing, and no ``\\u`` escape can hide a character from them."""
        detectors = self.detectors
        if detectors is None:
            return False
        if codec in WIDE_CHARSETS:
            # the triggers look for ASCII bytes, which UTF-16/32 spreads out with zero bytes
            return True
        return b"\\u" in body or detectors.may_match(body)


def quote_text(text: str) -> str:
    """Percent-encoding for a decoded query or form component (undecodable bytes kept)."""
    return quote(text, safe="[]*@", errors="surrogateescape")


#: A part's header fields that say how to read it: two different values are refused.
_PART_READING = frozenset({"content-type", "content-transfer-encoding", "content-encoding"})

#: Deepest nesting of multipart bodies read (a part that is itself multipart, and so on).
MAX_MULTIPART_DEPTH = 8

#: The end of an event in an event stream: a line ending, then an empty line. Line endings are
#: CRLF, LF or CR (a CR followed by LF is one ending, never two).
_LINE_END = r"(?:\r\n|\r(?!\n)|\n)"
_EVENT_END = re.compile(f"({_LINE_END}{_LINE_END})")


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        # Python reads 1e400 as infinity and would write it back as Infinity, which is not JSON
        raise ValueError("a JSON number is out of range")
    return value


def _json_syntax(document: str) -> bool:
    """Whether ``document`` is JSON by its syntax alone (numbers not converted)."""
    try:
        json.loads(document, parse_float=len, parse_int=len)
    except json.JSONDecodeError:
        return False
    except (ValueError, RecursionError):
        return True
    return True


def _no_proto(pairs: list[tuple[str, object]]) -> dict[str, object]:
    for key, _ in pairs:
        if key == "__proto__":
            raise ValueError("__proto__ key")
    return dict(pairs)


def _encode(text: str, codec: str) -> bytes:
    try:
        return text.encode(codec)
    except UnicodeEncodeError as exc:
        raise MaskingFailed(f"the masked body cannot be written in {codec}") from exc
