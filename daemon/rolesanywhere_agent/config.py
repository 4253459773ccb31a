"""The agent's YAML configuration, validated once into frozen typed objects.

Every error names the file, the key path and what was expected, on one line.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .errors import ConfigError
from .identity import IdentityFiles, read_regular_file
from .rolesanywhere import SessionRequest, endpoint_for, redact

DEFAULT_PORT = 9912
MIN_DURATION, MAX_DURATION = 900, 43200
SHORT_SESSION_SECONDS = 1200
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")

# Each pattern validates a whole value: use fullmatch, as `$` also matches before a final
# newline ("web\n" would pass).
_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_RA_ARN = r"arn:aws[a-z-]*:rolesanywhere:([a-z0-9-]+):(\d{12}):%s/[A-Za-z0-9-]+"
_ANCHOR_ARN = re.compile(_RA_ARN % "trust-anchor")
_PROFILE_ARN = re.compile(_RA_ARN % "profile")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
# What each ARN looks like, for the error message when one does not match.
_ARN_SHAPES = {
    _ANCHOR_ARN: "arn:aws:rolesanywhere:REGION:ACCOUNT:trust-anchor/ID",
    _PROFILE_ARN: "arn:aws:rolesanywhere:REGION:ACCOUNT:profile/ID",
    _ROLE_ARN: "arn:aws:iam::ACCOUNT:role/NAME",
}
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
_SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}")
_ENV_VAR = re.compile(r"\$\{?([A-Z_][A-Z0-9_]*)\}?")


@dataclass(frozen=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    allowed_hosts: tuple[str, ...] = ()
    allow_remote: bool = False


@dataclass(frozen=True)
class LogConfig:
    format: str = "json"
    level: str = "info"


@dataclass(frozen=True)
class TokenFileConfig:
    path: Path
    mode: int = 0o600
    group: str | None = None


@dataclass(frozen=True)
class ImdsConfig:
    port: int


@dataclass(frozen=True)
class UpstreamConfig:
    """How CreateSession reaches the service: TLS trust and proxy (see upstream.py)."""

    ca_bundle: Path | None = None
    insecure: bool = False
    # None: HTTPS_PROXY / NO_PROXY from the environment decide, as for any aiohttp client.
    proxy: str | None = None


@dataclass(frozen=True)
class ProfileConfig:
    name: str
    identity: IdentityFiles
    session: SessionRequest
    token_file: TokenFileConfig
    imds: ImdsConfig | None = None
    upstream: UpstreamConfig = UpstreamConfig()


@dataclass(frozen=True)
class AgentConfig:
    listen: ListenConfig
    log: LogConfig
    profiles: Mapping[str, ProfileConfig]
    source: Path | None = None
    warnings: tuple[str, ...] = field(default=(), compare=False)


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and validate `path`; raise ConfigError with a one-line message on any problem."""
    try:
        # A regular file of at most 1 MiB: a FIFO would hang the start (or a SIGHUP) forever.
        raw = read_regular_file(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({_reason(exc)})") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ConfigError(f"{path}: file is UTF-16; re-save as UTF-8")
    try:
        text = raw.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({_reason(exc)})") from None
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_reason(exc)})") from None
    except ValueError as exc:
        # PyYAML converts scalars with int() and datetime(): a 5,000-digit integer or a
        # 2024-13-01 date fails there, outside its own error type.
        raise ConfigError(f"{path}: not valid YAML ({_value_reason(exc)})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deeply)") from None
    return parse_config(document, path, os.environ if environ is None else environ)


def parse_config(document: Any, source: Path, environ: Mapping[str, str]) -> AgentConfig:
    reader = _Reader(source, environ)
    top = reader.mapping(document, "", {"listen", "log", "token_dir", "profiles"})
    listen = _listen(reader, top.get("listen"))
    log = _log(reader, top.get("log"))
    token_dir = reader.path(top.get("token_dir"), "token_dir") or _default_token_dir(environ)

    if top.get("profiles") is None:
        raise reader.error("profiles", "required: a mapping of profile names to their settings")
    profiles_doc = reader.mapping(top.get("profiles"), "profiles", None, required=True)
    if not profiles_doc:
        raise reader.error("profiles", "expected at least one profile")
    profiles = {}
    for name, doc in profiles_doc.items():
        profiles[str(name)] = _profile(reader, str(name), doc, token_dir)

    _check_ports(reader, listen, profiles)
    _check_token_files(reader, profiles)
    return AgentConfig(
        listen=listen,
        log=log,
        profiles=profiles,
        source=source,
        warnings=tuple(reader.warnings),
    )


def _listen(reader: _Reader, doc: Any) -> ListenConfig:
    keys = {"host", "port", "allowed_hosts", "allow_remote"}
    listen = reader.mapping(doc, "listen", keys)
    host = reader.string(listen.get("host", "127.0.0.1"), "listen.host")
    port = reader.integer(listen.get("port", DEFAULT_PORT), "listen.port", 0, 65535)
    allow_remote = reader.boolean(listen.get("allow_remote", False), "listen.allow_remote")
    if not allow_remote and not is_loopback(host):
        raise reader.error(
            "listen.host",
            f"{shown(host)} is not a loopback address; "
            "use 127.0.0.1 or set listen.allow_remote: true",
        )
    names = reader.string_list(listen.get("allowed_hosts", []), "listen.allowed_hosts")
    return ListenConfig(host, port, tuple(n.lower() for n in names), allow_remote)


def _log(reader: _Reader, doc: Any) -> LogConfig:
    log = reader.mapping(doc, "log", {"format", "level"})
    fmt = reader.choice(log.get("format", "json"), "log.format", LOG_FORMATS)
    level = log.get("level", "info")
    # Only a string is lowered: str() of an aliased structure could be gigabytes long.
    level = reader.choice(level.lower() if isinstance(level, str) else level, "log.level",
                          LOG_LEVELS)
    return LogConfig(fmt, level)


_PROFILE_KEYS = {
    "certificate",
    "intermediates",
    "private_key",
    "passphrase_file",
    "pkcs12",
    "trust_anchor_arn",
    "profile_arn",
    "role_arn",
    "region",
    "endpoint",
    "session_duration",
    "role_session_name",
    "token_file",
    "imds",
    "ca_bundle",
    "insecure",
    "proxy",
}


def _profile(reader: _Reader, name: str, doc: Any, token_dir: Path) -> ProfileConfig:
    where = f"profiles.{key_name(name)}"
    if not _PROFILE_NAME.fullmatch(name):
        raise reader.error(
            where,
            "expected a name of 1-64 letters, digits, '.', '_' or '-' "
            "that starts with a letter or digit",
        )
    profile = reader.mapping(doc, where, _PROFILE_KEYS, required=True)

    identity = _identity(reader, where, profile)
    session = _session(reader, where, profile)
    token_file = _token_file(reader, where, profile.get("token_file"), token_dir / f"{name}.token")
    imds = None
    if profile.get("imds") is not None:
        imds_doc = reader.mapping(profile["imds"], f"{where}.imds", {"port"})
        # 0 picks a free port, as for listen.port; `Agent.exports` then names the real one.
        imds = ImdsConfig(reader.integer(imds_doc.get("port"), f"{where}.imds.port", 0, 65535))
    upstream = _upstream(reader, where, profile)
    return ProfileConfig(name, identity, session, token_file, imds, upstream)


def _upstream(reader: _Reader, where: str, profile: Mapping[str, Any]) -> UpstreamConfig:
    ca_bundle = reader.path(profile.get("ca_bundle"), f"{where}.ca_bundle")
    insecure = reader.boolean(profile.get("insecure", False), f"{where}.insecure")
    if insecure and ca_bundle is not None:
        raise reader.error(f"{where}.insecure", "not used together with ca_bundle; drop one")

    proxy = profile.get("proxy")
    if proxy is not None:
        proxy = reader.string(proxy, f"{where}.proxy")
        parts = urlsplit(proxy)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise reader.error(
                f"{where}.proxy",
                f"expected a URL like http://proxy.example:3128, got {shown(redact(proxy))}",
            )
    return UpstreamConfig(ca_bundle, insecure, proxy)


def _identity(reader: _Reader, where: str, profile: Mapping[str, Any]) -> IdentityFiles:
    def path(key: str) -> Path | None:
        return reader.path(profile.get(key), f"{where}.{key}")

    pkcs12 = path("pkcs12")
    if pkcs12 is not None:
        for key in ("certificate", "private_key"):
            if profile.get(key) is not None:
                raise reader.error(f"{where}.{key}", "not used together with pkcs12; drop one")
    else:
        for key in ("certificate", "private_key"):
            if profile.get(key) is None:
                raise reader.error(f"{where}.{key}", "required (a file path), or set pkcs12")
    return IdentityFiles(
        certificate=path("certificate"),
        private_key=path("private_key"),
        intermediates=path("intermediates"),
        passphrase_file=path("passphrase_file"),
        pkcs12=pkcs12,
    )


def _session(reader: _Reader, where: str, profile: Mapping[str, Any]) -> SessionRequest:
    anchor = reader.arn(profile.get("trust_anchor_arn"), f"{where}.trust_anchor_arn", _ANCHOR_ARN)
    profile_arn = reader.arn(profile.get("profile_arn"), f"{where}.profile_arn", _PROFILE_ARN)
    role = reader.arn(profile.get("role_arn"), f"{where}.role_arn", _ROLE_ARN)
    anchor_region = _ANCHOR_ARN.fullmatch(anchor).group(1)  # type: ignore[union-attr]
    profile_region = _PROFILE_ARN.fullmatch(profile_arn).group(1)  # type: ignore[union-attr]
    if profile_region != anchor_region:
        raise reader.error(
            f"{where}.profile_arn",
            f"region {profile_region} differs from the trust anchor's region {anchor_region}; "
            "both must be in one region",
        )

    region, fips = _region(reader, where, profile.get("region"), anchor_region)
    endpoint = _endpoint(reader, where, profile.get("endpoint")) or endpoint_for(region, fips)
    duration = reader.integer(
        profile.get("session_duration", 3600), f"{where}.session_duration",
        MIN_DURATION, MAX_DURATION,
    )
    if duration < SHORT_SESSION_SECONDS:
        reader.warnings.append(
            f"{where}.session_duration: {duration} s sessions make SDKs poll constantly "
            "(botocore refreshes within 15 min of expiry); consider 3600"
        )
    session_name = profile.get("role_session_name")
    if session_name is not None:
        session_name = reader.string(session_name, f"{where}.role_session_name")
        if not _SESSION_NAME.fullmatch(session_name):
            raise reader.error(
                f"{where}.role_session_name", "2-64 characters of letters, digits and +=,.@_-"
            )
    return SessionRequest(anchor, profile_arn, role, region, endpoint, duration, session_name)


def _region(reader: _Reader, where: str, value: Any, anchor_region: str) -> tuple[str, bool]:
    """The clean region for the signature scope, and whether to use the FIPS host (case C11)."""
    if value is None:
        return anchor_region, False
    text = reader.string(value, f"{where}.region")
    fips = text.startswith("fips-") or text.endswith("-fips")
    clean = text.removeprefix("fips-").removesuffix("-fips")
    if not _REGION.fullmatch(clean):
        raise reader.error(f"{where}.region", f"{shown(text)} is not a region name like eu-west-1")
    if clean != anchor_region:
        raise reader.error(
            f"{where}.region",
            f"{clean} differs from the trust anchor's region {anchor_region}",
        )
    return clean, fips


def _endpoint(reader: _Reader, where: str, value: Any) -> str | None:
    if value is None:
        return None
    text = reader.string(value, f"{where}.endpoint")
    try:
        parts = urlsplit(text)
        usable = parts.scheme in ("https", "http") and bool(parts.hostname)
        usable = usable and not parts.query and not parts.fragment
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        usable = False
    if not usable:
        raise reader.error(f"{where}.endpoint", f"expected an https:// URL, got {shown(text)}")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise reader.error(f"{where}.endpoint", "plain http is only allowed to a loopback host")
    return text.rstrip("/")


def _token_file(reader: _Reader, where: str, doc: Any, default: Path) -> TokenFileConfig:
    key = f"{where}.token_file"
    if isinstance(doc, str):
        doc = {"path": doc}
    token = reader.mapping(doc, key, {"path", "mode", "group"})
    path = reader.path(token.get("path"), f"{key}.path") or default
    raw_mode = token.get("mode", "0600")
    mode = _MODES.get(raw_mode) if type(raw_mode) in (str, int) else None
    if mode is None:
        raise reader.error(
            f"{key}.mode", f"expected \"0600\" or \"0640\" (in quotes), got {shown(token['mode'])}"
        )
    group = token.get("group")
    if group is not None:
        group = reader.string(group, f"{key}.group")
    return TokenFileConfig(path, mode, group)


# YAML 1.1 reads an unquoted 0640 as the octal integer 416, and 640 as decimal 640.
_MODES: dict[Any, int] = {
    "0600": 0o600, "600": 0o600, 0o600: 0o600, 600: 0o600,
    "0640": 0o640, "640": 0o640, 0o640: 0o640, 640: 0o640,
}


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping, where YAML keeps the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                continue  # other keys are refused later, with the key path
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {shown(key)} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_ports(
    reader: _Reader, listen: ListenConfig, profiles: Mapping[str, ProfileConfig]
) -> None:
    taken = {listen.port: "listen.port"}
    for profile in profiles.values():
        if profile.imds is None:
            continue
        key = f"profiles.{profile.name}.imds.port"
        owner = taken.get(profile.imds.port)
        if owner and profile.imds.port != 0:
            raise reader.error(key, f"port {profile.imds.port} is already used by {owner}")
        taken[profile.imds.port] = key


def _check_token_files(reader: _Reader, profiles: Mapping[str, ProfileConfig]) -> None:
    # A token file shared by two profiles would make one token unlock both.
    owners: dict[str, str] = {}
    for profile in profiles.values():
        path = os.path.normpath(profile.token_file.path)
        other = owners.setdefault(path, profile.name)
        if other != profile.name:
            raise reader.error(
                f"profiles.{profile.name}.token_file",
                f"{path} is also the token file of profiles.{other}; "
                "give each profile its own token_file",
            )


# Values quoted in messages are bounded: a YAML alias bomb expands to gigabytes when printed
# whole, and a one-line message must stay one short line.
_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = 200, 40, 60
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 4


def shown(value: Any) -> str:
    """`value` as quoted in an error message: repr() with bounded length and depth."""
    return _REPR.repr(value)


def key_name(name: str) -> str:
    """A key as written in a key path; quoted when it is long or holds control characters."""
    return name if name.isprintable() and len(name) <= 100 else shown(name)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _default_token_dir(environ: Mapping[str, str]) -> Path:
    if environ.get("RUNTIME_DIRECTORY"):
        return Path(environ["RUNTIME_DIRECTORY"].split(":")[0])
    if environ.get("XDG_RUNTIME_DIR"):
        return Path(environ["XDG_RUNTIME_DIR"]) / "rolesanywhere-agent"
    return Path("/run/rolesanywhere-agent")


class _Reader:
    """Typed access to the parsed YAML that fails with the file and key path in the message."""

    def __init__(self, source: Path, environ: Mapping[str, str]) -> None:
        self.source = source
        self.environ = environ
        self.warnings: list[str] = []

    def error(self, key: str, expectation: str) -> ConfigError:
        where = f"{self.source}: {key}" if key else str(self.source)
        return ConfigError(f"{where}: {expectation}")

    def mapping(
        self, value: Any, key: str, allowed: set[str] | None, required: bool = False
    ) -> dict[str, Any]:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise self.error(key, f"expected a mapping, got {_kind(value)}")
        if allowed is not None:
            unknown = sorted(str(k) for k in value if k not in allowed)
            if unknown:
                prefix = f"{key}." if key else ""
                close = difflib.get_close_matches(unknown[0], allowed, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise self.error(
                    f"{prefix}{key_name(unknown[0])}",
                    f"unknown key{hint}; expected one of {', '.join(sorted(allowed))}",
                )
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"expected a non-empty string, got {_kind(value)}")
        return value.strip()

    def string_list(self, value: Any, key: str) -> list[str]:
        if not isinstance(value, list):
            raise self.error(key, f"expected a list of strings, got {_kind(value)}")
        return [self.string(item, f"{key}[{i}]") for i, item in enumerate(value)]

    def integer(self, value: Any, key: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(key, f"expected an integer from {low} to {high}, got {shown(value)}")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {shown(value)}")
        return value

    def choice(self, value: Any, key: str, options: tuple[str, ...]) -> str:
        if value not in options:
            raise self.error(key, f"expected one of {', '.join(options)}, got {shown(value)}")
        return value

    def arn(self, value: Any, key: str, pattern: re.Pattern[str]) -> str:
        if value is None:
            raise self.error(key, f"required: {_ARN_SHAPES[pattern]}")
        text = self.string(value, key)
        if not pattern.fullmatch(text):
            raise self.error(key, f"expected {_ARN_SHAPES[pattern]}, got {shown(text)}")
        return text

    def path(self, value: Any, key: str) -> Path | None:
        if value is None:
            return None
        text = self.string(value, key)
        if "\x00" in text:
            raise self.error(key, "contains a NUL character; expected a file path")
        for name in _ENV_VAR.findall(text):
            if not self.environ.get(name):
                raise self.error(key, f"uses ${name}, which is not set in the environment")
        expanded = _ENV_VAR.sub(lambda m: self.environ[m.group(1)], text)
        try:
            path = Path(expanded).expanduser()
        except RuntimeError:
            raise self.error(key, f"cannot expand {shown(text)}: no such user") from None
        return path if path.is_absolute() else (self.source.parent / path).resolve()


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0]


def _value_reason(exc: ValueError) -> str:
    if "digits" in str(exc):
        return "an integer with thousands of digits; quote it if it is text"
    return f"a value cannot be converted: {shown(_reason(exc))}"


def _yaml_reason(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "syntax error"
    return f"{problem} at line {mark.line + 1}" if mark else problem
