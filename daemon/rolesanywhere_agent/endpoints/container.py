"""`GET /v1/credentials/{profile}`: the container-credentials endpoint the SDKs read."""

from __future__ import annotations

import json
from collections.abc import Mapping

import structlog
from aiohttp import web

from ..credentials import Credentials
from ..sessions import ProfileSession
from ..tokens import TokenFile
from .common import json_error, unavailable

log = structlog.get_logger("rolesanywhere_agent.container")

PATH = "/v1/credentials/{profile}"


class ContainerEndpoint:
    def __init__(
        self, sessions: Mapping[str, ProfileSession], tokens: Mapping[str, TokenFile]
    ) -> None:
        self._sessions = sessions
        self._tokens = tokens
        # Each profile's last 200 body, encoded once per session rather than once per request.
        self._bodies: dict[str, tuple[Credentials, bytes]] = {}

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PATH, self.credentials, allow_head=False)]

    async def credentials(self, request: web.Request) -> web.Response:
        name = request.match_info["profile"]
        session = self._sessions.get(name)
        if session is None:
            return json_error(404, "ProfileNotFound", f"no profile named {name!r}")
        if not self._tokens[name].matches(request.headers.get("Authorization")):
            log.info("request_unauthorized", profile=name, peer=request.remote)
            return json_error(401, "Unauthorized", "missing or wrong authorization token")

        creds = await session.get()
        if creds is None:
            return unavailable(session, f"profile {name!r}")
        return web.Response(
            body=self._body(name, creds), content_type="application/json", charset="utf-8"
        )

    def _body(self, name: str, creds: Credentials) -> bytes:
        cached = self._bodies.get(name)
        if cached is None or cached[0] is not creds:
            cached = (creds, json.dumps(creds.container_json()).encode())
            self._bodies[name] = cached
        return cached[1]
