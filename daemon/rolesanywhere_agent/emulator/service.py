"""The emulator: Roles Anywhere CreateSession and STS GetCallerIdentity on one listener."""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import structlog
from aiohttp import web

from ..clock import Clock, SystemClock
from ..credentials import format_expiration
from ..errors import ConfigError
from . import controls
from .faults import Fault, FaultQueue
from .issued import CredentialStore, IssuedSession, expiry
from .model import EmulatorConfig, load_config
from .responses import (
    default_session_name,
    error_answer,
    json_answer,
    raw_answer,
    request_id,
    session_document,
    xml_answer,
)
from .sts import StsRefusal, caller_identity_xml, error_xml, verify_sts_request
from .verify import EmulatorRefusal, Grant, verify_create_session

log = structlog.get_logger()

SESSIONS_PATH = "/sessions"
SUCCESS = "success"
FAULT = "fault"


class Emulator:
    """A strict local Roles Anywhere + STS; test controls only when asked for, on loopback."""

    def __init__(
        self, config: EmulatorConfig, *, clock: Clock | None = None, controls: bool = False
    ) -> None:
        self.config = config
        self.controls = controls
        self._clock = clock or SystemClock()
        self._shift = timedelta(0)
        self._faults = FaultQueue()
        self._store = CredentialStore()
        self._counters: Counter[str] = Counter()
        self._sts_counters: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    def now(self) -> datetime:
        """The service's clock: the injected clock plus any shift a test asked for."""
        return self._clock.now() + self._shift

    def app(self) -> web.Application:
        app = web.Application()
        app.on_response_prepare.append(self._stamp_date)
        app.router.add_post(SESSIONS_PATH, self._create_session)
        app.router.add_route("POST", "/", self._sts)
        app.router.add_route("GET", "/", self._sts)
        if self.controls:
            controls.add_routes(app, self)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen and return the base URL, e.g. `http://127.0.0.1:40123`."""
        if self.controls and not _is_loopback(host):
            raise ConfigError(f"emulator controls need a loopback host, not {host!r}")
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner

        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def inject(self, fault: Fault) -> None:
        self._faults.add(fault)
        log.info("fault_injected", times=fault.times)

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def pending_faults(self) -> int:
        return len(self._faults)

    def shift_clock(self, seconds: float) -> None:
        self._shift += timedelta(seconds=seconds)

    @property
    def counters(self) -> dict[str, int]:
        """CreateSession calls by outcome: `success`, `fault`, or the refusal's error type."""
        return dict(self._counters)

    @property
    def sts_counters(self) -> dict[str, int]:
        """GetCallerIdentity calls by outcome: `success` or the STS error code."""
        return dict(self._sts_counters)

    @property
    def sts_calls(self) -> int:
        return sum(self._sts_counters.values())

    def session(self, access_key_id: str) -> IssuedSession | None:
        """An issued session, for tests that compare what the agent serves."""
        return self._store.find(access_key_id)

    async def _stamp_date(self, request: web.Request, response: web.StreamResponse) -> None:
        # The agent measures clock skew from this header (DESIGN §8), so it follows our clock.
        response.headers["Date"] = format_datetime(self.now().astimezone(UTC), usegmt=True)

    async def _create_session(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fault = self._faults.take()
        if fault is not None and fault.delay:
            # Real time on purpose: this is latency on the wire, not time in the service.
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.replaces_answer:
            return self._play(request, fault)

        now = self.now()
        try:
            grant = verify_create_session(
                method=request.method,
                path=request.path,
                query=request.rel_url.raw_query_string,
                headers=request.headers,
                body=body,
                now=now,
                config=self.config,
            )
        except EmulatorRefusal as refusal:
            self._counters[refusal.error_type] += 1
            log.info("session_refused", error_type=refusal.error_type, reason=refusal.message)
            return error_answer(refusal.status, refusal.error_type, refusal.message)
        return self._grant(grant, now, fault)

    def _grant(self, grant: Grant, now: datetime, fault: Fault | None) -> web.Response:
        seconds = grant.duration_seconds
        if fault is not None and fault.grant_seconds is not None:
            seconds = fault.grant_seconds
        if fault is not None and fault.empty_credential_set:
            self._counters[FAULT] += 1
            return json_answer(201, session_document(grant, None, expiration=""))

        session = self._store.issue(
            role_arn=grant.role_arn,
            session_name=default_session_name(grant),
            account_id=self.config.account_id,
            expiration=expiry(now, seconds),
        )
        expiration = format_expiration(session.expiration)
        if fault is not None and fault.expiration_override is not None:
            expiration = fault.expiration_override

        self._counters[FAULT if fault is not None and fault.shapes_answer else SUCCESS] += 1
        log.info(
            "session_granted", profile=grant.profile.arn, role=grant.role_arn, seconds=seconds
        )
        return json_answer(201, session_document(grant, session, expiration=expiration))

    def _play(self, request: web.Request, fault: Fault) -> web.Response:
        self._counters[FAULT] += 1
        if fault.drop_connection:
            log.info("fault_played", kind="drop_connection")
            # Abort (RST) rather than close: the client sees the connection vanish mid-call.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        if fault.body is not None:
            log.info("fault_played", kind="body")
            return raw_answer(fault.status or 201, fault.body)

        status, error_type = fault.error()
        log.info("fault_played", kind="error", status=status, error_type=error_type)
        return error_answer(status, error_type, fault.message)

    async def _sts(self, request: web.Request) -> web.Response:
        body = await request.read()
        answer_id = request_id()
        try:
            session = verify_sts_request(
                method=request.method,
                path=request.path,
                query=request.rel_url.raw_query_string,
                headers=request.headers,
                body=body,
                now=self.now(),
                store=self._store,
            )
        except StsRefusal as refusal:
            self._sts_counters[refusal.code] += 1
            log.info("sts_refused", code=refusal.code, reason=refusal.message)
            return xml_answer(refusal.status, error_xml(refusal, answer_id), answer_id)

        self._sts_counters[SUCCESS] += 1
        return xml_answer(200, caller_identity_xml(session, answer_id), answer_id)


async def serve(
    config_path: Path | str, host: str = "127.0.0.1", port: int = 0, controls: bool = False
) -> None:
    """Run an emulator from a config file until cancelled."""
    emulator = Emulator(load_config(config_path), controls=controls)
    url = await emulator.start(host, port)
    log.info("emulator_listening", url=url, controls=controls)
    try:
        await asyncio.Event().wait()
    finally:
        await emulator.stop()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
