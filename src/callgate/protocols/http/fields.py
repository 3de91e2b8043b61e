"""Which header fields cross callgate, and which stay on one hop (RFC 9110 §7.6.1)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from callgate.protocols.http.head import Fields, tokens

#: Fields that describe one connection, never the message (RFC 9110 §7.6.1, RFC 9112 §6.1, §9.6,
#: and the Proxy-* family by convention), removed in both directions. ``Proxy-*`` is matched by
#: prefix in :func:`end_to_end`.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
    }
)


def end_to_end(
    fields: Fields, names: tuple[str, ...], *, drop: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """``fields`` without the hop-by-hop ones: :data:`HOP_BY_HOP`, every ``Proxy-*`` field,
    every field the Connection header names, and the lower-case names in ``drop`` (a
    frozenset is used as it is)."""
    removed = drop if isinstance(drop, frozenset) else frozenset(drop)
    if "connection" in names:
        listed = {t for i, n in enumerate(names) if n == "connection" for t in tokens(fields[i][1])}
        removed = removed | listed
    elif (
        HOP_BY_HOP.isdisjoint(names)
        and removed.isdisjoint(names)
        and "\nproxy-" not in "\n" + "\n".join(names)
    ):
        return list(fields)  # the usual case, checked in C: nothing to remove
    return [
        f
        for n, f in zip(names, fields, strict=True)
        if n not in HOP_BY_HOP and n not in removed and not n.startswith("proxy-")
    ]
