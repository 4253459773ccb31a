"""`GET /health`: per-profile state for curl and health checks, without any secret."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from ..sessions import ProfileSession, State

PATH = "/health"


class HealthEndpoint:
    def __init__(self, sessions: Mapping[str, ProfileSession]) -> None:
        self._sessions = sessions

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PATH, self.health, allow_head=False)]

    async def health(self, request: web.Request) -> web.Response:
        profiles = {name: session.health() for name, session in self._sessions.items()}
        states = {session.state for session in self._sessions.values()}
        if states <= {State.READY}:
            status = "ok"
        elif states <= {State.READY, State.DEGRADED}:
            status = "degraded"
        else:
            status = "unavailable"
        code = 503 if status == "unavailable" else 200
        return web.json_response({"status": status, "profiles": profiles}, status=code)
