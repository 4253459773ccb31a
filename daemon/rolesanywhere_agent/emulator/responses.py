"""The bodies and headers of the emulator's answers, in the real services' shapes (DESIGN §5)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes

from .issued import IssuedSession
from .verify import Grant

# The real service sends the error type in this header as well as in the body's `__type`.
ERROR_TYPE_HEADER = "X-Amzn-ErrorType"
REQUEST_ID_HEADER = "x-amzn-RequestId"


def request_id() -> str:
    return str(uuid.uuid4())


def default_session_name(grant: Grant) -> str:
    # Without roleSessionName the service names the session after the leaf's serial in hex
    # (aws/rolesanywhere-credential-helper#19).
    return grant.role_session_name or format(grant.leaf.serial_number, "x")


def session_document(
    grant: Grant, session: IssuedSession | None, *, expiration: str
) -> dict[str, Any]:
    """The 201 body; `session` None gives the empty credential set a fault may ask for."""
    credential_set = []
    if session is not None:
        credential_set.append(
            {
                "assumedRoleUser": {
                    "arn": session.assumed_role_arn,
                    "assumedRoleId": session.user_id,
                },
                "credentials": {
                    "accessKeyId": session.access_key_id,
                    "secretAccessKey": session.secret_access_key,
                    "sessionToken": session.session_token,
                    "expiration": expiration,
                },
                "packedPolicySize": 0,
                "roleArn": grant.role_arn,
                "sourceIdentity": grant.leaf.subject.rfc4514_string(),
            }
        )
    return {"credentialSet": credential_set, "subjectArn": subject_arn(grant)}


def subject_arn(grant: Grant) -> str:
    """One stable subject per leaf certificate, as the service keeps one per certificate."""
    fingerprint = grant.leaf.fingerprint(hashes.SHA256()).hex()
    subject_id = uuid.uuid5(uuid.NAMESPACE_OID, fingerprint)
    prefix = grant.anchor.arn.split(":trust-anchor/", 1)[0]
    return f"{prefix}:subject/{subject_id}"


def json_answer(status: int, document: Any) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(document).encode("utf-8"),
        content_type="application/json",
        headers={REQUEST_ID_HEADER: request_id()},
    )


def error_answer(status: int, error_type: str, message: str) -> web.Response:
    response = json_answer(status, {"__type": error_type, "message": message})
    response.headers[ERROR_TYPE_HEADER] = error_type
    return response


def raw_answer(status: int, body: str) -> web.Response:
    return web.Response(
        status=status,
        body=body.encode("utf-8"),
        content_type="application/json",
        headers={REQUEST_ID_HEADER: request_id()},
    )


def xml_answer(status: int, body: str, request: str) -> web.Response:
    return web.Response(
        status=status,
        body=body.encode("utf-8"),
        content_type="text/xml",
        headers={REQUEST_ID_HEADER: request},
    )
