"""The identity service: dispatch a credential to its authenticator, throttle failures, audit;
map client certificates; tell whether a live session's credential still holds."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final

from callgate.config.identity import MTLSRuleConfig
from callgate.errors import AuthenticationFailed
from callgate.identity.api_keys import ApiKeys
from callgate.identity.base import Authenticator, CredentialRejected
from callgate.identity.mtls import principal_for, read_certificate
from callgate.identity.secret_key import secret_key_from_config
from callgate.identity.session_tokens import SessionTokens
from callgate.identity.throttle import FailureThrottle
from callgate.model import Principal
from callgate.services import AuditService, Clock
from callgate.store.base import Store
from callgate.store.errors import StoreError

if TYPE_CHECKING:
    from callgate.config import Config
    from callgate.identity.oidc import OIDCVerifier

log = logging.getLogger("callgate.identity")

#: What every refused caller is told, whatever the reason (the reason goes to the audit log).
INVALID_MESSAGE = "invalid credential"

Sleep = Callable[[float], Awaitable[None]]

#: Seconds a revocation check's answer is shared by every session on the same credential, so a
#: thousand sessions on one API key cost one store read per interval, not a thousand.
STILL_VALID_CACHE_SECONDS: Final = 5.0
#: Credentials whose check is remembered at most (beyond, the memory is cleared and refilled).
STILL_VALID_CACHE_ENTRIES: Final = 10_000

EXPIRED: Final = "credential expired"
API_KEY_REVOKED: Final = "API key revoked"
SESSION_TOKEN_REVOKED: Final = "session token revoked"  # noqa: S105 - a reason, not a secret


class IdentityService:
    """Implements :class:`callgate.services.IdentityService`.

    ``authenticators`` are tried by credential prefix (the first whose prefix matches). ``audit``
    receives every refusal with its precise reason; ``sleep`` and ``clock`` are injectable for
    tests. ``store`` is read by :meth:`still_valid` (revoked API keys and session tokens);
    ``mtls`` are the ``identity.mtls`` rules for :meth:`authenticate_certificate`.
    """

    def __init__(
        self,
        authenticators: Sequence[Authenticator],
        *,
        throttle: FailureThrottle | None = None,
        audit: AuditService | None = None,
        sleep: Sleep = asyncio.sleep,
        store: Store | None = None,
        mtls: Sequence[MTLSRuleConfig] = (),
        clock: Clock = time.time,
    ) -> None:
        self._authenticators = tuple(authenticators)
        self._throttle = throttle if throttle is not None else FailureThrottle()
        self._audit = audit
        self._sleep = sleep
        self._store = store
        self._mtls = tuple(mtls)
        self._clock = clock
        self._oidc: OIDCVerifier | None = None
        self._session_tokens = next(
            (a for a in self._authenticators if isinstance(a, SessionTokens)), None
        )
        #: (method, credential id) -> (revocation problem or None, checked until)
        self._checked: dict[tuple[str, str], tuple[str | None, float]] = {}

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

    async def authenticate_certificate(
        self, der: bytes, *, source: str, protocol: str
    ) -> Principal:
        """The principal of a client certificate the TLS handshake verified (DER), through the
        ``identity.mtls`` rules (the first that matches).

        Raises :class:`AuthenticationFailed` (recorded and throttled like any refused credential)
        when no rule matches, the certificate is outside its validity period, or it names its
        holder ambiguously; :class:`~callgate.errors.TooManyFailures` during a lockout.
        """
        delay = self._throttle.before_attempt(source)
        if delay:
            await self._sleep(delay)
        issuer: str | None = None
        try:
            identity = read_certificate(der)
            issuer = identity.issuer
            now = self._clock()
            if now >= identity.not_after:
                raise CredentialRejected("client certificate expired")
            if now < identity.not_before:
                raise CredentialRejected("client certificate not yet valid")
            principal = principal_for(identity, self._mtls)
            if principal is None:
                raise CredentialRejected(
                    f"client certificate {identity.describe()} matches no identity.mtls rule"
                )
        except CredentialRejected as rejected:
            if rejected.issuer is None:
                rejected.issuer = issuer
            self._refuse(rejected, source=source, protocol=protocol)
            raise AuthenticationFailed(INVALID_MESSAGE) from None
        self._throttle.success(source)
        return principal

    async def still_valid(self, principal: Principal) -> str | None:
        """``None`` while the credential behind ``principal`` still holds, else why not:
        ``"credential expired"``, ``"API key revoked"`` or ``"session token revoked"``.

        Meant to be called for each live session every few seconds: expiry is checked against
        the clock; revocation is read from the store, and that answer is shared by every session
        on the same credential for :data:`STILL_VALID_CACHE_SECONDS`. A store that cannot be read
        is not taken as a revocation (logged; the next call reads again).
        """
        now = self._clock()
        if principal.expires_at is not None and principal.expires_at <= now:
            return EXPIRED
        if principal.method not in ("api_key", "session_token") or not principal.credential_id:
            return None  # OIDC JWTs and certificates cannot be revoked here: expiry is all
        key = (principal.method, principal.credential_id)
        checked = self._checked.get(key)
        if checked is not None and checked[1] > now:
            return checked[0]
        try:
            problem = await self._revocation(principal.method, principal.credential_id)
        except StoreError as exc:
            log.warning("cannot check whether %s %s is revoked: %s", *key, exc)
            return None
        if len(self._checked) >= STILL_VALID_CACHE_ENTRIES:
            self._checked.clear()
        self._checked[key] = (problem, now + STILL_VALID_CACHE_SECONDS)
        return problem

    async def _revocation(self, method: str, credential_id: str) -> str | None:
        if method == "session_token":
            if self._session_tokens is not None:
                return await self._session_tokens.problem(credential_id)
            if self._store is None:
                return None
            token = await self._store.session_token_by_id(credential_id)
            if token is None or token.revoked_at is not None:
                return SESSION_TOKEN_REVOKED
            return EXPIRED if token.expires_at <= self._clock() else None
        if self._store is None:
            return None
        key = await self._store.api_key_by_name(credential_id)
        if key is None or key.revoked_at is not None:
            return API_KEY_REVOKED
        if key.expires_at is not None and key.expires_at <= self._clock():
            return EXPIRED
        return None

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

        identity = config.identity
        secret_key = secret_key_from_config(config)
        authenticators: list[Authenticator] = [
            ApiKeys(store, secret_key),
            SessionTokens(
                store,
                secret_key,
                default_ttl=identity.session_token_ttl,
                max_ttl=identity.session_token_max_ttl,
            ),
        ]
        verifier: OIDCVerifier | None = None
        if identity.oidc:
            verifier = OIDCVerifier(identity.oidc)
            authenticators.append(OIDCAuthenticator(verifier))
        service = cls(
            authenticators,
            throttle=FailureThrottle.from_config(config),
            audit=audit,
            store=store,
            mtls=identity.mtls,
        )
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
