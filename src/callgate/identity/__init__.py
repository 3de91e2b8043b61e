"""Identity: who is calling. API keys, session tokens and OIDC JWTs are authenticators chosen by
prefix; client certificates are mapped through ``identity.mtls``."""

from callgate.identity.api_keys import (
    API_KEY_PREFIX,
    ApiKeyError,
    ApiKeyInfo,
    ApiKeys,
    generate_key,
)
from callgate.identity.base import Authenticator, CredentialRejected
from callgate.identity.mtls import CertificateIdentity, principal_from_certificate
from callgate.identity.secret_key import (
    KEY_FILE_NAME,
    load_or_create_secret_key,
    secret_key_from_config,
)
from callgate.identity.service import INVALID_MESSAGE, IdentityService
from callgate.identity.session_tokens import (
    SESSION_TOKEN_PREFIX,
    MintedToken,
    SessionTokenError,
    SessionTokenInfo,
    SessionTokens,
)
from callgate.identity.throttle import FailureThrottle

__all__ = [
    "API_KEY_PREFIX",
    "INVALID_MESSAGE",
    "KEY_FILE_NAME",
    "SESSION_TOKEN_PREFIX",
    "ApiKeyError",
    "ApiKeyInfo",
    "ApiKeys",
    "Authenticator",
    "CertificateIdentity",
    "CredentialRejected",
    "FailureThrottle",
    "IdentityService",
    "MintedToken",
    "SessionTokenError",
    "SessionTokenInfo",
    "SessionTokens",
    "generate_key",
    "load_or_create_secret_key",
    "principal_from_certificate",
    "secret_key_from_config",
]
