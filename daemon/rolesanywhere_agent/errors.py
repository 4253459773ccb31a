"""The agent's exceptions.

AgentError
├── ConfigError          a config file or value is wrong (names file, key path, expectation)
├── IdentityError        a certificate, chain or key cannot be used (names the file)
└── UpstreamError        CreateSession did not give a usable session
    ├── TransportError   no answer: refused, reset, timed out
    ├── InvalidResponse  an answer we must not trust (bad JSON, empty set, past expiration)
    └── ServiceError     the service refused, with its own error type and message
        ├── AccessDenied
        ├── ValidationError
        ├── NotFound
        └── Throttled

Every message is one line meant for an operator; none may contain a secret.
"""

from __future__ import annotations

from datetime import datetime


class AgentError(Exception):
    """Base of every error the agent reports to an operator."""


class ConfigError(AgentError):
    pass


class IdentityError(AgentError):
    pass


class UpstreamError(AgentError):
    # The answer's `Date` header, when there was an answer: lets the caller measure skew.
    server_date: datetime | None = None


class TransportError(UpstreamError):
    pass


class InvalidResponse(UpstreamError):
    pass


class ServiceError(UpstreamError):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(f"{error_type} ({status}): {message}")
        self.status = status
        self.error_type = error_type
        self.service_message = message


class AccessDenied(ServiceError):
    pass


class ValidationError(ServiceError):
    pass


class NotFound(ServiceError):
    pass


class Throttled(ServiceError):
    pass


def service_error(status: int, error_type: str, message: str) -> ServiceError:
    """The typed exception for an error answer of the service."""
    if status == 403 or error_type.startswith("AccessDenied"):
        kind: type[ServiceError] = AccessDenied
    elif status == 429 or "Throttl" in error_type:
        kind = Throttled
    elif status == 404 or error_type.startswith("ResourceNotFound"):
        kind = NotFound
    elif status == 400 or error_type.startswith("Validation"):
        kind = ValidationError
    else:
        kind = ServiceError
    return kind(status, error_type, message)
