"""Helpers shared by the OIDC tests: a settable clock, config entries, a verifier in a loop."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from callgate.config.identity import OIDCIssuerConfig
from callgate.errors import AuthenticationFailed
from callgate.identity.oidc import OIDCLimits, OIDCVerifier
from callgate.model import Principal


class FakeClock:
    """Real time plus an offset a test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def issuer_config(name: str, issuer: str, **settings: Any) -> OIDCIssuerConfig:
    """An ``identity.oidc`` entry as the config file would give it."""
    return OIDCIssuerConfig.model_validate(
        {"name": name, "issuer": issuer, "audience": "callgate", **settings}
    )


@asynccontextmanager
async def open_verifier(
    *configs: OIDCIssuerConfig,
    clock: FakeClock | None = None,
    limits: OIDCLimits | None = None,
    algorithms: Sequence[str] | None = None,
) -> AsyncIterator[OIDCVerifier]:
    kwargs: dict[str, Any] = {"clock": clock or FakeClock(), "limits": limits}
    if algorithms is not None:
        kwargs["algorithms"] = algorithms
    verifier = OIDCVerifier(configs, **kwargs)
    try:
        yield verifier
    finally:
        await verifier.aclose()


async def refused(verifier: OIDCVerifier, token: str) -> str:
    """The reason ``token`` is refused; checks that the message does not carry the token."""
    with pytest.raises(AuthenticationFailed) as caught:
        await verifier.verify(token)
    message = str(caught.value)
    for part in token.split("."):
        if len(part) >= 8:
            assert part not in message
    return message


async def accepted(verifier: OIDCVerifier, token: str) -> Principal:
    return await verifier.verify(token)
