"""Test certificates made with ``cryptography``: a throw-away CA and leaf certificates it signs.

Used for the private PostgreSQL cluster's server certificate and, when ``callgate certs dev``
does not work, the gateway's TLS pair.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(
    days=30
)  # long enough for any test session, short enough to be obviously a test


@dataclass(frozen=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class CertPaths:
    cert: Path
    key: Path


def _now() -> dt.datetime:
    # Backdated a little so a clock skew between processes never makes a fresh cert "not yet valid".
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)


def make_ca(common_name: str = "callgate test CA") -> CertificateAuthority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now())
        .not_valid_after(_now() + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert=cert, key=key)


def issue_server_cert(
    ca: CertificateAuthority,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = dns_names[0] if dns_names else ip_addresses[0]
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now())
        .not_valid_after(_now() + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return cert, key


def write_pem_pair(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path
) -> CertPaths:
    """Write a certificate (0644) and its private key (0600, created with that mode)."""
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    cert_path.chmod(0o644)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    return CertPaths(cert=cert_path, key=key_path)


def write_self_signed_pair(out_dir: Path) -> CertPaths:
    """A gateway pair (``gateway.pem``, ``gateway-key.pem``) signed by a throw-away ``ca.pem``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ca = make_ca("callgate test gateway CA")
    (out_dir / "ca.pem").write_bytes(ca.cert_pem())
    cert, key = issue_server_cert(ca)
    return write_pem_pair(cert, key, out_dir / "gateway.pem", out_dir / "gateway-key.pem")


def gateway_tls_pair(out_dir: Path, callgate_exe: Path | None) -> CertPaths:
    """The gateway's TLS pair: ``callgate certs dev --out-dir`` if that works, else our own.

    The file names follow the SPEC example (``certs/gateway.pem``, ``certs/gateway-key.pem``).
    """
    cert, key = out_dir / "gateway.pem", out_dir / "gateway-key.pem"
    if callgate_exe is not None and callgate_exe.exists():
        try:
            done = subprocess.run(
                [str(callgate_exe), "certs", "dev", "--out-dir", str(out_dir)],
                capture_output=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            done = None
        if done is not None and done.returncode == 0 and cert.is_file() and key.is_file():
            return CertPaths(cert=cert, key=key)
    return write_self_signed_pair(out_dir)
