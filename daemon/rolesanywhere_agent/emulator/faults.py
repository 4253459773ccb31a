"""Faults a test asks the emulator to play: errors, latency, drops, bad or short answers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

# The error type a fault answers with when it gives only a status, and the other way round.
_TYPE_FOR_STATUS = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    429: "ThrottlingException",
}
_STATUS_FOR_TYPE = {error_type: status for status, error_type in _TYPE_FOR_STATUS.items()}
_SERVER_ERROR = "InternalServerException"


@dataclass(frozen=True)
class Fault:
    """One way to misbehave, for `times` CreateSession calls (None: until cleared).

    `status`, `error_type`, `body` and `drop_connection` replace the answer without looking
    at the request. `grant_seconds`, `expiration_override` and `empty_credential_set` shape
    the answer to a request that passed verification. `delay` (real seconds, to simulate
    network latency) comes before either.
    """

    status: int | None = None
    error_type: str | None = None
    message: str = ""
    delay: float = 0
    drop_connection: bool = False
    # A raw (malformed or truncated) body, sent as it is.
    body: str | None = None
    # A short-lived grant: the session expires this many seconds from now.
    grant_seconds: int | None = None
    # The `expiration` text in the answer, e.g. "" or a time in the past.
    expiration_override: str | None = None
    empty_credential_set: bool = False
    times: int | None = None

    @property
    def replaces_answer(self) -> bool:
        return (
            self.status is not None
            or self.error_type is not None
            or self.body is not None
            or self.drop_connection
        )

    @property
    def shapes_answer(self) -> bool:
        return self.expiration_override is not None or self.empty_credential_set

    def error(self) -> tuple[int, str]:
        """The status and error type of an error fault, each filled from the other."""
        if self.status is not None:
            error_type = self.error_type or _TYPE_FOR_STATUS.get(self.status, _SERVER_ERROR)
            return self.status, error_type
        error_type = self.error_type or _SERVER_ERROR
        return _STATUS_FOR_TYPE.get(error_type, 500), error_type


def fault_from_json(document: Any) -> Fault:
    """Build a Fault from the JSON the HTTP control receives; ValueError names a bad field."""
    if not isinstance(document, Mapping):
        raise ValueError("expected a JSON object")
    known = {item.name: item for item in fields(Fault)}
    unknown = sorted(set(document) - set(known))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}")
    for name, value in document.items():
        if not _fits(name, value):
            raise ValueError(f"field {name!r} has the wrong type")
    return Fault(**document)


class FaultQueue:
    """Faults in the order injected; the first one applies until its `times` are used up."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        if fault.times is not None and fault.times <= 0:
            raise ValueError("times must be positive, or None for until cleared")
        if fault.status is not None and not 200 <= fault.status <= 599:
            raise ValueError("status must be an HTTP status from 200 to 599")
        self._faults.append(fault)

    def clear(self) -> None:
        self._faults.clear()

    def take(self) -> Fault | None:
        if not self._faults:
            return None
        fault = self._faults[0]
        if fault.times is None:
            return fault

        remaining = fault.times - 1
        if remaining:
            self._faults[0] = replace(fault, times=remaining)
        else:
            self._faults.pop(0)
        return fault

    def __len__(self) -> int:
        return len(self._faults)


def _fits(name: str, value: Any) -> bool:
    if name in ("drop_connection", "empty_credential_set"):
        return isinstance(value, bool)
    if name == "delay":
        return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    if name == "message":
        return isinstance(value, str)
    if name in ("error_type", "body", "expiration_override"):
        return value is None or isinstance(value, str)
    # status, grant_seconds, times
    return value is None or (isinstance(value, int) and not isinstance(value, bool))
