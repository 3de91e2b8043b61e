"""mTLS through the PostgreSQL listener: a SPIFFE client certificate is the caller's credential."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import GatewayFactory
from tests.engines.postgres.conftest import ALLOW_APPS, main_connection
from tests.support.pgcluster import PgServer
from tests.support.tls import CertificateAuthority, make_ca

pytestmark = pytest.mark.integration


def client_cert(ca: CertificateAuthority, spiffe_id: str, out: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "workload")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / "client.pem", out / "client-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_spiffe_certificate_maps_to_its_principal_and_other_ca_is_refused(
    gateway: GatewayFactory, pg_local: PgServer, pg_db: str, tmp_path: Path
) -> None:
    ca = make_ca("workload CA")
    ca_path = tmp_path / "client-ca.pem"
    ca_path.write_bytes(ca.cert_pem())
    gw = gateway(
        {
            "listeners": [{"protocol": "postgres", "client_ca": str(ca_path)}],
            "identity": {
                "mtls": [
                    {"match": {"spiffe_id": "spiffe://acme.test/ns/prod/sa/*"}, "groups": ["apps"]}
                ]
            },
            "connections": [main_connection(pg_local, pg_db)],
            "policies": [ALLOW_APPS],
        },
        allow_plaintext=False,
    )
    cert, key = client_cert(ca, "spiffe://acme.test/ns/prod/sa/billing", tmp_path / "good")
    dsn = (
        f"host=127.0.0.1 port={gw.port} dbname=main user=x sslmode=require "
        f"sslcert={cert} sslkey={key}"
    )
    with psycopg.connect(dsn, application_name="mtls") as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    done = gw.cli("sessions", "list", "--json")
    assert "spiffe://acme.test/ns/prod/sa/billing" in done.stdout
    assert '"mtls"' in done.stdout
    # a SPIFFE ID no rule names is refused (no fallback to a password)
    cert2, key2 = client_cert(ca, "spiffe://acme.test/ns/dev/sa/x", tmp_path / "unmapped")
    with pytest.raises(psycopg.OperationalError, match=r"28P01|credential"):
        psycopg.connect(
            f"host=127.0.0.1 port={gw.port} dbname=main user=x sslmode=require "
            f"sslcert={cert2} sslkey={key2} password=whatever"
        ).close()
    # a certificate from another CA fails the TLS handshake
    other = make_ca("someone else")
    cert3, key3 = client_cert(other, "spiffe://acme.test/ns/prod/sa/billing", tmp_path / "other")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            f"host=127.0.0.1 port={gw.port} dbname=main user=x sslmode=require "
            f"sslcert={cert3} sslkey={key3}"
        ).close()
