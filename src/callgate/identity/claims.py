"""Reading a verified token's claims: registered-claim checks, dotted paths, groups, claim mappings.

Pure functions over already-decoded JSON (no I/O, no crypto), so they are tested on plain dicts.
The reasons a token is refused are the :class:`Reason` values: short, fixed strings that go into
:class:`callgate.errors.AuthenticationFailed` and the audit log, never anything from the token.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Final

from callgate.config.identity import ClaimMappingConfig
from callgate.errors import AuthenticationFailed

#: groups a token may carry; a longer list is refused rather than cut, since a policy's
#: ``except: {groups: …}`` must see every group (dropping one could lift an exclusion)
MAX_GROUPS: Final = 1000
#: longest subject (and group name) accepted; real ones are emails, ids, ``repo:org/x:ref:…``
MAX_NAME_LENGTH: Final = 1024


class Reason(StrEnum):
    """Why a token was refused: the message of the ``AuthenticationFailed`` that is raised."""

    MALFORMED = "malformed token"
    TOO_LARGE = "token too large"
    ALGORITHM = "algorithm not allowed"
    CRITICAL_HEADER = "unsupported critical header"
    UNKNOWN_ISSUER = "unknown issuer"
    UNKNOWN_KID = "unknown key id"
    BAD_SIGNATURE = "bad signature"
    IDP_UNAVAILABLE = "identity provider unavailable"
    EXPIRED = "expired"
    MISSING_EXP = "missing expiry"
    NOT_YET_VALID = "not yet valid"
    ISSUED_IN_FUTURE = "issued in the future"
    WRONG_AUDIENCE = "wrong audience"
    MISSING_SUBJECT = "missing subject"
    BAD_GROUPS = "bad groups claim"


class TokenRejected(AuthenticationFailed):
    """A refused token: the message is the :class:`Reason`; ``issuer`` is the config name of the
    issuer the token claimed, when it is a configured one (for the audit event)."""

    def __init__(self, reason: Reason, *, issuer: str | None = None) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.issuer = issuer


def refuse(reason: Reason) -> TokenRejected:
    return TokenRejected(reason)


# --- registered claims (RFC 7519 §4.1) ------------------------------------------------------------


def _numeric_date(claims: Mapping[str, object], name: str) -> float | None:
    """A NumericDate claim, or ``None`` when absent. ``NaN``/``Infinity`` (which Python's JSON
    parser accepts) and non-numbers are malformed: a NaN ``exp`` would compare as never expired."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise refuse(Reason.MALFORMED)
    result = float(value)
    if not math.isfinite(result):
        raise refuse(Reason.MALFORMED)
    return result


def check_times(claims: Mapping[str, object], *, now: float, skew: float) -> float:
    """Check ``exp`` (required), ``nbf`` and ``iat`` against ``now`` with ``skew`` seconds of
    tolerance either way; returns ``exp``."""
    exp = _numeric_date(claims, "exp")
    if exp is None:
        raise refuse(Reason.MISSING_EXP)
    if now >= exp + skew:
        raise refuse(Reason.EXPIRED)
    nbf = _numeric_date(claims, "nbf")
    if nbf is not None and now + skew < nbf:
        raise refuse(Reason.NOT_YET_VALID)
    iat = _numeric_date(claims, "iat")
    if iat is not None and iat > now + skew:
        raise refuse(Reason.ISSUED_IN_FUTURE)
    return exp


def audience_matches(claims: Mapping[str, object], accepted: Collection[str]) -> bool:
    """``aud`` is a string or a list of strings (RFC 7519 §4.1.3); one of them must be accepted."""
    aud = claims.get("aud")
    if isinstance(aud, str):
        return aud in accepted
    if isinstance(aud, list):
        return any(isinstance(a, str) and a in accepted for a in aud)
    return False


# --- dotted claim paths ---------------------------------------------------------------------------


def resolve_claim(claims: Mapping[str, object], path: str) -> object | None:
    """The value at a dotted ``path`` (``realm_access.roles``), or ``None`` when there is none.

    Claim names may contain dots themselves (Kubernetes puts its claims under ``kubernetes.io``),
    so every way of splitting the path into names is tried, longest name first:
    ``kubernetes.io.namespace`` finds ``claims["kubernetes.io"]["namespace"]``.
    """
    return _resolve(claims, path.split("."))


def _resolve(node: Mapping[str, object], parts: Sequence[str]) -> object | None:
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name not in node:
            continue
        value = node[name]
        if end == len(parts):
            return value
        if isinstance(value, Mapping):
            found = _resolve(value, parts[end:])
            if found is not None:
                return found
    return None


def scalar_strings(value: object) -> tuple[str, ...]:
    """The strings a glob is matched against: a string as is, a number or boolean as JSON writes
    it, each such item of a list; objects and nulls give nothing."""
    if isinstance(value, bool):
        return ("true" if value else "false",)
    if isinstance(value, str):
        return (value,)
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return (str(value),)
    if isinstance(value, list):
        return tuple(
            s for item in value if not isinstance(item, list) for s in scalar_strings(item)
        )
    return ()


def subject_from(claims: Mapping[str, object], path: str) -> str:
    value = resolve_claim(claims, path)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # some IdPs use numeric user ids
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_LENGTH:
        raise refuse(Reason.MISSING_SUBJECT)
    return value


def groups_from(claims: Mapping[str, object], path: str) -> frozenset[str]:
    """Groups from a list of strings (or one string) at ``path``; absent means no groups."""
    value = resolve_claim(claims, path)
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > MAX_GROUPS:
        raise refuse(Reason.BAD_GROUPS)
    if not all(isinstance(g, str) and 0 < len(g) <= MAX_NAME_LENGTH for g in value):
        raise refuse(Reason.BAD_GROUPS)
    return frozenset(value)


# --- claim mappings -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    """``groups`` are added when every ``(path, glob)`` in ``claims`` matches (case-sensitive;
    ``*`` also matches ``/``, so ``refs/heads/*`` matches ``refs/heads/release/1.2``)."""

    claims: tuple[tuple[str, str], ...]
    groups: frozenset[str]

    @classmethod
    def from_config(cls, config: ClaimMappingConfig) -> ClaimMapping:
        return cls(tuple(config.claims.items()), frozenset(config.groups))

    def matches(self, claims: Mapping[str, object]) -> bool:
        for path, pattern in self.claims:
            values = scalar_strings(resolve_claim(claims, path))
            if not any(fnmatchcase(v, pattern) for v in values):
                return False
        return True


def mapped_groups(claims: Mapping[str, object], mappings: Sequence[ClaimMapping]) -> frozenset[str]:
    found: set[str] = set()
    for mapping in mappings:
        if mapping.matches(claims):
            found |= mapping.groups
    return frozenset(found)
