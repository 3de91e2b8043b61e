"""Mask styles: what a masked value (or a detector hit inside a value) becomes.

======== ============================================= ===========================================
style    whole value (column rule)                     detector hit inside a longer text
======== ============================================= ===========================================
redact   ``[REDACTED]``                                ``[REDACTED]``
partial  ``*`` for all but the last ``keep`` chars     the same, on the hit only
hash     ``tok_`` + 16 base32 chars of HMAC-SHA256     the same, on the hit only
null     SQL NULL                                      the whole value becomes NULL
email    ``****@domain`` (redact if not an email)      ``****@domain`` for email hits, else redact
======== ============================================= ===========================================

``partial`` never shows more than half of a value: ``keep: 4`` on a 6-character value shows 3.
``hash`` is keyed with the gateway's secret key, so tokens cannot be reversed by hashing guesses,
and equal values give equal tokens (joins, ``GROUP BY`` and counts on the client still work).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

StyleName = Literal["redact", "partial", "hash", "null", "email"]

REDACTED: Final = "[REDACTED]"
#: characters of base32 kept in a hash token: 80 bits, no collisions in practice
TOKEN_CHARS: Final = 16
TOKEN_PREFIX: Final = "tok_"  # noqa: S105 - a prefix, not a secret

#: strictness order when several rules mask the same value: the first reveals least
_STRICTNESS: Final[dict[str, int]] = {"null": 0, "redact": 1, "hash": 2, "email": 3, "partial": 4}


@dataclass(frozen=True, slots=True)
class Style:
    """A configured style. ``secret`` keys ``hash``; ``keep`` is for ``partial``."""

    name: StyleName
    keep: int = 4
    secret: bytes = b""

    @property
    def strictness(self) -> tuple[int, int]:
        """Lower is stricter (reveals less)."""
        return (_STRICTNESS[self.name], self.keep if self.name == "partial" else 0)

    def token(self, raw: bytes) -> str:
        """The stable keyed token of ``raw`` (the value's bytes as the server sent them)."""
        digest = hmac.new(self.secret, raw, hashlib.sha256).digest()
        return TOKEN_PREFIX + base64.b32encode(digest).decode()[:TOKEN_CHARS].lower()

    def whole(self, value: str) -> str | None:
        """A whole masked value; ``None`` is SQL NULL."""
        name = self.name
        if name == "redact":
            return REDACTED
        if name == "partial":
            return _partial(value, self.keep)
        if name == "hash":
            return self.token(value.encode("utf-8"))
        if name == "email":
            return _email(value)
        return None

    def hit(self, text: str, detector: str) -> str | None:
        """What a detector hit ``text`` is replaced by; ``None``: the whole value becomes NULL."""
        name = self.name
        if name == "redact":
            return REDACTED
        if name == "partial":
            return _partial(text, self.keep)
        if name == "hash":
            return self.token(text.encode("utf-8"))
        if name == "email":
            return _email(text) if detector == "email" else REDACTED
        return None


def _partial(value: str, keep: int) -> str:
    visible = min(keep, len(value) // 2)
    if visible <= 0:
        return "*" * max(len(value), 4)
    return "*" * (len(value) - visible) + value[-visible:]


def _email(value: str) -> str:
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or any(ch.isspace() for ch in value):
        return REDACTED
    return "****@" + domain


def replace_hits(
    text: str, hits: Sequence[tuple[int, int, str]], styles: Mapping[str, Style]
) -> str | None:
    """``text`` with each hit replaced in the style of its detector; ``None`` when a style turns
    the value into NULL."""
    parts: list[str] = []
    last = 0
    for start, end, detector in hits:
        replacement = styles[detector].hit(text[start:end], detector)
        if replacement is None:
            return None
        parts.append(text[last:start])
        parts.append(replacement)
        last = end
    parts.append(text[last:])
    return "".join(parts)


def strictest(styles: Iterable[Style]) -> Style | None:
    """The style that reveals least, of several that apply to one value."""
    best: Style | None = None
    for style in styles:
        if best is None or style.strictness < best.strictness:
            best = style
    return best
