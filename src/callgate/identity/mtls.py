"""Client certificates (mutual TLS) as credentials: ``identity.mtls`` maps a verified certificate
to a principal.

The TLS handshake has already checked the chain against the listener's ``client_ca`` (a
certificate from another CA never gets here); this module only reads *who* the certificate names:
its SPIFFE ID (the one ``spiffe://`` URI SAN, as in the X.509-SVID specification) or its subject's
common name, and finds the first ``identity.mtls`` rule that matches. See docs/identity.md.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Final

from cryptography import x509
from cryptography.x509.oid import NameOID

from callgate.config.identity import MTLS_PLACEHOLDER, MTLSRuleConfig
from callgate.identity.base import CredentialRejected
from callgate.model import Principal

METHOD: Final = "mtls"
#: the longest SPIFFE ID accepted (the SPIFFE ID specification's limit for URI SANs)
MAX_SPIFFE_ID_LENGTH: Final = 2048
#: the longest subject a template may produce (as for OIDC subjects)
MAX_SUBJECT_LENGTH: Final = 1024
#: the longest certificate read at all; real client certificates are 1-3 KiB
MAX_CERTIFICATE_BYTES: Final = 64 * 1024
#: the longest CA name kept as the principal's issuer (for audit)
MAX_ISSUER_LENGTH: Final = 256

# SPIFFE ID (SPIFFE-ID specification §2): lowercase scheme and trust domain of [a-z0-9.-_], a path
# of non-empty segments of [A-Za-z0-9.-_] that are not "." or "..", no query, fragment, port or
# user info.
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class CertificateIdentity:
    """What a certificate says about its holder (nothing here is secret)."""

    spiffe_id: str | None
    common_name: str | None
    #: the CA's common name (or its whole distinguished name)
    issuer: str
    not_before: float
    not_after: float
    #: ``sha256:`` and the first 16 hex digits of the certificate's SHA-256 fingerprint
    fingerprint: str

    @property
    def trust_domain(self) -> str | None:
        if self.spiffe_id is None:
            return None
        return self.spiffe_id[len("spiffe://") :].split("/", 1)[0]

    @property
    def path(self) -> str | None:
        if self.spiffe_id is None:
            return None
        rest = self.spiffe_id[len("spiffe://") :]
        return rest.split("/", 1)[1] if "/" in rest else ""

    def describe(self) -> str:
        """For audit reasons: the SPIFFE ID, else the CN, else the fingerprint."""
        if self.spiffe_id is not None:
            return self.spiffe_id
        if self.common_name is not None:
            return f"CN={self.common_name}"
        return self.fingerprint


def valid_spiffe_id(uri: str) -> bool:
    if len(uri) > MAX_SPIFFE_ID_LENGTH or not uri.startswith("spiffe://"):
        return False
    rest = uri[len("spiffe://") :]
    trust_domain, _, path = rest.partition("/")
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        return False
    if not path:
        return "/" not in rest  # "spiffe://td" is valid; "spiffe://td/" is not
    return all(_SEGMENT.fullmatch(s) and s not in (".", "..") for s in path.split("/"))


def read_certificate(der: bytes) -> CertificateIdentity:
    """The identity in a DER certificate. Raises :class:`CredentialRejected` when it cannot be
    read, or names its holder ambiguously (several SPIFFE IDs, a malformed one, several CNs)."""
    if len(der) > MAX_CERTIFICATE_BYTES:
        raise CredentialRejected("client certificate too large")
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise CredentialRejected("malformed client certificate") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    except ValueError:  # a malformed extension
        raise CredentialRejected("malformed client certificate") from None
    spiffe = [u for u in uris if u.lower().startswith("spiffe:")]
    if len(spiffe) > 1:
        raise CredentialRejected("client certificate has several SPIFFE IDs")
    spiffe_id = spiffe[0] if spiffe else None
    if spiffe_id is not None and not valid_spiffe_id(spiffe_id):
        raise CredentialRejected("client certificate has a malformed SPIFFE ID")
    try:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        issuer_cns = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
        issuer = str(issuer_cns[0].value) if len(issuer_cns) == 1 else cert.issuer.rfc4514_string()
    except ValueError:
        raise CredentialRejected("malformed client certificate") from None
    if len(cns) > 1:
        raise CredentialRejected("client certificate has several common names")
    common_name = str(cns[0].value) if cns and cns[0].value else None
    return CertificateIdentity(
        spiffe_id=spiffe_id,
        common_name=common_name,
        issuer=issuer[:MAX_ISSUER_LENGTH],
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        fingerprint="sha256:" + hashlib.sha256(der).hexdigest()[:16],
    )


def _matches(rule: MTLSRuleConfig, identity: CertificateIdentity) -> bool:
    match = rule.match
    if match.spiffe_id is not None and (
        identity.spiffe_id is None or not fnmatchcase(identity.spiffe_id, match.spiffe_id)
    ):
        return False
    return match.subject_cn is None or (
        identity.common_name is not None and fnmatchcase(identity.common_name, match.subject_cn)
    )


def _render(template: str, identity: CertificateIdentity) -> str:
    values = {
        "spiffe_id": identity.spiffe_id,
        "trust_domain": identity.trust_domain,
        "path": identity.path,
        "cn": identity.common_name,
    }

    def value(found: re.Match[str]) -> str:
        # Config validation guarantees the rule's match provides every placeholder it uses.
        text = values.get(found.group(1))
        if text is None:
            raise CredentialRejected(f"identity.mtls subject has no value for {found.group(0)}")
        return text

    return MTLS_PLACEHOLDER.sub(value, template)


def principal_for(
    identity: CertificateIdentity, rules: Sequence[MTLSRuleConfig]
) -> Principal | None:
    """The principal of the first rule that matches ``identity``; ``None`` if none does."""
    for rule in rules:
        if not _matches(rule, identity):
            continue
        subject = _render(rule.subject_template, identity)
        if not subject.strip() or len(subject) > MAX_SUBJECT_LENGTH:
            raise CredentialRejected("client certificate gives an empty or too long subject")
        return Principal(
            subject=subject,
            groups=frozenset(rule.groups),
            method=METHOD,
            expires_at=identity.not_after,
            credential_id=identity.fingerprint,
            issuer=identity.issuer,
        )
    return None


def principal_from_certificate(der: bytes, rules: Sequence[MTLSRuleConfig]) -> Principal | None:
    """Map a verified client certificate (DER) to a principal through ``identity.mtls`` rules.

    Returns ``None`` when no rule matches; raises :class:`CredentialRejected` when the certificate
    cannot be read or names its holder ambiguously. Validity times are the caller's to check
    (the TLS handshake did; :meth:`IdentityService.authenticate_certificate` does again).
    """
    return principal_for(read_certificate(der), rules)
