"""``ssl.SSLContext`` objects built from the config: the listeners' side and the upstreams' side."""

from __future__ import annotations

import ssl
from pathlib import Path

from callgate.config import TLSConfig
from callgate.errors import ConfigError

#: TLS 1.0 and 1.1 are deprecated (RFC 8996); nothing callgate talks to needs them.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2

UPSTREAM_TLS_MODES = ("disable", "prefer", "require", "verify-full")


def _check_readable(path: Path, key_path: str) -> None:
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ConfigError(key_path, f"cannot read {path}: {exc.strerror}") from None


def _refuse_password() -> str:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key's password.
    raise ConfigError("gateway.tls.key", "encrypted private keys are not supported")


def _load_ca(context: ssl.SSLContext, ca_file: Path, key_path: str) -> None:
    _check_readable(ca_file, key_path)
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except ssl.SSLError as exc:
        raise ConfigError(
            key_path, f"{ca_file} holds no usable PEM certificate ({exc.reason or exc})"
        ) from None


def server_context(
    tls: TLSConfig,
    client_ca: Path | None = None,
    *,
    client_ca_key: str = "listeners[].client_ca",
) -> ssl.SSLContext:
    """The context a listener serves TLS with.

    With a client CA (``client_ca``, else ``tls.client_ca``) the client is asked for a
    certificate, verified against that CA when it sends one (CERT_OPTIONAL: a caller may still
    prove itself with a token instead). ``client_ca_key`` names the key in errors.
    """
    _check_readable(tls.cert, "gateway.tls.cert")
    _check_readable(tls.key, "gateway.tls.key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    try:
        context.load_cert_chain(str(tls.cert), str(tls.key), password=_refuse_password)
    except ssl.SSLError as exc:
        raise ConfigError(
            "gateway.tls",
            f"cannot use {tls.cert} with {tls.key} ({exc.reason or exc}); expected a PEM "
            "certificate and the unencrypted PEM private key that matches it",
        ) from None
    if client_ca is not None:
        _load_ca(context, client_ca, client_ca_key)
        context.verify_mode = ssl.CERT_OPTIONAL
    elif tls.client_ca is not None:
        _load_ca(context, tls.client_ca, "gateway.tls.client_ca")
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_context(
    mode: str,
    ca_file: Path | None,
    server_hostname: str,
    *,
    key_path: str = "upstream",
) -> ssl.SSLContext | None:
    """The context callgate uses towards an upstream, for an upstream ``tls`` mode.

    ``disable``: ``None`` (plaintext). ``prefer`` and ``require``: encrypted, the server not
    verified (as libpq's modes of the same names without a root certificate). ``verify-full``:
    the chain is checked against ``ca_file`` (or the system store) and the certificate must
    name ``server_hostname``. ``key_path`` (``connections[0].upstream``) names the keys in errors.
    """
    if mode not in UPSTREAM_TLS_MODES:
        raise ConfigError(
            f"{key_path}.tls", f"expected one of {', '.join(UPSTREAM_TLS_MODES)}, got {mode!r}"
        )
    if mode == "disable":
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MINIMUM_VERSION
    if mode in ("prefer", "require"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if not server_hostname:
        raise ConfigError(f"{key_path}.host", "verify-full needs a host name to check")
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if ca_file is not None:
        _load_ca(context, ca_file, f"{key_path}.ca_file")
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return context
