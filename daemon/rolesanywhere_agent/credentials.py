"""The immutable credentials value and the JSON shapes in which clients receive it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

EXPIRATION_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_expiration(moment: datetime) -> str:
    """RFC 3339 in the one form every SDK accepts: UTC, whole seconds, a `Z` suffix.

    The JS SDK refuses `+00:00` and botocore fails on a time without a zone (case C15).
    """
    return moment.astimezone(UTC).strftime(EXPIRATION_FORMAT)


def parse_expiration(text: str) -> datetime:
    """Parse an RFC 3339 time that carries a zone; raise ValueError otherwise."""
    if not text:
        raise ValueError("empty expiration")
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"expiration {text!r} has no time zone")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Credentials:
    """One temporary session; the repr shows which session, never its secrets."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime
    role_arn: str = ""
    assumed_role_arn: str = ""

    @property
    def account_id(self) -> str:
        parts = self.role_arn.split(":")
        return parts[4] if len(parts) > 4 else ""

    def seconds_left(self, now: datetime) -> float:
        return (self.expiration - now).total_seconds()

    def container_json(self) -> dict[str, Any]:
        """The body that the SDKs' container-credentials providers read."""
        return {
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Token": self.session_token,
            "Expiration": format_expiration(self.expiration),
            "AccountId": self.account_id,
            "RoleArn": self.role_arn,
        }

    def imds_json(self, last_updated: datetime) -> dict[str, Any]:
        """The body of IMDS `.../security-credentials/{role}`."""
        return {
            "Code": "Success",
            "LastUpdated": format_expiration(last_updated),
            "Type": "AWS-HMAC",
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Token": self.session_token,
            "Expiration": format_expiration(self.expiration),
        }

    def process_json(self) -> dict[str, Any]:
        """The stdout document of a `credential_process` command."""
        return {
            "Version": 1,
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "SessionToken": self.session_token,
            "Expiration": format_expiration(self.expiration),
        }
