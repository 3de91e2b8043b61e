"""The extension point: one :class:`Authenticator` per credential type, chosen by prefix.

``cgk_`` is an API key (:mod:`callgate.identity.api_keys`). Still to come: ``cgt_`` session tokens
and ``eyJ`` (a JWT's base64url ``{"``) for OIDC; each is one more authenticator passed to
:class:`~callgate.identity.service.IdentityService`.
"""

from __future__ import annotations

from typing import Protocol

from callgate.model import Principal


class CredentialRejected(Exception):
    """An authenticator's refusal. ``reason`` is precise and goes to the audit log only; the caller
    sees :class:`~callgate.errors.AuthenticationFailed` with a message that does not say why.
    ``reason`` must never contain the credential."""

    def __init__(self, reason: str, *, issuer: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.issuer = issuer


class Authenticator(Protocol):
    @property
    def prefixes(self) -> tuple[str, ...]:
        """Credentials starting with one of these are this authenticator's."""
        ...

    async def verify(self, credential: str) -> Principal:
        """Return who the credential proves, or raise :class:`CredentialRejected`."""
        ...
