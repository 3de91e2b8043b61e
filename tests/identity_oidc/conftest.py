"""Fixtures for the OIDC verifier tests.

- ``oidc_provider`` (session): a real OpenID provider (tests/oidc_provider, Node + oidc-provider) on
  a free port; ``.issuer``, ``.token(client_id)``, ``.rotate_keys(alg="RS256") -> kid``,
  ``.retire_key(kid)``, ``.active_kid(alg)``, ``.jwks()``, ``.request_counts()``,
  ``.key_requests()``. Clients: see ``PROVIDER_CLIENTS``.
- ``local_issuer``: a second issuer served from the test process with its own keys
  (tests/identity_oidc/issuer.py), for forged tokens and for provider failures.
- ``clock``: real time plus an offset the test moves (``clock.advance(s)``).

Without node/npm the provider's tests are skipped with the reason, except when ``CI`` (or
``CALLGATE_REQUIRE_SERVERS``) is set: then they fail, since CI must run them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.identity_oidc.helpers import FakeClock
from tests.identity_oidc.issuer import LocalIssuer
from tests.identity_oidc.provider import (
    Client,
    OIDCProvider,
    ProviderUnavailable,
    require_servers,
)

PROVIDER_CLIENTS = (
    Client("fn-billing", {"groups": ["functions", "billing"]}),
    Client(
        "gha-deploy",
        {
            "repository": "acme/billing",
            "repository_owner": "acme",
            "ref": "refs/heads/main",
            "event_name": "push",
            "workflow": "deploy",
        },
    ),
    Client(
        "k8s-reporter",
        {
            "kubernetes.io": {
                "namespace": "reports",
                "serviceaccount": {"name": "reporter", "uid": "0b8d6d4e"},
            }
        },
    ),
    Client("ps-client", {"groups": ["ps"]}, alg="PS256"),
    Client("es-client", {"groups": ["es"]}, alg="ES256"),
    Client("ed-client", {"groups": ["ed"]}, alg="EdDSA"),
)


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OIDCProvider]:
    provider = OIDCProvider(tmp_path_factory.mktemp("oidc-provider"), PROVIDER_CLIENTS)
    try:
        provider.start()
    except ProviderUnavailable as exc:
        if require_servers():
            pytest.fail(f"{exc} (servers are required: CI/CALLGATE_REQUIRE_SERVERS is set)")
        pytest.skip(str(exc))
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture
def local_issuer() -> Iterator[LocalIssuer]:
    issuer = LocalIssuer().start()
    try:
        yield issuer
    finally:
        issuer.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
