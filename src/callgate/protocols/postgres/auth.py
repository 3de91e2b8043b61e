"""Client-side authentication steps callgate performs against an upstream server (§55.3)."""

from __future__ import annotations

import hashlib

from callgate.errors import UpstreamProtocolViolation
from callgate.protocols.postgres.messages import Cursor


def md5_response(user: str, password: str, salt: bytes) -> bytes:
    """``'md5' + md5(md5(password + user) + salt)`` as PostgreSQL expects (§55.3.3)."""
    if len(salt) != 4:
        raise UpstreamProtocolViolation("upstream sent a malformed MD5 salt")
    inner = hashlib.md5(password.encode() + user.encode()).hexdigest()  # noqa: S324 (protocol)
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()  # noqa: S324


def sasl_mechanisms(data: bytes) -> tuple[str, ...]:
    """The mechanism list of AuthenticationSASL: C strings ended by an empty one."""
    c = Cursor(data, "AuthenticationSASL")
    out: list[str] = []
    try:
        while True:
            name = c.cstr()
            if not name:
                break
            out.append(name)
    except Exception as exc:
        raise UpstreamProtocolViolation("upstream sent a malformed SASL mechanism list") from exc
    return tuple(out)
