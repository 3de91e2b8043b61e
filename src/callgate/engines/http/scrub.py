"""Keeping injected secrets out of what a caller receives, even when an upstream echoes them.

An API that reflects its request (a debug endpoint, an error quoting the ``Authorization``
header, a redirect carrying the query) would hand callgate's credential to the caller. Every
response header value and body byte is checked for the injector's secret values; each match is
overwritten with ``*`` of the same length, so ``Content-Length`` stays true and the body can still
stream: only the last ``longest secret - 1`` bytes of each read are held back, in case a secret
straddles two reads.

Compressed bodies cannot be searched, so requests to a connection that injects a secret ask for
``Accept-Encoding: identity`` (see the engine).
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter
from typing import Final

#: Secrets shorter than this are not searched for: a 3-character value would match ordinary
#: text everywhere and mangle every response. Real credentials are far longer.
MIN_SECRET_LENGTH: Final = 8
#: What a secret in a header value is replaced by.
HEADER_REPLACEMENT: Final = "[redacted by callgate]"


class SecretSet:
    """The secrets to search for, prepared once (the engine keeps one per distinct set)."""

    __slots__ = ("hold", "needles", "texts")

    def __init__(self, secrets: Iterable[str]) -> None:
        texts = {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}
        # Longest first: a secret that contains another is overwritten whole.
        self.texts: tuple[str, ...] = tuple(sorted(texts, key=len, reverse=True))
        self.needles: tuple[bytes, ...] = tuple(t.encode("utf-8") for t in self.texts)
        self.hold = max((len(n) for n in self.needles), default=1) - 1


NO_SECRETS: Final = SecretSet(())


class SecretScrubber:
    """Streaming search-and-overwrite of a fixed set of secret byte strings (one response)."""

    __slots__ = ("_hold", "_needles", "_tail", "_texts", "hits")

    def __init__(self, secrets: SecretSet | Iterable[str]) -> None:
        prepared = secrets if isinstance(secrets, SecretSet) else SecretSet(secrets)
        self._needles = prepared.needles
        self._texts = prepared.texts
        self._hold = prepared.hold
        self._tail = b""
        #: how many secrets were overwritten (for the log; never which)
        self.hits = 0

    @property
    def active(self) -> bool:
        return bool(self._needles)

    def _scrub(self, data: bytes) -> bytes:
        out: bytearray | None = None
        for needle in self._needles:
            if needle not in (out if out is not None else data):
                continue
            if out is None:
                out = bytearray(data)
            start = out.find(needle)
            while start >= 0:
                out[start : start + len(needle)] = b"*" * len(needle)
                self.hits += 1
                start = out.find(needle, start + len(needle))
        return data if out is None else bytes(out)

    def feed(self, data: bytes) -> bytes:
        """The bytes of ``data`` (after what was held back) that are safe to send now."""
        if not self._needles:
            return data
        window = self._tail + data if self._tail else data
        window = self._scrub(window)
        if self._hold == 0:
            return window
        cut = max(0, len(window) - self._hold)
        self._tail = window[cut:]
        return window[:cut]

    def flush(self) -> bytes:
        """What was held back, at the end of the body."""
        tail, self._tail = self._tail, b""
        return tail

    def fields(self, fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Header fields with any secret in a value replaced (the same list when none holds
        one: the values are searched joined, in C, before any is looked at alone)."""
        texts = self._texts
        if not texts or not fields:
            return fields
        joined = "\n".join(map(itemgetter(1), fields))
        if not any(secret in joined for secret in texts):
            return fields
        return [(name, self.text(value)) for name, value in fields]

    def text(self, value: str) -> str:
        """A header value with any secret replaced."""
        for secret in self._texts:
            if secret in value:
                self.hits += 1
                value = value.replace(secret, HEADER_REPLACEMENT)
        return value

    def whole(self, data: bytes) -> bytes:
        """A whole body (already buffered) with every secret overwritten."""
        return self._scrub(data) if self._needles else data
