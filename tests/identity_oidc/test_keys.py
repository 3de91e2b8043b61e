"""Fetching and caching keys and verified tokens; what happens when the provider is down."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from callgate.config.identity import OIDCIssuerConfig
from callgate.errors import ConfigError
from callgate.identity.base import Authenticator, CredentialRejected
from callgate.identity.jwks import KeyFetchLimits, max_age
from callgate.identity.oidc import OIDCAuthenticator, OIDCLimits, OIDCVerifier
from tests.identity_oidc.helpers import FakeClock, accepted, issuer_config, open_verifier, refused
from tests.identity_oidc.issuer import LocalIssuer, SigningKey, sign
from tests.support.net import free_port

UNAVAILABLE = "identity provider unavailable"


def test_provider_not_listening_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    issuer = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    claims = {"iss": issuer, "aud": "callgate", "sub": "x", "exp": int(time.time()) + 60}
    token = sign(claims, SigningKey.generate("ES256"))
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        async with open_verifier(issuer_config("gone", issuer)) as verifier:
            assert await refused(verifier, token) == UNAVAILABLE

    asyncio.run(scenario())
    assert "fetching" in caplog.text  # logged: the URL and the error class...
    assert token.split(".")[1] not in caplog.text  # ...never the token


def test_provider_errors_fail_closed_then_recover(
    local_issuer: LocalIssuer, clock: FakeClock
) -> None:
    limits = OIDCLimits(keys=KeyFetchLimits(retry_after_failure=5.0))

    async def scenario() -> None:
        config = issuer_config("local", local_issuer.issuer)
        async with open_verifier(config, clock=clock, limits=limits) as verifier:
            local_issuer.fail_with = 503
            assert await refused(verifier, local_issuer.token()) == UNAVAILABLE
            assert local_issuer.key_requests() == 1
            # within the retry delay: refused without asking again
            assert await refused(verifier, local_issuer.token()) == UNAVAILABLE
            assert local_issuer.key_requests() == 1
            local_issuer.fail_with = None
            clock.advance(6)
            await accepted(verifier, local_issuer.token())
            assert local_issuer.key_requests() == 3  # discovery + JWKS

    asyncio.run(scenario())


def test_expired_keys_and_provider_down_fail_closed(
    local_issuer: LocalIssuer, clock: FakeClock
) -> None:
    local_issuer.cache_control = "public, max-age=120"

    async def scenario() -> None:
        async with open_verifier(
            issuer_config("local", local_issuer.issuer), clock=clock
        ) as verifier:
            verified = local_issuer.token()
            await accepted(verifier, verified)
            local_issuer.fail_with = 503
            clock.advance(121)
            # A new token needs the keys, which are past their lifetime: refused.
            assert await refused(verifier, local_issuer.token()) == UNAVAILABLE
            # A token verified before is still cached (until exp, at most token_cache_ttl).
            await accepted(verifier, verified)

    asyncio.run(scenario())


def test_slow_provider_times_out(local_issuer: LocalIssuer) -> None:
    local_issuer.delay = 2.0
    limits = OIDCLimits(keys=KeyFetchLimits(timeout=0.3, connect_timeout=0.3))

    async def scenario() -> None:
        config = issuer_config("local", local_issuer.issuer)
        async with open_verifier(config, limits=limits) as verifier:
            started = time.monotonic()
            assert await refused(verifier, local_issuer.token()) == UNAVAILABLE
            assert time.monotonic() - started < 1.5

    asyncio.run(scenario())


@pytest.mark.parametrize("problem", ["other issuer", "insecure jwks_uri", "too large"])
def test_unusable_documents_fail_closed(local_issuer: LocalIssuer, problem: str) -> None:
    limits = None
    if problem == "other issuer":
        local_issuer.advertised_issuer = "https://someone-else.example"
    elif problem == "insecure jwks_uri":
        local_issuer.jwks_uri = "http://keys.example.com/jwks"
    else:
        limits = OIDCLimits(keys=KeyFetchLimits(max_document_bytes=200))

    async def scenario() -> None:
        config = issuer_config("local", local_issuer.issuer)
        async with open_verifier(config, limits=limits) as verifier:
            assert await refused(verifier, local_issuer.token()) == UNAVAILABLE

    asyncio.run(scenario())


def test_cache_control_max_age_is_honoured_within_bounds(
    local_issuer: LocalIssuer, clock: FakeClock
) -> None:
    async def scenario() -> None:
        config = issuer_config("local", local_issuer.issuer)
        local_issuer.cache_control = "max-age=300"
        async with open_verifier(config, clock=clock) as verifier:
            await accepted(verifier, local_issuer.token())
            assert local_issuer.requests["/jwks"] == 1
            clock.advance(290)
            await accepted(verifier, local_issuer.token())  # a new token: keys still fresh
            assert local_issuer.requests["/jwks"] == 1
            clock.advance(11)
            await accepted(verifier, local_issuer.token())
            assert local_issuer.requests["/jwks"] == 2

        local_issuer.cache_control = "max-age=1"  # below the floor: kept 60 s
        async with open_verifier(config, clock=clock) as verifier:
            await accepted(verifier, local_issuer.token())
            clock.advance(30)
            await accepted(verifier, local_issuer.token())
            assert local_issuer.requests["/jwks"] == 3

    asyncio.run(scenario())


def test_max_age_parsing() -> None:
    assert max_age(None) is None
    assert max_age("public, max-age=600") == 600
    assert max_age('max-age="60", must-revalidate') == 60
    assert max_age("s-maxage=10") is None
    assert max_age("no-store") == 0
    assert max_age("no-cache, max-age=600") == 0


def test_concurrent_first_verifications_fetch_once(local_issuer: LocalIssuer) -> None:
    tokens = [local_issuer.token(sub=f"user-{n}") for n in range(50)]

    async def scenario() -> None:
        async with open_verifier(issuer_config("local", local_issuer.issuer)) as verifier:
            principals = await asyncio.gather(*(verifier.verify(t) for t in tokens))
        assert {p.subject for p in principals} == {f"user-{n}" for n in range(50)}
        assert local_issuer.key_requests() == 2

    asyncio.run(scenario())


def test_verified_token_cache(local_issuer: LocalIssuer, clock: FakeClock) -> None:
    limits = OIDCLimits(token_cache_size=2)
    now = int(time.time())

    async def scenario() -> None:
        config = issuer_config("local", local_issuer.issuer, clock_skew="0s")
        async with open_verifier(config, clock=clock, limits=limits) as verifier:
            short = local_issuer.token(exp=now + 5)
            await accepted(verifier, short)
            assert verifier.cached_tokens == 1
            clock.advance(10)
            assert await refused(verifier, short) == "expired"  # not served from the cache
            assert verifier.cached_tokens == 0
            for n in range(3):
                await accepted(verifier, local_issuer.token(sub=f"u{n}", exp=now + 600))
            assert verifier.cached_tokens == 2  # least recently used dropped

    asyncio.run(scenario())


def test_cache_is_keyed_by_hash_not_token(local_issuer: LocalIssuer) -> None:
    token = local_issuer.token()

    async def scenario() -> None:
        async with open_verifier(issuer_config("local", local_issuer.issuer)) as verifier:
            await accepted(verifier, token)
            state = repr(vars(verifier)) if hasattr(verifier, "__dict__") else ""
            assert token not in state
            assert token.split(".")[2] not in state

    asyncio.run(scenario())


def test_entries_sharing_an_issuer_are_chosen_by_audience(local_issuer: LocalIssuer) -> None:
    async def scenario() -> None:
        async with open_verifier(
            issuer_config("local-gw", local_issuer.issuer, audience="callgate"),
            issuer_config("local-api", local_issuer.issuer, audience="api", groups_claim="roles"),
        ) as verifier:
            gw = await accepted(verifier, local_issuer.token())
            api = await accepted(verifier, local_issuer.token(aud="api", roles=["reader"]))
            assert (gw.issuer, gw.groups) == ("local-gw", frozenset({"local"}))
            assert (api.issuer, api.groups) == ("local-api", frozenset({"reader"}))
            assert await refused(verifier, local_issuer.token(aud="other")) == "wrong audience"
        assert local_issuer.key_requests() == 2  # one key cache for both entries

    asyncio.run(scenario())


def test_credential_id_without_jti_is_a_short_hash(local_issuer: LocalIssuer) -> None:
    async def scenario() -> None:
        async with open_verifier(issuer_config("local", local_issuer.issuer)) as verifier:
            principal = await accepted(verifier, local_issuer.token(jti=None))
        assert principal.credential_id is not None
        assert principal.credential_id.startswith("sha256:")
        assert len(principal.credential_id) == len("sha256:") + 16

    asyncio.run(scenario())


def test_authenticator_adapter_reports_reason_and_issuer(local_issuer: LocalIssuer) -> None:
    async def scenario() -> None:
        async with open_verifier(issuer_config("local", local_issuer.issuer)) as verifier:
            authenticator: Authenticator = OIDCAuthenticator(verifier)
            token = local_issuer.token()
            assert token.startswith(authenticator.prefixes)
            assert (await authenticator.verify(token)).subject == "local-user"
            with pytest.raises(CredentialRejected) as caught:
                await authenticator.verify(local_issuer.token(exp=1))
            assert (caught.value.reason, caught.value.issuer) == ("expired", "local")
            with pytest.raises(CredentialRejected) as caught:
                await authenticator.verify(local_issuer.token(iss="https://x.example"))
            assert (caught.value.reason, caught.value.issuer) == ("unknown issuer", None)

    asyncio.run(scenario())


def test_warm_up_reports_each_issuer(local_issuer: LocalIssuer) -> None:
    gone = f"http://127.0.0.1:{free_port()}"

    async def scenario() -> None:
        async with open_verifier(
            issuer_config("local", local_issuer.issuer), issuer_config("gone", gone)
        ) as verifier:
            status = await verifier.warm_up()
            assert status == {local_issuer.issuer: None, gone: UNAVAILABLE}
            await accepted(verifier, local_issuer.token())
        assert local_issuer.key_requests() == 2

    asyncio.run(scenario())


def test_plain_http_issuer_off_loopback_is_refused() -> None:
    # The config model already refuses it; the verifier checks again for configs built in code.
    config = OIDCIssuerConfig.model_construct(
        name="corp", issuer="http://idp.example.com", audience=("callgate",)
    )
    with pytest.raises(ConfigError, match=r"identity\.oidc\[0\]\.issuer"):
        OIDCVerifier([config])
