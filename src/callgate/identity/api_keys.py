"""API keys: ``cgk_<8 hex id>_<43 urlsafe chars>``, kept only as HMAC-SHA256(secret key, key).

The id is public (it shows in ``callgate keys list``, and tells keys apart in logs); the secret
part is 256 bits from :mod:`secrets`. Verified keys are cached for at most :data:`CACHE_SECONDS` so
that a revocation made by another process (``callgate keys revoke``) bites within that time.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from callgate.errors import CallgateError
from callgate.identity.base import CredentialRejected
from callgate.model import Principal
from callgate.services import Clock
from callgate.store.base import Store
from callgate.store.errors import StoreClosed, StoreConflict
from callgate.store.records import ApiKeyRecord, InsertApiKey, TouchApiKey

API_KEY_PREFIX = "cgk_"
_KEY_ID_CHARS = 8
_SECRET_BYTES = 32  # 256 bits; token_urlsafe gives 43 characters
_KEY_RE = re.compile(r"cgk_([0-9a-f]{8})_[A-Za-z0-9_-]{32,128}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}")
_GROUP_RE = re.compile(r"[^\s,]{1,128}")

#: Seconds a verified key is trusted without reading the store again. Revocation from another
#: process takes at most this long to bite; revocation through this object bites at once.
CACHE_SECONDS = 5.0
#: Cached keys at most (a burst of distinct keys beyond this just clears the cache).
CACHE_MAX_ENTRIES = 10_000
#: ``last_used_at`` is written at most this often per key: precise enough to find unused keys,
#: and never a write on each authentication.
LAST_USED_RESOLUTION = 60.0


class ApiKeyError(CallgateError):
    """A key management request cannot be done (bad name, duplicate, unknown key)."""


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """What may be shown about a key: never the key, never its hash."""

    name: str
    key_id: str
    groups: tuple[str, ...]
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None
    created_by: str | None

    @property
    def prefix(self) -> str:
        return f"{API_KEY_PREFIX}{self.key_id}_"

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    @classmethod
    def of(cls, record: ApiKeyRecord) -> ApiKeyInfo:
        return cls(
            name=record.name,
            key_id=record.key_id,
            groups=record.groups,
            created_at=record.created_at,
            expires_at=record.expires_at,
            revoked_at=record.revoked_at,
            last_used_at=record.last_used_at,
            created_by=record.created_by,
        )


def generate_key() -> tuple[str, str]:
    """A new key and its public id."""
    key_id = secrets.token_hex(_KEY_ID_CHARS // 2)
    return f"{API_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}", key_id


def normalize_groups(groups: Iterable[str]) -> tuple[str, ...]:
    out: set[str] = set()
    for group in groups:
        group = group.strip()
        if not group:
            continue
        if not _GROUP_RE.fullmatch(group):
            raise ApiKeyError(f"invalid group name {group!r}")
        out.add(group)
    return tuple(sorted(out))


@dataclass(frozen=True, slots=True)
class _Cached:
    record: ApiKeyRecord
    principal: Principal
    until: float


class ApiKeys:
    """Create, list, revoke and verify API keys; the ``cgk_`` authenticator."""

    def __init__(
        self,
        store: Store,
        secret_key: bytes,
        *,
        clock: Clock = time.time,
        cache_seconds: float = CACHE_SECONDS,
        last_used_resolution: float = LAST_USED_RESOLUTION,
    ) -> None:
        self._store = store
        self._secret_key = secret_key
        self._clock = clock
        self._cache_seconds = min(cache_seconds, CACHE_SECONDS)
        self._last_used_resolution = last_used_resolution
        self._cache: dict[str, _Cached] = {}
        self._last_touch: dict[str, float] = {}

    @property
    def prefixes(self) -> tuple[str, ...]:
        return (API_KEY_PREFIX,)

    def hash_key(self, key: str) -> str:
        return hmac.new(self._secret_key, key.encode("utf-8"), hashlib.sha256).hexdigest()

    # --- management -----------------------------------------------------------------------------

    async def create_key(
        self,
        name: str,
        groups: Iterable[str],
        expires_in: timedelta | None = None,
        *,
        created_by: str | None = None,
    ) -> str:
        """Store a new key and return it. This is the only time the key exists in clear."""
        if not _NAME_RE.fullmatch(name):
            raise ApiKeyError(
                f"invalid key name {name!r}: use letters, digits and . _ @ : - (at most 128)"
            )
        if expires_in is not None and expires_in <= timedelta(0):
            raise ApiKeyError("the expiry must be in the future")
        now = self._clock()
        key, key_id = generate_key()
        record = ApiKeyRecord(
            name=name,
            key_id=key_id,
            key_hash=self.hash_key(key),
            groups=normalize_groups(groups),
            created_at=now,
            expires_at=now + expires_in.total_seconds() if expires_in is not None else None,
            created_by=created_by,
        )
        try:
            await self._store.commit((InsertApiKey(record),))
        except StoreConflict:
            raise ApiKeyError(f"an API key named {name!r} already exists") from None
        return key

    async def list_keys(self) -> list[ApiKeyInfo]:
        return [ApiKeyInfo.of(r) for r in await self._store.list_api_keys()]

    async def revoke_key(self, name: str) -> None:
        if not await self._store.revoke_api_key(name, self._clock()):
            existing = await self._store.api_key_by_name(name)
            if existing is None:
                raise ApiKeyError(f"no API key named {name!r}")
            raise ApiKeyError(f"the API key {name!r} is already revoked")
        for key_hash in [h for h, c in self._cache.items() if c.record.name == name]:
            del self._cache[key_hash]

    # --- verification ---------------------------------------------------------------------------

    async def verify(self, credential: str) -> Principal:
        if not _KEY_RE.fullmatch(credential):
            raise CredentialRejected("malformed API key")
        key_hash = self.hash_key(credential)
        now = self._clock()
        cached = self._cache.get(key_hash)
        if cached is None or cached.until <= now:
            record = await self._store.api_key_by_hash(key_hash)
            if record is None:
                self._cache.pop(key_hash, None)
                raise CredentialRejected("unknown API key")
            cached = _Cached(record, self._principal(record), now + self._cache_seconds)
            if len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache.clear()
            self._cache[key_hash] = cached
        record = cached.record
        if record.revoked_at is not None:
            raise CredentialRejected(f"revoked API key {record.name!r}")
        if record.expires_at is not None and record.expires_at <= now:
            raise CredentialRejected(f"expired API key {record.name!r}")
        self._touch(record.name, now)
        return cached.principal

    @staticmethod
    def _principal(record: ApiKeyRecord) -> Principal:
        return Principal(
            subject=record.name,
            groups=frozenset(record.groups),
            method="api_key",
            expires_at=record.expires_at,
            credential_id=record.name,
        )

    def _touch(self, name: str, now: float) -> None:
        """Queue a ``last_used_at`` write, at most once per resolution period per key."""
        last = self._last_touch.get(name)
        if last is not None and now - last < self._last_used_resolution:
            return
        self._last_touch[name] = now
        with contextlib.suppress(StoreClosed):  # shutting down: the timestamp is not worth an error
            self._store.submit((TouchApiKey(name, now),))
