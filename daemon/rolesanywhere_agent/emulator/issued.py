"""Temporary credentials the emulator has handed out, kept in memory for STS to check."""

from __future__ import annotations

import base64
import hashlib
import secrets
import string
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .model import parse_arn, role_name

_KEY_ALPHABET = string.ascii_uppercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"


@dataclass(frozen=True)
class IssuedSession:
    """One session; the repr names it without its secret or token."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime
    role_arn: str
    session_name: str
    account_id: str

    @property
    def role_id(self) -> str:
        return role_id(self.role_arn)

    @property
    def assumed_role_arn(self) -> str:
        return (
            f"arn:aws:sts::{self.account_id}:assumed-role/"
            f"{role_name(self.role_arn)}/{self.session_name}"
        )

    @property
    def user_id(self) -> str:
        return f"{self.role_id}:{self.session_name}"


class CredentialStore:
    def __init__(self) -> None:
        self._sessions: dict[str, IssuedSession] = {}

    def issue(
        self, *, role_arn: str, session_name: str, account_id: str, expiration: datetime
    ) -> IssuedSession:
        # The session belongs to the role's account, which the role ARN names.
        arn = parse_arn(role_arn)
        session = IssuedSession(
            access_key_id=_access_key_id(),
            secret_access_key="".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40)),
            session_token=_session_token(),
            expiration=expiration,
            role_arn=role_arn,
            session_name=session_name,
            account_id=arn.account if arn and arn.account else account_id,
        )
        self._sessions[session.access_key_id] = session
        return session

    def find(self, access_key_id: str) -> IssuedSession | None:
        return self._sessions.get(access_key_id)

    def __len__(self) -> int:
        return len(self._sessions)


def role_id(role_arn: str) -> str:
    """A stable `AROA…` id per role, as IAM gives each role one unique id."""
    digest = hashlib.sha256(role_arn.encode("utf-8")).digest()
    return "AROA" + base64.b32encode(digest).decode("ascii")[:17]


def expiry(now: datetime, seconds: int) -> datetime:
    # Whole seconds: the wire format has no fraction, so the store must not keep one either.
    return now.replace(microsecond=0) + timedelta(seconds=seconds)


def _access_key_id() -> str:
    return "ASIA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))


def _session_token() -> str:
    # Real tokens are several hundred base64 characters; clients must not assume a size.
    return base64.b64encode(secrets.token_bytes(300)).decode("ascii")
