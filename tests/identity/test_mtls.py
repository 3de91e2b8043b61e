"""Client certificates: reading who a certificate names, mapping it through ``identity.mtls``,
refusals recorded like any credential's, and the TLS handshake refusing other CAs' certificates."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from callgate.config import parse_config
from callgate.config.gateway import TLSConfig
from callgate.config.identity import IdentityConfig, MTLSRuleConfig
from callgate.errors import AuthenticationFailed, ConfigError, TooManyFailures
from callgate.identity import CredentialRejected, FailureThrottle, IdentityService
from callgate.identity.mtls import principal_from_certificate, read_certificate, valid_spiffe_id
from callgate.tls import server_context
from tests.support.tls import CertificateAuthority, issue_server_cert, make_ca, write_pem_pair

# --- certificates ---------------------------------------------------------------------------------


def client_cert(
    ca: CertificateAuthority,
    *,
    cn: str | None = "workload",
    uris: Sequence[str] = (),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    extra_cn: str | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn is not None else []
    if extra_cn is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, extra_cn))
    attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme"))
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    return builder.sign(ca.key, hashes.SHA256()), key


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def rules(*entries: dict[str, Any]) -> tuple[MTLSRuleConfig, ...]:
    return IdentityConfig.model_validate({"mtls": list(entries)}).mtls


PROD = "spiffe://acme.example/ns/prod/sa/reporter"

RULES = rules(
    {"match": {"spiffe_id": "spiffe://acme.example/ns/prod/sa/*"}, "groups": ["prod", "reports"]},
    {
        "match": {"spiffe_id": "spiffe://acme.example/ns/*"},
        "subject": "{trust_domain}:{path}",
        "groups": ["workloads"],
    },
    {"match": {"subject_cn": "*.batch.acme.internal"}, "subject": "batch/{cn}", "groups": ["b"]},
    {"match": {"subject_cn": "ops-console"}, "subject": "ops", "groups": ["ops"]},
)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return make_ca("acme workload CA")


# --- mapping --------------------------------------------------------------------------------------


def test_spiffe_id_maps_to_its_principal(ca: CertificateAuthority) -> None:
    cert, _ = client_cert(ca, cn="ignored", uris=[PROD])
    principal = principal_from_certificate(der(cert), RULES)
    assert principal is not None
    assert principal.subject == PROD  # the default subject of a spiffe_id rule
    assert principal.groups == frozenset({"prod", "reports"})
    assert principal.method == "mtls"
    assert principal.issuer == "acme workload CA"
    assert principal.expires_at == cert.not_valid_after_utc.timestamp()
    assert principal.credential_id is not None
    assert principal.credential_id.startswith("sha256:")


def test_first_matching_rule_wins_and_templates(ca: CertificateAuthority) -> None:
    cert, _ = client_cert(ca, uris=["spiffe://acme.example/ns/staging/sa/reporter"])
    principal = principal_from_certificate(der(cert), RULES)
    assert principal is not None
    assert principal.subject == "acme.example:ns/staging/sa/reporter"
    assert principal.groups == frozenset({"workloads"})

    cert, _ = client_cert(ca, cn="nightly.batch.acme.internal")
    principal = principal_from_certificate(der(cert), RULES)
    assert principal is not None
    assert principal.subject == "batch/nightly.batch.acme.internal"
    assert principal.groups == frozenset({"b"})

    cert, _ = client_cert(ca, cn="ops-console")
    principal = principal_from_certificate(der(cert), RULES)
    assert principal is not None and principal.subject == "ops"


def test_no_matching_rule(ca: CertificateAuthority) -> None:
    for uris, cn in (
        (["spiffe://other.example/ns/prod/sa/reporter"], "x"),
        ([], "nightly.batch.acme.internal.evil"),
        ([], None),
        (["https://acme.example/not-spiffe"], "OPS-CONSOLE"),  # globs are case-sensitive
    ):
        cert, _ = client_cert(ca, cn=cn, uris=uris)
        assert principal_from_certificate(der(cert), RULES) is None, (uris, cn)
    # a spiffe_id rule never matches on the CN, nor the reverse
    cert, _ = client_cert(ca, cn=PROD)
    assert principal_from_certificate(der(cert), RULES) is None
    cert, _ = client_cert(ca, cn=None, uris=[PROD])
    assert principal_from_certificate(der(cert), rules({"match": {"subject_cn": "*"}})) is None


def test_both_keys_must_match(ca: CertificateAuthority) -> None:
    both = rules({"match": {"spiffe_id": "spiffe://acme.example/*", "subject_cn": "reporter"}})
    cert, _ = client_cert(ca, cn="reporter", uris=[PROD])
    assert principal_from_certificate(der(cert), both) is not None
    cert, _ = client_cert(ca, cn="someone-else", uris=[PROD])
    assert principal_from_certificate(der(cert), both) is None


def test_ambiguous_or_malformed_certificates_are_refused(ca: CertificateAuthority) -> None:
    cases = {
        "client certificate has several SPIFFE IDs": client_cert(
            ca, uris=[PROD, "spiffe://acme.example/ns/prod/sa/admin"]
        ),
        "client certificate has a malformed SPIFFE ID": client_cert(
            ca, uris=["spiffe://ACME/ns/prod/../admin"]
        ),
        "client certificate has several common names": client_cert(
            ca, cn="ops-console", extra_cn="nightly.batch.acme.internal"
        ),
    }
    for reason, (cert, _) in cases.items():
        with pytest.raises(CredentialRejected) as caught:
            principal_from_certificate(der(cert), RULES)
        assert caught.value.reason == reason
    for junk in (b"", b"\x30\x03\x02\x01\x01", b"not a certificate"):
        with pytest.raises(CredentialRejected, match="malformed client certificate"):
            principal_from_certificate(junk, RULES)


def test_spiffe_id_syntax() -> None:
    good = ["spiffe://acme.example/ns/prod/sa/x", "spiffe://td", "spiffe://a-b_c.d/A.b-c_1"]
    bad = [
        "spiffe://",
        "spiffe://td/",
        "spiffe://TD/x",
        "spiffe://td//x",
        "spiffe://td/./x",
        "spiffe://td/x/..",
        "spiffe://td:8443/x",
        "spiffe://user@td/x",
        "spiffe://td/x?q=1",
        "spiffe://td/x#f",
        "SPIFFE://td/x",
        "spiffe://td/" + "x" * 2048,
    ]
    assert all(valid_spiffe_id(u) for u in good)
    assert not any(valid_spiffe_id(u) for u in bad), [u for u in bad if valid_spiffe_id(u)]


def test_certificate_identity(ca: CertificateAuthority) -> None:
    cert, _ = client_cert(ca, cn="w", uris=[PROD, "https://acme.example/extra"])
    identity = read_certificate(der(cert))
    assert identity.spiffe_id == PROD and identity.common_name == "w"
    assert identity.trust_domain == "acme.example" and identity.path == "ns/prod/sa/reporter"
    assert identity.describe() == PROD


# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "path", "message"),
    [
        ({"match": {}}, "identity.mtls[0].match", "expected spiffe_id or subject_cn"),
        ({"match": {"spiffe_id": "acme/*"}}, "identity.mtls[0].match.spiffe_id", "spiffe://"),
        ({"match": {"subject_cn": "x"}, "subject": "{spiffe_id}"}, "identity.mtls[0].subject", ""),
        ({"match": {"subject_cn": "x"}, "subject": "{nope}"}, "identity.mtls[0].subject", "{cn}"),
        ({"match": {"subject_cn": "x"}, "groups": "g"}, "identity.mtls[0].groups", ""),
        ({"match": {"subject_cn": "x"}, "extra": 1}, "identity.mtls[0].extra", ""),
        ({"match": {"subject_cn": ""}}, "identity.mtls[0].match.subject_cn", "non-empty"),
    ],
)
def test_config_errors_name_the_key_path(
    entry: dict[str, Any], path: str, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"identity": {"mtls": [{"groups": ["g"], **entry}]}}, tmp_path)
    assert caught.value.path == path, caught.value.message
    assert message in caught.value.message


# --- the identity service -------------------------------------------------------------------------


class _Audit:
    def __init__(self) -> None:
        self.failures: list[dict[str, str | None]] = []

    def auth_failure(self, *, protocol: str, source: str, reason: str, issuer: str | None) -> None:
        self.failures.append({"source": source, "reason": reason, "issuer": issuer})

    async def open_session(self, info: object) -> object:  # pragma: no cover - unused
        raise NotImplementedError


class _Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC).timestamp()

    def __call__(self) -> float:
        return self.now


async def _no_sleep(seconds: float) -> None:
    return None


def _service(audit: _Audit, clock: _Clock) -> IdentityService:
    throttle = FailureThrottle(slow_after=5, lockout_after=5, clock=clock)
    return IdentityService(
        [],
        throttle=throttle,
        audit=audit,  # type: ignore[arg-type]
        mtls=RULES,
        clock=clock,
        sleep=_no_sleep,
    )


def test_authenticate_certificate(ca: CertificateAuthority) -> None:
    audit, clock = _Audit(), _Clock()
    service = _service(audit, clock)
    good, _ = client_cert(ca, uris=[PROD])
    unmapped, _ = client_cert(ca, uris=["spiffe://other.example/x"])

    async def main() -> None:
        principal = await service.authenticate_certificate(
            der(good), source="10.0.0.1", protocol="postgres"
        )
        assert principal.subject == PROD and principal.method == "mtls"
        assert await service.still_valid(principal) is None

        with pytest.raises(AuthenticationFailed) as caught:
            await service.authenticate_certificate(
                der(unmapped), source="10.0.0.2", protocol="postgres"
            )
        assert caught.value.message == "invalid credential"  # the caller is not told why
        assert audit.failures[-1] == {
            "source": "10.0.0.2",
            "reason": "client certificate spiffe://other.example/x matches no identity.mtls rule",
            "issuer": "acme workload CA",
        }

        with pytest.raises(AuthenticationFailed):
            await service.authenticate_certificate(b"junk", source="10.0.0.2", protocol="postgres")
        assert audit.failures[-1]["reason"] == "malformed client certificate"

        # the certificate's own validity, against the service's clock
        clock.now = good.not_valid_after_utc.timestamp() + 1
        assert await service.still_valid(principal) == "credential expired"
        with pytest.raises(AuthenticationFailed):
            await service.authenticate_certificate(der(good), source="10.0.0.3", protocol="pg")
        assert audit.failures[-1]["reason"] == "client certificate expired"
        clock.now = good.not_valid_before_utc.timestamp() - 1
        with pytest.raises(AuthenticationFailed):
            await service.authenticate_certificate(der(good), source="10.0.0.3", protocol="pg")
        assert audit.failures[-1]["reason"] == "client certificate not yet valid"

        # failures count towards the source's lockout like any other credential's
        for _ in range(3):
            with pytest.raises(AuthenticationFailed):
                await service.authenticate_certificate(
                    der(unmapped), source="10.0.0.2", protocol="postgres"
                )
        with pytest.raises(TooManyFailures):
            await service.authenticate_certificate(der(good), source="10.0.0.2", protocol="pg")

    asyncio.run(main())


# --- the TLS handshake ----------------------------------------------------------------------------


def _handshake(
    server: ssl.SSLContext, client: ssl.SSLContext
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run a TLS handshake in memory; raises the server's or the client's ssl.SSLError."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    done = {"s": False, "c": False}
    for _ in range(20):
        for name, side in (("c", cli), ("s", srv)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server reports a bad client certificate after its own handshake
            # finished, on the first read.
            cli.write(b"ping")
            s_in.write(c_out.read())
            assert srv.read(4) == b"ping"
            return srv, cli
    raise AssertionError("the handshake did not finish")


def test_tls_handshake_verifies_client_certificates(tmp_path: Path) -> None:
    gateway_ca, trusted_ca, other_ca = make_ca("gateway CA"), make_ca("trusted"), make_ca("other")
    server_cert, server_key = issue_server_cert(gateway_ca)
    pair = write_pem_pair(server_cert, server_key, tmp_path / "gw.pem", tmp_path / "gw-key.pem")
    (tmp_path / "client-ca.pem").write_bytes(trusted_ca.cert_pem())
    server = server_context(TLSConfig(cert=pair.cert, key=pair.key), tmp_path / "client-ca.pem")

    def client(ca: CertificateAuthority | None) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=gateway_ca.cert_pem().decode())
        if ca is not None:
            cert, key = client_cert(ca, uris=[PROD])
            name = ca.cert.subject.rfc4514_string().replace("=", "_")
            paths = write_pem_pair(cert, key, tmp_path / f"{name}.pem", tmp_path / f"{name}.key")
            context.load_cert_chain(paths.cert, paths.key)
        return context

    # a certificate from the client CA: the handshake succeeds and gives the DER to map
    srv, _ = _handshake(server, client(trusted_ca))
    peer = srv.getpeercert(binary_form=True)
    assert peer is not None
    principal = principal_from_certificate(peer, RULES)
    assert principal is not None and principal.subject == PROD

    # no certificate: still a TLS session (the caller may use a token instead)
    srv, _ = _handshake(server, client(None))
    assert srv.getpeercert(binary_form=True) is None

    # a certificate from another CA never gets past the handshake
    with pytest.raises(ssl.SSLError) as caught:
        _handshake(server, client(other_ca))
    assert "certificate" in str(caught.value).lower()
