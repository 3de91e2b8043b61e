"""The checkpoint signing key: ``gateway.audit.signing_key`` (a ``file:``/``env:`` reference to an
Ed25519 private key in PEM, as ``callgate certs audit-key`` writes it).

The key is resolved when the gateway starts (and by ``callgate audit verify`` to derive the public
key); it is held in memory only and never written to the store, a log or an event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import ed25519

from callgate.errors import ConfigError, SecretError
from callgate.secrets import SecretRef
from callgate.store.checkpoints import CheckpointSigner, load_public_key

if TYPE_CHECKING:
    from callgate.config import Config

KEY_PATH = "gateway.audit.signing_key"


def load_signer(ref: SecretRef) -> CheckpointSigner:
    """Raises :class:`ConfigError` naming the key path (never the key) when it cannot be used."""
    try:
        pem = ref.resolve()
    except SecretError as exc:
        raise ConfigError(KEY_PATH, exc.message) from None
    try:
        return CheckpointSigner.from_pem(pem)
    except ValueError as exc:
        raise ConfigError(
            KEY_PATH,
            f"{ref}: {exc}; `callgate certs audit-key` writes a usable key",
        ) from None


def signer_from_config(config: Config) -> CheckpointSigner | None:
    ref = config.gateway.audit.signing_key
    return None if ref is None else load_signer(ref)


def public_key_from_config(config: Config) -> ed25519.Ed25519PublicKey | None:
    signer = signer_from_config(config)
    return None if signer is None else load_public_key(signer.public_key)
