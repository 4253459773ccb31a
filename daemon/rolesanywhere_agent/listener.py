"""The loopback listener's limits: connections, idle time, drain time, and how errors log.

Any local process can connect, so nothing a client does may hold the agent's resources for
long or fill its logs: the number of open connections is capped, a connection that sends no
complete request is closed after `idle_timeout`, and malformed requests are logged as one
short debug line instead of aiohttp's default traceback.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = structlog.get_logger("rolesanywhere_agent.listener")

# Bounds for what a local client may send: credentials requests are tiny.
MAX_REQUEST_LINE = 4096
MAX_HEADER_FIELD = 8190
MAX_HEADERS = 64
# aiohttp closes a connection that has not sent a complete request this long after it was
# opened or after its last answer, so the same timer bounds slow headers and idle keep-alive.
IDLE_TIMEOUT_SECONDS = 15.0
# How long a stopping agent waits for requests in progress.
DRAIN_SECONDS = 5.0
MAX_CONNECTIONS = 2048
LISTEN_BACKLOG = 1024
# Seconds a refused connection stays open so its request can be read and the 503 delivered.
_BUSY_LINGER_SECONDS = 1.0

_BUSY_BODY = json.dumps(
    {"Code": "TooManyConnections", "Message": "too many open connections; retry shortly"}
).encode()
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json; charset=utf-8\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n"
    + f"Content-Length: {len(_BUSY_BODY)}\r\n\r\n".encode()
    + _BUSY_BODY
)


def connection_limit(wanted: int = MAX_CONNECTIONS) -> int:
    """`wanted`, or less when the file-descriptor limit could not hold that many sockets.

    Half the soft limit is kept for the upstream client, identity files and the accept loop:
    running out of descriptors would stall every client instead of refusing a few.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft // 2))


class ProtocolLog:
    """Stands in for aiohttp's server logger, which prints a traceback per bad request.

    A malformed request is the client's problem: one debug line with the error's type (its
    text may quote header values, tokens included). Anything else is our bug: one error line.
    """

    def debug(self, *args: Any, **kwargs: Any) -> None:
        self._record(kwargs.get("exc_info"))

    def exception(self, *args: Any, **kwargs: Any) -> None:
        self._record(kwargs.get("exc_info"))

    def _record(self, exc: Any) -> None:
        if not isinstance(exc, BaseException):
            return
        if isinstance(exc, HttpProcessingError):
            log.debug("http_request_rejected", error_type=type(exc).__name__, status=exc.code)
            return
        log.error("http_handler_failed", error_type=type(exc).__name__)


class Listener:
    """Serves an aiohttp runner on a listening socket, refusing connections above a cap."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket, max_connections: int) -> None:
        self._runner = runner
        self._sock = sock
        self.max_connections = max_connections
        self.refused = 0
        self._saturated = False
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, sock=self._sock, backlog=LISTEN_BACKLOG
        )

    def close(self) -> None:
        """Stop accepting; connections already open are drained by the runner's cleanup."""
        if self._server is not None:
            self._server.close()
            self._server = None

    def _protocol(self) -> asyncio.Protocol:
        server = self._runner.server
        assert server is not None
        if len(server.connections) < self.max_connections:
            if self._saturated:
                self._saturated = False
                log.info("connection_limit_cleared", refused=self.refused)
            return server()

        self.refused += 1
        if not self._saturated:
            # Once per episode, not once per refused connection.
            self._saturated = True
            log.warning("connection_limit_reached", max_connections=self.max_connections)
        return _Busy()


class _Busy(asyncio.Protocol):
    """Answers 503 at once and closes: the client retries, the agent keeps its descriptors."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_BUSY_RESPONSE)
        # Half-close, then read what the client sends until it hangs up or the timer ends:
        # closing with unread input would reset the connection and lose the answer.
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(_BUSY_LINGER_SECONDS, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False
