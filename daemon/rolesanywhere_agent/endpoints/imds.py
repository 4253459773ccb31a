"""An IMDSv2-compatible endpoint that serves one profile's role as instance metadata (§7).

Any process on the machine can obtain an IMDS token, so this endpoint isolates nothing: it
exists for clients that only know the instance-metadata provider. The container endpoint
with its token file is the isolating option.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from base64 import b32encode
from collections.abc import Mapping
from datetime import datetime, timedelta

import structlog
from aiohttp import web

from ..clock import Clock
from ..credentials import format_expiration
from ..sessions import ProfileSession
from .common import json_error, unavailable

log = structlog.get_logger("rolesanywhere_agent.imds")

TOKEN_PATH = "/latest/api/token"
CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials"
INFO_PATH = "/latest/meta-data/iam/info"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
# The bounds EC2 itself enforces; the Go and Rust SDKs ask for 21600 or 300 seconds.
MIN_TTL, MAX_TTL = 1, 21600
MAX_TOKENS = 1024

_TTL = re.compile(r"^[0-9]{1,5}$")


class ImdsTokens:
    """Session tokens handed out by PUT /latest/api/token, each with its expiry.

    Expiry is judged by the injected wall clock when a token is presented. Tokens are kept
    by their SHA-256 digest, so a lookup does not compare secret bytes one by one and the
    store never holds a token that could end up in a dump or a log.
    """

    def __init__(self, clock: Clock, limit: int = MAX_TOKENS) -> None:
        self._clock = clock
        self._limit = limit
        self._expiry: dict[bytes, datetime] = {}

    def __len__(self) -> int:
        return len(self._expiry)

    def issue(self, ttl_seconds: int) -> str:
        now = self._clock.now()
        self._forget_expired(now)
        if len(self._expiry) >= self._limit:
            # Full of live tokens (a client that never reuses one): drop the one that would
            # expire first; its holder gets a 401 and asks for a new token, as SDKs do.
            del self._expiry[min(self._expiry, key=self._expiry.__getitem__)]

        token = secrets.token_urlsafe(32)
        self._expiry[_digest(token)] = now + timedelta(seconds=ttl_seconds)
        return token

    def valid(self, token: str | None) -> bool:
        if not token:
            return False
        expiry = self._expiry.get(_digest(token))
        return expiry is not None and self._clock.now() < expiry

    def _forget_expired(self, now: datetime) -> None:
        for key in [key for key, expiry in self._expiry.items() if expiry <= now]:
            del self._expiry[key]


class ImdsEndpoint:
    """The IMDS paths an SDK's instance-metadata credential provider reads, for one profile.

    The session is looked up per request, so a configuration reload that replaces it (or
    changes its role) is served from then on.
    """

    def __init__(
        self,
        sessions: Mapping[str, ProfileSession],
        profile: str,
        clock: Clock,
        tokens: ImdsTokens | None = None,
    ) -> None:
        self._sessions = sessions
        self.profile = profile
        self._clock = clock
        self.tokens = tokens or ImdsTokens(clock)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.put(TOKEN_PATH, self.token),
            web.get(CREDENTIALS_PATH, self.role_list, allow_head=False),
            web.get(f"{CREDENTIALS_PATH}/", self.role_list, allow_head=False),
            web.get(f"{CREDENTIALS_PATH}/{{role}}", self.credentials, allow_head=False),
            web.get(f"{CREDENTIALS_PATH}/{{role}}/", self.credentials, allow_head=False),
            web.get(INFO_PATH, self.info, allow_head=False),
        ]

    async def token(self, request: web.Request) -> web.Response:
        # A token request that passed through a proxy could hand a token to a remote
        # caller; EC2 refuses them the same way. 400 and not 403: botocore reads a 403 as
        # "IMDSv1 only" and would go on without a token (case C27).
        if "X-Forwarded-For" in request.headers:
            log.warning("imds_token_refused", reason="x_forwarded_for", peer=request.remote)
            return json_error(400, "BadRequest", "token requests through a proxy are refused")

        ttl = parse_ttl(request.headers.get(TTL_HEADER))
        if ttl is None:
            return json_error(
                400, "BadRequest", f"{TTL_HEADER} must be an integer from {MIN_TTL} to {MAX_TTL}"
            )

        token = self.tokens.issue(ttl)
        log.debug("imds_token_issued", ttl_seconds=ttl, tokens=len(self.tokens))
        # The Go and Rust SDKs read the lifetime back from this header (case C26).
        return web.Response(text=token, headers={TTL_HEADER: str(ttl)})

    async def role_list(self, request: web.Request) -> web.Response:
        session = self._admit(request)
        if isinstance(session, web.Response):
            return session
        return web.Response(text=role_name(session.request.role_arn))

    async def credentials(self, request: web.Request) -> web.Response:
        session = self._admit(request)
        if isinstance(session, web.Response):
            return session
        role, asked = role_name(session.request.role_arn), request.match_info["role"]
        if asked != role:
            return json_error(404, "NotFound", f"no role named {asked!r} on this endpoint")

        creds = await session.get()
        if creds is None:
            return unavailable(session, f"role {role!r}")
        updated = session.obtained_at or self._clock.now()
        return web.json_response(creds.imds_json(updated))

    async def info(self, request: web.Request) -> web.Response:
        session = self._admit(request)
        if isinstance(session, web.Response):
            return session
        role_arn = session.request.role_arn
        updated = session.obtained_at or self._clock.now()
        return web.json_response(
            {
                "Code": "Success",
                "LastUpdated": format_expiration(updated),
                "InstanceProfileArn": instance_profile_arn(role_arn),
                "InstanceProfileId": instance_profile_id(role_arn),
            }
        )

    def _admit(self, request: web.Request) -> ProfileSession | web.Response:
        """The profile's session for a request with a valid token, or the refusal to send."""
        if not self.tokens.valid(request.headers.get(TOKEN_HEADER)):
            log.info("imds_unauthorized", profile=self.profile, peer=request.remote)
            message = f"missing or expired token; PUT {TOKEN_PATH} to get one"
            return json_error(401, "Unauthorized", message)
        session = self._sessions.get(self.profile)
        if session is None:  # removed by a reload; its listener goes at the next restart
            return json_error(404, "ProfileNotFound", f"no profile named {self.profile!r}")
        return session


def parse_ttl(text: str | None) -> int | None:
    """The requested token lifetime in seconds, or None when it is missing or out of range."""
    if text is None or not _TTL.match(text):
        return None
    ttl = int(text)
    return ttl if MIN_TTL <= ttl <= MAX_TTL else None


def role_name(role_arn: str) -> str:
    """The last path segment: `role/teams/web` names the role `web`."""
    return role_arn.rsplit("/", 1)[-1]


def instance_profile_arn(role_arn: str) -> str:
    """An instance profile named (and pathed) like the role, as EC2 consoles create them."""
    prefix, _, resource = role_arn.partition(":role/")
    return f"{prefix}:instance-profile/{resource}"


def instance_profile_id(role_arn: str) -> str:
    """A stable id in the shape IAM uses (`AIPA` and 17 characters), derived from the ARN."""
    digest = hashlib.sha256(role_arn.encode()).digest()
    return "AIPA" + b32encode(digest).decode()[:17]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()
