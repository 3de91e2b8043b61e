"""``callgate certs``: a self-signed TLS pair for local use, and the audit signing key."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from callgate.cli.common import JsonOption, fail, print_json

app = typer.Typer(
    help="TLS certificates and signing keys for local use.",
    no_args_is_help=True,
)

#: names every local pair is valid for, whatever --host adds
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
CERT_FILE = "gateway.pem"
KEY_FILE = "gateway-key.pem"
#: the certificate may start being used a little before "now" on a machine whose clock lags
_BACKDATE = datetime.timedelta(minutes=5)
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _san_entries(hosts: list[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in (*DEFAULT_HOSTS, *hosts):
        name = host.strip()
        if not name or name.lower() in seen:
            continue
        seen.add(name.lower())
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(_dns_name(name)))
    return entries


def _dns_name(name: str) -> str:
    """``name`` in ASCII (IDNA), checked label by label; a ``*`` first label is allowed."""
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_name = ""
    labels = ascii_name.rstrip(".").split(".")
    valid = 0 < len(ascii_name) <= 253 and all(
        _DNS_LABEL.fullmatch(label) or (index == 0 and label == "*" and len(labels) > 1)
        for index, label in enumerate(labels)
    )
    if not valid:
        raise ValueError(f"{name!r} is neither an IP address nor a DNS name")
    return ascii_name


def _write_private(path: Path, data: bytes, *, force: bool) -> None:
    """Write ``data`` readable by the owner only (0600), from the moment the file exists."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if force else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file (--force) keeps its old mode otherwise
        os.write(fd, data)
    finally:
        os.close(fd)


def _refuse_existing(paths: list[Path], force: bool) -> None:
    if force:
        return
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        verb = "exists" if len(existing) == 1 else "exist"
        fail(f"{' and '.join(existing)} already {verb}; pass --force to overwrite")


def make_dev_pair(hosts: list[str], days: int) -> tuple[bytes, bytes]:
    """A self-signed ECDSA P-256 certificate and its key, both PEM: ``(cert, key)``.

    Raises ``ValueError`` for a host that is neither an IP address nor a DNS name.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    sans = _san_entries(hosts)
    common_name = next((h for h in hosts if h.strip()), "localhost").strip()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "callgate development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


@app.command("dev")
def dev(
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Directory to write gateway.pem and gateway-key.pem.")
    ] = Path("certs"),
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host", help="Another DNS name or IP address the certificate is for (repeatable)."
        ),
    ] = None,
    days: Annotated[
        int, typer.Option("--days", min=1, help="Days the certificate is valid.")
    ] = 365,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
    json_: JsonOption = False,
) -> None:
    """Write a self-signed TLS pair for local use (valid for localhost, 127.0.0.1, ::1)."""
    cert_path = out_dir / CERT_FILE
    key_path = out_dir / KEY_FILE
    _refuse_existing([cert_path, key_path], force)
    try:
        cert_pem, key_pem = make_dev_pair(list(host or []), days)
    except ValueError as exc:
        fail(f"--host {exc}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_private(key_path, key_pem, force=force)
        cert_path.write_bytes(cert_pem)
    except FileExistsError as exc:
        fail(f"{exc.filename} already exists; pass --force to overwrite")
    except OSError as exc:
        fail(f"cannot write to {out_dir}: {exc.strerror}")
    if json_:
        print_json({"cert": str(cert_path), "key": str(key_path)})
        return
    typer.echo(f"certificate: {cert_path}")
    typer.echo(f"private key: {key_path}")
    cert_abs, key_abs = cert_path.resolve(), key_path.resolve()
    typer.echo(f"use it with:  gateway: {{tls: {{cert: {cert_abs}, key: {key_abs}}}}}")


@app.command("audit-key")
def audit_key(
    out: Annotated[
        Path, typer.Option("--out", help="File to write the Ed25519 private key (PEM) to.")
    ] = Path("audit-ed25519.pem"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    json_: JsonOption = False,
) -> None:
    """Write an Ed25519 key for signing audit checkpoints; print its public key."""
    _refuse_existing([out], force)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    raw_public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    public_b64 = base64.b64encode(raw_public).decode("ascii")
    try:
        if out.parent != Path():
            out.parent.mkdir(parents=True, exist_ok=True)
        _write_private(out, pem, force=force)
    except FileExistsError:
        fail(f"{out} already exists; pass --force to overwrite")
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}")
    if json_:
        print_json({"key": str(out), "public_key": public_b64})
        return
    typer.echo(f"private key: {out}")
    typer.echo(f"public key:  {public_b64}")
    typer.echo(f"use it with:  gateway: {{audit: {{signing_key: file:{out.resolve()}}}}}")
