"""Request targets (RFC 9112 §3.2): split, checked, and their query made safe to record.

A path is a policy subject (``paths: ["/v1/charges/*"]``), so anything an upstream could read as
a different path than callgate did is refused: dot segments (``/a/../b``, also percent-encoded or
behind an encoded slash), characters RFC 3986 does not allow in a path, and malformed
percent-encoding.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple
from urllib.parse import unquote

from callgate.protocols.http.errors import HttpRequestError, UnsupportedRequest

# RFC 3986 §3.3: path = *( "/" segment ), pchar = unreserved / pct-encoded / sub-delims / ":" / "@".
# Written as "the allowed characters and %" plus "every % starts a pct-encoded triplet" (the same
# language as ``/(?:[chars]|%HH)*``, matched without a branch per character).
_PATH: Final = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*", re.ASCII)
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})", re.ASCII)
# The query is recorded and forwarded as sent; it only must not hold a fragment or be ambiguous.
_QUERY: Final = re.compile(r"[\x21-\x22\x24-\x7e]*", re.ASCII)
_ABSOLUTE: Final = re.compile(r"(?i)(https?)://([^/?#]+)(.*)", re.ASCII)

#: Query parameter names that look like secrets: their values are replaced by ``***`` wherever
#: callgate records or logs a query (matched case-insensitively, as a substring of the name).
SECRET_PARAMETER_WORDS: Final = (
    "token",
    "secret",
    "password",
    "passwd",
    "pwd",
    "key",
    "signature",
    "credential",
    "auth",
    "session",
    "sig",
    "code",
)
MASKED_VALUE: Final = "***"


class Target(NamedTuple):
    #: percent-encoded, as sent, always starting with ``/``
    path: str
    #: the raw query without ``?``; ``None`` when the target had no ``?``
    query: str | None
    #: the authority of an absolute-form target (``host[:port]``), else ``None``
    authority: str | None = None

    @property
    def query_string(self) -> str:
        return self.query or ""

    def with_path(self, path: str) -> str:
        """``path`` with this target's query appended (an origin-form target)."""
        return path if self.query is None else f"{path}?{self.query}"


def parse_target(method: str, target: str) -> Target:
    """The target of a request, in origin form (``/path?query``) or absolute form
    (``http://host/path?query``, RFC 9112 §3.2.2: a server MUST accept it)."""
    if method == "CONNECT":
        raise UnsupportedRequest("CONNECT is not supported by callgate")
    if target == "*":
        raise UnsupportedRequest("the asterisk-form request target (OPTIONS *) is not supported")
    authority = None
    if not target.startswith("/"):
        m = _ABSOLUTE.fullmatch(target)
        if m is None:
            raise HttpRequestError("request target is neither a path nor an absolute http URL")
        authority = m.group(2)
        if "@" in authority:
            raise HttpRequestError("request target must not contain user information")
        target = m.group(3) or "/"
        if not target.startswith(("/", "?")):
            raise HttpRequestError("malformed absolute request target")
        if target.startswith("?"):
            target = "/" + target
    if "#" in target:
        raise HttpRequestError("request target must not contain a fragment")
    path, sep, query = target.partition("?")
    if not _PATH.fullmatch(path) or ("%" in path and _BAD_ESCAPE.search(path)):
        raise HttpRequestError("request path contains characters that must be percent-encoded")
    if sep and not _QUERY.fullmatch(query):
        raise HttpRequestError("request query contains invalid characters")
    if has_dot_segments(path):
        raise HttpRequestError("request path contains '.' or '..' segments")
    return Target(path, query if sep else None, authority)


def has_dot_segments(path: str) -> bool:
    """True when ``path`` holds a ``.`` or ``..`` segment as sent or once percent-decoded (with
    ``\\`` read as ``/``, as some servers do): an upstream that normalises it would see another
    path than the policy judged."""
    if "." in path and _dot_segment(path):
        return True
    if "%" not in path and "\\" not in path:
        return False
    decoded = unquote(path, errors="replace").replace("\\", "/")
    return _dot_segment(decoded)


def _dot_segment(path: str) -> bool:
    return any(seg in (".", "..") for seg in path.split("/"))


def split_prefix(path: str) -> tuple[str, str]:
    """``/orders/v1/x`` → ``("orders", "/v1/x")``; ``/orders`` → ``("orders", "/")``."""
    rest = path[1:]
    name, slash, tail = rest.partition("/")
    return name, "/" + tail if slash else "/"


def _secret_name(name: str) -> bool:
    lowered = unquote(name.replace("+", " "), errors="replace").lower()
    return any(word in lowered for word in SECRET_PARAMETER_WORDS)


def mask_query(query: str | None) -> str:
    """The query with the values of secret-looking parameters replaced by ``***``; names and
    every other value kept as sent. Over-masking is the safe side: a name such as ``keyword``
    is masked too."""
    if not query:
        return ""
    parts = []
    for item in query.split("&"):
        name, eq, _ = item.partition("=")
        if eq and _secret_name(name):
            parts.append(f"{name}={MASKED_VALUE}")
        else:
            parts.append(item)
    return "&".join(parts)


def join_path(base: str, path: str) -> str:
    """The upstream path: ``base`` (the upstream URL's path) followed by the caller's ``path``
    (which starts with ``/``), without doubling the slash between them."""
    if not base or base == "/":
        return path
    return base.rstrip("/") + path
