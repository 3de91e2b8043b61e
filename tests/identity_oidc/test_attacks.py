"""Forged and broken tokens: each is refused, with a specific reason, and never echoed back."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import RSAAlgorithm

from callgate.identity.oidc import OIDCVerifier
from tests.identity_oidc.helpers import FakeClock, accepted, issuer_config, open_verifier, refused
from tests.identity_oidc.issuer import (
    LocalIssuer,
    SigningKey,
    b64json,
    b64url,
    header_of,
    hmac_signed,
    payload_of,
    replace_payload,
    sign,
    unsigned,
)
from tests.identity_oidc.provider import OIDCProvider


def provider_claims(provider: OIDCProvider, **overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": provider.issuer,
        "aud": "callgate",
        "sub": "fn-billing",
        "groups": ["admins"],
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return claims


# --- against the real provider ------------------------------------------------------------------


@pytest.mark.integration
def test_alg_none_is_refused(oidc_provider: OIDCProvider) -> None:
    claims = provider_claims(oidc_provider)
    kid = oidc_provider.active_kid()

    async def scenario() -> None:
        async with open_verifier(issuer_config("corp", oidc_provider.issuer)) as verifier:
            for alg in ("none", "None", "NONE", ""):
                token = unsigned({"alg": alg, "kid": kid}, claims)
                assert await refused(verifier, token) == "algorithm not allowed"
            # no alg at all
            assert await refused(verifier, unsigned({"kid": kid}, claims)) == (
                "algorithm not allowed"
            )

    asyncio.run(scenario())


@pytest.mark.integration
def test_hs256_signed_with_the_providers_public_key_is_refused(
    oidc_provider: OIDCProvider,
) -> None:
    """The key-confusion attack: the public key (as PEM, as JWK JSON, as the raw modulus) used as
    an HMAC secret. A verifier that let the token choose HS256 would accept it."""
    kid = oidc_provider.active_kid()
    jwk = next(k for k in oidc_provider.jwks()["keys"] if k["kid"] == kid)
    public = RSAAlgorithm.from_jwk(jwk)
    secrets = [
        public.public_bytes(  # type: ignore[union-attr]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        public.public_bytes(  # type: ignore[union-attr]
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        ),
        json.dumps(jwk).encode(),
        jwk["n"].encode(),
    ]
    claims = provider_claims(oidc_provider)

    async def scenario() -> None:
        async with open_verifier(issuer_config("corp", oidc_provider.issuer)) as verifier:
            for secret in secrets:
                for alg in ("HS256", "HS384", "HS512"):
                    token = hmac_signed({"alg": alg, "kid": kid, "typ": "JWT"}, claims, secret)
                    assert await refused(verifier, token) == "algorithm not allowed"
                # The same HMAC under an RS256 header is simply a bad signature.
                token = hmac_signed({"alg": "RS256", "kid": kid}, claims, secret)
                assert await refused(verifier, token) == "bad signature"

    asyncio.run(scenario())


@pytest.mark.integration
def test_tampered_payload_is_refused(oidc_provider: OIDCProvider) -> None:
    token = oidc_provider.token("fn-billing")
    claims = payload_of(token)

    async def scenario() -> None:
        async with open_verifier(issuer_config("corp", oidc_provider.issuer)) as verifier:
            await accepted(verifier, token)
            forged = replace_payload(token, {**claims, "groups": ["functions", "admins"]})
            assert await refused(verifier, forged) == "bad signature"
            longer = replace_payload(token, {**claims, "exp": claims["exp"] + 86400})
            assert await refused(verifier, longer) == "bad signature"
            header, payload, signature = token.split(".")
            flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
            assert await refused(verifier, f"{header}.{payload}.{flipped}") == "bad signature"

    asyncio.run(scenario())


@pytest.mark.integration
def test_token_naming_issuer_a_signed_with_issuer_bs_key(
    oidc_provider: OIDCProvider, local_issuer: LocalIssuer
) -> None:
    """Both issuers are configured; B's key must not vouch for a token claiming to be from A."""
    claims = provider_claims(oidc_provider)

    async def scenario() -> None:
        async with open_verifier(
            issuer_config("corp", oidc_provider.issuer),
            issuer_config("local", local_issuer.issuer),
        ) as verifier:
            await accepted(verifier, local_issuer.token())  # B's keys are loaded and trusted
            await accepted(verifier, oidc_provider.token("fn-billing"))
            # B's kid: A has no such key
            forged = sign(claims, local_issuer.key)
            assert await refused(verifier, forged) == "unknown key id"
            # A's kid, B's key: the signature does not verify with A's key
            forged = sign(claims, local_issuer.key, headers={"kid": oidc_provider.active_kid()})
            assert await refused(verifier, forged) == "bad signature"

    asyncio.run(scenario())


# --- against the in-test issuer (own keys, any claims) ------------------------------------------


def test_time_claims(local_issuer: LocalIssuer) -> None:
    now = int(time.time())
    config = issuer_config("local", local_issuer.issuer, clock_skew="60s")
    cases: dict[str, dict[str, Any]] = {
        "expired": {"exp": now - 61},
        "not yet valid": {"nbf": now + 120},
        "issued in the future": {"iat": now + 3600},
        "missing expiry": {"exp": None},
        "malformed token": {"exp": "tomorrow"},
    }

    async def scenario() -> None:
        async with open_verifier(config) as verifier:
            for reason, overrides in cases.items():
                assert await refused(verifier, local_issuer.token(**overrides)) == reason, reason
            # within the skew either way: accepted
            await accepted(verifier, local_issuer.token(exp=now - 30, nbf=now + 30, iat=now + 30))

    asyncio.run(scenario())


def test_nan_and_infinite_expiry_are_malformed(local_issuer: LocalIssuer) -> None:
    """Python's JSON parser accepts NaN/Infinity; a NaN ``exp`` compares as never expired."""

    async def scenario() -> None:
        async with open_verifier(issuer_config("local", local_issuer.issuer)) as verifier:
            for literal in ("NaN", "Infinity"):
                body = json.dumps(local_issuer.claims(exp=0)).replace(
                    '"exp": 0', f'"exp": {literal}'
                )
                token = sign(json.loads(body), local_issuer.key)
                assert await refused(verifier, token) == "malformed token"

    asyncio.run(scenario())


def test_unknown_issuer_is_refused_without_network(local_issuer: LocalIssuer) -> None:
    async def scenario() -> None:
        async with open_verifier(issuer_config("local", local_issuer.issuer)) as verifier:
            for iss in ("https://evil.example", local_issuer.issuer + "/", None):
                token = local_issuer.token(iss=iss)
                assert await refused(verifier, token) == "unknown issuer"
            header = {"alg": "RS256", "kid": local_issuer.key.kid}
            for odd in (42, [local_issuer.issuer], {"iss": local_issuer.issuer}):
                token = unsigned(header, local_issuer.claims(iss=odd), b"x" * 256)
                assert await refused(verifier, token) == "unknown issuer"
        assert local_issuer.key_requests() == 0

    asyncio.run(scenario())


def test_unknown_kid_refreshes_once_then_not_again(
    local_issuer: LocalIssuer, clock: FakeClock
) -> None:
    async def scenario() -> None:
        async with open_verifier(
            issuer_config("local", local_issuer.issuer), clock=clock
        ) as verifier:
            await accepted(verifier, local_issuer.token())
            assert local_issuer.requests["/jwks"] == 1
            clock.advance(31)  # past the refresh interval
            stranger = SigningKey.generate("RS256", kid="nobody-knows")
            assert await refused(verifier, local_issuer.token(stranger)) == "unknown key id"
            assert local_issuer.requests["/jwks"] == 2  # refreshed once
            other = SigningKey.generate("RS256", kid="nor-this-one")
            assert await refused(verifier, local_issuer.token(other)) == "unknown key id"
            for n in range(20):
                fake = SigningKey(f"garbage-{n}", "RS256", stranger.private)
                assert await refused(verifier, local_issuer.token(fake)) == "unknown key id"
            assert local_issuer.requests["/jwks"] == 2  # no refetch within the interval
            # a known kid still verifies meanwhile
            await accepted(verifier, local_issuer.token())

    asyncio.run(scenario())


def test_key_for_another_algorithm(local_issuer: LocalIssuer) -> None:
    """A PS256 token naming the RS256-only key, an RS256 token naming the EC key."""
    rsa_key, ec_key, _ = local_issuer.keys

    async def scenario() -> None:
        async with open_verifier(issuer_config("local", local_issuer.issuer)) as verifier:
            ps = SigningKey(rsa_key.kid, "PS256", rsa_key.private)
            assert await refused(verifier, local_issuer.token(ps)) == "algorithm not allowed"
            rs = sign(local_issuer.claims(), rsa_key, headers={"kid": ec_key.kid})
            assert await refused(verifier, rs) == "algorithm not allowed"

    asyncio.run(scenario())


def test_algorithm_allow_list_is_configurable(local_issuer: LocalIssuer) -> None:
    _, ec_key, ed_key = local_issuer.keys

    async def scenario() -> None:
        config = issuer_config("local", local_issuer.issuer)
        async with open_verifier(config, algorithms=["ES256"]) as verifier:
            await accepted(verifier, local_issuer.token(ec_key))
            assert await refused(verifier, local_issuer.token()) == "algorithm not allowed"
            assert await refused(verifier, local_issuer.token(ed_key)) == "algorithm not allowed"

    asyncio.run(scenario())


def test_hmac_and_none_cannot_be_enabled() -> None:
    from callgate.errors import ConfigError

    for algorithms in (["HS256"], ["RS256", "none"], []):
        with pytest.raises(ConfigError):
            OIDCVerifier([], algorithms=algorithms)


def test_critical_header_is_refused(local_issuer: LocalIssuer) -> None:
    async def scenario() -> None:
        async with open_verifier(issuer_config("local", local_issuer.issuer)) as verifier:
            token = sign(
                local_issuer.claims(), local_issuer.key, headers={"crit": ["exp"], "exp": 1}
            )
            assert await refused(verifier, token) == "unsupported critical header"

    asyncio.run(scenario())


def test_malformed_tokens(local_issuer: LocalIssuer) -> None:
    good = local_issuer.token()
    header, payload, signature = good.split(".")
    cases = [
        "eyJ",
        "eyJhbGciOiJSUzI1NiJ9.e30",  # two segments
        f"{good}.extra",  # five-ish segments (JWE shape)
        f"{header}..{signature}",
        f"{header}.!!!notbase64!!!.{signature}",
        f"{b64url(b'not json')}.{payload}.{signature}",
        f"{b64json([1, 2])}.{payload}.{signature}",
        f"{header}.{b64json('a string')}.{signature}",
        f"{header}.{payload}.{signature}!",
        "",
    ]

    async def scenario() -> None:
        async with open_verifier(issuer_config("local", local_issuer.issuer)) as verifier:
            for token in cases:
                assert await refused(verifier, token) == "malformed token", token
            huge = local_issuer.token(padding="x" * 20_000)
            assert await refused(verifier, huge) == "token too large"

    asyncio.run(scenario())


def test_refusals_never_log_the_token(
    local_issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = [
        local_issuer.token(exp=1),
        local_issuer.token(SigningKey.generate("RS256", kid="unknown")),
        replace_payload(local_issuer.token(), local_issuer.claims(sub="root")),
    ]

    async def scenario() -> None:
        async with open_verifier(issuer_config("local", local_issuer.issuer)) as verifier:
            for token in tokens:
                await refused(verifier, token)

    asyncio.run(scenario())
    for token in tokens:
        for part in token.split("."):
            assert part not in caplog.text
    assert header_of(tokens[0])["kid"] == local_issuer.key.kid


def test_token_without_kid_only_when_unambiguous(local_issuer: LocalIssuer) -> None:
    async def scenario() -> None:
        async with open_verifier(issuer_config("local", local_issuer.issuer)) as verifier:
            no_kid = jwt.encode(local_issuer.claims(), local_issuer.key.private, algorithm="RS256")
            assert "kid" not in header_of(no_kid)
            await accepted(verifier, no_kid)  # the issuer has one RSA key
        local_issuer.keys.append(SigningKey.generate("RS256"))
        async with open_verifier(issuer_config("local", local_issuer.issuer)) as verifier:
            assert await refused(verifier, no_kid) == "unknown key id"

    asyncio.run(scenario())


def test_key_headers_in_the_token_are_ignored(local_issuer: LocalIssuer) -> None:
    """``jku``/``jwk``/``x5u`` pointing at the attacker's key do not make it trusted."""
    attacker = SigningKey.generate("RS256", kid="attacker")
    headers = {
        "jku": f"{local_issuer.issuer}/attacker-jwks",
        "x5u": f"{local_issuer.issuer}/attacker.pem",
        "jwk": attacker.public_jwk(),
    }

    async def scenario() -> None:
        async with open_verifier(issuer_config("local", local_issuer.issuer)) as verifier:
            token = sign(local_issuer.claims(), attacker, headers=headers)
            assert await refused(verifier, token) == "unknown key id"
            token = sign(
                local_issuer.claims(), attacker, headers={**headers, "kid": local_issuer.key.kid}
            )
            assert await refused(verifier, token) == "bad signature"
        assert local_issuer.requests["/attacker-jwks"] == 0

    asyncio.run(scenario())
