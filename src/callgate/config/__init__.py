"""The config file (SPEC §2): models, loading, and the errors that name a key path.

``load_config(path)`` reads and validates ``callgate.yaml``; ``parse_config(data, base_dir)``
validates data already parsed. Both raise :class:`callgate.errors.ConfigError` whose ``path`` is
the key path (``connections[0].upstream.port``). See ``docs/config.md`` for every key.
"""

from __future__ import annotations

from callgate.config.approvals import ApprovalConfig, NotifyConfig
from callgate.config.connections import (
    AwsSigV4Config,
    BasicAuthConfig,
    ConnectionConfig,
    ConnectionProtocol,
    DatabaseUpstream,
    HttpTimeouts,
    HttpUpstream,
    InjectConfig,
    OAuth2ClientCredentialsConfig,
    UpstreamTLS,
)
from callgate.config.durations import format_duration, parse_duration
from callgate.config.gateway import (
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_STORE,
    AuditConfig,
    ExportSinkConfig,
    GatewayConfig,
    LimitsConfig,
    TLSConfig,
)
from callgate.config.identity import (
    ClaimMappingConfig,
    FailureConfig,
    IdentityConfig,
    OIDCIssuerConfig,
    SAMLConfig,
)
from callgate.config.listeners import ListenerConfig, ListenerProtocol, split_bind
from callgate.config.loader import load_config, parse_config
from callgate.config.models import ALL_CONNECTIONS, Config
from callgate.config.policies import (
    DETECTORS,
    KINDS,
    Action,
    ConditionsConfig,
    Detector,
    Kind,
    MaskRuleConfig,
    MaskStyle,
    PolicyConfig,
    RuleConfig,
    SubjectsConfig,
)
from callgate.config.sizes import parse_size
from callgate.config.walk import iter_secret_refs

__all__ = [
    "ALL_CONNECTIONS",
    "DEFAULT_MAX_DECODED_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_STORE",
    "DETECTORS",
    "KINDS",
    "Action",
    "ApprovalConfig",
    "AuditConfig",
    "AwsSigV4Config",
    "BasicAuthConfig",
    "ClaimMappingConfig",
    "ConditionsConfig",
    "Config",
    "ConnectionConfig",
    "ConnectionProtocol",
    "DatabaseUpstream",
    "Detector",
    "ExportSinkConfig",
    "FailureConfig",
    "GatewayConfig",
    "HttpTimeouts",
    "HttpUpstream",
    "IdentityConfig",
    "InjectConfig",
    "Kind",
    "LimitsConfig",
    "ListenerConfig",
    "ListenerProtocol",
    "MaskRuleConfig",
    "MaskStyle",
    "NotifyConfig",
    "OAuth2ClientCredentialsConfig",
    "OIDCIssuerConfig",
    "PolicyConfig",
    "RuleConfig",
    "SAMLConfig",
    "SubjectsConfig",
    "TLSConfig",
    "UpstreamTLS",
    "format_duration",
    "iter_secret_refs",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
    "split_bind",
]
