"""``callgate certs dev`` / ``audit-key``, and the TLS contexts built from their output."""

from __future__ import annotations

import base64
import ipaddress
import json
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from typer.testing import CliRunner

from callgate.cli.main import app
from callgate.config import TLSConfig
from callgate.errors import ConfigError
from callgate.tls import client_context, server_context

runner = CliRunner()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _dev(out_dir: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["certs", "dev", "--out-dir", str(out_dir), *args])
    return result.exit_code, result.stdout, result.stderr


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> None:
    """Run a TLS handshake in memory; raises what the client raises."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side, outgoing, peer_incoming in (
            ("client", client_side, c_out, s_in),
            ("server", server_side, s_out, c_in),
        ):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            data = outgoing.read()
            if data:
                peer_incoming.write(data)
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_dev_writes_a_usable_pair(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    code, stdout, _ = _dev(out, "--host", "gw.example", "--host", "10.1.2.3", "--days", "30")
    assert code == 0
    cert_path, key_path = out / "gateway.pem", out / "gateway-key.pem"
    assert str(cert_path) in stdout
    assert str(key_path) in stdout
    assert _mode(key_path) == 0o600

    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "gw.example"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.1.2.3"),
    }
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 30 <= lifetime.days <= 31
    assert cert.issuer == cert.subject


def test_dev_pair_serves_tls_verified_by_hostname(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert _dev(out)[0] == 0
    server = server_context(TLSConfig(cert=out / "gateway.pem", key=out / "gateway-key.pem"))
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    for name in ("localhost", "127.0.0.1", "::1"):
        client = client_context("verify-full", out / "gateway.pem", name)
        assert client is not None
        _handshake(server, client, name)
    client = client_context("verify-full", out / "gateway.pem", "other.example")
    assert client is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, client, "other.example")
    unverified = client_context("require", None, "other.example")
    assert unverified is not None
    _handshake(server, unverified, "other.example")


def test_dev_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert _dev(out)[0] == 0
    first = (out / "gateway.pem").read_bytes()
    code, _, stderr = _dev(out)
    assert code == 1
    assert "already exist; pass --force to overwrite" in stderr
    assert (out / "gateway.pem").read_bytes() == first

    (out / "gateway-key.pem").chmod(0o644)
    code, _, _ = _dev(out, "--force")
    assert code == 0
    assert (out / "gateway.pem").read_bytes() != first
    assert _mode(out / "gateway-key.pem") == 0o600


def test_dev_rejects_a_bad_host_and_days(tmp_path: Path) -> None:
    code, _, stderr = _dev(tmp_path, "--host", "bad\u0000host")
    assert code == 1
    assert "neither an IP address nor a DNS name" in stderr
    assert not (tmp_path / "gateway.pem").exists()
    assert _dev(tmp_path, "--days", "0")[0] != 0


def test_dev_json(tmp_path: Path) -> None:
    result = runner.invoke(app, ["certs", "dev", "--out-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "cert": str(tmp_path / "gateway.pem"),
        "key": str(tmp_path / "gateway-key.pem"),
    }


def test_audit_key(tmp_path: Path) -> None:
    out = tmp_path / "keys" / "audit.pem"
    result = runner.invoke(app, ["certs", "audit-key", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert _mode(out) == 0o600
    key = serialization.load_pem_private_key(out.read_bytes(), password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert printed == {"key": str(out), "public_key": base64.b64encode(raw).decode()}

    again = runner.invoke(app, ["certs", "audit-key", "--out", str(out)])
    assert again.exit_code == 1
    assert "already exists" in again.stderr
    forced = runner.invoke(app, ["certs", "audit-key", "--out", str(out), "--force"])
    assert forced.exit_code == 0
    assert "public key:" in forced.stdout


def test_client_context_modes(tmp_path: Path) -> None:
    assert client_context("disable", None, "db") is None
    for mode in ("prefer", "require"):
        context = client_context(mode, None, "db")
        assert context is not None
        assert context.verify_mode == ssl.CERT_NONE
        assert not context.check_hostname
    full = client_context("verify-full", None, "db.example")
    assert full is not None
    assert full.verify_mode == ssl.CERT_REQUIRED
    assert full.check_hostname
    with pytest.raises(ConfigError) as caught:
        client_context("verify-ca", None, "db", key_path="connections[0].upstream")
    assert caught.value.path == "connections[0].upstream.tls"


def test_unusable_files_are_config_errors(tmp_path: Path) -> None:
    assert _dev(tmp_path)[0] == 0
    cert, key = tmp_path / "gateway.pem", tmp_path / "gateway-key.pem"
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as caught:
        client_context("verify-full", junk, "db", key_path="connections[2].upstream")
    assert caught.value.path == "connections[2].upstream.ca_file"
    with pytest.raises(ConfigError) as caught:
        server_context(TLSConfig(cert=cert, key=junk))
    assert caught.value.path == "gateway.tls"
    with pytest.raises(ConfigError) as caught:
        server_context(TLSConfig(cert=cert, key=key), junk, client_ca_key="listeners[1].client_ca")
    assert caught.value.path == "listeners[1].client_ca"

    with_ca = server_context(TLSConfig(cert=cert, key=key, client_ca=cert))
    assert with_ca.verify_mode == ssl.CERT_OPTIONAL

    encrypted = tmp_path / "encrypted-key.pem"
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(ConfigError, match="encrypted private keys are not supported"):
        server_context(TLSConfig(cert=cert, key=encrypted))
