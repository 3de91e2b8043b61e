"""The gateway's HMAC key: ``gateway.secret_key``, or a key generated once beside the store."""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from callgate.errors import ConfigError

if TYPE_CHECKING:
    from callgate.config import Config

log = logging.getLogger("callgate.identity")

KEY_FILE_NAME = "callgate.key"
#: A configured key shorter than this is refused: HMAC with a short key is guessable offline from
#: a leaked store. The generated key is 32 bytes.
MIN_SECRET_KEY_BYTES = 16
_GENERATED_KEY_BYTES = 32


def load_or_create_secret_key(*, secret: str | None, key_file: Path | None) -> bytes:
    """The configured ``secret`` (UTF-8) if given, else the key in ``key_file``, created if absent.

    The key file holds 64 hex digits, mode 0600. Two processes starting together end up with the
    same key.
    """
    if secret is not None:
        key = secret.encode("utf-8")
        if len(key) < MIN_SECRET_KEY_BYTES:
            raise ConfigError(
                "gateway.secret_key", f"must be at least {MIN_SECRET_KEY_BYTES} bytes long"
            )
        return key
    if key_file is None:
        raise ConfigError(
            "gateway.secret_key",
            "is required when the store is not SQLite (no place for a key file)",
        )
    if key_file.exists():
        return _read_key_file(key_file)
    # Write a private temporary file, then link it into place: the link either wins (our key)
    # or finds the file another process just created (its key); nobody sees a half-written file.
    tmp = key_file.with_name(f".{key_file.name}.{secrets.token_hex(8)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(_GENERATED_KEY_BYTES) + "\n")
        try:
            os.link(tmp, key_file)
            log.info("generated a new secret key in %s", key_file)
        except FileExistsError:
            pass
    except OSError as exc:
        raise ConfigError(
            "gateway.secret_key", f"cannot create {key_file}: {exc.strerror}"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return _read_key_file(key_file)


def _read_key_file(key_file: Path) -> bytes:
    try:
        mode = key_file.stat().st_mode
        text = key_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("gateway.secret_key", f"cannot read {key_file}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by others than its owner; chmod 600 it", key_file)
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < MIN_SECRET_KEY_BYTES:
        raise ConfigError("gateway.secret_key", f"{key_file} does not hold a hex key")
    return key


def secret_key_from_config(config: Config) -> bytes:
    gateway = config.gateway
    store_path = gateway.store_path
    return load_or_create_secret_key(
        secret=gateway.secret_key.resolve() if gateway.secret_key is not None else None,
        key_file=store_path.parent / KEY_FILE_NAME if store_path is not None else None,
    )
