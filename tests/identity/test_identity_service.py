"""Authentication through the identity service: dispatch, uniform refusals, audit, throttling."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from callgate.errors import AuthenticationFailed, TooManyFailures
from callgate.identity import (
    INVALID_MESSAGE,
    ApiKeys,
    CredentialRejected,
    FailureThrottle,
    IdentityService,
)
from callgate.model import Principal
from callgate.store import SqliteStore


class _Audit:
    def __init__(self) -> None:
        self.failures: list[dict[str, str | None]] = []

    def auth_failure(self, *, protocol: str, source: str, reason: str, issuer: str | None) -> None:
        self.failures.append(
            {"protocol": protocol, "source": source, "reason": reason, "issuer": issuer}
        )

    async def open_session(self, info: object) -> object:  # pragma: no cover - unused
        raise NotImplementedError


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class _Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class _Counting:
    """A fake authenticator for another prefix: counts verifications."""

    prefixes = ("tst_",)

    def __init__(self) -> None:
        self.calls = 0

    async def verify(self, credential: str) -> Principal:
        self.calls += 1
        if credential == "tst_good":
            return Principal("t", frozenset(), "test")
        raise CredentialRejected("bad test credential", issuer="tests")


def _service(
    store: SqliteStore, clock: _Clock, sleeps: _Sleeps, audit: _Audit
) -> tuple[IdentityService, ApiKeys, _Counting]:
    keys = ApiKeys(store, b"s" * 32, clock=clock)
    other = _Counting()
    throttle = FailureThrottle(clock=clock)
    service = IdentityService([keys, other], throttle=throttle, audit=audit, sleep=sleeps)  # type: ignore[arg-type]
    return service, keys, other


def test_every_refusal_looks_the_same_but_is_audited_precisely(tmp_path: Path) -> None:
    clock, sleeps, audit = _Clock(), _Sleeps(), _Audit()

    async def main() -> None:
        async with SqliteStore(tmp_path / "a.db") as store:
            service, keys, _ = _service(store, clock, sleeps, audit)
            good = await keys.create_key("ci", ["functions"])
            revoked = await keys.create_key("old", ["functions"])
            await keys.revoke_key("old")
            expiring = await keys.create_key("brief", ["functions"], timedelta(seconds=10))
            clock.now += 10

            principal = await service.authenticate(good, source="a", protocol="postgres")
            assert principal.subject == "ci"

            messages = []
            for i, credential in enumerate(
                [revoked, expiring, "cgk_00000000_" + "x" * 43, "eyJhbGciOi.x.y", "", "hunter2"]
            ):
                with pytest.raises(AuthenticationFailed) as caught:
                    await service.authenticate(credential, source=f"src{i}", protocol="http")
                assert not isinstance(caught.value, TooManyFailures)
                messages.append(caught.value.message)
            assert set(messages) == {INVALID_MESSAGE}

            reasons = [f["reason"] for f in audit.failures]
            assert reasons == [
                "revoked API key 'old'",
                "expired API key 'brief'",
                "unknown API key",
                "unrecognized credential type",
                "no credential",
                "unrecognized credential type",
            ]
            assert all(f["protocol"] == "http" for f in audit.failures)
            for f in audit.failures:
                assert "hunter2" not in str(f) and revoked not in str(f)

    asyncio.run(main())


def test_throttling_delays_then_locks_out_without_checking(tmp_path: Path) -> None:
    clock, sleeps, audit = _Clock(), _Sleeps(), _Audit()

    async def main() -> None:
        async with SqliteStore(tmp_path / "a.db") as store:
            service, _, counting = _service(store, clock, sleeps, audit)
            for _ in range(10):
                with pytest.raises(AuthenticationFailed):
                    await service.authenticate("tst_bad", source="1.2.3.4", protocol="postgres")
            assert sleeps.calls == [1, 2, 4, 5, 5, 5, 5]
            assert counting.calls == 10
            assert "locked out for 300s after 10 failures" in str(audit.failures[-1]["reason"])
            assert audit.failures[-1]["issuer"] == "tests"

            with pytest.raises(TooManyFailures):
                await service.authenticate("tst_good", source="1.2.3.4", protocol="postgres")
            assert counting.calls == 10  # the credential was not even looked at
            assert len(audit.failures) == 10  # refusals during the lockout are not recorded each

            # Another source is not affected; a delayed source's good credential still works
            # and resets the count.
            assert (
                await service.authenticate("tst_good", source="9.9.9.9", protocol="x")
            ).subject == "t"
            clock.now += 300
            sleeps.calls.clear()
            for _ in range(4):
                with pytest.raises(AuthenticationFailed):
                    await service.authenticate("tst_bad", source="1.2.3.4", protocol="postgres")
            await service.authenticate("tst_good", source="1.2.3.4", protocol="postgres")
            assert sleeps.calls == [1, 2]  # the good attempt waited too: timing tells nothing
            assert service.throttle.failures("1.2.3.4") == 0

    asyncio.run(main())


def test_from_config_uses_the_generated_key_file(tmp_path: Path) -> None:
    from callgate.config import parse_config
    from callgate.identity import KEY_FILE_NAME

    config = parse_config({"gateway": {"store": "sqlite:///a.db"}}, tmp_path)

    async def main() -> None:
        async with SqliteStore(tmp_path / "a.db") as store:
            service = IdentityService.from_config(config, store)
            keys = ApiKeys(store, bytes.fromhex((tmp_path / KEY_FILE_NAME).read_text()))
            key = await keys.create_key("ci", ["g"])
            principal = await service.authenticate(key, source="s", protocol="postgres")
            assert principal.subject == "ci"

    asyncio.run(main())
