"""A second, in-test OpenID issuer with its own keys, and helpers to forge tokens.

:class:`LocalIssuer` serves discovery and a JWKS on a loopback port from a thread, counts the
requests, can answer with an error, and signs whatever claims a test wants with its keys (or any
other key): expired, not yet valid, issued in the future, another issuer's ``iss``…
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: PrivateKey

    @classmethod
    def generate(cls, alg: str = "RS256", kid: str | None = None) -> SigningKey:
        private: PrivateKey
        if alg in ("RS256", "PS256"):
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        elif alg == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(alg)
        return cls(kid or f"local-{alg.lower()}-{secrets.token_hex(4)}", alg, private)

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        jwk: dict[str, Any]
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


# --- forging ------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def sign(
    claims: Mapping[str, Any], key: SigningKey, *, headers: Mapping[str, Any] | None = None
) -> str:
    """A JWS signed with ``key`` (its alg and kid unless ``headers`` say otherwise)."""
    header = {"kid": key.kid, **(headers or {})}
    return jwt.encode(dict(claims), key.private, algorithm=key.alg, headers=header)


def unsigned(header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes = b"") -> str:
    """A token assembled by hand (``alg: none``, bad segments…)."""
    return f"{b64json(dict(header))}.{b64json(dict(claims))}.{b64url(signature)}"


def hmac_signed(header: Mapping[str, Any], claims: Mapping[str, Any], secret: bytes) -> str:
    """HS256 by hand: PyJWT (rightly) refuses to use a public key as an HMAC secret."""
    signing_input = f"{b64json(dict(header))}.{b64json(dict(claims))}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def replace_payload(token: str, claims: Mapping[str, Any]) -> str:
    """The same header and signature over a different payload (tampering)."""
    header, _, signature = token.split(".")
    return f"{header}.{b64json(dict(claims))}.{signature}"


def payload_of(token: str) -> dict[str, Any]:
    segment = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return decoded


def header_of(token: str) -> dict[str, Any]:
    segment = token.split(".")[0]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return decoded


# --- the issuer ---------------------------------------------------------------------------------


class LocalIssuer:
    """Discovery at ``/.well-known/openid-configuration``, keys at ``/jwks``, on 127.0.0.1."""

    def __init__(self, *, audience: str = "callgate") -> None:
        self.audience = audience
        self.keys = [SigningKey.generate(alg) for alg in ("RS256", "ES256", "EdDSA")]
        self.requests: Counter[str] = Counter()
        #: an HTTP status to answer every request with instead (503: the IdP is down)
        self.fail_with: int | None = None
        #: the JWKS response's Cache-Control header, if any
        self.cache_control: str | None = None
        #: what discovery says the issuer is (a test sets another to check it is refused)
        self.advertised_issuer: str | None = None
        #: what discovery gives as ``jwks_uri`` (default: this server's /jwks)
        self.jwks_uri: str | None = None
        #: seconds to wait before answering (a slow provider)
        self.delay = 0.0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def key(self) -> SigningKey:
        return self.keys[0]

    def start(self) -> LocalIssuer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def key_requests(self) -> int:
        with self._lock:
            return self.requests["/.well-known/openid-configuration"] + self.requests["/jwks"]

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Valid claims for this issuer (``None`` in ``overrides`` removes a claim)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "local-user",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": secrets.token_hex(8),
            "groups": ["local"],
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, key: SigningKey | None = None, **overrides: Any) -> str:
        return sign(self.claims(**overrides), key or self.key)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with issuer._lock:
                    issuer.requests[self.path] += 1
                if issuer.delay:
                    time.sleep(issuer.delay)
                if issuer.fail_with is not None:
                    self._send(issuer.fail_with, {"error": "unavailable"})
                elif self.path == "/.well-known/openid-configuration":
                    self._send(
                        200,
                        {
                            "issuer": issuer.advertised_issuer or issuer.issuer,
                            "jwks_uri": issuer.jwks_uri or f"{issuer.issuer}/jwks",
                        },
                    )
                elif self.path == "/jwks":
                    keys = [k.public_jwk() for k in issuer.keys]
                    self._send(200, {"keys": keys}, issuer.cache_control)
                else:
                    self._send(404, {"error": "not found"})

            def _send(self, status: int, body: Any, cache_control: str | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                if cache_control:
                    self.send_header("cache-control", cache_control)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
