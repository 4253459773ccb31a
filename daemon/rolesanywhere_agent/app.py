"""Assembly and lifecycle: config in, sessions refreshing, listeners serving."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web

from .clock import Clock, SystemClock
from .config import AgentConfig, ProfileConfig, UpstreamConfig, is_loopback
from .endpoints.common import allowed_hosts, guard
from .endpoints.container import ContainerEndpoint
from .endpoints.fallback import add_fallback, guarded
from .endpoints.health import HealthEndpoint
from .endpoints.imds import ImdsEndpoint
from .endpoints.metrics import MetricsEndpoint, counting
from .errors import ConfigError, IdentityError
from .filemodes import warn_loose_secret_files
from .identity import IdentitySource
from .listener import (
    DRAIN_SECONDS,
    IDLE_TIMEOUT_SECONDS,
    LISTEN_BACKLOG,
    MAX_CONNECTIONS,
    MAX_HEADER_FIELD,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    Listener,
    ProtocolLog,
    connection_limit,
)
from .metrics import AgentMetrics
from .rolesanywhere import DEFAULT_TIMEOUT_SECONDS, RolesAnywhereClient, SessionRequest
from .sessions import ProfileSession, RefreshOutcome, RefreshPolicy
from .tokens import TokenFile
from .upstream import DEFAULT as DEFAULT_UPSTREAM
from .upstream import client_session, ssl_setting

log = structlog.get_logger("rolesanywhere_agent.app")

STARTUP_WAIT_SECONDS = 30.0
# aiohttp reads the rest of an unread request body this long before closing (e.g. after 405).
LINGER_SECONDS = 1.0
# IMDS answers anyone who can reach it: never bind it beyond loopback (DESIGN §7).
IMDS_HOST = "127.0.0.1"
# botocore's IMDS client honours HTTP_PROXY; loopback must never go through a proxy.
NO_PROXY_LOOPBACK = "127.0.0.1,localhost,::1"


@dataclass(frozen=True)
class Exports:
    """What an application needs to read one profile's credentials."""

    full_uri: str
    token_file: str
    imds_endpoint: str | None = None

    def as_dict(self) -> dict[str, str]:
        exports = {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": self.full_uri,
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": self.token_file,
        }
        if self.imds_endpoint is not None:
            exports["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = self.imds_endpoint
            exports["NO_PROXY"] = NO_PROXY_LOOPBACK
        return exports


def exports_for(
    config: AgentConfig,
    profile: ProfileConfig,
    port: int | None = None,
    imds_port: int | None = None,
) -> Exports:
    host = advertised_host(config.listen.host)
    port = port or config.listen.port
    imds = None
    if profile.imds is not None:
        imds = f"http://{IMDS_HOST}:{imds_port or profile.imds.port}/"
    return Exports(
        full_uri=f"http://{host}:{port}/v1/credentials/{profile.name}",
        token_file=str(profile.token_file.path),
        imds_endpoint=imds,
    )


def advertised_host(host: str) -> str:
    """The host to put in FULL_URI for a listener on `host`, bracketed when IPv6.

    127.0.0.1 is the one host every SDK accepts (DESIGN §6, case C20): `localhost` and
    wildcard listeners answer there. Any other address is where the agent listens, itself.
    """
    bare = host.strip("[]")
    if bare.lower() == "localhost" or bare in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{bare}]" if ":" in bare else bare


def _refused_by_some_sdks(host: str) -> bool:
    # `localhost`, ::1 and 127/8 addresses other than 127.0.0.1 fail somewhere (case C20).
    return is_loopback(host) and host != "127.0.0.1"


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
        upstream_timeout: float = DEFAULT_TIMEOUT_SECONDS,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
        max_connections: int | None = None,
        drain_timeout: float = DRAIN_SECONDS,
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
        self._client: RolesAnywhereClient | None = None
        self._listener: Listener | None = None
        self._imds_sites: list[tuple[web.AppRunner, Listener]] = []
        self.imds_ports: dict[str, int] = {}
        # Profiles with a CA bundle, `insecure` or a proxy: own connection pool each.
        self._upstream_clients: dict[tuple[UpstreamConfig, str], RolesAnywhereClient] = {}
        self._upstream_http: list[aiohttp.ClientSession] = []
        self.upstream_timeout = upstream_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = connection_limit(max_connections or MAX_CONNECTIONS)
        self.drain_timeout = drain_timeout
        # Start, reload and stop take turns: a SIGHUP during start waits for it.
        self._lifecycle = asyncio.Lock()
        self.port: int = config.listen.port
        self.metrics = AgentMetrics(self.sessions, self.clock)
        self._refresh_listeners: list[Callable[[RefreshOutcome], None]] = []

    async def start(self, wait_ready: bool = True) -> None:
        """Load identities, bind, prepare tokens, then fetch every profile's first session.

        What can refuse the configuration runs before the first log line, so a bad identity
        or a taken port leaves the operator with exactly one line: the error.
        """
        async with self._lifecycle:
            profiles = list(self.config.profiles.values())
            identities = {profile.name: self._identity(profile) for profile in profiles}
            sock = self._sock or self._bind()
            try:
                for profile in profiles:
                    self.tokens[profile.name] = self._token(profile)
                    ssl_setting(profile.upstream)  # an unreadable ca_bundle stops the start
                imds_socks = bind_imds(profiles, self.config.source or "configuration")
            except ConfigError:
                if sock is not self._sock:
                    sock.close()
                raise

            self._announce(self.config)
            # trust_env: HTTPS_PROXY / NO_PROXY apply to CreateSession (never to our listener).
            self._http = aiohttp.ClientSession(trust_env=True)
            self._client = RolesAnywhereClient(self._http, self.upstream_timeout)
            for profile in profiles:
                self.sessions[profile.name] = self._session(profile, identities[profile.name])
            await self._listen(sock)
            await self._listen_imds(imds_socks)
            for profile in profiles:
                self._serve(profile.name)
        if wait_ready:
            await self.wait_ready()

    async def reload(self, config: AgentConfig) -> Reload | None:
        """Switch to `config` without a restart, or refuse it whole and keep the running one.

        Unchanged profiles keep their cached session and token; added ones start; removed
        ones stop; a changed one gets a fresh session when its identity or request changed,
        and keeps its token unless its token file setting changed. Listener settings need a
        restart. Returns what changed, or None when the new configuration was refused.
        """
        async with self._lifecycle:
            try:
                plan = self._plan(config)
                for token in plan.tokens.values():
                    token.ensure()  # writes only now, once every check has passed
            except (ConfigError, IdentityError) as exc:
                log.error(
                    "config_reload_refused",
                    error=str(exc),
                    hint="the previous configuration keeps running",
                )
                return None
            await self._apply(config, plan)
        return plan.result

    def _plan(self, config: AgentConfig) -> _ReloadPlan:
        """Everything a reload needs, prepared before anything running is touched."""
        where = config.source or "configuration"
        if self._client is None:
            raise ConfigError(f"{where}: the agent has not started yet; reload after start")
        if config.listen != self.config.listen:
            raise ConfigError(f"{where}: listen: the listener's settings need a restart")
        if _imds_ports(config) != _imds_ports(self.config):
            raise ConfigError(f"{where}: imds: IMDS listeners need a restart")
        old, new = self.config.profiles, config.profiles
        result = Reload(
            added=tuple(name for name in new if name not in old),
            removed=tuple(name for name in old if name not in new),
            changed=tuple(name for name in new if name in old and new[name] != old[name]),
            kept=tuple(name for name in new if name in old and new[name] == old[name]),
        )

        fresh = [*result.added]
        fresh += [name for name in result.changed if _needs_new_session(old[name], new[name])]
        identities = {name: self._identity(new[name]) for name in fresh}
        for name in fresh:
            ssl_setting(new[name].upstream)  # an unreadable ca_bundle refuses the reload
        tokens = {
            name: TokenFile(name, new[name].token_file)
            for name in (*result.added, *result.changed)
            if name not in old or old[name].token_file != new[name].token_file
        }
        for token in tokens.values():
            token.check()  # nothing on disk changes before the whole plan is accepted
        return _ReloadPlan(result, identities, tokens)

    async def _apply(self, config: AgentConfig, plan: _ReloadPlan) -> None:
        self.tokens.update(plan.tokens)
        previous = self.config
        self.config = config
        replaced = []
        for name, identity in plan.identities.items():
            session = self._session(config.profiles[name], identity)
            if name in self.sessions:
                old = self.sessions[name]
                replaced.append(old)
                if _same_role(old.request, session.request):
                    # Still the same role's credentials: serve them until the new settings
                    # bring a session, so a reload during an outage loses nothing.
                    session.inherit(old)
            self.sessions[name] = session
        for name in plan.result.removed:
            replaced.append(self.sessions.pop(name))
            self.tokens.pop(name)
        for session in replaced:
            await session.stop()

        if config.log != previous.log:
            # Known limitation: loggers are bound at start (structlog), so a new format or
            # level would reach only part of the lines; it waits for the next start instead.
            log.warning("log_settings_need_restart", hint="log format and level apply at start")
        self._announce(config)
        log.info("config_reloaded", **plan.result.as_log())
        for name in plan.identities:
            self._serve(name)

    def _bind(self) -> socket.socket:
        listen = self.config.listen
        try:
            return bind(listen.host, listen.port)
        except ConfigError as exc:
            raise ConfigError(f"{self.config.source or 'configuration'}: listen: {exc}") from None

    def _identity(self, profile: ProfileConfig) -> IdentitySource:
        identity = IdentitySource(profile.identity, self.clock.now)
        identity.current()  # a broken identity is refused here, before any network call
        return identity

    def _token(self, profile: ProfileConfig) -> TokenFile:
        token = TokenFile(profile.name, profile.token_file)
        token.ensure()
        return token

    def _announce(self, config: AgentConfig) -> None:
        for warning in config.warnings:
            log.warning("config_warning", detail=warning)
        if not is_loopback(config.listen.host):
            log.warning(
                "listening_beyond_loopback",
                host=config.listen.host,
                hint="tokens and the Host allow-list still apply; prefer 127.0.0.1",
            )
        host = advertised_host(config.listen.host)
        if _refused_by_some_sdks(host):
            log.warning(
                "full_uri_host_not_portable",
                host=host,
                hint="some SDKs refuse this FULL_URI host (the JS SDK's legacy container "
                "provider accepts only localhost and 127.0.0.1); listen on 127.0.0.1",
            )
        for profile in config.profiles.values():
            warn_loose_secret_files(profile.name, profile.identity)
            if profile.upstream.insecure:
                log.warning(
                    "tls_verification_disabled",
                    profile=profile.name,
                    endpoint=profile.session.endpoint,
                    hint="anyone on the network path can read the session; set ca_bundle",
                )

    def _serve(self, name: str) -> None:
        self.sessions[name].start()
        log.info("profile_serving", profile=name, **self.exports(name).as_dict())

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
        """Stop refreshing and accepting, then drain requests in progress, for a bounded time."""
        started = self._runner is not None
        for session in self.sessions.values():
            await session.stop()
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()  # waits at most drain_timeout for open requests
        for runner, listener in self._imds_sites:
            listener.close()
            await runner.cleanup()
        self._imds_sites.clear()
        for http in self._upstream_http:
            await http.close()
        self._upstream_http.clear()
        self._upstream_clients.clear()
        if self._http is not None:
            await self._http.close()
        self._listener = self._runner = self._http = None
        if started:
            log.info("agent_stopped")

    def exports(self, profile: str) -> Exports:
        """The exports with the ports actually bound (a configured 0 picks a free one)."""
        config = self.config.profiles[profile]
        return exports_for(self.config, config, self.port, self.imds_ports.get(profile))

    def _session(self, profile: ProfileConfig, identity: IdentitySource) -> ProfileSession:
        return ProfileSession(
            profile.name,
            identity,
            profile.session,
            self._client_for(profile),
            self.clock,
            self.policy,
            random.Random(self._rng.random()),
            observer=self._refresh_finished,
        )

    def on_refresh(self, listener: Callable[[RefreshOutcome], None]) -> None:
        """Call `listener` after every refresh attempt of any profile (systemd STATUS)."""
        self._refresh_listeners.append(listener)

    def _refresh_finished(self, outcome: RefreshOutcome) -> None:
        self.metrics.refresh_finished(outcome)
        for listener in self._refresh_listeners:
            listener(outcome)

    def application(self) -> web.Application:
        hosts = allowed_hosts(self.port, self.config.listen.allowed_hosts)
        middlewares = [counting(self.metrics.request_served), guard(hosts)]
        app = web.Application(middlewares=middlewares, client_max_size=1024)
        routes = [
            *ContainerEndpoint(self.sessions, self.tokens).routes(),
            *HealthEndpoint(self.sessions).routes(),
            *MetricsEndpoint(self.metrics).routes(),
        ]
        app.add_routes(guarded(routes))  # the Expect header and unknown paths, see fallback
        add_fallback(app.router)
        return app

    def imds_application(self, profile: str, port: int) -> web.Application:
        hosts = allowed_hosts(port, self.config.listen.allowed_hosts)
        middlewares = [counting(self.metrics.request_served), guard(hosts)]
        app = web.Application(middlewares=middlewares, client_max_size=1024)
        app.add_routes(guarded(ImdsEndpoint(self.sessions, profile, self.clock).routes()))
        add_fallback(app.router)
        return app

    async def _listen_imds(self, socks: dict[str, socket.socket]) -> None:
        for profile, sock in socks.items():
            port = self.imds_ports[profile] = sock.getsockname()[1]
            self._imds_sites.append(await self._site(self.imds_application(profile, port), sock))
            log.info("listening_imds", profile=profile, host=IMDS_HOST, port=port)

    async def _listen(self, sock: socket.socket) -> None:
        self.port = sock.getsockname()[1]
        self._runner, self._listener = await self._site(self.application(), sock)
        log.info(
            "listening",
            host=self.config.listen.host,
            port=self.port,
            max_connections=self.max_connections,
        )

    async def _site(
        self, app: web.Application, sock: socket.socket
    ) -> tuple[web.AppRunner, Listener]:
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.drain_timeout,
            keepalive_timeout=self.idle_timeout,
            lingering_time=LINGER_SECONDS,
            max_line_size=MAX_REQUEST_LINE,
            max_field_size=MAX_HEADER_FIELD,
            max_headers=MAX_HEADERS,
            logger=ProtocolLog(),
        )
        await runner.setup()
        listener = Listener(runner, sock, self.max_connections)
        await listener.start()
        return runner, listener

    def _client_for(self, profile: ProfileConfig) -> RolesAnywhereClient:
        assert self._client is not None
        if profile.upstream == DEFAULT_UPSTREAM:
            return self._client
        key = (profile.upstream, profile.session.endpoint)
        if key not in self._upstream_clients:
            http = client_session(profile.upstream, profile.session.endpoint, os.environ)
            self._upstream_http.append(http)
            self._upstream_clients[key] = RolesAnywhereClient(http, self.upstream_timeout)
        return self._upstream_clients[key]


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
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


@dataclass(frozen=True)
class Reload:
    """What a configuration reload did, by profile name."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()

    def as_log(self) -> dict[str, list[str]]:
        return {key: list(value) for key, value in vars(self).items()}


@dataclass(frozen=True)
class _ReloadPlan:
    result: Reload
    identities: dict[str, IdentitySource]  # profiles that get a fresh session
    tokens: dict[str, TokenFile]  # profiles whose token file setting is new


def _needs_new_session(old: ProfileConfig, new: ProfileConfig) -> bool:
    # A new identity or request means a new session; a new token file or port does not.
    return (
        old.identity != new.identity
        or old.session != new.session
        or old.upstream != new.upstream
    )


def _same_role(old: SessionRequest, new: SessionRequest) -> bool:
    return (old.role_arn, old.profile_arn, old.trust_anchor_arn) == (
        new.role_arn, new.profile_arn, new.trust_anchor_arn
    )


def _imds_ports(config: AgentConfig) -> dict[str, int]:
    return {name: p.imds.port for name, p in config.profiles.items() if p.imds is not None}


def bind_imds(profiles: list[ProfileConfig], source: object) -> dict[str, socket.socket]:
    """One loopback socket per profile that has `imds`; all or none (ConfigError)."""
    socks: dict[str, socket.socket] = {}
    for profile in profiles:
        if profile.imds is None:
            continue
        try:
            socks[profile.name] = bind(IMDS_HOST, profile.imds.port)
        except ConfigError as exc:
            for sock in socks.values():
                sock.close()
            raise ConfigError(f"{source}: profiles.{profile.name}.imds.port: {exc}") from None
    return socks
