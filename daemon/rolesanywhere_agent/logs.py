"""structlog set-up: JSON lines for services and containers, console output on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

# Keys whose values never reach a log line, whatever a caller passes by mistake.
_SECRET_KEYS = frozenset(
    {
        "secret_access_key",
        "secretaccesskey",
        "session_token",
        "sessiontoken",
        "token",
        "authorization",
        "passphrase",
        "password",
        "private_key_pem",
    }
)


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in event.keys() & _SECRET_KEYS:
        event[key] = "[redacted]"
    return event


def configure(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    """Send every log line to `stream` (stderr by default: stdout may carry data)."""
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=(stream or sys.stderr).isatty())
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
