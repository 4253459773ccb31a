"""The systemd notification protocol: READY, STATUS, WATCHDOG, RELOADING and STOPPING.

Each message is one datagram of `KEY=value` lines sent to the socket named in $NOTIFY_SOCKET,
a path or, when it starts with '@', an abstract socket. Outside systemd the variable is unset
and every call does nothing, so the daemon never needs to know how it was started.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

import structlog

from .sessions import ProfileSession, RefreshOutcome, State

log = structlog.get_logger("rolesanywhere_agent.notify")

# A STATUS line is one line in `systemctl status`: keep it short.
MAX_STATUS_CHARS = 400
MAX_NAMED_PROFILES = 3
MAX_ERROR_CHARS = 80
# How often the status is re-read without a refresh: a session can expire between refreshes.
STATUS_POLL_SECONDS = 5.0


class Notifier:
    """Sends notifications to the service manager, if there is one; never raises."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.address = _address(environ.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog_interval(environ)
        self._sock: socket.socket | None = None
        self._failed = False
        self._status: str | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, status: str | None = None) -> None:
        self._send("READY=1", status)

    def status(self, text: str) -> None:
        """Send a STATUS line when it differs from the last one sent."""
        if text != self._status:
            self._send(None, text)

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd match this message to the reload it asked for.
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}", None)

    def stopping(self, status: str | None = None) -> None:
        self._send("STOPPING=1", status)

    def watchdog(self) -> None:
        self._send("WATCHDOG=1", None)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, head: str | None, status: str | None) -> None:
        if self.address is None:
            return
        lines = [head] if head else []
        if status is not None:
            status = " ".join(status.split())[:MAX_STATUS_CHARS]
            lines.append(f"STATUS={status}")
            self._status = status
        try:
            self._socket().sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            # Logged once: a vanished manager socket must not flood the journal.
            if not self._failed:
                log.warning("notify_failed", socket=_shown(self.address), error=exc.strerror)
            self._failed = True

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        return self._sock


def _address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of the '@'.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # unset, or a vsock address this agent does not speak


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """The watchdog timeout in seconds, if systemd asked this very process for pings."""
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


def _shown(address: str | bytes) -> str:
    return "@" + address[1:].decode(errors="replace") if isinstance(address, bytes) else address


class ServiceReporter:
    """Keeps the service manager told: STATUS when the profiles' states change, WATCHDOG pings.

    The pings come from a task on the agent's event loop, so a blocked loop stops them and
    systemd restarts the agent.
    """

    def __init__(self, notifier: Notifier, sessions: Mapping[str, ProfileSession]) -> None:
        self.notifier = notifier
        self._sessions = sessions

    def refresh_finished(self, outcome: RefreshOutcome) -> None:
        self.notifier.status(profiles_status(self._sessions))

    async def run(self) -> None:
        """Until cancelled: re-read the status and ping the watchdog, if there is a manager."""
        if not self.notifier.enabled:
            return
        tick = STATUS_POLL_SECONDS
        if self.notifier.watchdog_interval is not None:
            tick = min(tick, self.notifier.watchdog_interval / 2)
        while True:
            if self.notifier.watchdog_interval is not None:
                self.notifier.watchdog()
            if self._sessions:
                self.notifier.status(profiles_status(self._sessions))
            await asyncio.sleep(tick)


def profiles_status(sessions: Mapping[str, ProfileSession]) -> str:
    """One line for `systemctl status`: how many profiles serve, and why the others do not."""
    by_state: dict[State, list[ProfileSession]] = {}
    for session in sessions.values():
        by_state.setdefault(session.state, []).append(session)
    ready = len(by_state.get(State.READY, []))
    noun = "profile" if len(sessions) == 1 else "profiles"
    parts = [f"{ready} of {len(sessions)} {noun} ready"]
    for state in (State.DEGRADED, State.UNAVAILABLE, State.STARTING):
        if state in by_state:
            parts.append(f"{state.value}: {_named(by_state[state])}")
    return "; ".join(parts)


def _named(sessions: list[ProfileSession]) -> str:
    shown = []
    for session in sessions[:MAX_NAMED_PROFILES]:
        error = session.last_error
        if error and len(error) > MAX_ERROR_CHARS:
            error = error[: MAX_ERROR_CHARS - 3] + "..."
        shown.append(f"{session.name} ({error})" if error else session.name)
    hidden = len(sessions) - len(shown)
    return ", ".join(shown) + (f" and {hidden} more" if hidden else "")
