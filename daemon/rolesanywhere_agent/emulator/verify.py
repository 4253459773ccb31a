"""Verification of a CreateSession request, as strict as the real service (DESIGN §4, §10).

Pure: the request parts, the instant and the configuration come in; a Grant or an
EmulatorRefusal comes out.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ..identity import ECDSA_ALGORITHM, RSA_ALGORITHM
from ..signing import SERVICE, canonical_request, string_to_sign
from .authorization import (
    Authorization,
    lowered_headers,
    parse_amz_date,
    parse_authorization,
    scope_problem,
    skew_problem,
)
from .model import (
    MAX_DURATION,
    MIN_DURATION,
    EmulatorConfig,
    Profile,
    TrustAnchor,
    is_profile_arn,
    is_role_arn,
    is_trust_anchor_arn,
    parse_arn,
)
from .trust import path_problem

ACCESS_DENIED = "AccessDeniedException"
VALIDATION = "ValidationException"
NOT_FOUND = "ResourceNotFoundException"
DEFAULT_DURATION = 3600

# Headers whose absence from SignedHeaders the service refuses (DESIGN §4).
REQUIRED_SIGNED = ("host", "x-amz-date", "x-amz-x509")
CHAIN_HEADER = "x-amz-x509-chain"
_ARN_PARAMETERS = ("profileArn", "roleArn", "trustAnchorArn")
# The IAM pattern for a role session name.
_SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}")


class EmulatorRefusal(Exception):
    """An error answer in the service's shape: HTTP status, error type, message."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(f"{error_type} ({status}): {message}")
        self.status = status
        self.error_type = error_type
        self.message = message


@dataclass(frozen=True)
class Grant:
    """What a verified request is entitled to."""

    anchor: TrustAnchor
    profile: Profile
    role_arn: str
    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    duration_seconds: int
    role_session_name: str | None


@dataclass(frozen=True)
class SessionParameters:
    profile_arn: str
    role_arn: str
    trust_anchor_arn: str
    duration_seconds: int
    role_session_name: str | None

    @property
    def region(self) -> str:
        """The trust anchor's region, which the credential scope must name (DESIGN §4)."""
        arn = parse_arn(self.trust_anchor_arn)
        return arn.region if arn else ""


def verify_create_session(
    *,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
    config: EmulatorConfig,
) -> Grant:
    """Check the signature, the certificate path and the parameters; raise EmulatorRefusal."""
    lowered = lowered_headers(headers)
    auth = _authorization(lowered)
    leaf = _leaf(lowered)
    _check_algorithm(auth.algorithm, leaf)

    amz_date = _check_date(lowered, now)
    # The region is known only once the trust anchor ARN has been read, further down.
    _check_scope(auth, amz_date, region=None)
    _check_serial(auth, leaf)
    _check_signed_headers(auth, lowered)
    chain = _chain(lowered)
    _check_signature(auth, leaf, method, path, query, lowered, body, amz_date)

    params = parse_parameters(query, body)
    _check_scope(auth, amz_date, region=params.region)

    anchor, profile = _resources(params, config)
    _check_anchor(anchor, leaf, chain, now)
    _check_profile(profile, params.role_arn)
    return Grant(
        anchor=anchor,
        profile=profile,
        role_arn=params.role_arn,
        leaf=leaf,
        chain=chain,
        duration_seconds=min(params.duration_seconds, profile.duration_seconds),
        role_session_name=_session_name(params.role_session_name, profile),
    )


def parse_parameters(query: str, body: bytes) -> SessionParameters:
    """The ARNs from the JSON body or the query string (both are accepted), and the rest."""
    document = _json_body(body)
    query_values = dict(parse_qsl(query, keep_blank_values=True))
    arns = {name: _arn_parameter(name, document, query_values) for name in _ARN_PARAMETERS}

    _check_arn("profileArn", arns["profileArn"], is_profile_arn)
    _check_arn("roleArn", arns["roleArn"], is_role_arn)
    _check_arn("trustAnchorArn", arns["trustAnchorArn"], is_trust_anchor_arn)

    return SessionParameters(
        profile_arn=arns["profileArn"],
        role_arn=arns["roleArn"],
        trust_anchor_arn=arns["trustAnchorArn"],
        duration_seconds=_duration(document),
        role_session_name=_session_name_parameter(document),
    )


def _authorization(headers: Mapping[str, str]) -> Authorization:
    value = headers.get("authorization")
    if not value:
        raise _denied("Missing Authorization header")
    auth = parse_authorization(value)
    if auth is None:
        raise _denied("Malformed Authorization header")
    return auth


def _leaf(headers: Mapping[str, str]) -> x509.Certificate:
    value = headers.get("x-amz-x509")
    if not value:
        raise _denied("Missing X-Amz-X509 header")
    cert = _decode_certificate(value)
    if cert is None:
        raise _denied("Malformed X-Amz-X509 header")
    return cert


def _check_algorithm(algorithm: str, leaf: x509.Certificate) -> None:
    if algorithm not in (RSA_ALGORITHM, ECDSA_ALGORITHM):
        raise _denied(f"Unsupported signing algorithm {algorithm}")
    key = leaf.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        expected, kind = RSA_ALGORITHM, "RSA"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        expected, kind = ECDSA_ALGORITHM, "EC"
    else:
        raise _denied("Unsupported certificate key type")
    if algorithm != expected:
        raise _denied(f"Signing algorithm {algorithm} does not match the certificate's {kind} key")


def _check_date(headers: Mapping[str, str], now: datetime) -> str:
    text = headers.get("x-amz-date")
    if not text:
        raise _denied("Missing X-Amz-Date header")
    signed_at = parse_amz_date(text)
    if signed_at is None:
        raise _denied("X-Amz-Date must be in the form YYYYMMDD'T'HHMMSS'Z'")
    problem = skew_problem(signed_at, now)
    if problem:
        raise _denied(problem)
    return text


def _check_scope(auth: Authorization, amz_date: str, region: str | None) -> None:
    problem = scope_problem(auth, amz_date, region, SERVICE)
    if problem:
        raise _denied(problem)


def _check_serial(auth: Authorization, leaf: x509.Certificate) -> None:
    # The credential names the leaf by its serial number in decimal (DESIGN §4).
    if auth.identifier != str(leaf.serial_number):
        raise _denied("Credential serial number does not match the X-Amz-X509 certificate")


def _check_signed_headers(auth: Authorization, headers: Mapping[str, str]) -> None:
    required = list(REQUIRED_SIGNED)
    if CHAIN_HEADER in headers:
        required.append(CHAIN_HEADER)
    for name in required:
        if name not in auth.signed_headers:
            raise _denied(f"SignedHeaders must include {name}")


def _chain(headers: Mapping[str, str]) -> tuple[x509.Certificate, ...]:
    if CHAIN_HEADER not in headers:
        return ()
    value = headers[CHAIN_HEADER].strip()
    # A client with no intermediates must leave the header out, not send it empty.
    if not value:
        raise _denied("Empty X-Amz-X509-Chain header")
    chain = [_decode_certificate(part.strip()) for part in value.split(",")]
    if any(cert is None for cert in chain):
        raise _denied("Malformed X-Amz-X509-Chain header")
    return tuple(chain)  # type: ignore[arg-type]


def _check_signature(
    auth: Authorization,
    leaf: x509.Certificate,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    amz_date: str,
) -> None:
    request = canonical_request(method, path, query, headers, auth.signed_headers, body)
    to_sign = string_to_sign(auth.algorithm, amz_date, auth.scope, request).encode("utf-8")
    signature = bytes.fromhex(auth.signature) if len(auth.signature) % 2 == 0 else b""

    key = leaf.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, to_sign, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, to_sign, ec.ECDSA(hashes.SHA256()))  # type: ignore[union-attr]
    except (InvalidSignature, ValueError):
        raise _denied("Invalid signature") from None


def _resources(params: SessionParameters, config: EmulatorConfig) -> tuple[TrustAnchor, Profile]:
    anchor = config.trust_anchor(params.trust_anchor_arn)
    if anchor is None:
        raise EmulatorRefusal(404, NOT_FOUND, "Trust anchor not found")
    profile = config.profile(params.profile_arn)
    # A profile lives in one region: the endpoint of another region does not know it.
    if profile is None or profile.region != anchor.region:
        raise EmulatorRefusal(404, NOT_FOUND, "Profile not found")
    return anchor, profile


def _check_anchor(
    anchor: TrustAnchor, leaf: x509.Certificate, chain: tuple[x509.Certificate, ...], now: datetime
) -> None:
    if not anchor.enabled:
        raise _denied("Trust anchor is disabled")
    problem = path_problem(leaf, chain, anchor, now)
    if problem:
        raise _denied(problem)


def _check_profile(profile: Profile, role_arn: str) -> None:
    if not profile.enabled:
        raise _denied("Profile is disabled")
    if role_arn not in profile.role_arns:
        raise _denied(f"Unable to assume role for arn {role_arn}: not listed in the profile")


def _session_name(asked: str | None, profile: Profile) -> str | None:
    if asked is not None and not profile.accept_role_session_name:
        # The real service's words (aws/rolesanywhere-credential-helper#19).
        raise _denied("Not authorized to set roleSessionName.")
    return asked


def _json_body(body: bytes) -> Mapping[str, Any]:
    if not body.strip():
        return {}
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _invalid("Request body is not valid JSON") from None
    if not isinstance(document, dict):
        raise _invalid("Request body must be a JSON object")
    return document


def _arn_parameter(name: str, document: Mapping[str, Any], query: Mapping[str, str]) -> str:
    in_body, in_query = document.get(name), query.get(name)
    if in_body is not None and not isinstance(in_body, str):
        raise _invalid(_constraint(name, in_body, "Member must be a string"))
    if in_body is not None and in_query is not None and in_body != in_query:
        raise _invalid(f"{name} differs between the query string and the body")
    value = in_body if in_body is not None else in_query
    if value is None:
        raise _invalid(_constraint(name, None, "Member must not be null"))
    return value


def _check_arn(name: str, value: str, valid: Callable[[str], bool]) -> None:
    if not valid(value):
        raise _invalid(_constraint(name, value, "Member must be a valid ARN"))


def _duration(document: Mapping[str, Any]) -> int:
    value = document.get("durationSeconds", DEFAULT_DURATION)
    # JSON numbers only: true/false and strings are refused, as is a fractional value.
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value != int(value):
        raise _invalid(_constraint("durationSeconds", value, "Member must be an integer"))
    if value < MIN_DURATION:
        rule = f"Member must have value greater than or equal to {MIN_DURATION}"
        raise _invalid(_constraint("durationSeconds", value, rule))
    if value > MAX_DURATION:
        rule = f"Member must have value less than or equal to {MAX_DURATION}"
        raise _invalid(_constraint("durationSeconds", value, rule))
    return int(value)


def _session_name_parameter(document: Mapping[str, Any]) -> str | None:
    value = document.get("roleSessionName")
    if value is None:
        return None
    if not isinstance(value, str) or not _SESSION_NAME.fullmatch(value):
        rule = r"Member must satisfy regular expression pattern: [\w+=,.@-]{2,64}"
        raise _invalid(_constraint("roleSessionName", value, rule))
    return value


def _decode_certificate(text: str) -> x509.Certificate | None:
    try:
        return x509.load_der_x509_certificate(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error):
        return None


def _constraint(name: str, value: object, rule: str) -> str:
    shown = "null" if value is None else f"'{value}'"
    return (
        f"1 validation error detected: Value {shown} at '{name}' failed to satisfy "
        f"constraint: {rule}"
    )


def _denied(message: str) -> EmulatorRefusal:
    return EmulatorRefusal(403, ACCESS_DENIED, message)


def _invalid(message: str) -> EmulatorRefusal:
    return EmulatorRefusal(400, VALIDATION, message)
