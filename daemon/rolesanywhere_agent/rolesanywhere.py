"""The CreateSession client: one signed POST, one parsed answer or one typed error."""

from __future__ import annotations

import asyncio
import json
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
            return Grant(credentials=parse_grant(text, now), server_date=server_date)
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
            raise TransportError(f"no answer from {url} within {limit:g} s") from None
        except aiohttp.ClientError as exc:
            raise TransportError(f"cannot reach {url}: {_describe(exc)}") from None
        except asyncio.CancelledError:
            raise


def parse_grant(text: str, now: datetime) -> Credentials:
    """The first credential set of a 201 answer, refused when it cannot be served."""
    try:
        document = json.loads(text)
        entry = document["credentialSet"][0]
        creds = entry["credentials"]
        key_id, secret = creds["accessKeyId"], creds["secretAccessKey"]
        token, expiration_text = creds["sessionToken"], creds["expiration"]
    except json.JSONDecodeError:
        raise InvalidResponse("CreateSession answer is not valid JSON") from None
    except IndexError:
        raise InvalidResponse("CreateSession answer has an empty credentialSet") from None
    except (KeyError, TypeError) as exc:
        raise InvalidResponse(f"CreateSession answer lacks field {exc}") from None

    if not all(isinstance(v, str) and v for v in (key_id, secret, token)):
        raise InvalidResponse("CreateSession answer has an empty credential field")
    try:
        expiration = parse_expiration(expiration_text)
    except (ValueError, TypeError):
        raise InvalidResponse(
            f"CreateSession answer has an unusable expiration {expiration_text!r}"
        ) from None
    if expiration <= now:
        raise InvalidResponse(f"CreateSession granted a session already expired at {expiration}")

    role = entry.get("assumedRoleUser") or {}
    return Credentials(
        access_key_id=key_id,
        secret_access_key=secret,
        session_token=token,
        expiration=expiration,
        role_arn=str(entry.get("roleArn", "")),
        assumed_role_arn=str(role.get("arn", "")),
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
    return error_type.rsplit("#", 1)[-1] or f"HTTP{status}", message


def _server_date(headers: dict[str, str]) -> datetime | None:
    try:
        return parsedate_to_datetime(headers["Date"])
    except (KeyError, TypeError, ValueError):
        return None


def _describe(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
