"""``connections:`` — the upstream databases and APIs callers reach through callgate."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Final, Literal

from pydantic import Discriminator, Field, PlainValidator, Tag, model_validator

from callgate.config.fields import (
    ConfigModel,
    ConnectionName,
    ExistingFile,
    HttpUrl,
    NonEmptyStr,
    NonNegativeInt,
    Port,
    PositiveDuration,
    Secret,
    SecureUrl,
    describe_type,
    message_error,
    path_error,
)

ConnectionProtocol = Literal["postgres", "mysql", "http"]
UpstreamTLS = Literal["disable", "prefer", "require", "verify-full"]

DEFAULT_PORTS: Final[dict[str, int]] = {"postgres": 5432, "mysql": 3306}

# Tags of the upstream union. They appear in pydantic's error locations, which the loader
# removes (config/errors.py), so they must never be a real key: hence the spaces.
DATABASE_TAG: Final = "database upstream"
HTTP_TAG: Final = "http upstream"
UPSTREAM_TAGS: Final = frozenset({DATABASE_TAG, HTTP_TAG})

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2 token


class PoolConfig(ConfigModel):
    """Idle upstream connections kept for the next caller (PostgreSQL; reset with DISCARD ALL)."""

    #: idle connections kept per set of startup parameters; 0 turns pooling off
    max_idle: NonNegativeInt = 16
    #: an idle connection unused this long is closed
    idle_timeout: PositiveDuration = timedelta(seconds=60)


class DatabaseUpstream(ConfigModel):
    host: NonEmptyStr
    #: 5432 for postgres, 3306 for mysql when not given
    port: Port = DEFAULT_PORTS["postgres"]
    database: NonEmptyStr
    user: NonEmptyStr
    password: Secret | None = None
    #: disable: plaintext; prefer: TLS if offered, unverified; require: TLS, unverified;
    #: verify-full: TLS, chain checked against ca_file (or the system store) and host name
    tls: UpstreamTLS = "prefer"
    ca_file: ExistingFile | None = None
    connect_timeout: PositiveDuration = timedelta(seconds=10)
    pool: PoolConfig = PoolConfig()

    @model_validator(mode="after")
    def _ca_needs_verification(self) -> DatabaseUpstream:
        if self.ca_file is not None and self.tls != "verify-full":
            raise path_error(
                "ca_file",
                f"ca_file is only used with tls: verify-full; tls: {self.tls} does not verify "
                "the server",
            )
        return self


class HttpTimeouts(ConfigModel):
    connect: PositiveDuration = timedelta(seconds=10)
    #: longest wait for the next bytes of a response
    read: PositiveDuration = timedelta(seconds=60)
    #: longest wait to send the next bytes of a request
    write: PositiveDuration = timedelta(seconds=60)


class HttpUpstream(ConfigModel):
    #: base URL; the caller's path after ``/<connection>`` is appended to it
    url: HttpUrl
    #: CA bundle for verifying an https upstream (default: the system store)
    ca_file: ExistingFile | None = None
    timeouts: HttpTimeouts = HttpTimeouts()


def _upstream_tag(value: Any) -> str | None:
    if isinstance(value, DatabaseUpstream):
        return DATABASE_TAG
    if isinstance(value, HttpUpstream):
        return HTTP_TAG
    return getattr(value, "upstream_tag", None)


class _TaggedMapping(dict[str, Any]):
    """A YAML mapping marked with the upstream model its connection's protocol calls for."""

    upstream_tag: str = DATABASE_TAG


Upstream = Annotated[
    Annotated[DatabaseUpstream, Tag(DATABASE_TAG)] | Annotated[HttpUpstream, Tag(HTTP_TAG)],
    Discriminator(
        _upstream_tag,
        custom_error_type="callgate_message",
        custom_error_message="expected a mapping with the upstream's settings",
        custom_error_context={"message": "expected a mapping with the upstream's settings"},
    ),
]


# --- credential injection (http) ------------------------------------------------------------


def _to_header_name(value: object) -> str:
    if not isinstance(value, str) or not _HEADER_NAME.fullmatch(value):
        shown = repr(value) if isinstance(value, str) else describe_type(value)
        raise message_error(f"expected an HTTP header name, got {shown}")
    return value


HeaderName = Annotated[str, PlainValidator(_to_header_name)]


class BasicAuthConfig(ConfigModel):
    user: Secret
    password: Secret


#: how the client authenticates to the token endpoint (RFC 6749 §2.3.1): HTTP Basic, or the
#: credentials as form fields of the request body
OAuth2ClientAuthMethod = Literal["client_secret_basic", "client_secret_post"]


class OAuth2ClientCredentialsConfig(ConfigModel):
    token_url: SecureUrl
    client_id: Secret
    client_secret: Secret
    scope: NonEmptyStr | None = None
    audience: NonEmptyStr | None = None
    auth_method: OAuth2ClientAuthMethod = "client_secret_basic"


class AwsSigV4Config(ConfigModel):
    service: NonEmptyStr
    region: NonEmptyStr
    access_key_id: Secret
    secret_access_key: Secret
    session_token: Secret | None = None


INJECT_KINDS: Final = ("headers", "basic", "query", "oauth2_client_credentials", "aws_sigv4")


class InjectConfig(ConfigModel):
    """How callgate adds its own credential to each forwarded request: exactly one way."""

    headers: dict[HeaderName, Secret] | None = Field(default=None, min_length=1)
    basic: BasicAuthConfig | None = None
    query: dict[NonEmptyStr, Secret] | None = Field(default=None, min_length=1)
    oauth2_client_credentials: OAuth2ClientCredentialsConfig | None = None
    aws_sigv4: AwsSigV4Config | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> InjectConfig:
        chosen = [kind for kind in INJECT_KINDS if getattr(self, kind) is not None]
        if len(chosen) != 1:
            found = " and ".join(chosen) if chosen else "none"
            raise message_error(f"expected exactly one of {', '.join(INJECT_KINDS)}; found {found}")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in INJECT_KINDS if getattr(self, kind) is not None)


# --- the connection -------------------------------------------------------------------------


class ConnectionConfig(ConfigModel):
    #: what callers name: the PostgreSQL/MySQL database, or the HTTP path prefix
    name: ConnectionName
    protocol: ConnectionProtocol
    upstream: Upstream
    #: http only: how callgate authenticates to the API
    inject: InjectConfig | None = None
    #: http only: ``Host`` header values that also route to this connection
    hosts: tuple[NonEmptyStr, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _tag_upstream(cls, data: Any) -> Any:
        # The upstream's model follows from the protocol, which pydantic cannot see from inside
        # the upstream mapping; mark the mapping for the discriminator.
        if isinstance(data, dict) and isinstance(data.get("upstream"), dict):
            tagged = _TaggedMapping(data["upstream"])
            tagged.upstream_tag = HTTP_TAG if data.get("protocol") == "http" else DATABASE_TAG
            data = {**data, "upstream": tagged}
        return data

    @model_validator(mode="after")
    def _fits_protocol(self) -> ConnectionConfig:
        upstream = self.upstream
        if self.protocol == "http":
            if not isinstance(upstream, HttpUpstream):
                raise path_error("upstream", "an http connection needs an http upstream (url)")
            return self
        if not isinstance(upstream, DatabaseUpstream):
            raise path_error(
                "upstream", f"a {self.protocol} connection needs a database upstream (host, ...)"
            )
        if self.inject is not None:
            raise path_error("inject", "inject is only used by http connections")
        if self.hosts:
            raise path_error("hosts", "hosts is only used by http connections")
        if "port" not in upstream.model_fields_set:
            default_port = DEFAULT_PORTS[self.protocol]
            if upstream.port != default_port:
                # Frozen model, still being built: the one place its field is replaced.
                with_port = upstream.model_copy(update={"port": default_port})
                object.__setattr__(self, "upstream", with_port)
        return self

    @property
    def database_upstream(self) -> DatabaseUpstream:
        """The upstream of a postgres/mysql connection (``TypeError`` for http)."""
        if not isinstance(self.upstream, DatabaseUpstream):
            raise TypeError(f"connection {self.name!r} is {self.protocol}, not a database")
        return self.upstream

    @property
    def http_upstream(self) -> HttpUpstream:
        """The upstream of an http connection (``TypeError`` for a database)."""
        if not isinstance(self.upstream, HttpUpstream):
            raise TypeError(f"connection {self.name!r} is {self.protocol}, not http")
        return self.upstream
