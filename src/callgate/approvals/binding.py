"""What an approval is bound to: requester, connection, statement fingerprint, parameters, policy.

The statement fingerprint is a hash of the statement as PostgreSQL's own deparser prints it back:
comments, whitespace and keyword case do not matter, but every constant does (PostgreSQL's query
fingerprint ignores constants, so ``DELETE … WHERE id = 1`` and ``… id = 2`` would collide; that
is why it is not used here). Text that does not parse is hashed as written.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from pglast import parser

from callgate.model import Principal

#: Statements longer than this are fingerprinted every time rather than cached (a cache of
#: megabyte statements would be a memory lever for a caller).
MAX_CACHED_CHARS: Final = 16_384

JsonParam = str | dict[str, str] | None


@lru_cache(maxsize=4096)
def _cached_fingerprint(sql: str) -> str:
    return _fingerprint(sql)


def _fingerprint(sql: str) -> str:
    try:
        normalized = "pg:" + parser.deparse_protobuf(parser.parse_sql_protobuf(sql))
    except (parser.ParseError, parser.DeparseError, ValueError):
        normalized = "raw:" + sql
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def statement_fingerprint(sql: str) -> str:
    """A hex digest that is equal for two texts exactly when PostgreSQL reads the same
    statement (constants included)."""
    if len(sql) > MAX_CACHED_CHARS:
        return _fingerprint(sql)
    return _cached_fingerprint(sql)


def _formats(params: Sequence[bytes | None], formats: Sequence[int]) -> list[int]:
    # Bind: no format codes means all text; one code applies to every parameter (§55.7, Bind).
    if not formats:
        return [0] * len(params)
    if len(formats) == 1:
        return [formats[0]] * len(params)
    return [formats[i] if i < len(formats) else 0 for i in range(len(params))]


def parameter_digest(params: Sequence[bytes | None], formats: Sequence[int] = ()) -> str:
    """A hex digest of the bind parameters with their format codes (NULL differs from empty)."""
    h = hashlib.sha256(b"callgate-params-v1")
    h.update(len(params).to_bytes(4, "big"))
    for value, fmt in zip(params, _formats(params, formats), strict=True):
        h.update(fmt.to_bytes(2, "big", signed=True))
        if value is None:
            h.update(b"\xff\xff\xff\xff")
        else:
            h.update(len(value).to_bytes(4, "big"))
            h.update(value)
    return h.hexdigest()


def render_param(value: bytes | None) -> JsonParam:
    """A parameter for display and the audit log: text if UTF-8, else ``{"base64": …}``."""
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}


@dataclass(frozen=True, slots=True)
class Binding:
    """Everything an approval applies to; a statement rides on it only if all of it is equal."""

    requester: str
    issuer: str | None
    connection: str
    fingerprint: str
    #: ``None``: any parameters (``any_parameters: true``)
    param_digest: str | None
    policy_version: str


def bind_statement(
    requester: Principal,
    connection: str,
    sql: str,
    params: Sequence[bytes | None],
    param_formats: Sequence[int],
    policy_version: str,
    *,
    any_parameters: bool = False,
) -> Binding:
    return Binding(
        requester=requester.subject,
        issuer=requester.issuer,
        connection=connection,
        fingerprint=statement_fingerprint(sql),
        param_digest=None if any_parameters else parameter_digest(params, param_formats),
        policy_version=policy_version,
    )
