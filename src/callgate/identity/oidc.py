"""Verifying OIDC JWTs (ID tokens and JWT access tokens) from the issuers in ``identity.oidc``.

A token is read without trust only to pick its issuer (``iss``) and key (``kid``, ``alg``); it is
then verified with that issuer's keys alone, so a token that names issuer A but is signed by issuer
B's key fails. Accepted algorithms are asymmetric only (RS256, PS256, ES256, EdDSA by default);
``none`` and every HMAC algorithm are refused before any key is looked at. Registered claims are
checked with the issuer's ``clock_skew``: ``exp`` (required), ``nbf``, ``iat`` and ``aud``.

Verified tokens are cached by their SHA-256 (never the token itself) until ``exp`` or
``token_cache_ttl``, whichever comes first, so a burst of connections presenting the same JWT costs
one signature check. Failures raise :class:`callgate.errors.AuthenticationFailed` whose message is a
:class:`~callgate.identity.claims.Reason` (for the audit log); nothing of the token is in it.
See docs/identity.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import httpx
import jwt

from callgate.config.identity import OIDCIssuerConfig
from callgate.errors import AuthenticationFailed, ConfigError
from callgate.identity.base import CredentialRejected
from callgate.identity.claims import (
    ClaimMapping,
    Reason,
    TokenRejected,
    audience_matches,
    check_times,
    groups_from,
    mapped_groups,
    refuse,
    subject_from,
)
from callgate.identity.jwks import (
    ALGORITHM_KEYS,
    MAX_KID_LENGTH,
    Clock,
    IssuerKeys,
    KeyFetchLimits,
    secure_url,
)
from callgate.model import Principal

log = logging.getLogger(__name__)

#: what is accepted unless the verifier is given a narrower list
DEFAULT_ALGORITHMS: Final = ("RS256", "PS256", "ES256", "EdDSA")
#: the longest token read at all; real ID/access tokens are 1-4 KiB, a PostgreSQL password
#: message is capped well below the point where parsing cost would matter
MAX_TOKEN_BYTES: Final = 16 * 1024
#: ``jti`` values longer than this are not used as the credential id (a hash of the token is)
MAX_JTI_LENGTH: Final = 128


@dataclass(frozen=True, slots=True)
class OIDCLimits:
    """Sizes and lifetimes of the verifier's caches, and how keys are fetched."""

    max_token_bytes: int = MAX_TOKEN_BYTES
    #: verified tokens kept (least recently used dropped first)
    token_cache_size: int = 10_000
    #: a verified token is kept at most this long (seconds) even when ``exp`` is later, so a key
    #: the issuer has withdrawn stops vouching for cached tokens within the same bound as for keys
    token_cache_ttl: float = 600.0
    keys: KeyFetchLimits = field(default_factory=KeyFetchLimits)


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A verified token: the principal, and what a token exchange needs besides."""

    principal: Principal
    #: the issuer's config entry that accepted it
    issuer: OIDCIssuerConfig
    #: every claim of the payload (read-only)
    claims: Mapping[str, Any]
    algorithm: str
    key_id: str | None


@dataclass(frozen=True, slots=True)
class _Unverified:
    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


class OIDCVerifier:
    """Verifies JWTs from any of the configured issuers and turns them into a :class:`Principal`.

    ``http_client`` is used as given and not closed by :meth:`aclose` (share the gateway's client,
    or give one with a proxy or extra CA); without one the verifier makes and closes its own.
    ``clock`` gives unix time and is used for ``exp``/``nbf``/``iat``, cache lifetimes and refresh
    intervals alike.
    """

    def __init__(
        self,
        issuers: Sequence[OIDCIssuerConfig],
        *,
        algorithms: Collection[str] = DEFAULT_ALGORITHMS,
        clock: Clock = time.time,
        http_client: httpx.AsyncClient | None = None,
        limits: OIDCLimits | None = None,
    ) -> None:
        self._limits = limits or OIDCLimits()
        self._clock = clock
        unknown = sorted(set(algorithms) - set(ALGORITHM_KEYS))
        if unknown:
            raise ConfigError(
                "identity.oidc",
                f"algorithms {', '.join(unknown)} are not accepted "
                f"(choose from {', '.join(ALGORITHM_KEYS)})",
            )
        if not algorithms:
            raise ConfigError("identity.oidc", "at least one signing algorithm must be accepted")
        self._algorithms = frozenset(algorithms)
        self._own_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
            follow_redirects=False, headers={"user-agent": "callgate"}
        )
        # Several entries may share an issuer (say, two audiences under two names): one key cache.
        self._by_issuer: dict[str, list[OIDCIssuerConfig]] = {}
        self._keys: dict[str, IssuerKeys] = {}
        self._mappings: dict[str, tuple[ClaimMapping, ...]] = {}
        for index, config in enumerate(issuers):
            if not secure_url(config.issuer):
                raise ConfigError(
                    f"identity.oidc[{index}].issuer",
                    "expected an https:// URL (http:// only on a loopback host)",
                )
            self._by_issuer.setdefault(config.issuer, []).append(config)
            if config.issuer not in self._keys:
                self._keys[config.issuer] = IssuerKeys(
                    config.issuer, http=self._http, clock=clock, limits=self._limits.keys
                )
            self._mappings[config.name] = tuple(
                ClaimMapping.from_config(m) for m in config.claim_mappings
            )
        self._cache: OrderedDict[bytes, tuple[VerifiedToken, float]] = OrderedDict()

    # --- public API ------------------------------------------------------------------------------

    @property
    def issuers(self) -> tuple[str, ...]:
        """The configured issuer names."""
        return tuple(c.name for configs in self._by_issuer.values() for c in configs)

    @staticmethod
    def looks_like_jwt(credential: str) -> bool:
        """Cheap shape test for dispatching credentials: a JWS in compact form starts with the
        base64url of ``{"`` and has three dot-separated parts."""
        return credential.startswith("eyJ") and credential.count(".") == 2

    async def verify(self, token: str) -> Principal:
        """Verify ``token``; raises :class:`AuthenticationFailed` with a :class:`Reason`."""
        return (await self.verify_token(token)).principal

    async def verify_id_token(self, token: str) -> Principal:
        """The same checks as :meth:`verify` (for ``callgate token`` exchanging an ID token)."""
        return await self.verify(token)

    async def verify_token(self, token: str) -> VerifiedToken:
        """Like :meth:`verify`, with the claims and the accepting issuer entry."""
        if len(token) > self._limits.max_token_bytes:
            raise refuse(Reason.TOO_LARGE)
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None:
            verified, valid_until = cached
            if now < valid_until:
                self._cache.move_to_end(digest)
                return verified
            del self._cache[digest]
        try:
            verified = await self._verify_uncached(token, digest, now)
        except AuthenticationFailed as exc:
            log.debug("OIDC token refused: %s", exc.message)
            raise
        valid_until = min(verified.principal.expires_at or now, now + self._limits.token_cache_ttl)
        if valid_until > now and self._limits.token_cache_size > 0:
            self._cache[digest] = (verified, valid_until)
            while len(self._cache) > self._limits.token_cache_size:
                self._cache.popitem(last=False)
        return verified

    async def warm_up(self) -> dict[str, str | None]:
        """Fetch every issuer's keys now (at start, so the first caller does not wait).

        Returns ``{issuer URL: None or the failure reason}``; never raises for an unreachable
        provider, since verification retries later anyway.
        """
        result: dict[str, str | None] = {}
        for issuer, keys in self._keys.items():
            try:
                await keys.load()
                result[issuer] = None
            except AuthenticationFailed as exc:
                result[issuer] = exc.message
        return result

    def clear_cache(self) -> None:
        """Forget every verified token (keys are kept)."""
        self._cache.clear()

    @property
    def cached_tokens(self) -> int:
        return len(self._cache)

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    # --- the checks ------------------------------------------------------------------------------

    async def _verify_uncached(self, token: str, digest: bytes, now: float) -> VerifiedToken:
        unverified = _peek(token)
        alg = unverified.header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise refuse(Reason.ALGORITHM)
        if "crit" in unverified.header:
            # RFC 7515 §4.1.11: extensions we do not understand must make the token invalid.
            raise refuse(Reason.CRITICAL_HEADER)
        kid = unverified.header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_LENGTH):
            raise refuse(Reason.MALFORMED)
        iss = unverified.payload.get("iss")
        if not isinstance(iss, str) or iss not in self._by_issuer:
            raise refuse(Reason.UNKNOWN_ISSUER)
        configs = self._by_issuer[iss]
        try:
            return await self._verify_for_issuer(unverified, digest, now, iss, configs, alg, kid)
        except TokenRejected as rejected:
            rejected.issuer = configs[0].name
            raise

    async def _verify_for_issuer(
        self,
        unverified: _Unverified,
        digest: bytes,
        now: float,
        iss: str,
        configs: Sequence[OIDCIssuerConfig],
        alg: str,
        kid: str | None,
    ) -> VerifiedToken:
        # Only the keys of the issuer the token names: B's key never vouches for A's token.
        key = await self._keys[iss].key_for(kid, alg)
        _check_signature(unverified, key, alg)
        claims = unverified.payload

        config, exp = self._accepting(configs, claims, now)
        subject = subject_from(claims, config.subject_claim)
        groups = groups_from(claims, config.groups_claim) | mapped_groups(
            claims, self._mappings[config.name]
        )
        principal = Principal(
            subject=subject,
            groups=groups,
            method="oidc",
            expires_at=exp,
            credential_id=_credential_id(claims, digest),
            issuer=config.name,
        )
        return VerifiedToken(
            principal=principal,
            issuer=config,
            claims=MappingProxyType(claims),
            algorithm=alg,
            key_id=kid,
        )

    @staticmethod
    def _accepting(
        configs: Sequence[OIDCIssuerConfig], claims: Mapping[str, Any], now: float
    ) -> tuple[OIDCIssuerConfig, float]:
        """The first entry for this issuer whose audience the token names, and ``exp``."""
        for config in configs:
            if audience_matches(claims, config.audience):
                return config, check_times(claims, now=now, skew=config.clock_skew.total_seconds())
        # Times first, with the first entry's skew, so an expired token says "expired".
        check_times(claims, now=now, skew=configs[0].clock_skew.total_seconds())
        raise refuse(Reason.WRONG_AUDIENCE)


class OIDCAuthenticator:
    """:class:`OIDCVerifier` as an :class:`~callgate.identity.base.Authenticator` for the identity
    service: JWTs (``eyJ…``); a refusal becomes ``CredentialRejected(reason, issuer=name)``."""

    prefixes: Final = ("eyJ",)

    def __init__(self, verifier: OIDCVerifier) -> None:
        self.verifier = verifier

    async def verify(self, credential: str) -> Principal:
        try:
            return await self.verifier.verify(credential)
        except TokenRejected as rejected:
            raise CredentialRejected(rejected.reason.value, issuer=rejected.issuer) from None


_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64decode(segment: str) -> bytes:
    """Strict base64url without padding (RFC 7515 §2); anything else is a malformed token."""
    if len(segment) % 4 == 1 or not _BASE64URL.fullmatch(segment):
        raise refuse(Reason.MALFORMED)
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error:
        raise refuse(Reason.MALFORMED) from None


def _json_object(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(segment))
    except ValueError:  # also UnicodeDecodeError
        raise refuse(Reason.MALFORMED) from None
    if not isinstance(value, dict):
        raise refuse(Reason.MALFORMED)
    return value


def _peek(token: str) -> _Unverified:
    """Header, payload and signature of a compact JWS (RFC 7515 §7.1), not yet verified."""
    parts = token.split(".")
    # An empty signature is left to the algorithm check, so ``alg: none`` says so in the audit.
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise refuse(Reason.MALFORMED)
    header, payload = _json_object(parts[0]), _json_object(parts[1])
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")  # ascii: checked by _b64decode
    return _Unverified(header, payload, signing_input, _b64decode(parts[2]))


def _check_signature(unverified: _Unverified, key: jwt.PyJWK, alg: str) -> None:
    """PyJWT's algorithm (on ``cryptography``) checks the signature over the exact segments the
    claims were read from. The key was chosen for ``alg``; checked again so it cannot drift."""
    if key.algorithm_name != alg:
        raise refuse(Reason.ALGORITHM)
    try:
        valid = key.Algorithm.verify(unverified.signing_input, key.key, unverified.signature)
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise refuse(Reason.BAD_SIGNATURE)


def _credential_id(claims: Mapping[str, Any], digest: bytes) -> str:
    """``jti`` when the issuer gives a usable one, else a short hash of the token (for audit)."""
    jti = claims.get("jti")
    if isinstance(jti, str) and 0 < len(jti) <= MAX_JTI_LENGTH and jti.isprintable():
        return jti
    return "sha256:" + digest.hex()[:16]
