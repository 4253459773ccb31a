"""SigV4 with an X.509 key (AWS4-X509), as pure functions: the instant is passed in.

The canonical-request helpers are shared with the emulator, which recomputes what a client
signed; the tests cross-check the result against an independent implementation.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from urllib.parse import quote, unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

SERVICE = "rolesanywhere"
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"


class Signer(Protocol):
    """A private key that signs; a file key, a PKCS#11 object or a TPM key fit behind it."""

    @property
    def algorithm(self) -> str:
        """`AWS4-X509-RSA-SHA256` or `AWS4-X509-ECDSA-SHA256`."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Signature over `data` with SHA-256: PKCS#1 v1.5, or DER `SEQUENCE{r, s}` for EC."""
        ...


@dataclass(frozen=True)
class SignedRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


def amz_date(moment: datetime) -> str:
    return moment.strftime(AMZ_DATE_FORMAT)


def certificate_header(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode("ascii")


def chain_header(chain: Sequence[x509.Certificate]) -> str:
    return ",".join(certificate_header(cert) for cert in chain)


def canonical_query(query: str) -> str:
    """Sorted `name=value` pairs, each side escaped as RFC 3986 asks."""
    pairs = []
    for item in query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        pairs.append((_escape(unquote(name)), _escape(unquote(value))))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def canonical_headers(headers: Mapping[str, str], signed: Iterable[str]) -> str:
    lowered = {name.lower(): value for name, value in headers.items()}
    lines = []
    for name in signed:
        value = " ".join(lowered.get(name, "").split())
        lines.append(f"{name}:{value}\n")
    return "".join(lines)


def canonical_request(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    signed_headers: Sequence[str],
    body: bytes,
) -> str:
    return "\n".join(
        [
            method.upper(),
            quote(path or "/", safe="/-_.~"),
            canonical_query(query),
            canonical_headers(headers, signed_headers),
            ";".join(signed_headers),
            hashlib.sha256(body).hexdigest(),
        ]
    )


def credential_scope(moment: datetime, region: str, service: str = SERVICE) -> str:
    return f"{moment.strftime('%Y%m%d')}/{region}/{service}/aws4_request"


def string_to_sign(algorithm: str, date: str, scope: str, request: str) -> str:
    digest = hashlib.sha256(request.encode("utf-8")).hexdigest()
    return "\n".join([algorithm, date, scope, digest])


def sign_request(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    certificate: x509.Certificate,
    chain: Sequence[x509.Certificate],
    signer: Signer,
    region: str,
    now: datetime,
) -> SignedRequest:
    """Add the X.509 and date headers to `headers`, sign, and return the complete request.

    Only content-type, host, the date and the X.509 headers are signed: anything a proxy may
    rewrite (Connection, User-Agent, X-Forwarded-For) stays out of the signature (case C12).
    """
    parts = urlsplit(url)
    date = amz_date(now)
    signed = {name.lower(): value for name, value in headers.items()}
    signed["host"] = parts.netloc
    signed["x-amz-date"] = date
    signed["x-amz-x509"] = certificate_header(certificate)
    if chain:
        # No chain means no header at all: an empty one is refused by the service (case C02).
        signed["x-amz-x509-chain"] = chain_header(chain)

    names = sorted(n for n in signed if n in _SIGNABLE)
    scope = credential_scope(now, region)
    request = canonical_request(method, parts.path, parts.query, signed, names, body)
    to_sign = string_to_sign(signer.algorithm, date, scope, request)
    signature = signer.sign(to_sign.encode("utf-8")).hex()

    signed["authorization"] = (
        f"{signer.algorithm} Credential={certificate.serial_number}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return SignedRequest(method=method, url=url, headers=signed, body=body)


_SIGNABLE = frozenset({"content-type", "host", "x-amz-date", "x-amz-x509", "x-amz-x509-chain"})


def _escape(text: str) -> str:
    return quote(text, safe="-_.~")
