"""Assembly and lifecycle: config in, sessions refreshing, listeners serving."""

from __future__ import annotations

import asyncio
import random
import socket
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web

from .clock import Clock, SystemClock
from .config import AgentConfig, ProfileConfig, is_loopback
from .errors import ConfigError
from .endpoints.common import allowed_hosts, guard
from .endpoints.container import ContainerEndpoint
from .endpoints.health import HealthEndpoint
from .identity import IdentitySource
from .rolesanywhere import RolesAnywhereClient
from .sessions import ProfileSession, RefreshPolicy
from .tokens import TokenFile

log = structlog.get_logger("rolesanywhere_agent.app")

# Bounds for what a local client may send: credentials requests are tiny.
MAX_REQUEST_LINE = 4096
MAX_HEADER_FIELD = 8190
STARTUP_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class Exports:
    """What an application needs to read one profile's credentials."""

    full_uri: str
    token_file: str

    def as_dict(self) -> dict[str, str]:
        return {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": self.full_uri,
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": self.token_file,
        }


def exports_for(config: AgentConfig, profile: ProfileConfig, port: int | None = None) -> Exports:
    # 127.0.0.1 is the one host every SDK accepts in FULL_URI (DESIGN §6, case C20).
    host = config.listen.host if not is_loopback(config.listen.host) else "127.0.0.1"
    port = port or config.listen.port
    return Exports(
        full_uri=f"http://{host}:{port}/v1/credentials/{profile.name}",
        token_file=str(profile.token_file.path),
    )


class Agent:
    """The daemon: one session per profile, one loopback listener for all of them."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock | None = None,
        policy: RefreshPolicy | None = None,
        rng: random.Random | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.policy = policy or RefreshPolicy()
        self._rng = rng or random.Random()
        self._sock = sock
        self.sessions: dict[str, ProfileSession] = {}
        self.tokens: dict[str, TokenFile] = {}
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.port: int = config.listen.port

    async def start(self, wait_ready: bool = True) -> None:
        """Prepare tokens, start listening, then fetch every profile's first session."""
        for warning in self.config.warnings:
            log.warning("config_warning", detail=warning)
        if not is_loopback(self.config.listen.host):
            log.warning("listening_beyond_loopback", host=self.config.listen.host)

        # trust_env: HTTPS_PROXY / NO_PROXY apply to CreateSession (never to our listener).
        self._http = aiohttp.ClientSession(trust_env=True)
        client = RolesAnywhereClient(self._http)
        for profile in self.config.profiles.values():
            self.tokens[profile.name] = TokenFile(profile.name, profile.token_file)
            self.tokens[profile.name].ensure()
            self.sessions[profile.name] = self._session(profile, client)

        await self._listen()
        for profile in self.config.profiles.values():
            self.sessions[profile.name].start()
            log.info("profile_serving", profile=profile.name, **self.exports(profile.name).as_dict())
        if wait_ready:
            await self.wait_ready()

    async def wait_ready(self) -> None:
        """Return once every profile has its first session or a recorded failure."""
        firsts = [session.first_outcome() for session in self.sessions.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*firsts), STARTUP_WAIT_SECONDS)
        except TimeoutError:
            log.warning("startup_slow", waited_seconds=STARTUP_WAIT_SECONDS)
        states = {name: session.state.value for name, session in self.sessions.items()}
        log.info("agent_ready", port=self.port, profiles=states)

    async def stop(self) -> None:
        for session in self.sessions.values():
            await session.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()
        log.info("agent_stopped")

    def exports(self, profile: str) -> Exports:
        return exports_for(self.config, self.config.profiles[profile], self.port)

    def _session(self, profile: ProfileConfig, client: RolesAnywhereClient) -> ProfileSession:
        identity = IdentitySource(profile.identity, self.clock.now)
        identity.current()  # a broken identity stops the start, before any network call
        return ProfileSession(
            profile.name,
            identity,
            profile.session,
            client,
            self.clock,
            self.policy,
            random.Random(self._rng.random()),
        )

    def application(self) -> web.Application:
        hosts = allowed_hosts(self.port, self.config.listen.allowed_hosts)
        app = web.Application(middlewares=[guard(hosts)], client_max_size=1024)
        app.add_routes(ContainerEndpoint(self.sessions, self.tokens).routes())
        app.add_routes(HealthEndpoint(self.sessions).routes())
        return app

    async def _listen(self) -> None:
        listen = self.config.listen
        sock = self._sock or bind(listen.host, listen.port)
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(
            self.application(),
            access_log=None,
            handle_signals=False,
            max_line_size=MAX_REQUEST_LINE,
            max_field_size=MAX_HEADER_FIELD,
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        log.info("listening", host=listen.host, port=self.port)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket; port 0 picks a free one (tests and the demo use that)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.listen(512)
    sock.setblocking(False)
    return sock
