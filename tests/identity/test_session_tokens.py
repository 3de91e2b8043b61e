"""Session tokens (``cgt_``): format, keyed hash at rest, lifetime, revocation and its cache,
the identity service's live-session check, and ``callgate token`` against an in-test issuer."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from callgate.cli import token as token_cli
from callgate.config import parse_config
from callgate.errors import AuthenticationFailed
from callgate.identity import (
    ApiKeys,
    CredentialRejected,
    IdentityService,
    SessionTokenError,
    SessionTokens,
)
from callgate.identity.session_tokens import TOKEN_LENGTH, generate_token, token_id_of
from callgate.model import Principal
from callgate.store import SqliteStore
from tests.identity_oidc.issuer import LocalIssuer

SECRET = b"t" * 32
ALICE = Principal(
    "alice@example.com",
    frozenset({"dba", "functions"}),
    "oidc",
    expires_at=1_000_300.0,
    credential_id="jti-1",
    issuer="corp",
)


class _Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_token_format() -> None:
    token, token_id = generate_token()
    assert re.fullmatch(r"cgt_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", token)
    assert len(token) == TOKEN_LENGTH == 64  # fits every client's password field (<= 99)
    assert token.startswith(f"cgt_{token_id}_")
    assert token_id_of(token) == token_id == token_id_of(token_id)
    assert token_id_of("cgt_nope") is None and token_id_of("../etc") is None
    assert generate_token()[0] != token


def test_mint_verify_and_what_is_stored(tmp_path: Path) -> None:
    clock = _Clock()

    async def main() -> str:
        async with SqliteStore(tmp_path / "s.db") as store:
            tokens = SessionTokens(store, SECRET, clock=clock)
            minted = await tokens.mint(ALICE)
            assert minted.token not in repr(minted)
            info = minted.info
            assert info.expires_at == clock.now + 3600  # default 1 h, not the OIDC token's exp
            principal = await tokens.verify(minted.token)
            assert principal == Principal(
                subject="alice@example.com",
                groups=frozenset({"dba", "functions"}),
                method="session_token",
                expires_at=clock.now + 3600,
                credential_id=info.id,
                issuer="corp",
            )
            # a fresh verifier (another gateway process) reads the same from the store
            assert await SessionTokens(store, SECRET, clock=clock).verify(minted.token) == principal
            # the same token under another gateway secret key is unknown
            with pytest.raises(CredentialRejected, match="unknown session token"):
                await SessionTokens(store, b"x" * 32, clock=clock).verify(minted.token)
            return minted.token

    token = asyncio.run(main())
    with sqlite3.connect(tmp_path / "s.db") as conn:
        rows = conn.execute("SELECT * FROM session_tokens").fetchall()
    assert len(rows) == 1
    # the secret part may itself contain "_" (URL-safe base64): split at the first two only
    secret = token.split("_", 2)[2]
    assert token not in json.dumps(rows) and secret not in json.dumps(rows)
    expected_hash = hmac.new(SECRET, token.encode(), hashlib.sha256).hexdigest()
    assert expected_hash in rows[0]


def test_lifetimes(tmp_path: Path) -> None:
    clock = _Clock()

    async def main() -> None:
        async with SqliteStore(tmp_path / "s.db") as store:
            tokens = SessionTokens(
                store,
                SECRET,
                clock=clock,
                default_ttl=timedelta(hours=2),
                max_ttl=timedelta(hours=4),
            )
            assert (await tokens.mint(ALICE)).info.expires_at == clock.now + 7200
            short = await tokens.mint(ALICE, timedelta(minutes=30))
            assert short.info.expires_at == clock.now + 1800 and not short.capped
            long = await tokens.mint(ALICE, timedelta(days=3))
            assert long.info.expires_at == clock.now + 4 * 3600 and long.capped
            with pytest.raises(SessionTokenError, match="at least"):
                await tokens.mint(ALICE, timedelta(seconds=1))

            clock.now += 1799
            await tokens.verify(short.token)
            clock.now += 1
            with pytest.raises(CredentialRejected, match=f"expired session token {short.info.id}"):
                await tokens.verify(short.token)

    asyncio.run(main())


def test_revocation_and_its_cache(tmp_path: Path) -> None:
    clock = _Clock()

    async def main() -> None:
        async with SqliteStore(tmp_path / "s.db") as store:
            gateway = SessionTokens(store, SECRET, clock=clock)
            cli = SessionTokens(store, SECRET, clock=clock)  # another process
            a, b = await gateway.mint(ALICE), await gateway.mint(ALICE)
            await gateway.verify(a.token)
            await gateway.verify(b.token)

            # revoked here: refused at once
            revoked = await gateway.revoke(a.info.id)
            assert revoked.revoked_at == clock.now and revoked.status(clock.now) == "revoked"
            with pytest.raises(CredentialRejected, match=f"revoked session token {a.info.id}"):
                await gateway.verify(a.token)
            # revoked by another process (by the full token): within the 5 s cache, then refused
            await cli.revoke(b.token)
            await gateway.verify(b.token)
            clock.now += 5
            with pytest.raises(CredentialRejected, match="revoked"):
                await gateway.verify(b.token)

            with pytest.raises(SessionTokenError, match="already revoked"):
                await cli.revoke(a.info.id)
            with pytest.raises(SessionTokenError, match="no session token"):
                await cli.revoke("0123456789abcdef")
            with pytest.raises(SessionTokenError, match="expected a session token id"):
                await cli.revoke("alice")

            c = await gateway.mint(ALICE)
            assert [i.id for i in await cli.list_tokens()] == [c.info.id]
            listed = {i.id for i in await cli.list_tokens(include_inactive=True)}
            assert listed == {a.info.id, b.info.id, c.info.id}

    asyncio.run(main())


def test_malformed_and_unknown_tokens(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "s.db") as store:
            tokens = SessionTokens(store, SECRET)
            minted = await tokens.mint(ALICE)
            for bad in (
                "cgt_",
                "cgt_xyz",
                minted.token + "A",
                minted.token[:-1],
                " " + minted.token,
            ):
                with pytest.raises(CredentialRejected, match="malformed session token"):
                    await tokens.verify(bad)
            # a well-formed token that was never issued, and a real secret under another id
            other, _ = generate_token()
            swapped = f"cgt_{'0' * 16}_{minted.token.split('_', 2)[2]}"
            for unknown in (other, swapped):
                with pytest.raises(CredentialRejected, match="unknown session token"):
                    await tokens.verify(unknown)

    asyncio.run(main())


# --- the identity service -------------------------------------------------------------------------


def _config(tmp_path: Path, **identity: Any) -> Any:
    return parse_config(
        {
            "gateway": {"store": f"sqlite:///{tmp_path / 'gw.db'}", "secret_key": "s" * 32},
            "identity": identity,
        },
        tmp_path,
    )


def test_service_from_config_accepts_session_tokens(tmp_path: Path) -> None:
    config = _config(tmp_path, session_token_ttl="20m", session_token_max_ttl="1h")

    async def main() -> None:
        async with SqliteStore(tmp_path / "gw.db") as store:
            service = IdentityService.from_config(config, store)
            tokens = service.authenticator_for("cgt_")
            assert isinstance(tokens, SessionTokens)
            assert tokens.default_ttl == timedelta(minutes=20)
            assert tokens.max_ttl == timedelta(hours=1)
            minted = await tokens.mint(ALICE)
            principal = await service.authenticate(minted.token, source="s", protocol="postgres")
            assert principal.method == "session_token" and principal.subject == ALICE.subject
            await tokens.revoke(minted.info.id)
            with pytest.raises(AuthenticationFailed):
                await service.authenticate(minted.token, source="s", protocol="postgres")
            await service.aclose()

    asyncio.run(main())


def test_still_valid(tmp_path: Path) -> None:
    clock = _Clock()

    async def main() -> None:
        async with SqliteStore(tmp_path / "s.db") as store:
            keys = ApiKeys(store, SECRET, clock=clock)
            tokens = SessionTokens(store, SECRET, clock=clock)
            service = IdentityService([keys, tokens], store=store, clock=clock)
            other_process = SessionTokens(store, SECRET, clock=clock)

            key = await keys.create_key("fn1", ["apps"], timedelta(hours=1))
            key_principal = await keys.verify(key)
            minted = await tokens.mint(ALICE, timedelta(minutes=30))
            token_principal = await tokens.verify(minted.token)
            jwt_principal = Principal("bob", frozenset(), "oidc", expires_at=clock.now + 60)
            forever = Principal("carol", frozenset(), "api_key", credential_id=None)

            for principal in (key_principal, token_principal, jwt_principal, forever):
                assert await service.still_valid(principal) is None

            # expiry: against the clock, no store read needed
            clock.now += 61
            assert await service.still_valid(jwt_principal) == "credential expired"

            # revoked by another process (the earlier answers, 61 s old, have lapsed)
            await store.revoke_api_key("fn1", clock.now)
            await other_process.revoke(minted.info.id)
            assert await service.still_valid(key_principal) == "API key revoked"
            assert await service.still_valid(token_principal) == "session token revoked"

            # an API key deleted from the store counts as revoked; an unknown token likewise
            ghost = Principal("x", frozenset(), "session_token", credential_id="f" * 16)
            assert await service.still_valid(ghost) == "session token revoked"
            gone = Principal("y", frozenset(), "api_key", credential_id="never-existed")
            assert await service.still_valid(gone) == "API key revoked"

            # a session token that expires while its session runs
            later = await tokens.mint(ALICE, timedelta(minutes=1))
            later_principal = await tokens.verify(later.token)
            clock.now += 60
            assert await service.still_valid(later_principal) == "credential expired"

    asyncio.run(main())


def test_still_valid_shares_one_store_read(tmp_path: Path) -> None:
    clock = _Clock()

    class CountingStore(SqliteStore):
        reads = 0

        async def api_key_by_name(self, name: str) -> Any:
            CountingStore.reads += 1
            return await super().api_key_by_name(name)

    async def main() -> None:
        async with CountingStore(tmp_path / "s.db") as store:
            keys = ApiKeys(store, SECRET, clock=clock)
            service = IdentityService([keys], store=store, clock=clock)
            principal = await keys.verify(await keys.create_key("fn1", ["apps"]))
            for _ in range(100):  # a hundred sessions on one key
                assert await service.still_valid(principal) is None
            assert CountingStore.reads == 1
            await store.revoke_api_key("fn1", clock.now)
            clock.now += 4.9
            assert await service.still_valid(principal) is None
            clock.now += 0.1
            assert await service.still_valid(principal) == "API key revoked"
            assert CountingStore.reads == 2

    asyncio.run(main())


# --- callgate token ------------------------------------------------------------------------------


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    local = LocalIssuer().start()
    try:
        yield local
    finally:
        local.stop()


def _write_config(tmp_path: Path, issuer: LocalIssuer) -> Path:
    path = tmp_path / "callgate.yaml"
    config = {
        "gateway": {"store": "sqlite:///./callgate.db"},
        "identity": {
            "oidc": [{"name": "corp", "issuer": issuer.issuer, "audience": "callgate"}],
            "session_token_max_ttl": "2h",
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_cli_exchange_list_revoke(tmp_path: Path, issuer: LocalIssuer) -> None:
    config = str(_write_config(tmp_path, issuer))
    runner = CliRunner()
    jwt = issuer.token(sub="alice", groups=["dba", "ops"])

    done = runner.invoke(token_cli.app, ["--json", "-c", config], input=jwt + "\n")
    assert done.exit_code == 0, done.output
    out = json.loads(done.stdout)
    assert re.fullmatch(r"cgt_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", out["token"])
    assert out["id"] == out["token"][4:20]
    assert (out["subject"], out["groups"], out["issuer"]) == ("alice", ["dba", "ops"], "corp")
    assert out["status"] == "active"

    # --id-token and --ttl; a --ttl above the maximum is cut to it, and said so on stderr
    done = runner.invoke(token_cli.app, ["--id-token", jwt, "--ttl", "1d", "-c", config])
    assert done.exit_code == 0, done.output
    capped = done.stdout.strip()
    assert capped.startswith("cgt_") and "\n" not in capped
    assert "session_token_max_ttl (2h)" in done.stderr

    async def check() -> tuple[Principal, Principal]:
        async with SqliteStore(tmp_path / "callgate.db") as store:
            service = IdentityService.from_config(
                parse_config(yaml.safe_load(Path(config).read_text()), tmp_path), store
            )
            first = await service.authenticate(out["token"], source="t", protocol="postgres")
            second = await service.authenticate(capped, source="t", protocol="postgres")
            await service.aclose()
            return first, second

    first, second = asyncio.run(check())
    assert first.subject == "alice" and first.groups == {"dba", "ops"}
    assert second.expires_at is not None and first.expires_at is not None
    assert round(second.expires_at - first.expires_at) == 3600  # 2 h max vs the 1 h default

    done = runner.invoke(token_cli.app, ["list", "--json", "-c", config])
    assert done.exit_code == 0, done.output
    assert {t["id"] for t in json.loads(done.stdout)} == {out["id"], capped[4:20]}
    assert out["token"] not in done.stdout

    done = runner.invoke(token_cli.app, ["revoke", out["id"], "-c", config])
    assert done.exit_code == 0, done.output
    done = runner.invoke(token_cli.app, ["list", "--json", "-c", config])
    assert [t["id"] for t in json.loads(done.stdout)] == [capped[4:20]]
    done = runner.invoke(token_cli.app, ["list", "--all", "--json", "-c", config])
    statuses = {t["id"]: t["status"] for t in json.loads(done.stdout)}
    assert statuses[out["id"]] == "revoked"
    done = runner.invoke(token_cli.app, ["revoke", out["id"], "-c", config])
    assert done.exit_code == 1 and "already revoked" in done.stderr


def test_cli_refuses_bad_oidc_tokens(tmp_path: Path, issuer: LocalIssuer) -> None:
    config = str(_write_config(tmp_path, issuer))
    runner = CliRunner()
    cases = {
        "expired": issuer.token(exp=1),
        "unknown issuer": issuer.token(iss="https://evil.example"),
        "malformed token": "not-a-jwt",
        "wrong audience": issuer.token(aud="someone-else"),
    }
    for reason, bad in cases.items():
        done = runner.invoke(token_cli.app, ["-c", config], input=bad)
        assert done.exit_code == 1, (reason, done.output)
        assert done.stdout == ""
        assert f"the OIDC token was refused: {reason}" in done.stderr
        assert bad not in done.stderr
    done = runner.invoke(token_cli.app, ["-c", config], input="")
    assert done.exit_code == 1 and "no OIDC token" in done.stderr
    done = runner.invoke(token_cli.app, ["--ttl", "soon", "-c", config], input=issuer.token())
    assert done.exit_code == 1 and "--ttl" in done.stderr
    assert not (tmp_path / "callgate.db").exists() or _count_tokens(tmp_path) == 0


def test_cli_needs_an_oidc_issuer(tmp_path: Path, issuer: LocalIssuer) -> None:
    path = tmp_path / "callgate.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"store": "sqlite:///./callgate.db"}}))
    done = CliRunner().invoke(token_cli.app, ["-c", str(path)], input=issuer.token())
    assert done.exit_code == 1 and "identity.oidc" in done.stderr


def _count_tokens(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "callgate.db") as conn:
        (count,) = conn.execute("SELECT count(*) FROM session_tokens").fetchone()
    return int(count)
