"""Per-profile session cache: refresh ahead of expiry, one upstream call at a time, backoff.

The served session is judged by the wall clock at the moment of serving, never by a timer
alone, so a suspended VM that wakes up after its session expired never serves it (case C14).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import structlog

from .clock import Clock, sleep_until
from .credentials import Credentials, format_expiration
from .errors import AccessDenied, AgentError, IdentityError, InvalidResponse, UpstreamError
from .identity import Identity, IdentitySource
from .rolesanywhere import Grant, RolesAnywhereClient, SessionRequest, redact

log = structlog.get_logger("rolesanywhere_agent.sessions")

SKEW_WARNING_SECONDS = 60.0


@dataclass(frozen=True)
class RefreshPolicy:
    """When to refresh and how to back off; see DESIGN §8."""

    refresh_at_remaining: float = 0.5  # refresh when this share of the lifetime is left
    jitter: float = 0.1  # minus up to this share of the lifetime, so a fleet spreads out
    serve_margin: float = 60.0  # stop serving this many seconds before expiry
    backoff_base: float = 2.0
    backoff_cap: float = 300.0
    denied_backoff_base: float = 30.0
    denied_backoff_cap: float = 900.0
    cold_wait: float = 1.0  # longest a request waits on a cold cache before a 503
    # The first refresh after a start or an outage comes anywhere before the usual point.
    spread_after_start: bool = True

    def refresh_delay(self, lifetime: float, rng: random.Random) -> float:
        return lifetime * (1 - self.refresh_at_remaining) - rng.uniform(0, lifetime * self.jitter)

    def next_refresh(self, lifetime: float, rng: random.Random, on_schedule: bool) -> float:
        """Seconds from a grant to its refresh.

        Machines that start (or recover from an outage) together would otherwise refresh
        together for hours: the jitter alone spreads a fleet only by a few minutes per cycle
        (bench/fleet.py). A session that was not on schedule is therefore refreshed at a
        uniformly random point before the usual one, which gives each agent its own phase.
        """
        delay = max(self.refresh_delay(lifetime, rng), 0.0)
        if on_schedule or not self.spread_after_start:
            return delay
        return rng.uniform(0, delay)

    def backoff(self, failures: int, denied: bool, rng: random.Random) -> float:
        base, cap = (
            (self.denied_backoff_base, self.denied_backoff_cap)
            if denied
            else (self.backoff_base, self.backoff_cap)
        )
        ceiling = min(cap, base * 2 ** max(failures - 1, 0))
        return rng.uniform(ceiling / 2, ceiling)


class State(StrEnum):
    STARTING = "starting"  # no session yet, first attempt pending or running
    READY = "ready"  # a valid session, last refresh succeeded
    DEGRADED = "degraded"  # a valid session, but the last refresh failed
    UNAVAILABLE = "unavailable"  # no session that may be served


@dataclass(frozen=True)
class RefreshOutcome:
    """What one refresh attempt came to, for metrics and service status; never a secret."""

    profile: str
    outcome: str  # "success", or the error's class name (AccessDenied, TransportError, ...)
    call_seconds: float | None  # how long CreateSession took; None when none was sent
    state: State


RefreshObserver = Callable[[RefreshOutcome], None]


class ProfileSession:
    """One profile's cached session and its refresh loop."""

    def __init__(
        self,
        name: str,
        identity: IdentitySource,
        request: SessionRequest,
        client: RolesAnywhereClient,
        clock: Clock,
        policy: RefreshPolicy | None = None,
        rng: random.Random | None = None,
        observer: RefreshObserver | None = None,
    ) -> None:
        self.name = name
        self.identity = identity
        self.request = request
        self._client = client
        self._clock = clock
        self.policy = policy or RefreshPolicy()
        self._rng = rng or random.Random()
        self._observer = observer
        self._call_seconds: float | None = None
        self._log = log.bind(profile=name)

        self.current: Credentials | None = None
        self.obtained_at: datetime | None = None
        self.next_attempt_at: datetime = clock.now()
        self.last_success_at: datetime | None = None
        self.last_error: str | None = None
        self.failures = 0
        self.attempts = 0
        self._reported: tuple[str, str | None] | None = None
        # What was last said about the identity and the clock, so each is said once.
        self._identity_serial: int | None = None
        self._identity_problem: str | None = None
        self._skew_direction: str | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._changed = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    # Serving

    def servable(self) -> Credentials | None:
        """The cached session if it may be handed out now, by the wall clock."""
        if self.current is None:
            return None
        if self.current.seconds_left(self._clock.now()) <= self.policy.serve_margin:
            return None
        return self.current

    async def get(self) -> Credentials | None:
        """A servable session, waiting at most `cold_wait` for a refresh when there is none."""
        creds = self.servable()
        if creds is not None:
            return creds
        flight = self._inflight if self._backing_off() else self.refresh_now()
        if flight is None or flight.done():
            return None
        try:
            await asyncio.wait_for(asyncio.shield(flight), self.policy.cold_wait)
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            # The refresh was stopped under us (a reload replaced this session, or shutdown):
            # the waiting client still gets an answer. Our own cancellation goes on up.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        return self.servable()

    def _backing_off(self) -> bool:
        # After a failure, clients asking do not bring the next attempt forward: during an
        # outage every SDK retry would otherwise become a CreateSession call.
        return self.failures > 0 and self._clock.now() < self.next_attempt_at

    def inherit(self, previous: ProfileSession) -> None:
        """Serve `previous`'s session until this one has its own; refresh at once."""
        self.current = previous.current
        self.obtained_at = previous.obtained_at
        self.last_success_at = previous.last_success_at
        self.next_attempt_at = self._clock.now()

    def retry_after(self) -> int:
        """Seconds a client should wait before asking again after a 503."""
        wait = (self.next_attempt_at - self._clock.now()).total_seconds()
        return max(1, min(int(wait) + 1, 300))

    @property
    def state(self) -> State:
        if self.servable() is not None:
            return State.DEGRADED if self.failures else State.READY
        if self.current is None and self.failures == 0:
            return State.STARTING
        return State.UNAVAILABLE

    # Refreshing

    def refresh_now(self) -> asyncio.Task[bool]:
        """Start a refresh unless one is running; every caller shares the same one."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._refresh(), name=f"refresh-{self.name}")
        return self._inflight

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name=f"scheduler-{self.name}")

    async def stop(self) -> None:
        for task in (self._runner, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def first_outcome(self) -> None:
        """Wait until the first refresh attempt has finished, whatever its outcome."""
        while self.attempts == 0:
            await self.refresh_now()

    async def _run(self) -> None:
        while True:
            if self._clock.now() >= self.next_attempt_at:
                await self.refresh_now()
                continue
            self._changed.clear()
            waiter = asyncio.create_task(sleep_until(self._clock, self.next_attempt_at))
            changed = asyncio.create_task(self._changed.wait())
            try:
                await asyncio.wait({waiter, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                changed.cancel()

    async def _refresh(self) -> bool:
        started = self._clock.now()
        self._call_seconds = None
        try:
            identity = self._current_identity()
            grant = await self._timed_call(identity, started)
            self._check_lifetime(grant, started)
        except AgentError as exc:
            self._failed(exc, started)
            return False
        except Exception as exc:  # noqa: BLE001 - a bug must not end the refresh loop
            problem = redact(f"unexpected {type(exc).__name__}: {exc}")
            self._failed(UpstreamError(problem), started)
            return False
        finally:
            self.attempts += 1
            self._changed.set()
        self._succeeded(grant, started)
        return True

    def _current_identity(self) -> Identity:
        """The identity to sign with; says once when a rotation is caught half done."""
        identity = self.identity.current()
        problem = self.identity.problem
        if problem != self._identity_problem:
            self._identity_problem = problem
            if problem is not None:
                self._log.warning(
                    "identity_rotation_pending",
                    problem=problem,
                    serving_serial=str(identity.serial),
                    hint="still signing with the last good certificate and key",
                )
        if self._identity_serial not in (None, identity.serial):
            self._log.info(
                "identity_rotated",
                serial=str(identity.serial),
                not_after=format_expiration(identity.not_after),
            )
        self._identity_serial = identity.serial
        return identity

    def _check_lifetime(self, grant: Grant, started: datetime) -> None:
        # A session that would have to be withheld at once must not replace one still good.
        lifetime = (grant.credentials.expiration - started).total_seconds()
        if lifetime <= self.policy.serve_margin:
            problem = InvalidResponse(
                f"CreateSession granted only {round(lifetime)} s, not more than the "
                f"{int(self.policy.serve_margin)} s before expiry when serving stops"
            )
            problem.server_date = grant.server_date
            raise problem

    async def _timed_call(self, identity: Identity, started: datetime) -> Grant:
        began = time.perf_counter()
        try:
            return await self._client.create_session(identity, self.request, started)
        finally:
            # Measured on the monotonic clock: the injected wall clock may be a test's fake.
            self._call_seconds = time.perf_counter() - began

    def _succeeded(self, grant: Grant, started: datetime) -> None:
        creds = grant.credentials
        lifetime = max((creds.expiration - started).total_seconds(), 0.0)
        on_schedule = self.last_success_at is not None and self.failures == 0
        delay = self.policy.next_refresh(lifetime, self._rng, on_schedule)
        self.current = creds
        self.obtained_at = started
        self.last_success_at = started
        self.next_attempt_at = started + timedelta(seconds=delay)
        self.failures = 0
        self.last_error = None
        self._check_skew(grant.server_date, started)
        self._report(
            "session_refreshed",
            None,
            expiration=format_expiration(creds.expiration),
            granted_seconds=int(lifetime),
            next_refresh=format_expiration(self.next_attempt_at),
        )
        self._observe("success")

    def _failed(self, exc: AgentError, started: datetime) -> None:
        self.failures += 1
        self.last_error = str(exc)
        denied = isinstance(exc, AccessDenied | IdentityError)
        delay = self.policy.backoff(self.failures, denied, self._rng)
        self.next_attempt_at = started + timedelta(seconds=delay)
        if isinstance(exc, UpstreamError):
            self._check_skew(exc.server_date, started)
        serving = self.servable()
        self._report(
            "refresh_failed",
            self.last_error,
            error_type=type(exc).__name__,
            retry_in_seconds=round(delay, 1),
            serving_until=format_expiration(serving.expiration) if serving else None,
        )
        self._observe(type(exc).__name__)

    def _observe(self, outcome: str) -> None:
        if self._observer is not None:
            self._observer(RefreshOutcome(self.name, outcome, self._call_seconds, self.state))

    def _report(self, event: str, error: str | None, **context: Any) -> None:
        """One log line per change of state or error, not one per attempt."""
        key = (self.state.value, error)
        if key == self._reported:
            self._log.debug(event, state=key[0], **context)
            return
        self._reported = key
        if error is None:
            self._log.info(event, state=key[0], **context)
        else:
            self._log.warning(event, state=key[0], error=error, **context)

    def _check_skew(self, server_date: datetime | None, now: datetime) -> None:
        """Compare our clock with the answer's `Date`; say so once per change of direction."""
        if server_date is None:
            return
        offset = (now - server_date).total_seconds()
        direction = None
        if abs(offset) >= SKEW_WARNING_SECONDS:
            direction = "ahead" if offset > 0 else "behind"
        if direction == self._skew_direction:
            return

        self._skew_direction = direction
        if direction is None:
            self._log.info("clock_skew_resolved", offset_seconds=round(offset))
            return
        self._log.warning(
            "clock_skew",
            offset_seconds=round(offset),
            direction=direction,
            hint=f"local clock is {abs(round(offset))} s {direction} of the service's "
            "(its Date header); check NTP",
        )

    def health(self) -> dict[str, Any]:
        """The profile's state for /health: times and reasons, never a secret."""
        now = self._clock.now()
        current = self.servable()
        identity = self.identity.loaded
        return {
            "state": self.state.value,
            "expiration": format_expiration(current.expiration) if current else None,
            "seconds_left": int(current.seconds_left(now)) if current else 0,
            "last_refresh": _time(self.last_success_at),
            "next_attempt": _time(self.next_attempt_at),
            "failures": self.failures,
            "last_error": self.last_error,
            "certificate_not_after": _time(identity.not_after) if identity else None,
        }


def _time(moment: datetime | None) -> str | None:
    return format_expiration(moment) if moment else None
