"""What the emulated account holds: trust anchors and profiles, loaded once from YAML."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml
from cryptography import x509

from ..errors import ConfigError, IdentityError
from ..identity import is_ca, load_certificates, pem_blocks, read_file

DEFAULT_ACCOUNT = "111122223333"
MIN_DURATION = 900
MAX_DURATION = 43200

_ARN = re.compile(
    r"arn:(?P<partition>aws|aws-cn|aws-us-gov):(?P<service>[a-z0-9-]+):"
    r"(?P<region>[a-z0-9-]*):(?P<account>\d{12}|):(?P<resource>.+)"
)
_ACCOUNT = re.compile(r"\d{12}")


@dataclass(frozen=True)
class Arn:
    partition: str
    service: str
    region: str
    account: str
    resource: str


def parse_arn(text: str) -> Arn | None:
    match = _ARN.fullmatch(text)
    return Arn(**match.groupdict()) if match else None


def is_trust_anchor_arn(text: str) -> bool:
    return _is_arn_of(text, "rolesanywhere", "trust-anchor/")


def is_profile_arn(text: str) -> bool:
    return _is_arn_of(text, "rolesanywhere", "profile/")


def is_role_arn(text: str) -> bool:
    arn = parse_arn(text)
    return (
        arn is not None
        and arn.service == "iam"
        and arn.region == ""
        and bool(arn.account)
        and arn.resource.startswith("role/")
        and len(arn.resource) > len("role/")
    )


def role_name(role_arn: str) -> str:
    """The last path segment: `role/teams/web` names the role `web`."""
    return role_arn.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class TrustAnchor:
    arn: str
    certificates: tuple[x509.Certificate, ...]
    enabled: bool = True
    crls: tuple[x509.CertificateRevocationList, ...] = ()

    @property
    def region(self) -> str:
        arn = parse_arn(self.arn)
        return arn.region if arn else ""


@dataclass(frozen=True)
class Profile:
    arn: str
    role_arns: tuple[str, ...]
    enabled: bool = True
    # The longest session the profile grants; a client asking for more gets this much.
    duration_seconds: int = 3600
    accept_role_session_name: bool = False

    @property
    def region(self) -> str:
        arn = parse_arn(self.arn)
        return arn.region if arn else ""


@dataclass(frozen=True)
class EmulatorConfig:
    trust_anchors: tuple[TrustAnchor, ...]
    profiles: tuple[Profile, ...]
    account_id: str = DEFAULT_ACCOUNT

    def trust_anchor(self, arn: str) -> TrustAnchor | None:
        return next((anchor for anchor in self.trust_anchors if anchor.arn == arn), None)

    def profile(self, arn: str) -> Profile | None:
        return next((profile for profile in self.profiles if profile.arn == arn), None)


def load_config(path: Path | str) -> EmulatorConfig:
    """Read and validate an emulator YAML file; relative file paths are taken from its folder.

    Every error is a ConfigError naming the file and the key path at fault.
    """
    path = Path(path)
    document = _read_yaml(path)
    reader = _Reader(path)
    top = reader.mapping(document, "", {"account_id", "trust_anchors", "profiles"})

    account = str(top.get("account_id", DEFAULT_ACCOUNT))
    if not _ACCOUNT.fullmatch(account):
        reader.fail("account_id", "expected a 12-digit account id as a quoted string")

    anchors = reader.items(top, "trust_anchors", reader.trust_anchor)
    profiles = reader.items(top, "profiles", reader.profile)
    return EmulatorConfig(trust_anchors=anchors, profiles=profiles, account_id=account)


def _is_arn_of(text: str, service: str, prefix: str) -> bool:
    arn = parse_arn(text)
    return (
        arn is not None
        and arn.service == service
        and bool(arn.region and arn.account)
        and arn.resource.startswith(prefix)
        and len(arn.resource) > len(prefix)
    )


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None


class _Reader:
    """Walks the YAML document, keeping the file name for messages."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, expected: str) -> NoReturn:
        raise ConfigError(f"{self.path}: {key}: {expected}")

    def mapping(self, value: Any, key: str, allowed: set[str]) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            self.fail(key or "(top level)", "expected a mapping")
        unknown = sorted(str(name) for name in value if name not in allowed)
        if unknown:
            prefix = f"{key}." if key else ""
            self.fail(f"{prefix}{unknown[0]}", f"unknown key; expected one of {_names(allowed)}")
        return value

    def items(self, top: Mapping[str, Any], key: str, read: Callable[[Any, str], Any]) -> tuple:
        value = top.get(key, [])
        if not isinstance(value, list):
            self.fail(key, "expected a list")
        items = tuple(read(item, f"{key}[{index}]") for index, item in enumerate(value))
        arns = [item.arn for item in items]
        for index, arn in enumerate(arns):
            if arn in arns[:index]:
                self.fail(f"{key}[{index}].arn", f"duplicate ARN {arn}")
        return items

    def trust_anchor(self, value: Any, key: str) -> TrustAnchor:
        fields = self.mapping(value, key, {"arn", "certificates", "enabled", "crls"})
        arn = self.string(fields, key, "arn")
        if not is_trust_anchor_arn(arn):
            expected = "expected arn:aws:rolesanywhere:REGION:ACCOUNT:trust-anchor/ID"
            self.fail(f"{key}.arn", expected)

        certificates = tuple(
            cert
            for item_key, item in self.paths(fields, key, "certificates", required=True)
            for cert in self.certificates(item, item_key)
        )
        crls = tuple(
            crl
            for item_key, item in self.paths(fields, key, "crls", required=False)
            for crl in self.crls(item, item_key)
        )
        enabled = self.boolean(fields, key, "enabled", True)
        return TrustAnchor(arn=arn, certificates=certificates, enabled=enabled, crls=crls)

    def profile(self, value: Any, key: str) -> Profile:
        allowed = {"arn", "role_arns", "enabled", "duration_seconds", "accept_role_session_name"}
        fields = self.mapping(value, key, allowed)
        arn = self.string(fields, key, "arn")
        if not is_profile_arn(arn):
            self.fail(f"{key}.arn", "expected arn:aws:rolesanywhere:REGION:ACCOUNT:profile/ID")

        roles = fields.get("role_arns")
        if not isinstance(roles, list) or not roles:
            self.fail(f"{key}.role_arns", "expected a non-empty list of role ARNs")
        for index, role in enumerate(roles):
            if not isinstance(role, str) or not is_role_arn(role):
                self.fail(f"{key}.role_arns[{index}]", "expected arn:aws:iam::ACCOUNT:role/NAME")

        duration = fields.get("duration_seconds", 3600)
        if type(duration) is not int or not MIN_DURATION <= duration <= MAX_DURATION:
            self.fail(f"{key}.duration_seconds", "expected an integer from 900 to 43200")

        return Profile(
            arn=arn,
            role_arns=tuple(roles),
            enabled=self.boolean(fields, key, "enabled", True),
            duration_seconds=duration,
            accept_role_session_name=self.boolean(fields, key, "accept_role_session_name", False),
        )

    def string(self, fields: Mapping[str, Any], key: str, name: str) -> str:
        value = fields.get(name)
        if not isinstance(value, str) or not value:
            self.fail(f"{key}.{name}", "expected a non-empty string")
        return value

    def boolean(self, fields: Mapping[str, Any], key: str, name: str, default: bool) -> bool:
        value = fields.get(name, default)
        if not isinstance(value, bool):
            self.fail(f"{key}.{name}", "expected true or false")
        return value

    def paths(
        self, fields: Mapping[str, Any], key: str, name: str, *, required: bool
    ) -> list[tuple[str, Path]]:
        value = fields.get(name, [])
        # A single file may be given without the list brackets.
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or (required and not items):
            self.fail(f"{key}.{name}", "expected a list of PEM file paths")
        found = []
        for index, item in enumerate(items):
            item_key = f"{key}.{name}[{index}]"
            if not isinstance(item, str) or not item:
                self.fail(item_key, "expected a file path")
            found.append((item_key, self.path.parent / item))
        return found

    def certificates(self, path: Path, key: str) -> list[x509.Certificate]:
        try:
            certificates = load_certificates(path)
        except IdentityError as exc:
            raise ConfigError(f"{self.path}: {key}: {exc}") from None
        for cert in certificates:
            if not is_ca(cert):
                self.fail(key, f"{path} holds a certificate that is not a CA")
        return certificates

    def crls(self, path: Path, key: str) -> list[x509.CertificateRevocationList]:
        try:
            data = read_file(path)
        except IdentityError as exc:
            raise ConfigError(f"{self.path}: {key}: {exc}") from None
        blocks = [block for label, block in pem_blocks(data) if label == b"X509 CRL"]
        try:
            if blocks:
                return [x509.load_pem_x509_crl(block) for block in blocks]
            return [x509.load_der_x509_crl(data)]
        except ValueError:
            problem = f"{path} is not a PEM or DER certificate revocation list"
        raise ConfigError(f"{self.path}: {key}: {problem}")


def _names(allowed: set[str]) -> str:
    return ", ".join(sorted(allowed))
