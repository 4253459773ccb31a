"""Socket activation: take over the listening socket that systemd opened for this process.

systemd passes sockets as file descriptors from 3 on and names how many in $LISTEN_FDS, for
the process in $LISTEN_PID. The variables are removed after reading, so that a child process
(an SDK the demo starts, say) never mistakes the agent's socket for its own.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

import structlog

from .errors import ConfigError

log = structlog.get_logger("rolesanywhere_agent.activation")

FIRST_FD = 3
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def inherited_socket(environ: MutableMapping[str, str] | None = None) -> socket.socket | None:
    """The listening TCP socket handed over by systemd, or None when there is none."""
    environ = os.environ if environ is None else environ
    pid, count = environ.get("LISTEN_PID", ""), environ.get("LISTEN_FDS", "")
    for name in _VARIABLES:
        environ.pop(name, None)
    if pid != str(os.getpid()) or not count.isdigit() or int(count) == 0:
        return None
    if int(count) > 1:
        log.warning("extra_sockets_ignored", received=int(count), used=FIRST_FD)

    try:
        sock = socket.socket(fileno=FIRST_FD)
    except OSError as exc:
        # ENOTSOCK (a file on fd 3) or EBADF (fd 3 closed): LISTEN_FDS promised a socket.
        raise ConfigError(
            f"socket activation: LISTEN_FDS={count} but file descriptor 3 is not an open "
            f"socket ({exc.strerror}); start the agent from its .socket unit or unset LISTEN_FDS"
        ) from None
    usable = sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6)
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if not usable or not listening:
        sock.detach()
        raise ConfigError(
            "socket activation: file descriptor 3 is not a listening TCP socket; "
            "use ListenStream= in the .socket unit"
        )
    sock.setblocking(False)
    host, port = sock.getsockname()[:2]
    log.info("socket_inherited", host=host, port=port)
    return sock
