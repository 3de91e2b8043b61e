"""The identity service: dispatch a credential to its authenticator, throttle failures, audit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from callgate.errors import AuthenticationFailed
from callgate.identity.api_keys import ApiKeys
from callgate.identity.base import Authenticator, CredentialRejected
from callgate.identity.secret_key import secret_key_from_config
from callgate.identity.throttle import FailureThrottle
from callgate.model import Principal
from callgate.services import AuditService
from callgate.store.base import Store

if TYPE_CHECKING:
    from callgate.config import Config
    from callgate.identity.oidc import OIDCVerifier

log = logging.getLogger("callgate.identity")

#: What every refused caller is told, whatever the reason (the reason goes to the audit log).
INVALID_MESSAGE = "invalid credential"

Sleep = Callable[[float], Awaitable[None]]


class IdentityService:
    """Implements :class:`callgate.services.IdentityService`.

    ``authenticators`` are tried by credential prefix (the first whose prefix matches). ``audit``
    receives every refusal with its precise reason; ``sleep`` is injectable for tests.
    """

    def __init__(
        self,
        authenticators: Sequence[Authenticator],
        *,
        throttle: FailureThrottle | None = None,
        audit: AuditService | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._authenticators = tuple(authenticators)
        self._throttle = throttle if throttle is not None else FailureThrottle()
        self._audit = audit
        self._sleep = sleep
        self._oidc: OIDCVerifier | None = None

    @property
    def throttle(self) -> FailureThrottle:
        return self._throttle

    def authenticator_for(self, credential: str) -> Authenticator | None:
        for authenticator in self._authenticators:
            if credential.startswith(authenticator.prefixes):
                return authenticator
        return None

    async def authenticate(self, credential: str, *, source: str, protocol: str) -> Principal:
        # Raises TooManyFailures during a lockout, before the credential is even looked at. The
        # lockout was audited once when it began (see _refuse), not again for every knock.
        delay = self._throttle.before_attempt(source)
        if delay:
            await self._sleep(delay)
        authenticator = self.authenticator_for(credential)
        try:
            if not credential:
                raise CredentialRejected("no credential")
            if authenticator is None:
                raise CredentialRejected("unrecognized credential type")
            principal = await authenticator.verify(credential)
        except CredentialRejected as rejected:
            self._refuse(rejected, source=source, protocol=protocol)
            raise AuthenticationFailed(INVALID_MESSAGE) from None
        self._throttle.success(source)
        return principal

    def _refuse(self, rejected: CredentialRejected, *, source: str, protocol: str) -> None:
        locked = self._throttle.failure(source)
        reason = rejected.reason
        if locked:
            reason += (
                f"; source locked out for {self._throttle.lockout:g}s"
                f" after {self._throttle.lockout_after} failures"
            )
        if self._audit is not None:
            self._audit.auth_failure(
                protocol=protocol, source=source, reason=reason, issuer=rejected.issuer
            )
        else:
            log.info("authentication failed from %s (%s): %s", source, protocol, reason)

    @classmethod
    def from_config(
        cls, config: Config, store: Store, audit: AuditService | None = None
    ) -> IdentityService:
        from callgate.identity.oidc import OIDCAuthenticator, OIDCVerifier

        authenticators: list[Authenticator] = [ApiKeys(store, secret_key_from_config(config))]
        verifier: OIDCVerifier | None = None
        if config.identity.oidc:
            verifier = OIDCVerifier(config.identity.oidc)
            authenticators.append(OIDCAuthenticator(verifier))
        service = cls(authenticators, throttle=FailureThrottle.from_config(config), audit=audit)
        service._oidc = verifier
        return service

    async def start(self) -> None:
        """Fetch each OIDC issuer's discovery document and keys ahead of the first caller.

        An issuer that cannot be reached now is logged, not fatal: verification fails closed for
        its tokens until it answers.
        """
        if self._oidc is not None:
            for issuer, problem in (await self._oidc.warm_up()).items():
                if problem is not None:
                    log.warning("OIDC issuer %s not reachable at start: %s", issuer, problem)

    async def aclose(self) -> None:
        if self._oidc is not None:
            await self._oidc.aclose()
