"""``identity:`` — who may call: OIDC issuers, SAML IdPs, client certificates, failed-attempt
throttling, tokens."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Final

from pydantic import BeforeValidator, Field, model_validator

from callgate.config.fields import (
    ConfigModel,
    Duration,
    NonEmptyStr,
    PositiveDuration,
    PositiveInt,
    Secret,
    SecureUrl,
    path_error,
)

#: the longest delay added before answering a failed attempt, however many came before
DEFAULT_MAX_FAILURE_DELAY: Final = timedelta(seconds=5)


def _one_or_many(value: Any) -> Any:
    return (value,) if isinstance(value, str) else value


class ClaimMappingConfig(ConfigModel):
    """Callers whose token claims all match ``claims`` (glob values) get ``groups`` too."""

    claims: dict[str, NonEmptyStr] = Field(min_length=1)
    groups: tuple[NonEmptyStr, ...] = Field(min_length=1)


class OIDCIssuerConfig(ConfigModel):
    name: NonEmptyStr
    #: discovery at ``<issuer>/.well-known/openid-configuration``
    issuer: SecureUrl
    #: accepted ``aud`` values (one string or a list)
    audience: Annotated[tuple[NonEmptyStr, ...], BeforeValidator(_one_or_many)] = Field(
        min_length=1
    )
    subject_claim: NonEmptyStr = "sub"
    groups_claim: NonEmptyStr = "groups"
    #: tolerated clock difference when checking ``exp``/``nbf``/``iat``
    clock_skew: Duration = timedelta(seconds=60)
    claim_mappings: tuple[ClaimMappingConfig, ...] = ()


class SAMLConfig(ConfigModel):
    name: NonEmptyStr
    #: the IdP's metadata XML (usually ``file:/path``)
    metadata: Secret
    groups_attribute: NonEmptyStr = "groups"


#: what an ``identity.mtls[].subject`` template may use, and which ``match`` key provides it
MTLS_PLACEHOLDERS: Final = {
    "spiffe_id": "spiffe_id",
    "trust_domain": "spiffe_id",
    "path": "spiffe_id",
    "cn": "subject_cn",
}
MTLS_PLACEHOLDER: Final = re.compile(r"\{([^{}]*)\}")
_SPIFFE_PREFIX: Final = "spiffe://"


class MTLSMatchConfig(ConfigModel):
    """Which verified client certificates a rule applies to: every key given must match.

    Values are case-sensitive shell globs (``*`` also matches ``/``).
    """

    #: glob on the certificate's SPIFFE ID (its one ``spiffe://`` URI SAN)
    spiffe_id: NonEmptyStr | None = None
    #: glob on the certificate subject's common name
    subject_cn: NonEmptyStr | None = None

    @model_validator(mode="after")
    def _something(self) -> MTLSMatchConfig:
        if self.spiffe_id is None and self.subject_cn is None:
            raise path_error("", "expected spiffe_id or subject_cn (a glob)")
        if self.spiffe_id is not None and not self.spiffe_id.startswith(_SPIFFE_PREFIX):
            raise path_error("spiffe_id", f"expected a glob starting with {_SPIFFE_PREFIX}")
        return self


class MTLSRuleConfig(ConfigModel):
    """A client certificate that matches ``match`` is the principal ``subject`` with ``groups``.

    ``subject`` is fixed text or a template with ``{spiffe_id}``, ``{trust_domain}``, ``{path}``
    (the SPIFFE ID's path without its leading ``/``) or ``{cn}``; by default ``{spiffe_id}`` when
    the rule matches on a SPIFFE ID, else ``{cn}``.
    """

    match: MTLSMatchConfig
    subject: NonEmptyStr | None = None
    groups: tuple[NonEmptyStr, ...] = ()

    @model_validator(mode="after")
    def _template(self) -> MTLSRuleConfig:
        if self.subject is None:
            return self
        for name in MTLS_PLACEHOLDER.findall(self.subject):
            needs = MTLS_PLACEHOLDERS.get(name)
            if needs is None:
                known = ", ".join("{" + n + "}" for n in MTLS_PLACEHOLDERS)
                raise path_error("subject", f"unknown placeholder {{{name}}}; use {known}")
            if getattr(self.match, needs) is None:
                raise path_error(
                    "subject",
                    f"{{{name}}} needs match.{needs}, so every matching certificate has it",
                )
        return self

    @property
    def subject_template(self) -> str:
        if self.subject is not None:
            return self.subject
        return "{spiffe_id}" if self.match.spiffe_id is not None else "{cn}"


class FailureConfig(ConfigModel):
    """Failed authentication attempts from one source within ``window``."""

    #: after this many failures, each further answer is delayed
    slow_after: PositiveInt = 3
    #: the first delay; it doubles with each further failure, up to ``max_delay``
    delay: PositiveDuration = timedelta(seconds=1)
    max_delay: PositiveDuration = DEFAULT_MAX_FAILURE_DELAY
    #: after this many failures the source is refused for ``lockout``
    lockout_after: PositiveInt = 10
    window: PositiveDuration = timedelta(seconds=60)
    lockout: PositiveDuration = timedelta(seconds=300)

    @model_validator(mode="after")
    def _ordered(self) -> FailureConfig:
        if self.lockout_after < self.slow_after:
            raise path_error("lockout_after", "must be at least slow_after")
        if self.max_delay < self.delay:
            raise path_error("max_delay", "must be at least delay")
        return self

    def delay_for(self, failures: int) -> timedelta:
        """The delay before answering, given ``failures`` recent failures from the source."""
        if failures < self.slow_after:
            return timedelta(0)
        doublings = min(failures - self.slow_after, 32)  # 2**32 s is far past any cap
        return min(self.delay * (1 << doublings), self.max_delay)


class IdentityConfig(ConfigModel):
    oidc: tuple[OIDCIssuerConfig, ...] = ()
    saml: tuple[SAMLConfig, ...] = ()
    #: client certificates (mutual TLS) mapped to principals; the first matching rule applies
    mtls: tuple[MTLSRuleConfig, ...] = ()
    failures: FailureConfig = FailureConfig()
    #: the longest lifetime a ``cgt_`` session token may be given
    session_token_max_ttl: PositiveDuration = timedelta(hours=12)
    #: the lifetime of a ``cgt_`` session token when none is asked for
    session_token_ttl: PositiveDuration = timedelta(hours=1)

    @model_validator(mode="after")
    def _consistent(self) -> IdentityConfig:
        names = [(f"oidc[{i}].name", p.name) for i, p in enumerate(self.oidc)]
        names += [(f"saml[{i}].name", p.name) for i, p in enumerate(self.saml)]
        seen: dict[str, str] = {}
        for where, name in names:
            if name in seen:
                raise path_error(where, f"name {name!r} is already used by {seen[name]}")
            seen[name] = where
        if self.session_token_ttl > self.session_token_max_ttl:
            raise path_error("session_token_ttl", "must not be longer than session_token_max_ttl")
        return self
