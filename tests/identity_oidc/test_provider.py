"""Tokens from a real OpenID provider (oidc-provider, client_credentials, JWT access tokens)."""

from __future__ import annotations

import asyncio

import pytest

from callgate.identity.jwks import KeyFetchLimits
from callgate.identity.oidc import OIDCLimits
from tests.identity_oidc.helpers import FakeClock, accepted, issuer_config, open_verifier, refused
from tests.identity_oidc.issuer import header_of, payload_of
from tests.identity_oidc.provider import OIDCProvider

pytestmark = pytest.mark.integration


def test_valid_token_gives_subject_groups_and_expiry(oidc_provider: OIDCProvider) -> None:
    token = oidc_provider.token("fn-billing")
    claims = payload_of(token)

    async def scenario() -> None:
        async with open_verifier(issuer_config("corp", oidc_provider.issuer)) as verifier:
            principal = await accepted(verifier, token)
        assert principal.subject == "fn-billing"
        assert principal.groups == {"functions", "billing"}
        assert principal.method == "oidc"
        assert principal.issuer == "corp"
        assert principal.expires_at == claims["exp"]
        assert principal.credential_id == claims["jti"]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("client_id", "alg"),
    [("ps-client", "PS256"), ("es-client", "ES256"), ("ed-client", "EdDSA")],
)
def test_every_accepted_algorithm(oidc_provider: OIDCProvider, client_id: str, alg: str) -> None:
    token = oidc_provider.token(client_id)
    assert header_of(token)["alg"] == alg

    async def scenario() -> None:
        async with open_verifier(issuer_config("corp", oidc_provider.issuer)) as verifier:
            principal = await accepted(verifier, token)
        assert principal.subject == client_id

    asyncio.run(scenario())


def test_subject_claim_and_audience_list(oidc_provider: OIDCProvider) -> None:
    token = oidc_provider.token("gha-deploy")
    config = issuer_config(
        "gha", oidc_provider.issuer, audience=["elsewhere", "callgate"], subject_claim="repository"
    )

    async def scenario() -> None:
        async with open_verifier(config) as verifier:
            principal = await accepted(verifier, token)
        assert principal.subject == "acme/billing"
        assert principal.groups == frozenset()

    asyncio.run(scenario())


def test_github_actions_claim_mapping(oidc_provider: OIDCProvider) -> None:
    config = issuer_config(
        "github",
        oidc_provider.issuer,
        claim_mappings=[
            {
                "claims": {"repository": "acme/billing", "ref": "refs/heads/main"},
                "groups": ["billing-deployers"],
            },
            {"claims": {"repository_owner": "acme"}, "groups": ["acme-ci"]},
            # all listed claims must match: this ref does not
            {"claims": {"repository": "acme/*", "ref": "refs/tags/v*"}, "groups": ["releasers"]},
            # a claim the token lacks never matches, not even "*"
            {"claims": {"environment": "*"}, "groups": ["env"]},
        ],
    )

    async def scenario() -> None:
        async with open_verifier(config) as verifier:
            principal = await accepted(verifier, oidc_provider.token("gha-deploy"))
            other = await accepted(verifier, oidc_provider.token("fn-billing"))
        assert principal.groups == {"billing-deployers", "acme-ci"}
        assert other.groups == {"functions", "billing"}

    asyncio.run(scenario())


def test_kubernetes_claim_mapping(oidc_provider: OIDCProvider) -> None:
    config = issuer_config(
        "k8s",
        oidc_provider.issuer,
        subject_claim="kubernetes.io.serviceaccount.name",
        claim_mappings=[
            {
                "claims": {
                    "kubernetes.io.namespace": "reports",
                    "kubernetes.io.serviceaccount.name": "report*",
                },
                "groups": ["report-jobs"],
            }
        ],
    )

    async def scenario() -> None:
        async with open_verifier(config) as verifier:
            principal = await accepted(verifier, oidc_provider.token("k8s-reporter"))
        assert principal.subject == "reporter"
        assert principal.groups == {"report-jobs"}

    asyncio.run(scenario())


def test_wrong_audience(oidc_provider: OIDCProvider) -> None:
    token = oidc_provider.token("fn-billing")

    async def scenario() -> None:
        config = issuer_config("corp", oidc_provider.issuer, audience="another-service")
        async with open_verifier(config) as verifier:
            assert await refused(verifier, token) == "wrong audience"

    asyncio.run(scenario())


def test_expired_provider_token(oidc_provider: OIDCProvider, clock: FakeClock) -> None:
    token = oidc_provider.token("fn-billing")
    lifetime = payload_of(token)["exp"] - payload_of(token)["iat"]

    async def scenario() -> None:
        config = issuer_config("corp", oidc_provider.issuer, clock_skew="30s")
        async with open_verifier(config, clock=clock) as verifier:
            await accepted(verifier, token)
            clock.advance(lifetime + 20)  # inside the skew: still good (and cached)
            await accepted(verifier, token)
            clock.advance(15)
            verifier.clear_cache()
            assert await refused(verifier, token) == "expired"

    asyncio.run(scenario())


def test_key_rotation_is_picked_up_without_restart(
    oidc_provider: OIDCProvider, clock: FakeClock
) -> None:
    """The provider rotates its RS256 key; the same verifier accepts the new kid (one JWKS
    refetch) and still accepts tokens signed with the old key while it is published."""
    interval, keys_ttl = 30.0, 120.0
    limits = OIDCLimits(
        keys=KeyFetchLimits(min_refresh_interval=interval, default_ttl=keys_ttl, min_ttl=keys_ttl)
    )

    async def scenario() -> None:
        async with open_verifier(
            issuer_config("corp", oidc_provider.issuer), clock=clock, limits=limits
        ) as verifier:
            old_token = oidc_provider.token("fn-billing")
            old_kid = header_of(old_token)["kid"]
            await accepted(verifier, old_token)

            new_kid = oidc_provider.rotate_keys("RS256")
            new_token = oidc_provider.token("fn-billing")
            assert header_of(new_token)["kid"] == new_kid != old_kid

            # Keys were fetched just now: an unknown kid does not refetch yet...
            before = oidc_provider.key_requests()
            assert await refused(verifier, new_token) == "unknown key id"
            assert oidc_provider.key_requests() == before
            # ...after the refresh interval it does, once, and the new key verifies.
            clock.advance(interval + 1)
            principal = await accepted(verifier, new_token)
            assert principal.subject == "fn-billing"
            assert oidc_provider.key_requests() == before + 1
            verifier.clear_cache()
            await accepted(verifier, old_token)  # the old key is still published
            await accepted(verifier, new_token)
            assert oidc_provider.key_requests() == before + 1

            # Retired and refreshed (cache lifetime over): the old key no longer vouches.
            oidc_provider.retire_key(old_kid)
            clock.advance(keys_ttl + 1)
            verifier.clear_cache()
            await accepted(verifier, new_token)
            assert await refused(verifier, old_token) == "unknown key id"

    asyncio.run(scenario())


def test_second_verify_does_not_touch_the_network(oidc_provider: OIDCProvider) -> None:
    async def scenario() -> None:
        async with open_verifier(issuer_config("corp", oidc_provider.issuer)) as verifier:
            first = oidc_provider.token("fn-billing")
            before = oidc_provider.request_counts()
            await accepted(verifier, first)
            after_first = oidc_provider.request_counts()
            assert (
                after_first.get("/.well-known/openid-configuration", 0)
                == before.get("/.well-known/openid-configuration", 0) + 1
            )
            assert after_first.get("/jwks", 0) == before.get("/jwks", 0) + 1

            await accepted(verifier, first)  # cached token
            await accepted(verifier, oidc_provider.token("fn-billing"))  # cached keys
            after = oidc_provider.request_counts()
            assert after["/jwks"] == after_first["/jwks"]
            assert (
                after["/.well-known/openid-configuration"]
                == after_first["/.well-known/openid-configuration"]
            )
            assert verifier.cached_tokens == 2

    asyncio.run(scenario())
