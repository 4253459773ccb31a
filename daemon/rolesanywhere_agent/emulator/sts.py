"""STS GetCallerIdentity over the query protocol, verifying SigV4 (AWS4-HMAC-SHA256).

A real SDK signs with the credentials the emulator issued; a success proves the agent served
them intact (DESIGN §10). Pure: request parts, instant and store in; session or refusal out.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from ..signing import canonical_request, string_to_sign
from .authorization import (
    Authorization,
    lowered_headers,
    parse_amz_date,
    parse_authorization,
    scope_problem,
    skew_problem,
)
from .issued import CredentialStore, IssuedSession

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "sts"
VERSION = "2011-06-15"
NAMESPACE = f"https://sts.amazonaws.com/doc/{VERSION}/"

INVALID_TOKEN = "The security token included in the request is invalid."
EXPIRED_TOKEN = "The security token included in the request is expired"
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)


class StsRefusal(Exception):
    """An STS error answer: HTTP status, error code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code} ({status}): {message}")
        self.status = status
        self.code = code
        self.message = message


def verify_sts_request(
    *,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
    store: CredentialStore,
) -> IssuedSession:
    """The issued session that signed a GetCallerIdentity call; raise StsRefusal otherwise."""
    lowered = lowered_headers(headers)
    auth = _authorization(lowered)
    session = _session(auth, lowered, now, store)

    amz_date = lowered.get("x-amz-date", "")
    signed_at = parse_amz_date(amz_date)
    if signed_at is None:
        raise StsRefusal(400, "IncompleteSignature", "X-Amz-Date header is missing or malformed")
    # STS serves every region, so the scope's region is taken as given.
    problem = scope_problem(auth, amz_date, auth.region, SERVICE)
    if problem:
        raise StsRefusal(403, "SignatureDoesNotMatch", problem)

    expected = _signature(auth, session, method, path, query, lowered, body, amz_date)
    if not hmac.compare_digest(expected, auth.signature):
        raise StsRefusal(403, "SignatureDoesNotMatch", SIGNATURE_MISMATCH)
    problem = skew_problem(signed_at, now)
    if problem:
        raise StsRefusal(403, "SignatureDoesNotMatch", problem)

    _check_action(query, body)
    return session


def caller_identity_xml(session: IssuedSession, request_id: str) -> str:
    return (
        f'<GetCallerIdentityResponse xmlns="{NAMESPACE}">\n'
        "  <GetCallerIdentityResult>\n"
        f"    <Arn>{escape(session.assumed_role_arn)}</Arn>\n"
        f"    <UserId>{escape(session.user_id)}</UserId>\n"
        f"    <Account>{escape(session.account_id)}</Account>\n"
        "  </GetCallerIdentityResult>\n"
        "  <ResponseMetadata>\n"
        f"    <RequestId>{request_id}</RequestId>\n"
        "  </ResponseMetadata>\n"
        "</GetCallerIdentityResponse>\n"
    )


def error_xml(refusal: StsRefusal, request_id: str) -> str:
    return (
        f'<ErrorResponse xmlns="{NAMESPACE}">\n'
        "  <Error>\n"
        "    <Type>Sender</Type>\n"
        f"    <Code>{escape(refusal.code)}</Code>\n"
        f"    <Message>{escape(refusal.message)}</Message>\n"
        "  </Error>\n"
        f"  <RequestId>{request_id}</RequestId>\n"
        "</ErrorResponse>\n"
    )


def signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    key = _hmac(f"AWS4{secret}".encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return key


def _authorization(headers: Mapping[str, str]) -> Authorization:
    value = headers.get("authorization")
    if not value:
        message = "Request is missing Authentication Token"
        raise StsRefusal(403, "MissingAuthenticationToken", message)
    auth = parse_authorization(value)
    if auth is None or auth.algorithm != ALGORITHM:
        raise StsRefusal(400, "IncompleteSignature", "Authorization header is malformed")
    return auth


def _session(
    auth: Authorization, headers: Mapping[str, str], now: datetime, store: CredentialStore
) -> IssuedSession:
    session = store.find(auth.identifier)
    if session is None:
        raise StsRefusal(403, "InvalidClientTokenId", INVALID_TOKEN)

    token = headers.get("x-amz-security-token", "")
    if not hmac.compare_digest(token.encode(), session.session_token.encode()):
        raise StsRefusal(403, "InvalidClientTokenId", INVALID_TOKEN)

    # Checked before the signature and the skew, so that a late call hears "expired".
    if now >= session.expiration:
        raise StsRefusal(403, "ExpiredToken", EXPIRED_TOKEN)
    return session


def _signature(
    auth: Authorization,
    session: IssuedSession,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    amz_date: str,
) -> str:
    request = canonical_request(method, path, query, headers, auth.signed_headers, body)
    to_sign = string_to_sign(ALGORITHM, amz_date, auth.scope, request)
    key = signing_key(session.secret_access_key, auth.date, auth.region, auth.service)
    return hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def _check_action(query: str, body: bytes) -> None:
    params = dict(parse_qsl(query, keep_blank_values=True))
    params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    action = params.get("Action", "")
    if action != "GetCallerIdentity" or params.get("Version") != VERSION:
        message = f"Could not find operation {action} for version {params.get('Version', '')}"
        raise StsRefusal(400, "InvalidAction", message)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()
