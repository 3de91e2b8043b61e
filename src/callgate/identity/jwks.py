"""An issuer's signing keys: OpenID discovery, the JWKS document, caching and refresh.

Keys are fetched on first use and kept for the JWKS response's ``Cache-Control: max-age`` (within
bounds). A token naming a key id we do not have triggers one refresh, so a rotation at the identity
provider is picked up without a restart, but at most once per ``min_refresh_interval`` per issuer,
so tokens with made-up key ids cannot make us hammer the provider. When keys are needed and the
provider cannot be reached, verification fails closed with "identity provider unavailable".
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from callgate.config.fields import is_loopback_host
from callgate.identity.claims import Reason, refuse

log = logging.getLogger(__name__)

Clock = Callable[[], float]

#: the key type, and the curves, each accepted algorithm verifies with. HMAC (``HS*``) and
#: ``none`` are absent on purpose: a verifier that accepts them can be fooled with the provider's
#: *public* key used as an HMAC secret, or with no signature at all.
ALGORITHM_KEYS: Final[Mapping[str, tuple[str, frozenset[str] | None]]] = {
    "RS256": ("RSA", None),
    "PS256": ("RSA", None),
    "ES256": ("EC", frozenset({"P-256"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
#: keys read from one JWKS document; real ones publish a handful (current, next, previous)
MAX_KEYS: Final = 100
#: RSA keys shorter than this are not trusted (NIST SP 800-131A)
MIN_RSA_BITS: Final = 2048
#: private-key members of a JWK (RFC 7518 §6.2.2, §6.3.2, RFC 8037 §2)
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
#: longest ``kid`` we look up; real ones are short ids or thumbprints
MAX_KID_LENGTH: Final = 256

_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d{1,10})\"?", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class KeyFetchLimits:
    """How keys are fetched and kept (all in seconds, documents in bytes)."""

    #: keys are refetched for an unknown ``kid`` at most this often per issuer
    min_refresh_interval: float = 30.0
    #: after a failed fetch, the next attempt waits this long (verifications fail meanwhile)
    retry_after_failure: float = 5.0
    #: how long keys are kept when the response has no ``Cache-Control: max-age``
    default_ttl: float = 600.0
    #: bounds on ``max-age``: a tiny one would refetch on every burst, a huge one would keep
    #: a revoked key for days
    min_ttl: float = 60.0
    max_ttl: float = 86400.0
    #: per request: connect, and the whole request including reading the body
    connect_timeout: float = 2.0
    timeout: float = 5.0
    #: discovery and JWKS documents are small; anything larger is not one
    max_document_bytes: int = 512 * 1024


class _BadDocument(Exception):
    """A discovery or JWKS response we cannot use; the text names the problem, for the log."""


def secure_url(url: str) -> bool:
    """https, or http on a loopback host (a development or test identity provider)."""
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(parts.hostname))


def discovery_url(issuer: str) -> str:
    # OpenID Connect Discovery 1.0 §4: remove a trailing "/" before appending the well-known path.
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def max_age(cache_control: str | None) -> float | None:
    """``max-age`` from a Cache-Control header; 0 for ``no-store``/``no-cache``; else ``None``."""
    if not cache_control:
        return None
    lowered = cache_control.lower()
    if "no-store" in lowered or "no-cache" in lowered:
        return 0.0
    found = _MAX_AGE.search(cache_control)
    return float(found.group(1)) if found else None


# --- one JWKS document ----------------------------------------------------------------------------


class KeySet:
    """The usable signing keys of one JWKS document (RFC 7517), found by ``kid`` and algorithm."""

    def __init__(self, keys: Sequence[Mapping[str, Any]]) -> None:
        # A JWKS must hold public keys only; private members, if an IdP leaks them, are dropped
        # so that verification always uses a public key object.
        self._keys = tuple({n: v for n, v in k.items() if n not in _PRIVATE_MEMBERS} for k in keys)
        self._parsed: dict[tuple[int, str], jwt.PyJWK | None] = {}

    @classmethod
    def parse(cls, document: Mapping[str, Any]) -> KeySet:
        keys = document.get("keys")
        if not isinstance(keys, list):
            raise _BadDocument("JWKS has no 'keys' list")
        if len(keys) > MAX_KEYS:
            raise _BadDocument(f"JWKS has more than {MAX_KEYS} keys")
        return cls([k for k in keys if isinstance(k, dict) and _signing_key(k)])

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(k["kid"] for k in self._keys if isinstance(k.get("kid"), str))

    def __len__(self) -> int:
        return len(self._keys)

    def find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        """The key to verify an ``alg`` signature with. Without a ``kid`` only an unambiguous
        choice is made: the one key of the set that fits ``alg``."""
        if kid is None:
            fitting = [i for i, k in enumerate(self._keys) if _fits(k, alg)]
        else:
            fitting = [i for i, k in enumerate(self._keys) if k.get("kid") == kid and _fits(k, alg)]
        if len(fitting) != 1:
            return None
        return self._pyjwk(fitting[0], alg)

    def has_kid(self, kid: str) -> bool:
        return any(k.get("kid") == kid for k in self._keys)

    def _pyjwk(self, index: int, alg: str) -> jwt.PyJWK | None:
        cache_key = (index, alg)
        if cache_key not in self._parsed:
            kid = self._keys[index].get("kid")
            try:
                key: jwt.PyJWK | None = jwt.PyJWK(self._keys[index], algorithm=alg)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
                log.warning("JWKS key %r is unusable for %s: %s", kid, alg, type(exc).__name__)
                key = None
            if (
                key is not None
                and isinstance(key.key, rsa.RSAPublicKey)
                and key.key.key_size < MIN_RSA_BITS
            ):
                log.warning("JWKS key %r: RSA below %d bits, not used", kid, MIN_RSA_BITS)
                key = None
            self._parsed[cache_key] = key
        return self._parsed[cache_key]


def _signing_key(jwk: Mapping[str, Any]) -> bool:
    """Public signing keys of a type we verify with; encryption and symmetric keys are skipped."""
    if jwk.get("kty") not in {kty for kty, _ in ALGORITHM_KEYS.values()}:
        return False  # "oct" (an HMAC secret) never verifies a caller's token
    if "use" in jwk and jwk["use"] != "sig":
        return False
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return False
    kid = jwk.get("kid")
    return kid is None or (isinstance(kid, str) and len(kid) <= MAX_KID_LENGTH)


def _fits(jwk: Mapping[str, Any], alg: str) -> bool:
    kty, curves = ALGORITHM_KEYS[alg]
    if jwk.get("kty") != kty:
        return False
    if curves is not None and jwk.get("crv") not in curves:
        return False
    # RFC 7517 §4.4: a key that names its algorithm is for that algorithm only.
    return "alg" not in jwk or jwk["alg"] == alg


# --- one issuer's keys, fetched and cached --------------------------------------------------------


class IssuerKeys:
    """The signing keys of one issuer, fetched through its discovery document and cached."""

    def __init__(
        self,
        issuer: str,
        *,
        http: httpx.AsyncClient,
        clock: Clock,
        limits: KeyFetchLimits = KeyFetchLimits(),
    ) -> None:
        if not secure_url(issuer):
            raise ValueError(f"issuer {issuer!r} must be https:// (http:// only on loopback)")
        self.issuer = issuer
        self._http = http
        self._clock = clock
        self._limits = limits
        self._lock = asyncio.Lock()
        self._keys: KeySet | None = None
        self._expires_at = 0.0
        self._jwks_uri: str | None = None
        self._discovery_expires_at = 0.0
        self._last_attempt: float | None = None
        self._last_failure: float | None = None

    @property
    def keys(self) -> KeySet | None:
        """The keys held now (``None`` before the first successful fetch)."""
        return self._keys

    async def load(self) -> KeySet:
        """Fetch now unless the keys held are still fresh (warm-up at start)."""
        return await self._current()

    async def key_for(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """The key for a token's ``kid`` and ``alg``; refreshes once for an unknown ``kid``."""
        keys = await self._current()
        key = keys.find(kid, alg)
        if key is not None:
            return key
        if kid is not None and keys.has_kid(kid):
            # The key is there but is not for this algorithm (e.g. an RS256 key, a PS256 token).
            raise refuse(Reason.ALGORITHM)
        async with self._lock:
            if self._keys is keys:  # nobody refreshed while we waited for the lock
                last = self._last_attempt
                if last is not None and self._clock() - last < self._limits.min_refresh_interval:
                    log.debug(
                        "OIDC %s: unknown kid, keys fetched recently: not refetching", self.issuer
                    )
                    raise refuse(Reason.UNKNOWN_KID)
                keys = await self._fetch()
            else:
                keys = self._keys or keys
        key = keys.find(kid, alg)
        if key is None:
            raise refuse(Reason.UNKNOWN_KID)
        return key

    async def _current(self) -> KeySet:
        keys = self._keys
        if keys is not None and self._clock() < self._expires_at:
            return keys
        async with self._lock:
            keys = self._keys
            now = self._clock()
            if keys is not None and now < self._expires_at:
                return keys  # refreshed by another task while we waited
            failed = self._last_failure
            if failed is not None and 0 <= now - failed < self._limits.retry_after_failure:
                raise refuse(Reason.IDP_UNAVAILABLE)
            return await self._fetch()

    async def _fetch(self) -> KeySet:
        """Discovery (when not known or stale), then the JWKS. Called with the lock held."""
        now = self._clock()
        self._last_attempt = now
        url = discovery_url(self.issuer)
        try:
            if self._jwks_uri is None or now >= self._discovery_expires_at:
                document, ttl = await self._get_json(url)
                self._jwks_uri = self._jwks_uri_from(document)
                self._discovery_expires_at = now + ttl
            url = self._jwks_uri
            document, ttl = await self._get_json(url)
            keys = KeySet.parse(document)
        except (httpx.HTTPError, TimeoutError, _BadDocument) as exc:
            self._last_failure = self._clock()
            # A failing JWKS URL may have moved: ask discovery again next time.
            self._jwks_uri = None
            detail = str(exc) if isinstance(exc, _BadDocument) else type(exc).__name__
            log.warning("OIDC issuer %s: fetching %s failed: %s", self.issuer, url, detail)
            raise refuse(Reason.IDP_UNAVAILABLE) from None
        if not len(keys):
            log.warning("OIDC issuer %s: %s has no usable signing key", self.issuer, url)
        self._keys = keys
        self._expires_at = now + ttl
        self._last_failure = None
        log.info("OIDC issuer %s: %d signing keys, kept %.0f s", self.issuer, len(keys), ttl)
        return keys

    def _jwks_uri_from(self, document: Mapping[str, Any]) -> str:
        # OpenID Connect Discovery 1.0 §4.3: the document's issuer must be exactly the one asked.
        if document.get("issuer") != self.issuer:
            raise _BadDocument("discovery document names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not secure_url(jwks_uri):
            raise _BadDocument("discovery document has no https jwks_uri")
        return jwks_uri

    async def _get_json(self, url: str) -> tuple[dict[str, Any], float]:
        limits = self._limits
        timeout = httpx.Timeout(limits.timeout, connect=limits.connect_timeout)
        body = bytearray()
        async with (
            asyncio.timeout(limits.timeout),
            self._http.stream(
                "GET",
                url,
                headers={"accept": "application/json"},
                timeout=timeout,
                follow_redirects=False,
            ) as response,
        ):
            if response.status_code != 200:
                raise _BadDocument(f"HTTP status {response.status_code}")
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limits.max_document_bytes:
                    raise _BadDocument(f"response larger than {limits.max_document_bytes} bytes")
            cache_control = response.headers.get("cache-control")
        try:
            document = json.loads(body)
        except ValueError:
            raise _BadDocument("response is not JSON") from None
        if not isinstance(document, dict):
            raise _BadDocument("response is not a JSON object")
        age = max_age(cache_control)
        ttl = limits.default_ttl if age is None else age
        return document, min(max(ttl, limits.min_ttl), limits.max_ttl)
