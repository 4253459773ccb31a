"""The SigV4 `Authorization` header, shared by the X.509 and the HMAC variants."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..signing import AMZ_DATE_FORMAT

TERMINATOR = "aws4_request"
# How far a request's X-Amz-Date may be from the service's clock, as on AWS.
ALLOWED_SKEW = timedelta(minutes=5)

_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class Authorization:
    algorithm: str
    # The serial number for AWS4-X509, the access key id for AWS4-HMAC.
    identifier: str
    date: str
    region: str
    service: str
    terminator: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return "/".join([self.date, self.region, self.service, self.terminator])


def parse_authorization(value: str) -> Authorization | None:
    """`ALG Credential=ID/DATE/REGION/SERVICE/aws4_request, SignedHeaders=a;b, Signature=hex`."""
    algorithm, _, rest = value.strip().partition(" ")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, field = part.strip().partition("=")
        if not sep or name in fields:
            return None
        fields[name] = field
    if set(fields) != {"Credential", "SignedHeaders", "Signature"}:
        return None

    credential = fields["Credential"].split("/")
    signed = tuple(fields["SignedHeaders"].split(";"))
    signature = fields["Signature"]
    if len(credential) != 5 or not all(credential) or not all(signed):
        return None
    if not _HEX.fullmatch(signature):
        return None

    identifier, date, region, service, terminator = credential
    return Authorization(
        algorithm=algorithm,
        identifier=identifier,
        date=date,
        region=region,
        service=service,
        terminator=terminator,
        signed_headers=signed,
        signature=signature,
    )


def lowered_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-case names; a repeated header's values are joined with commas, as SigV4 does."""
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        lowered[key] = f"{lowered[key]},{value}" if key in lowered else value
    return lowered


def parse_amz_date(text: str) -> datetime | None:
    if not _AMZ_DATE.fullmatch(text):
        return None
    try:
        return datetime.strptime(text, AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def skew_problem(signed_at: datetime, now: datetime) -> str | None:
    """AWS's own wording when X-Amz-Date is more than five minutes from the service clock."""
    stamp = signed_at.strftime(AMZ_DATE_FORMAT)
    now = now.replace(microsecond=0)
    if signed_at > now + ALLOWED_SKEW:
        limit = (now + ALLOWED_SKEW).strftime(AMZ_DATE_FORMAT)
        return (
            f"Signature not yet current: {stamp} is still later than {limit} "
            f"({now.strftime(AMZ_DATE_FORMAT)} + 5 min.)"
        )
    if signed_at < now - ALLOWED_SKEW:
        limit = (now - ALLOWED_SKEW).strftime(AMZ_DATE_FORMAT)
        return (
            f"Signature expired: {stamp} is now earlier than {limit} "
            f"({now.strftime(AMZ_DATE_FORMAT)} - 5 min.)"
        )
    return None


def scope_problem(
    auth: Authorization, amz_date: str, region: str | None, service: str
) -> str | None:
    """AWS's wording for a credential scope that does not fit the request.

    `region` None leaves the region unchecked, for a caller that learns it later.
    """
    if auth.date != amz_date[:8]:
        return (
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{auth.date}' != '{amz_date[:8]}', from '{amz_date}'."
        )
    if region is not None and auth.region != region:
        return f"Credential should be scoped to a valid region, not '{auth.region}'."
    if auth.service != service:
        return f"Credential should be scoped to correct service: '{service}'."
    if auth.terminator != TERMINATOR:
        return (
            f"Credential should be scoped with a valid terminator: '{TERMINATOR}', "
            f"not '{auth.terminator}'."
        )
    return None
