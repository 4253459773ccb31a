"""Certificate path validation as a trust anchor does it: leaf, sent intermediates, anchor.

Pure: the instant is passed in. Returns a reason string instead of raising, so that the
caller decides the error shape (DESIGN §5).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ..identity import is_ca, issued_by
from .model import TrustAnchor

UNTRUSTED = "Untrusted signing certificate"
REVOKED = "Certificate is revoked"

# Intermediates a client may send before the anchor; real PKIs use one or two.
MAX_INTERMEDIATES = 5
# Roles Anywhere refuses certificates signed with these (it asks for SHA-256 or stronger).
_WEAK_HASHES = (hashes.MD5, hashes.SHA1)


def path_problem(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchor: TrustAnchor,
    now: datetime,
) -> str | None:
    """None when `leaf` chains to one of the anchor's certificates, else the refusal message."""
    if is_ca(leaf) or not _signs_digitally(leaf):
        return UNTRUSTED

    path = _build(leaf, list(intermediates), anchor.certificates, now, depth=0)
    if path is None:
        return UNTRUSTED

    if _any_revoked(path, anchor.crls):
        return REVOKED
    return None


def _build(
    cert: x509.Certificate,
    pool: list[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    now: datetime,
    depth: int,
) -> list[x509.Certificate] | None:
    """Depth-first search upwards; `depth` is how many CAs sit between `cert` and the leaf."""
    if not _usable(cert, now):
        return None

    for anchor_cert in anchors:
        if issued_by(cert, anchor_cert) and _may_issue(anchor_cert, depth, now):
            return [cert, anchor_cert]

    if depth >= MAX_INTERMEDIATES:
        return None
    for index, candidate in enumerate(pool):
        if not (issued_by(cert, candidate) and _may_issue(candidate, depth, now)):
            continue
        # Each sent certificate is used at most once, which also stops loops.
        rest = _build(candidate, pool[:index] + pool[index + 1 :], anchors, now, depth + 1)
        if rest is not None:
            return [cert, *rest]
    return None


def _usable(cert: x509.Certificate, now: datetime) -> bool:
    within = cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
    return within and not isinstance(cert.signature_hash_algorithm, _WEAK_HASHES)


def _may_issue(issuer: x509.Certificate, below: int, now: datetime) -> bool:
    """A CA, valid now, whose path length constraint allows `below` CAs under it."""
    constraints = _basic_constraints(issuer)
    if constraints is None or not constraints.ca:
        return False
    if constraints.path_length is not None and below > constraints.path_length:
        return False
    return issuer.not_valid_before_utc <= now <= issuer.not_valid_after_utc


def _any_revoked(
    path: list[x509.Certificate], crls: Sequence[x509.CertificateRevocationList]
) -> bool:
    for cert, issuer in zip(path, path[1:], strict=False):
        for crl in crls:
            if _revokes(crl, cert, issuer):
                return True
    return False


def _revokes(
    crl: x509.CertificateRevocationList, cert: x509.Certificate, issuer: x509.Certificate
) -> bool:
    # Only a list signed by the certificate's own issuer may revoke it.
    if crl.issuer != cert.issuer:
        return False
    try:
        trusted = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return trusted and crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


def _signs_digitally(leaf: x509.Certificate) -> bool:
    # Roles Anywhere asks end-entity certificates for the digitalSignature key usage.
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return usage.digital_signature


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None
