"""Masking of HTTP responses (and of request samples kept for audit): SPEC §2 ``mask``, §5.

Sans-IO. The engine, per caller and connection (and again after a policy reload)::

    plan = HttpMaskPlan.for_principal(policies, principal, connection, secret=key, granted=…)

then, per request and response::

    headers_up = plan.request_headers(headers_up)        # no Range, Accept-Encoding: identity
    headers_down = plan.mask_headers(response_headers)   # Set-Cookie and configured names
    match plan.inspection(content_type):
        "none":   stream the body through
        "buffer": buffer (up to the limit, past which the call fails: 502), then mask_body
        "sniff":  read SNIFF_BYTES (or the whole body if shorter);
                  plan.needs_body(content_type, head) says whether to buffer it or stream it
    body = plan.mask_body(body, content_type, content_encoding)   # MaskingFailed: send a 502

:class:`MaskingFailed` always means: send the caller nothing of the body (a 502 if nothing has
been sent yet). See docs/masking.md, "HTTP".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import translate
from typing import TYPE_CHECKING, Final, Literal
from urllib.parse import unquote

from callgate.config.policies import FRAMING_HEADERS as CONFIG_FRAMING_HEADERS
from callgate.errors import CallgateError
from callgate.masking.detectors import DetectorSet
from callgate.masking.errors import MaskingFailed
from callgate.masking.httpbody import BodyMasker, quote_text
from callgate.masking.jsonmask import JsonMasker, PathRule
from callgate.masking.jsonpath import parse_json_path
from callgate.masking.media import (
    MAX_DECODED_BODY,
    codings,
    decode_content,
    decode_head,
    encode_content,
    looks_like_json,
    looks_like_jsonp,
    looks_like_text,
    media_kind,
    sniff_undecided,
)
from callgate.masking.plan import DetectRule, MaskRules, applicable_mask_rules, style_of
from callgate.masking.styles import REDACTED, Style, strictest
from callgate.model import Principal

if TYPE_CHECKING:
    from callgate.config import PolicyConfig

Inspection = Literal["none", "buffer", "sniff"]
Headers = Sequence[tuple[str, str]]

#: response headers that frame or encode the body: never masked (the config refuses to name them)
FRAMING_HEADERS: Final = frozenset(CONFIG_FRAMING_HEADERS)

#: request headers that would let the upstream answer with a body callgate cannot mask whole: a
#: byte range of a JSON document is not JSON, and a range can cut a detector hit in two
_RANGE_HEADERS: Final = frozenset({"range", "if-range"})

#: query parameter names whose values audit never records (checked as lower-case substrings)
SECRET_PARAM_WORDS: Final = (
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "pwd",
    "signature",
    "sig",
    "credential",
    "auth",
    "session",
    "code",
)

#: what a request body sample becomes when it cannot be masked (it is never recorded unmasked)
UNMASKABLE_SAMPLE: Final = b"[body not recorded: it could not be masked]"


class ResponseMaskingFailed(MaskingFailed):
    """A response (or part of one) could not be masked: the engine sends the caller nothing of
    its body, a 502 when nothing has been sent yet (SPEC §5: never unmasked)."""

    def __init__(self, reason: str) -> None:
        # MaskingFailed's own message speaks of rows
        CallgateError.__init__(
            self,
            f"callgate could not mask the upstream's response ({reason}); it was not sent",
            hint="ask an administrator to check the connection's mask rules and the API",
        )
        self.reason = reason


@dataclass(frozen=True, slots=True)
class HeaderRule:
    """One compiled ``mask: [{headers: …}]`` rule."""

    label: str
    names: tuple[re.Pattern[str], ...]
    style: Style

    def covers(self, lowered: str) -> bool:
        return any(p.match(lowered) for p in self.names)


@dataclass(frozen=True, slots=True)
class HttpMaskPlan:
    """Every mask rule that applies to one caller on one HTTP connection, compiled."""

    json: JsonMasker
    headers: tuple[HeaderRule, ...] = ()
    #: :meth:`mask_body` never decodes more than this many bytes (content codings undone)
    limit: int = MAX_DECODED_BODY
    body: BodyMasker = field(init=False, compare=False)
    _header_styles: dict[str, Style | None] = field(default_factory=dict, compare=False)
    #: no rule masks any body (:attr:`is_empty` also needs no header rules); plain attributes,
    #: read on every request
    bodies_untouched: bool = field(init=False, compare=False)
    untouched: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "body", BodyMasker(self.json))
        object.__setattr__(self, "bodies_untouched", self.json.is_empty)
        object.__setattr__(self, "untouched", self.json.is_empty and not self.headers)

    # -- building ---------------------------------------------------------------------------------

    @classmethod
    def for_principal(
        cls,
        policies: Iterable[PolicyConfig],
        principal: Principal,
        connection: str,
        *,
        secret: bytes,
        granted: Iterable[str] = (),
        limit: int = MAX_DECODED_BODY,
    ) -> HttpMaskPlan:
        """The plan of ``policies`` for ``principal`` on ``connection``. ``granted``: names of
        policies an access grant applies to the caller whatever their ``subjects`` say (their
        ``mask_exempt`` still counts). ``columns`` rules do not apply to HTTP."""
        paths: list[PathRule] = []
        headers: list[HeaderRule] = []
        detects: list[DetectRule] = []
        for label, rule in applicable_mask_rules(policies, principal, connection, granted):
            style = style_of(rule, secret)
            if rule.json_paths:
                paths.extend(PathRule(parse_json_path(p), style, label) for p in rule.json_paths)
            elif rule.headers:
                names = tuple(re.compile(translate(n.lower())) for n in rule.headers)
                headers.append(HeaderRule(label, names, style))
            elif rule.detect:
                detects.append(DetectRule(label, tuple(rule.detect), style))
        return cls.compile(paths, headers, detects, limit=limit)

    @classmethod
    def compile(
        cls,
        paths: Sequence[PathRule] = (),
        headers: Sequence[HeaderRule] = (),
        detects: Sequence[DetectRule] = (),
        *,
        limit: int = MAX_DECODED_BODY,
    ) -> HttpMaskPlan:
        detectors = MaskRules.compile((), detects)
        masker = JsonMasker.compile(paths, detectors.detectors, detectors.detector_styles)
        return cls(masker, tuple(headers), limit)

    @property
    def is_empty(self) -> bool:
        """Nothing of any response can need masking: stream everything."""
        return self.untouched

    @property
    def detectors(self) -> DetectorSet | None:
        return self.json.detectors

    # -- which bodies ---------------------------------------------------------------------------

    def inspection(self, content_type: str | None) -> Inspection:
        """What a response with this Content-Type needs: ``none`` (stream it), ``buffer``
        (buffer and :meth:`mask_body` it) or ``sniff`` (look at its first
        :data:`~callgate.masking.media.SNIFF_BYTES`, then ask :meth:`needs_body`)."""
        masker = self.json
        if masker.is_empty:
            return "none"
        kind = media_kind(content_type)
        if kind in ("json", "ndjson", "event-stream", "multipart", "script"):
            return "buffer"
        if kind in ("text", "form") and masker.detectors is not None:
            return "buffer"
        # Text may be JSON with the wrong label; anything else may be JSON or text with a wrong
        # one (or none): the first bytes tell.
        return "sniff"

    def needs_body(
        self,
        content_type: str | None,
        head: bytes | None = None,
        content_encoding: str | None = None,
    ) -> bool:
        """True when the response body must be buffered and passed to :meth:`mask_body`.

        ``head``: the body's first bytes (at least ``SNIFF_BYTES`` of them, or all of a shorter
        body). Without it, a body whose type does not settle the question needs buffering
        (fail closed); with it, only a body that looks like JSON (for path rules) or like text
        (for detectors) does. Binary bodies (images, archives, PDFs …) are not inspected:
        detectors do not look inside binary formats. With a ``content_encoding`` the first bytes
        are inflated to be looked at (gzip, deflate); a coding callgate cannot read is
        buffered, and then fails in :meth:`mask_body`."""
        answer = self.inspection(content_type)
        if answer != "sniff":
            return answer == "buffer"
        if head is None:
            return True
        more: bool | None = None
        if codings(content_encoding):
            decoded = decode_head(head, content_encoding)
            if decoded is None:
                return True  # a coding callgate cannot read: mask_body decides (and fails)
            head, more = decoded
        if sniff_undecided(head, more):
            return True
        masker = self.json
        return bool(
            (masker.rules and (looks_like_json(head) or looks_like_jsonp(head)))
            or (masker.detectors is not None and looks_like_text(head))
        )

    def request_headers(self, headers: Headers) -> list[tuple[str, str]]:
        """The request headers to send upstream: when bodies may be masked, no ``Range`` /
        ``If-Range`` (a slice of a document cannot be masked) and ``Accept-Encoding:
        identity`` (so that the upstream does not compress what callgate must read)."""
        if self.json.is_empty:
            return list(headers)
        out = [
            (name, value)
            for name, value in headers
            if name.lower() not in _RANGE_HEADERS and name.lower() != "accept-encoding"
        ]
        out.append(("accept-encoding", "identity"))
        return out

    # -- bodies -----------------------------------------------------------------------------------

    def mask_body(
        self, body: bytes, content_type: str | None, content_encoding: str | None = None
    ) -> bytes:
        """``body`` with every covered value masked; the same object when nothing needed it.

        ``content_encoding``: the response's Content-Encoding (gzip and deflate are undone and
        redone; any other coding raises). Raises :class:`ResponseMaskingFailed` when the body
        cannot be masked: declared JSON but not JSON, not decodable in its charset, too large
        once decompressed. Never returns a body it could not mask."""
        if self.json.is_empty or not body:
            return body
        try:
            plain = decode_content(body, content_encoding, self.limit)
            if len(plain) > self.limit:
                raise MaskingFailed(f"the response body is larger than {self.limit} bytes")
            new = self.body.payload(plain, content_type)
        except ResponseMaskingFailed:
            raise
        except MaskingFailed as exc:
            raise ResponseMaskingFailed(exc.reason) from exc
        if new is plain:
            return body
        return encode_content(new, content_encoding)

    def mask_request_sample(
        self, body: bytes | None, content_type: str | None, limit: int | None = None
    ) -> bytes | None:
        """A request body for the audit record: masked like a response, then cut to ``limit``
        bytes. Masking happens first (a cut document would no longer parse); a body that cannot
        be masked is replaced by :data:`UNMASKABLE_SAMPLE`, never recorded as it is. Request
        bodies are assumed not to be content-coded (the engine decodes them first if it
        records them)."""
        if body is None:
            return None
        try:
            masked = self.body.payload(body, content_type)
        except MaskingFailed:
            masked = UNMASKABLE_SAMPLE
        return masked if limit is None else masked[:limit]

    # -- headers and query strings --------------------------------------------------------------

    def mask_headers(self, headers: Headers) -> list[tuple[str, str]]:
        """Response headers with the configured names masked (a ``null`` style drops the
        header) and detectors applied to every other value; framing headers are kept as they
        are. ``Set-Cookie`` keeps the cookie's name and attributes, its value is masked."""
        if self.is_empty:
            return list(headers)
        out: list[tuple[str, str]] = []
        for name, value in headers:
            lowered = name.lower()
            if lowered in FRAMING_HEADERS:
                out.append((name, value))
                continue
            style = self._header_style(lowered)
            new: str | None = value
            if style is not None:
                new = _set_cookie(value, style) if lowered == "set-cookie" else style.whole(value)
            elif self.detectors is not None:
                new = self._detect_header(value)
            if new is not None:
                out.append((name, new))
        return out

    def _header_style(self, lowered: str) -> Style | None:
        cache = self._header_styles
        if lowered in cache:
            return cache[lowered]
        style = strictest(rule.style for rule in self.headers if rule.covers(lowered))
        if len(cache) < 1024:  # names come from the upstream: keep the cache bounded
            cache[lowered] = style
        return style

    def _detect_header(self, value: str) -> str | None:
        detectors = self.detectors
        if detectors is None:
            return value
        hits = detectors.find(value)
        if not hits:
            return value
        styles = self.json.detector_styles
        if any(styles[name].name == "null" for _, _, name in hits):
            return None  # the value would become null: no header
        return self.body.detect_text(value)

    def mask_query(self, query: str) -> str:
        """A query string for the audit record: the values of secret-looking parameters
        (:data:`SECRET_PARAM_WORDS`) redacted whatever the plan, detectors applied to the rest
        (names and values, decoded)."""
        if not query:
            return query
        out: list[str] = []
        for pair in query.split("&"):
            name, eq, value = pair.partition("=")
            plain_name = unquote(name.replace("+", " "), errors="replace")
            lowered = plain_name.lower()
            if eq and any(word in lowered for word in SECRET_PARAM_WORDS):
                out.append(f"{name}={REDACTED}")
                continue
            plain_value = unquote(value.replace("+", " "), errors="replace")
            new_name = self.body.detect_text(plain_name)
            new_value = self.body.detect_text(plain_value)
            if new_name is plain_name and new_value is plain_value:
                out.append(pair)
            else:
                out.append(quote_text(new_name) + eq + quote_text(new_value))
        return "&".join(out)


def _set_cookie(value: str, style: Style) -> str | None:
    """``name=VALUE; attributes`` with VALUE masked (RFC 6265 §4.1); ``None`` to drop it."""
    pair, semicolon, attributes = value.partition(";")
    name, eq, cookie = pair.partition("=")
    if not eq:
        masked = style.whole(pair.strip())
        return None if masked is None else masked + semicolon + attributes
    stripped = cookie.strip()
    quoted = len(stripped) >= 2 and stripped.startswith('"') and stripped.endswith('"')
    inner = stripped[1:-1] if quoted else stripped
    masked = style.whole(inner)
    if masked is None:
        return None
    if quoted:
        masked = f'"{masked}"'
    return f"{name}={masked}{semicolon}{attributes}"


def empty_plan() -> HttpMaskPlan:
    """The plan of a caller no mask rule applies to."""
    return HttpMaskPlan(JsonMasker.compile((), None, {}))
