"""``inject.aws_sigv4``: callgate signs each request with the connection's AWS keys.

The caller sends an unsigned request (or one signed with keys of its own, which are dropped);
callgate signs it with AWS Signature Version 4 for the configured service and region, using
botocore's signer, so the signing rules are the SDK's own:

* the request's method, URL, the headers AWS requires to be signed and the payload hash are
  signed; ``X-Amz-Date``, ``X-Amz-Content-SHA256`` (S3), ``X-Amz-Security-Token`` (with a
  session token) and ``Authorization`` are added;
* S3 accepts ``UNSIGNED-PAYLOAD``, so an S3 body that streams is not read first; every other
  service signs the payload's SHA-256, so those connections need the whole body (``needs_body``);
* path-style (``host/bucket/key``) and virtual-host-style (``bucket.host/key``) S3 requests are
  both signed as they are sent: the ``Host`` header and the path go into the signature unchanged.

The URL is rewritten into the encoding AWS canonicalises to (RFC 3986 unreserved characters
left as they are, everything else percent-encoded) so that the bytes sent are the bytes signed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote, unquote_to_bytes, urlsplit, urlunsplit

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from callgate.config.connections import AwsSigV4Config
from callgate.engines.http.inject import (
    Clock,
    Outgoing,
    Refreshed,
    check_field_value,
    resolve,
    resolve_secrets,
    without_headers,
)
from callgate.errors import InternalError, UpstreamAuthFailed

#: services whose signature may say ``UNSIGNED-PAYLOAD`` instead of the body's hash, so a body
#: can stream through unread; they are also signed with S3's rules (path not normalised,
#: ``X-Amz-Content-SHA256`` sent)
S3_SERVICES: Final = frozenset({"s3", "s3-object-lambda", "s3-outposts"})

#: bodies larger than this are hashed in a worker thread rather than on the event loop (SHA-256
#: runs at roughly 0.5-1 GB/s: 1 MiB is about a millisecond of blocking)
HASH_IN_THREAD_ABOVE: Final = 1024 * 1024

#: headers of the caller's own signature: dropped, since ours replaces it and AWS would read
#: a leftover ``X-Amz-Date`` or ``X-Amz-Security-Token`` as part of the request
CALLER_AUTH_HEADERS: Final = (
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
)

#: query parameters of a presigned URL (query-string authentication): AWS refuses a request
#: that carries two signatures, and a caller's presigned credentials must not ride along
CALLER_AUTH_PARAMS: Final = frozenset(
    {
        "x-amz-algorithm",
        "x-amz-credential",
        "x-amz-date",
        "x-amz-expires",
        "x-amz-signedheaders",
        "x-amz-signature",
        "x-amz-security-token",
    }
)

# Headers put under the signature. AWS requires host and every x-amz-* header (S3 refuses a
# request with an unsigned x-amz-* header); content-type and content-md5 are signed as the
# SDKs do. Other headers are sent unsigned on purpose: an HTTP client or proxy between callgate
# and AWS may add or rewrite them (Accept-Encoding, User-Agent, Connection...), which would
# break a signature over them.
_SIGNED_NAMES: Final = frozenset({"host", "content-type", "content-md5"})
_SIGNED_PREFIX: Final = "x-amz-"

# What AWS leaves unencoded in a canonical URI or query (RFC 3986 §2.3 unreserved).
_UNRESERVED: Final = "-_.~"

# botocore.auth logs the canonical request at DEBUG, and it holds the signed headers, among
# them X-Amz-Security-Token: a gateway run with debug logging would write the session token.
# Its records below INFO are dropped at the source, whatever logging is configured.


class _NoSigningDetail:
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


_botocore_auth_log = logging.getLogger("botocore.auth")
if not any(isinstance(f, _NoSigningDetail) for f in _botocore_auth_log.filters):
    _botocore_auth_log.addFilter(_NoSigningDetail())

_UNSIGNED_PAYLOAD: Final = Config(s3={"payload_signing_enabled": False})
_SIGNED_PAYLOAD: Final = Config(s3={"payload_signing_enabled": True})


def _encode(raw: str, *, plus_is_space: bool) -> str:
    # Decode to bytes, not str, so a percent-escape that is not UTF-8 keeps its exact bytes.
    text = raw.replace("+", " ") if plus_is_space else raw
    return quote(unquote_to_bytes(text), safe=_UNRESERVED)


def canonical_url(url: str) -> str:
    """``url`` re-encoded the way SigV4 canonicalises it, caller-sent signing parameters removed.

    Each path segment is decoded and encoded again (``%2F`` inside a segment stays ``%2F``); a
    ``+`` in the path is a plus sign. In the query a ``+`` is a space, as form encoding (and so
    most HTTP clients) writes it; a literal plus arrives as ``%2B``, which is what the AWS SDKs
    send too. The fragment is dropped: it is never sent.
    """
    parts = urlsplit(url)
    path = "/".join(_encode(s, plus_is_space=False) for s in (parts.path or "/").split("/"))
    params: list[str] = []
    for piece in parts.query.split("&"):
        if not piece:
            continue
        name, eq, value = piece.partition("=")
        encoded = _encode(name, plus_is_space=True)
        if unquote_to_bytes(encoded).decode("utf-8", "replace").lower() in CALLER_AUTH_PARAMS:
            continue
        # A name without "=" (S3's ?uploads) is kept that way; SigV4 reads it as "name=".
        params.append(f"{encoded}={_encode(value, plus_is_space=True)}" if eq else encoded)
    return urlunsplit((parts.scheme, parts.netloc, path, "&".join(params), ""))


def _signed(name: str) -> bool:
    lower = name.lower()
    return lower in _SIGNED_NAMES or lower.startswith(_SIGNED_PREFIX)


def _host_header(url: str) -> str:
    # The Host header an HTTP client derives from the URL: the port only when not the default.
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


@dataclass(frozen=True, slots=True)
class _Keys:
    """The connection's AWS credentials, resolved (never shown)."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    token: str | None = field(repr=False)
    #: what leak checks look for: the secret key and the session token (a template's parts)
    secrets: tuple[str, ...] = field(repr=False)


class AwsSigV4Injector:
    """AWS Signature Version 4 with the connection's keys, for one service and region."""

    def __init__(
        self, connection: str, config: AwsSigV4Config, *, clock: Clock = time.monotonic
    ) -> None:
        self._connection = connection
        self._config = config
        self._s3 = config.service in S3_SERVICES
        self.needs_body = not self._s3
        self._keys = Refreshed(self._read_keys, clock, lambda keys: keys.secrets)

    def _read_keys(self) -> _Keys:
        config = self._config
        key = "aws_sigv4"
        access_key = resolve(self._connection, f"{key}.access_key_id", config.access_key_id)
        secret_key = resolve(self._connection, f"{key}.secret_access_key", config.secret_access_key)
        token = None
        if config.session_token is not None:
            token = resolve(self._connection, f"{key}.session_token", config.session_token)
            check_field_value(self._connection, f"{key}.session_token", token)
        check_field_value(self._connection, f"{key}.access_key_id", access_key)
        # The access key id names the principal and is not a secret: AWS error answers
        # (SignatureDoesNotMatch, InvalidAccessKeyId) carry it back on purpose.
        found = list(resolve_secrets(config.secret_access_key))
        if config.session_token is not None:
            found.extend(resolve_secrets(config.session_token))
        return _Keys(access_key, secret_key, token, tuple(dict.fromkeys(s for s in found if s)))

    async def apply(self, req: Outgoing) -> Outgoing:
        config = self._config
        keys = self._keys.get()
        access_key, secret_key, token = keys.access_key, keys.secret_key, keys.token

        url = canonical_url(req.url)
        headers = without_headers(req.headers, CALLER_AUTH_HEADERS)
        if not any(name.lower() == "host" for name, _ in headers):
            # Signed and sent must agree: name the host we sign rather than leave it to the
            # HTTP client.
            headers.insert(0, ("Host", _host_header(url)))

        payload = self._payload(req)
        request = AWSRequest(method=req.method, url=url, data=payload or b"")
        for name, value in headers:
            if _signed(name):
                # HTTPHeaders adds rather than replaces: a repeated x-amz-meta-* keeps every
                # value, joined with "," in the canonical request as SigV4 specifies.
                request.headers[name] = value
        if self._s3:
            request.context["client_config"] = (
                _UNSIGNED_PAYLOAD if payload is None else _SIGNED_PAYLOAD
            )
        signer_class = S3SigV4Auth if self._s3 else SigV4Auth
        signer = signer_class(
            Credentials(access_key, secret_key, token), config.service, config.region
        )
        if payload is not None and len(payload) > HASH_IN_THREAD_ABOVE:
            # hashlib lets go of the GIL on large inputs: other requests go on meanwhile.
            await asyncio.to_thread(signer.add_auth, request)
        else:
            signer.add_auth(request)

        added = [
            (name, request.headers[name])
            for name in (
                "X-Amz-Date",
                "X-Amz-Security-Token",
                "X-Amz-Content-SHA256",
                "Authorization",
            )
            if name in request.headers
        ]
        return dataclasses.replace(req, url=url, headers=headers + added)

    def apply_now(self, req: Outgoing) -> None:
        return None  # a large body is hashed in a thread: always apply()

    def _payload(self, req: Outgoing) -> bytes | None:
        """The bytes to hash, or ``None`` to sign ``UNSIGNED-PAYLOAD`` (S3 streaming)."""
        if req.body is not None:
            return req.body
        if req.body_length == 0:
            return b""
        if self._s3:
            return None
        # The engine must buffer when needs_body is set; getting here is a bug in callgate.
        raise InternalError(
            f"connection {self._connection!r}: aws_sigv4 for {self._config.service} signs the "
            "body's hash, so the whole body is needed, but the request's body streams"
        )

    def secret_values(self) -> tuple[str, ...]:
        try:
            return self._keys.secret_values()
        except UpstreamAuthFailed:
            # Nothing sendable: whatever can be read now.
            config = self._config
            found = list(resolve_secrets(config.secret_access_key))
            if config.session_token is not None:
                found.extend(resolve_secrets(config.session_token))
            return tuple(dict.fromkeys(s for s in found if s))

    async def aclose(self) -> None:
        return None
