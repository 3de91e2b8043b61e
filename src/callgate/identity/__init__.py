"""Identity: who is calling. API keys now; OIDC and session tokens plug in as authenticators."""

from callgate.identity.api_keys import (
    API_KEY_PREFIX,
    ApiKeyError,
    ApiKeyInfo,
    ApiKeys,
    generate_key,
)
from callgate.identity.base import Authenticator, CredentialRejected
from callgate.identity.secret_key import (
    KEY_FILE_NAME,
    load_or_create_secret_key,
    secret_key_from_config,
)
from callgate.identity.service import INVALID_MESSAGE, IdentityService
from callgate.identity.throttle import FailureThrottle

__all__ = [
    "API_KEY_PREFIX",
    "INVALID_MESSAGE",
    "KEY_FILE_NAME",
    "ApiKeyError",
    "ApiKeyInfo",
    "ApiKeys",
    "Authenticator",
    "CredentialRejected",
    "FailureThrottle",
    "IdentityService",
    "generate_key",
    "load_or_create_secret_key",
    "secret_key_from_config",
]
