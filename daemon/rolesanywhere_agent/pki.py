"""A throwaway PKI for the demo and the tests: CAs and leaves written as openssl writes them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEY_TYPES = ("rsa2048", "rsa3072", "rsa4096", "p256", "p384", "p521")
_CURVES = {"p256": ec.SECP256R1, "p384": ec.SECP384R1, "p521": ec.SECP521R1}


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def new_key(key_type: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if key_type.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
    return ec.generate_private_key(_CURVES[key_type]())


def issue(
    name: str,
    *,
    issuer: Issued | None = None,
    ca: bool = False,
    key_type: str = "p256",
    not_before: datetime | None = None,
    days: float = 30,
    serial: int | None = None,
    hash_algorithm: hashes.HashAlgorithm | None = None,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None,
) -> Issued:
    """A certificate named `CN=name`, self-signed when `issuer` is None."""
    key = key or new_key(key_type)
    start = not_before or datetime.now(UTC) - timedelta(minutes=5)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if issuer:
        ski = x509.SubjectKeyIdentifier.from_public_key(issuer.key.public_key())
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        builder = builder.add_extension(aki, critical=False)
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    else:
        usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    builder = builder.add_extension(usage, critical=True)
    cert = builder.sign(signer, hash_algorithm or hashes.SHA256())
    return Issued(certificate=cert, key=key)


def write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)
    return path


def write_identity(folder: Path, leaf: Issued, chain: list[Issued]) -> dict[str, Path]:
    """cert.pem, key.pem (0600) and, when there is a chain, chain.pem in `folder`."""
    files = {
        "certificate": write(folder / "cert.pem", leaf.cert_pem),
        "private_key": write(folder / "key.pem", leaf.key_pem, 0o600),
    }
    if chain:
        files["intermediates"] = write(folder / "chain.pem", b"".join(c.cert_pem for c in chain))
    return files
