"""Session tokens: ``cgt_<16 hex id>_<43 urlsafe chars>`` (64 characters), minted by
``callgate token`` in exchange for a verified OIDC token and bound to its principal.

They exist because JWTs are often too long for a client's password field (some drivers cap it at
99 or 128 bytes) and too short-lived for an interactive session. The store keeps only
HMAC-SHA256(secret key, token) with the principal (subject, groups, issuer), the expiry and the
revocation time, like API keys. The id is public: it is the principal's ``credential_id``, shown in
``callgate token list`` and in audit, and what ``callgate token revoke`` takes.

Verified tokens are cached for at most :data:`CACHE_SECONDS`, so a revocation made by another
process bites within that time (a revocation through this object bites at once).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from callgate.errors import CallgateError
from callgate.identity.base import CredentialRejected
from callgate.model import Principal
from callgate.services import Clock
from callgate.store.base import Store
from callgate.store.errors import StoreClosed, StoreConflict
from callgate.store.records import InsertSessionToken, SessionTokenRecord, TouchSessionToken

SESSION_TOKEN_PREFIX: Final = "cgt_"  # noqa: S105 - a prefix, not a secret
METHOD: Final = "session_token"
_ID_BYTES = 8  # 16 hex digits: ids stay unique without a name to key them
_SECRET_BYTES = 32  # 256 bits; token_urlsafe gives 43 characters
_TOKEN_RE = re.compile(r"cgt_([0-9a-f]{16})_[A-Za-z0-9_-]{43}")
_ID_RE = re.compile(r"[0-9a-f]{16}")
#: the length of every token: short enough for any client's password field
TOKEN_LENGTH: Final = len(SESSION_TOKEN_PREFIX) + 2 * _ID_BYTES + 1 + 43

#: Seconds a verified token is trusted without reading the store again (revocation by another
#: process bites within this time).
CACHE_SECONDS: Final = 5.0
#: Cached tokens at most (a burst of distinct tokens beyond this just clears the cache).
CACHE_MAX_ENTRIES: Final = 10_000
#: ``last_used_at`` is written at most this often per token.
LAST_USED_RESOLUTION: Final = 60.0
#: the shortest lifetime that may be asked for (a token must outlive the command that mints it)
MIN_TTL: Final = timedelta(seconds=10)

DEFAULT_TTL: Final = timedelta(hours=1)
DEFAULT_MAX_TTL: Final = timedelta(hours=12)


class SessionTokenError(CallgateError):
    """A session token request cannot be done (bad lifetime, unknown or already revoked token)."""


@dataclass(frozen=True, slots=True)
class SessionTokenInfo:
    """What may be shown about a token: never the token, never its hash."""

    id: str
    subject: str
    groups: tuple[str, ...]
    issuer: str | None
    created_at: float
    expires_at: float
    revoked_at: float | None
    last_used_at: float | None

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        return "active"

    @classmethod
    def of(cls, record: SessionTokenRecord) -> SessionTokenInfo:
        return cls(
            id=record.id,
            subject=record.subject,
            groups=record.groups,
            issuer=record.issuer,
            created_at=record.created_at,
            expires_at=record.expires_at,
            revoked_at=record.revoked_at,
            last_used_at=record.last_used_at,
        )


@dataclass(frozen=True, slots=True, repr=False)
class MintedToken:
    """A new token (the only time it exists in clear) and what was stored about it."""

    token: str
    info: SessionTokenInfo
    #: ``True`` when the lifetime asked for was longer than the maximum and was cut to it
    capped: bool = False

    def __repr__(self) -> str:  # the token must not end up in a log line by accident
        return f"MintedToken(id={self.info.id!r}, capped={self.capped})"


def token_id_of(token_or_id: str) -> str | None:
    """The id in a ``cgt_`` token, or ``token_or_id`` itself if it is an id; else ``None``."""
    found = _TOKEN_RE.fullmatch(token_or_id)
    if found is not None:
        return found.group(1)
    return token_or_id if _ID_RE.fullmatch(token_or_id) else None


def generate_token() -> tuple[str, str]:
    """A new token and its public id."""
    token_id = secrets.token_hex(_ID_BYTES)
    return f"{SESSION_TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(_SECRET_BYTES)}", token_id


@dataclass(frozen=True, slots=True)
class _Cached:
    record: SessionTokenRecord
    principal: Principal
    until: float


class SessionTokens:
    """Mint, list, revoke and verify session tokens; the ``cgt_`` authenticator."""

    prefixes: Final = (SESSION_TOKEN_PREFIX,)

    def __init__(
        self,
        store: Store,
        secret_key: bytes,
        *,
        default_ttl: timedelta = DEFAULT_TTL,
        max_ttl: timedelta = DEFAULT_MAX_TTL,
        clock: Clock = time.time,
        cache_seconds: float = CACHE_SECONDS,
        last_used_resolution: float = LAST_USED_RESOLUTION,
    ) -> None:
        self._store = store
        self._secret_key = secret_key
        self.max_ttl = max_ttl
        self.default_ttl = min(default_ttl, max_ttl)
        self._clock = clock
        self._cache_seconds = min(cache_seconds, CACHE_SECONDS)
        self._last_used_resolution = last_used_resolution
        self._cache: dict[str, _Cached] = {}
        self._last_touch: dict[str, float] = {}

    def hash_token(self, token: str) -> str:
        return hmac.new(self._secret_key, token.encode("utf-8"), hashlib.sha256).hexdigest()

    # --- management -----------------------------------------------------------------------------

    async def mint(self, principal: Principal, ttl: timedelta | None = None) -> MintedToken:
        """Store a new token for ``principal`` (subject, groups, issuer) and return it.

        ``ttl`` defaults to ``default_ttl`` and is cut to ``max_ttl``. The token's lifetime does
        not depend on the credential it was exchanged for: that credential was verified now, and
        ``max_ttl`` bounds what an exchange can give.
        """
        if ttl is None:
            ttl = self.default_ttl
        if ttl < MIN_TTL:
            raise SessionTokenError(f"the lifetime must be at least {MIN_TTL.total_seconds():g}s")
        capped = ttl > self.max_ttl
        ttl = min(ttl, self.max_ttl)
        now = self._clock()
        for _ in range(3):  # an id collision (64 random bits) is all but impossible; retry anyway
            token, token_id = generate_token()
            record = SessionTokenRecord(
                id=token_id,
                token_hash=self.hash_token(token),
                subject=principal.subject,
                groups=tuple(sorted(principal.groups)),
                issuer=principal.issuer,
                created_at=now,
                expires_at=now + ttl.total_seconds(),
            )
            try:
                await self._store.commit((InsertSessionToken(record),))
            except StoreConflict:
                continue
            return MintedToken(token, SessionTokenInfo.of(record), capped)
        raise SessionTokenError("could not store a new session token (id collisions)")

    async def list_tokens(self, *, include_inactive: bool = False) -> list[SessionTokenInfo]:
        live_at = None if include_inactive else self._clock()
        return [
            SessionTokenInfo.of(r) for r in await self._store.list_session_tokens(live_at=live_at)
        ]

    async def revoke(self, token_or_id: str) -> SessionTokenInfo:
        """Revoke a token given by its id (or the token itself). Returns what was revoked."""
        token_id = token_id_of(token_or_id)
        if token_id is None:
            raise SessionTokenError("expected a session token id (16 hex digits) or a cgt_ token")
        if not await self._store.revoke_session_token(token_id, self._clock()):
            existing = await self._store.session_token_by_id(token_id)
            if existing is None:
                raise SessionTokenError(f"no session token with id {token_id}")
            raise SessionTokenError(f"the session token {token_id} is already revoked")
        for token_hash in [h for h, c in self._cache.items() if c.record.id == token_id]:
            del self._cache[token_hash]
        record = await self._store.session_token_by_id(token_id)
        if record is None:  # deleted between the two statements (retention)
            raise SessionTokenError(f"no session token with id {token_id}")
        return SessionTokenInfo.of(record)

    async def problem(self, token_id: str) -> str | None:
        """Why the token ``token_id`` no longer vouches for a session, or ``None`` if it does.

        Always reads the store (the identity service caches the answer for its live-session
        checks)."""
        record = await self._store.session_token_by_id(token_id)
        if record is None or record.revoked_at is not None:
            return "session token revoked"
        if record.expires_at <= self._clock():
            return "credential expired"
        return None

    # --- verification ---------------------------------------------------------------------------

    async def verify(self, credential: str) -> Principal:
        found = _TOKEN_RE.fullmatch(credential)
        if found is None:
            raise CredentialRejected("malformed session token")
        token_hash = self.hash_token(credential)
        now = self._clock()
        cached = self._cache.get(token_hash)
        if cached is None or cached.until <= now:
            record = await self._store.session_token_by_hash(token_hash)
            if record is None or not hmac.compare_digest(record.id, found.group(1)):
                self._cache.pop(token_hash, None)
                raise CredentialRejected("unknown session token")
            cached = _Cached(record, self._principal(record), now + self._cache_seconds)
            if len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache.clear()
            self._cache[token_hash] = cached
        record = cached.record
        if record.revoked_at is not None:
            raise CredentialRejected(f"revoked session token {record.id}", issuer=record.issuer)
        if record.expires_at <= now:
            raise CredentialRejected(f"expired session token {record.id}", issuer=record.issuer)
        self._touch(record.id, now)
        return cached.principal

    @staticmethod
    def _principal(record: SessionTokenRecord) -> Principal:
        return Principal(
            subject=record.subject,
            groups=frozenset(record.groups),
            method=METHOD,
            expires_at=record.expires_at,
            credential_id=record.id,
            issuer=record.issuer,
        )

    def _touch(self, token_id: str, now: float) -> None:
        last = self._last_touch.get(token_id)
        if last is not None and now - last < self._last_used_resolution:
            return
        if len(self._last_touch) >= CACHE_MAX_ENTRIES:
            self._last_touch.clear()
        self._last_touch[token_id] = now
        with contextlib.suppress(StoreClosed):  # shutting down: the timestamp is not worth an error
            self._store.submit((TouchSessionToken(token_id, now),))
