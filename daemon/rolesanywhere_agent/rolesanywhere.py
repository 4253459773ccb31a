"""The CreateSession client: one signed POST, one parsed answer or one typed error."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from .credentials import Credentials, parse_expiration
from .errors import InvalidResponse, TransportError, UpstreamError, service_error
from .identity import Identity
from .signing import sign_request

DEFAULT_TIMEOUT_SECONDS = 10.0
# The `user:password@` of any URL: a proxy URL with credentials (from a profile's `proxy` or
# HTTPS_PROXY) travels inside aiohttp's exception texts, e.g. "407, ..., url='http://u:p@h'".
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s'\"<>@]*@")


@dataclass(frozen=True)
class SessionRequest:
    """What one profile asks for; the same every refresh."""

    trust_anchor_arn: str
    profile_arn: str
    role_arn: str
    region: str
    endpoint: str
    duration_seconds: int = 3600
    role_session_name: str | None = None

    def body(self) -> bytes:
        document: dict[str, Any] = {
            "durationSeconds": self.duration_seconds,
            "profileArn": self.profile_arn,
            "roleArn": self.role_arn,
            "trustAnchorArn": self.trust_anchor_arn,
        }
        if self.role_session_name:
            document["roleSessionName"] = self.role_session_name
        return json.dumps(document, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Grant:
    """A session the service granted, and the service's own idea of the time."""

    credentials: Credentials
    server_date: datetime | None


def region_of(arn: str) -> str:
    parts = arn.split(":")
    return parts[3] if len(parts) > 3 else ""


def endpoint_for(region: str, fips: bool = False) -> str:
    service = "rolesanywhere-fips" if fips else "rolesanywhere"
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://{service}.{region}.{suffix}"


class RolesAnywhereClient:
    """Signs and sends CreateSession over a caller-owned aiohttp session."""

    def __init__(
        self, http: aiohttp.ClientSession, timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        self._http = http
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def create_session(
        self, identity: Identity, request: SessionRequest, now: datetime
    ) -> Grant:
        signed = sign_request(
            method="POST",
            url=request.endpoint.rstrip("/") + "/sessions",
            headers={"Content-Type": "application/json"},
            body=request.body(),
            certificate=identity.certificate,
            chain=identity.chain,
            signer=identity.signer,
            region=request.region,
            now=now,
        )
        status, headers, text = await self._send(signed.url, signed.headers, signed.body)
        server_date = _server_date(headers)
        try:
            if status != 201:
                raise service_error(status, *_error_of(status, headers, text))
            credentials = parse_grant(text, now, request.role_arn)
            return Grant(credentials=credentials, server_date=server_date)
        except UpstreamError as exc:
            # The service's clock travels with its refusals too: a skewed local clock shows
            # up as "Signature expired", and the offset is what tells the operator why.
            exc.server_date = server_date
            raise

    async def _send(
        self, url: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], str]:
        try:
            async with self._http.post(
                url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as response:
                text = await response.text(errors="replace")
                return response.status, dict(response.headers), text
        except TimeoutError:
            limit = self._timeout.total
            raise TransportError(f"no answer from {redact(url)} within {limit:g} s") from None
        except aiohttp.ClientError as exc:
            raise TransportError(f"cannot reach {redact(url)}: {_describe(exc)}") from None
        except asyncio.CancelledError:
            raise


def parse_grant(text: str, now: datetime, role_arn: str) -> Credentials:
    """The first credential set of a 201 answer, refused when it cannot be served.

    Any shape but the documented one is refused with InvalidResponse, never a raw
    exception: the answer comes over the network, through proxies we do not control.
    """
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        raise InvalidResponse("CreateSession answer is not valid JSON") from None
    if not isinstance(document, dict):
        raise InvalidResponse("CreateSession answer is not a JSON object")
    credential_set = _field(document, "credentialSet", list, "credentialSet")
    if not credential_set:
        raise InvalidResponse("CreateSession answer has an empty credentialSet")
    entry = credential_set[0]
    if not isinstance(entry, dict):
        raise InvalidResponse(_wrong_type("credentialSet[0]", entry, dict))
    creds = _field(entry, "credentials", dict, "credentialSet[0].credentials")
    key_id, secret, token = (
        _field(creds, name, str, f"credentials.{name}")
        for name in ("accessKeyId", "secretAccessKey", "sessionToken")
    )
    if not all((key_id, secret, token)):
        raise InvalidResponse("CreateSession answer has an empty credential field")
    expiration_text = _field(creds, "expiration", str, "credentials.expiration")
    try:
        expiration = parse_expiration(expiration_text)
    except (ValueError, OverflowError):
        # OverflowError: a valid time at the edge of datetime, e.g. 9999-12-31T23:59-01:00.
        raise InvalidResponse(
            f"CreateSession answer has an unusable expiration {expiration_text[:80]!r}"
        ) from None
    if expiration <= now:
        raise InvalidResponse(f"CreateSession granted a session already expired at {expiration}")

    # The service answers for the role asked for; another role is a wrong or tampered answer.
    answered_role = entry.get("roleArn", role_arn)
    if answered_role != role_arn:
        raise InvalidResponse(
            f"CreateSession answered for role {str(answered_role)[:200]!r}, not {role_arn}"
        )
    role = entry.get("assumedRoleUser") or {}
    assumed_arn = role.get("arn", "") if isinstance(role, dict) else None
    if not isinstance(assumed_arn, str):
        raise InvalidResponse("CreateSession answer has a malformed assumedRoleUser")
    return Credentials(
        access_key_id=key_id,
        secret_access_key=secret,
        session_token=token,
        expiration=expiration,
        role_arn=role_arn,
        assumed_role_arn=assumed_arn,
    )


def redact(text: str) -> str:
    """`text` with the userinfo (user:password@) removed from every URL in it."""
    return _USERINFO.sub(r"\g<scheme>", text)


def _field(document: dict[str, Any], name: str, kind: type, place: str) -> Any:
    if name not in document:
        raise InvalidResponse(f"CreateSession answer lacks field {name!r}")
    if not isinstance(document[name], kind):
        raise InvalidResponse(_wrong_type(place, document[name], kind))
    return document[name]


def _wrong_type(place: str, value: object, kind: type) -> str:
    return (
        f"CreateSession answer has {place} of type {type(value).__name__}, "
        f"expected {kind.__name__}"
    )


def _error_of(status: int, headers: dict[str, str], text: str) -> tuple[str, str]:
    error_type = headers.get("X-Amzn-ErrorType", "").split(":")[0]
    message = ""
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        document = None
    if isinstance(document, dict):
        error_type = error_type or str(document.get("__type") or document.get("code") or "")
        message = str(document.get("message") or document.get("Message") or "")
    if not message:
        message = " ".join(text.split())[:200] or "no message"
    # A proxy's error page may echo the URL it was asked for, credentials included.
    message = redact(message)
    return error_type.rsplit("#", 1)[-1] or f"HTTP{status}", message


def _server_date(headers: dict[str, str]) -> datetime | None:
    try:
        return parsedate_to_datetime(headers["Date"])
    except (KeyError, TypeError, ValueError):
        return None


def _describe(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return redact(text.splitlines()[0])[:200]
