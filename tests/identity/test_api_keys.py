"""API keys against a real store: format, keyed hash at rest, lifecycle, cache, last_used."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path

import pytest

from callgate.identity import ApiKeyError, ApiKeys, CredentialRejected, generate_key
from callgate.store import SqliteStore

SECRET = b"k" * 32


class _Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_key_format_and_entropy() -> None:
    key, key_id = generate_key()
    assert re.fullmatch(r"cgk_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", key)
    assert key.startswith(f"cgk_{key_id}_")
    # 43 urlsafe base64 characters carry 258 bits; at least 190 are required.
    assert len(key.split("_", 2)[2]) * 6 >= 190
    assert generate_key()[0] != key


def test_lifecycle(tmp_path: Path) -> None:
    clock = _Clock()

    async def main() -> None:
        async with SqliteStore(tmp_path / "a.db") as store:
            keys = ApiKeys(store, SECRET, clock=clock)
            key = await keys.create_key("ci-bot", ["functions", "ci", "ci"], timedelta(days=30))
            principal = await keys.verify(key)
            assert principal.subject == "ci-bot" and principal.credential_id == "ci-bot"
            assert principal.groups == frozenset({"functions", "ci"})
            assert principal.method == "api_key"
            assert principal.expires_at == clock.now + 30 * 86400

            (info,) = await keys.list_keys()
            assert info.name == "ci-bot" and info.groups == ("ci", "functions")
            assert info.status(clock.now) == "active"
            assert key not in repr(info) and not hasattr(info, "key_hash")

            with pytest.raises(ApiKeyError, match="already exists"):
                await keys.create_key("ci-bot", ["x"])
            await keys.revoke_key("ci-bot")
            with pytest.raises(CredentialRejected, match="revoked"):
                await keys.verify(key)  # at once in this process, cache or not
            with pytest.raises(ApiKeyError, match="already revoked"):
                await keys.revoke_key("ci-bot")
            with pytest.raises(ApiKeyError, match="no API key"):
                await keys.revoke_key("nobody")
            (info,) = await keys.list_keys()
            assert info.status(clock.now) == "revoked"

    asyncio.run(main())


def test_expiry(tmp_path: Path) -> None:
    clock = _Clock()

    async def main() -> None:
        async with SqliteStore(tmp_path / "a.db") as store:
            keys = ApiKeys(store, SECRET, clock=clock)
            key = await keys.create_key("short", ["g"], timedelta(hours=1))
            await keys.verify(key)
            clock.now += 3600
            with pytest.raises(CredentialRejected, match="expired"):
                await keys.verify(key)  # even while cached
            (info,) = await keys.list_keys()
            assert info.status(clock.now) == "expired"
            with pytest.raises(ApiKeyError, match="future"):
                await keys.create_key("never", ["g"], timedelta(0))

    asyncio.run(main())


def test_revocation_by_another_process_bites_within_the_cache_time(tmp_path: Path) -> None:
    clock = _Clock()

    async def main() -> None:
        async with SqliteStore(tmp_path / "a.db") as gateway_store:
            gateway = ApiKeys(gateway_store, SECRET, clock=clock)
            key = await gateway.create_key("ci", ["g"])
            await gateway.verify(key)
            async with SqliteStore(tmp_path / "a.db") as cli_store:
                await ApiKeys(cli_store, SECRET, clock=clock).revoke_key("ci")
            await gateway.verify(key)  # still cached
            clock.now += 5.0
            with pytest.raises(CredentialRejected, match="revoked"):
                await gateway.verify(key)

    asyncio.run(main())


def test_unknown_malformed_and_other_secret_key(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "a.db") as store:
            keys = ApiKeys(store, SECRET)
            key = await keys.create_key("ci", ["g"])
            with pytest.raises(CredentialRejected, match="unknown"):
                await keys.verify(generate_key()[0])
            with pytest.raises(CredentialRejected, match="malformed"):
                await keys.verify("cgk_short")
            with pytest.raises(CredentialRejected, match="malformed"):
                await keys.verify(key + "\n")
            # The hash is keyed: the same key under another gateway secret is unknown.
            with pytest.raises(CredentialRejected, match="unknown"):
                await ApiKeys(store, b"z" * 32).verify(key)
            with pytest.raises(ApiKeyError, match="invalid key name"):
                await keys.create_key("has space", ["g"])
            with pytest.raises(ApiKeyError, match="invalid group"):
                await keys.create_key("ok", ["a b"])

    asyncio.run(main())


def test_last_used_is_written_at_most_once_per_resolution(tmp_path: Path) -> None:
    clock = _Clock()

    async def main() -> None:
        async with SqliteStore(tmp_path / "a.db") as store:
            keys = ApiKeys(store, SECRET, clock=clock, last_used_resolution=60)
            key = await keys.create_key("ci", ["g"])
            (info,) = await keys.list_keys()
            assert info.last_used_at is None
            first = clock.now
            await keys.verify(key)
            clock.now += 30
            await keys.verify(key)
            await store.flush()
            (info,) = await keys.list_keys()
            assert info.last_used_at == first
            clock.now += 31
            await keys.verify(key)
            await store.flush()
            (info,) = await keys.list_keys()
            assert info.last_used_at == clock.now

    asyncio.run(main())


def test_the_key_is_nowhere_in_the_store_files(tmp_path: Path) -> None:
    async def main() -> list[str]:
        async with SqliteStore(tmp_path / "a.db") as store:
            keys = ApiKeys(store, SECRET)
            created = [await keys.create_key(f"k{i}", ["g"]) for i in range(5)]
            for key in created:
                await keys.verify(key)
            await store.flush()
            # While open (WAL and all) ...
            blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
            for key in created:
                assert key.encode() not in blob
                assert key.split("_", 2)[2].encode() not in blob
            return created

    created = asyncio.run(main())
    # ... and after close, when everything is in the database file.
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert blob  # the files were read
    for key in created:
        assert key.encode() not in blob
        assert key.split("_", 2)[2].encode() not in blob
