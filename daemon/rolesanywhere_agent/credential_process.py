"""`rolesanywhere-agent credential-process`: one session for an SDK's `credential_process`.

Two ways to name what to sign for:
- the flags of AWS's aws_signing_helper (`--certificate ... --role-arn ...`): sign here;
- `--config FILE --profile NAME`: ask the running agent first (its container endpoint with
  the profile's token file) and sign here only when the agent cannot be reached. Anything
  on the agent's port that does not speak HTTP (a garbled or cut answer) counts as "cannot
  be reached": the user asked for credentials, and signing here gives them; an HTTP error
  status or a 200 without credentials comes from the agent itself and is reported.

stdout carries the JSON document and nothing else, because the SDK parses it; diagnostics
go to stderr. Exit codes as for the whole CLI: 0 ok, 1 no credentials, 2 usage, config or
identity.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from . import logs
from .app import exports_for
from .clock import SystemClock
from .config import AgentConfig, ProfileConfig, load_config, parse_config
from .credentials import Credentials, parse_expiration
from .errors import AgentError, ConfigError, IdentityError, InvalidResponse
from .identity import load_identity
from .rolesanywhere import RolesAnywhereClient, redact
from .sessions import RefreshPolicy
from .upstream import client_session

log = structlog.get_logger("rolesanywhere_agent.credential_process")

AGENT_TIMEOUT_SECONDS = 5.0
PROMPT = "-"
FLAGS_SOURCE = Path("<command line>")
FLAGS_PROFILE = "command-line"
# Profile keys that the signing flags fill, in aws_signing_helper's order.
SIGNING_FLAGS = (
    "certificate",
    "private_key",
    "intermediates",
    "trust_anchor_arn",
    "profile_arn",
    "role_arn",
    "session_duration",
    "region",
    "endpoint",
    "role_session_name",
)
# Where a profile key's flag is not simply the key with dashes.
_FLAG_OF = {
    "insecure": "--no-verify-ssl",
    "passphrase_file": "--pkcs8-password",
    "pkcs12": "--certificate",
}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "credential-process",
        help="print one session as credential_process JSON",
        description="Flags as aws_signing_helper credential-process, or --config/--profile.",
    )
    parser.add_argument("--config", type=Path, help="agent config: ask the agent first")
    parser.add_argument("--profile", help="profile in --config")
    parser.add_argument("--certificate", help="leaf certificate (PEM/DER) or PKCS#12 bundle")
    parser.add_argument("--private-key", help="private key file")
    parser.add_argument("--intermediates", help="PEM bundle of intermediate CA certificates")
    parser.add_argument("--trust-anchor-arn")
    parser.add_argument("--profile-arn")
    parser.add_argument("--role-arn")
    parser.add_argument("--session-duration", type=int, help="seconds, 900 to 43200")
    parser.add_argument("--region", help="default: the trust anchor's region")
    parser.add_argument("--endpoint", help="Roles Anywhere endpoint URL")
    parser.add_argument("--role-session-name")
    parser.add_argument(
        "--pkcs8-password",
        metavar="FILE|-",
        help="file holding the key's passphrase, or - to type it (never the passphrase itself)",
    )
    parser.add_argument("--no-verify-ssl", action="store_true", help="skip TLS verification")
    parser.add_argument("--with-proxy", action="store_true", help="honour HTTPS_PROXY/NO_PROXY")
    parser.add_argument("--debug", action="store_true", help="debug logs on stderr")
    parser.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    logs.configure("console", "debug" if args.debug else "warning")
    creds = asyncio.run(credentials(args))
    check_lifetime(creds, SystemClock().now())
    print(json.dumps(creds.process_json()), flush=True)
    return 0


def check_lifetime(creds: Credentials, now: datetime) -> None:
    """Refuse what the agent would not serve: a session that is (nearly) over already."""
    left = int(creds.seconds_left(now))
    if left <= RefreshPolicy.serve_margin:
        raise InvalidResponse(
            f"the session expires in {left} s, within the {int(RefreshPolicy.serve_margin)} s "
            "the agent keeps as a margin; not printed"
        )


async def credentials(args: argparse.Namespace) -> Credentials:
    """The session to print, from the running agent or signed here."""
    if args.config is None:
        profile = profile_from_flags(args)
        passphrase = _prompted_passphrase(args, profile)
        try:
            return await sign_here(profile, passphrase, trust_env=args.with_proxy)
        except IdentityError as exc:
            # The identity messages name the config key; here the flag is what to set.
            text = str(exc).replace("`passphrase_file`", "--pkcs8-password")
            raise IdentityError(text) from None

    config, profile = _profile_from_config(args)
    served = await from_agent(config, profile)
    if served is not None:
        return served
    return await sign_here(profile, None, trust_env=True)


def profile_from_flags(args: argparse.Namespace) -> ProfileConfig:
    """Validate the flags exactly as a profile in a config file, naming flags in errors."""
    if not args.certificate:
        raise ConfigError("--certificate is required (or use --config and --profile)")
    document: dict[str, Any] = {
        key: getattr(args, key) for key in SIGNING_FLAGS if getattr(args, key) is not None
    }
    if args.private_key is None:
        # Like aws_signing_helper: a certificate without a key is a PKCS#12 bundle.
        document["pkcs12"] = document.pop("certificate")
    if args.pkcs8_password not in (None, PROMPT):
        document["passphrase_file"] = args.pkcs8_password
    if args.no_verify_ssl:
        document["insecure"] = True

    top = {"profiles": {FLAGS_PROFILE: document}}
    try:
        config = parse_config(top, FLAGS_SOURCE, os.environ)
    except ConfigError as exc:
        raise ConfigError(_name_flags(str(exc))) from None
    for warning in config.warnings:
        log.warning("config_warning", detail=_name_flags(warning))
    return config.profiles[FLAGS_PROFILE]


async def from_agent(config: AgentConfig, profile: ProfileConfig) -> Credentials | None:
    """The agent's session for `profile`, or None when the agent cannot be reached."""
    exports = exports_for(config, profile)
    try:
        token = Path(exports.token_file).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        log.info("agent_token_unreadable", path=exports.token_file, reason=_reason(exc))
        return None

    timeout = aiohttp.ClientTimeout(total=AGENT_TIMEOUT_SECONDS)
    try:
        # A session of its own without trust_env: loopback never goes through a proxy.
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(exports.full_uri, headers={"Authorization": token}) as response,
        ):
            status, text = response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError) as exc:
        # ClientError covers more than refused connections: a port held by something that is
        # not the agent answers with bytes aiohttp cannot parse as HTTP.
        log.info("agent_unreachable", url=exports.full_uri, reason=_reason(exc))
        return None

    if status != 200:
        raise AgentError(f"agent at {exports.full_uri} answered {status}: {_message(text)}")
    log.debug("agent_answered", url=exports.full_uri)
    return _served_credentials(text, exports.full_uri)


async def sign_here(
    profile: ProfileConfig, passphrase: bytes | None, *, trust_env: bool
) -> Credentials:
    """Load the identity and call CreateSession once, without the agent."""
    now = SystemClock().now()
    identity = load_identity(profile.identity, now, passphrase)
    if profile.upstream.insecure:
        log.warning("tls_verification_disabled", endpoint=profile.session.endpoint)

    endpoint = profile.session.endpoint
    async with client_session(profile.upstream, endpoint, os.environ, trust_env=trust_env) as http:
        grant = await RolesAnywhereClient(http).create_session(identity, profile.session, now)
    log.debug("session_created", expiration=grant.credentials.expiration.isoformat())
    return grant.credentials


def _profile_from_config(args: argparse.Namespace) -> tuple[AgentConfig, ProfileConfig]:
    used = [*SIGNING_FLAGS, "pkcs8_password", "no_verify_ssl", "with_proxy"]
    extra = [f"--{key.replace('_', '-')}" for key in used if getattr(args, key)]
    if extra:
        raise ConfigError(f"{', '.join(extra)}: not used with --config; set it in the profile")
    if not args.profile:
        raise ConfigError("--profile is required with --config")

    config = load_config(args.config)
    if args.profile not in config.profiles:
        known = ", ".join(sorted(config.profiles))
        raise ConfigError(f"{args.config}: profiles: no profile {args.profile!r} (have {known})")
    return config, config.profiles[args.profile]


def _prompted_passphrase(args: argparse.Namespace, profile: ProfileConfig) -> bytes | None:
    if args.pkcs8_password != PROMPT:
        return None
    key = profile.identity.private_key or profile.identity.pkcs12
    if key is None or not _needs_passphrase(key):
        return None
    try:
        # getpass writes the prompt to the terminal, never to stdout.
        return getpass.getpass(f"Passphrase for {key}: ").encode()
    except EOFError:
        print(file=sys.stderr)  # end the prompt's line, so the error has a line of its own
        raise ConfigError(
            "--pkcs8-password -: no passphrase typed (input closed); "
            "type it at the prompt or give a file: --pkcs8-password FILE"
        ) from None


def _needs_passphrase(path: Path) -> bool:
    """Whether the key file is encrypted; True when unsure, so the prompt still comes."""
    try:
        data = path.read_bytes()
    except OSError:
        return False  # load_identity names the unreadable file, better than a prompt
    if b"-----BEGIN" in data:
        # PKCS#8 says "ENCRYPTED PRIVATE KEY"; traditional PEM says "Proc-Type: 4,ENCRYPTED".
        return b"ENCRYPTED" in data
    try:
        pkcs12.load_pkcs12(data, None)
        return False
    except ValueError:
        pass
    try:
        serialization.load_der_private_key(data, None)
        return False
    except (TypeError, ValueError, UnsupportedAlgorithm):
        # TypeError: "Password was not given but private key is encrypted".
        return True


def _served_credentials(text: str, url: str) -> Credentials:
    try:
        document = json.loads(text)
        return Credentials(
            access_key_id=document["AccessKeyId"],
            secret_access_key=document["SecretAccessKey"],
            session_token=document["Token"],
            expiration=parse_expiration(document["Expiration"]),
            role_arn=str(document.get("RoleArn", "")),
        )
    except (ValueError, KeyError, TypeError):
        raise AgentError(f"agent at {url} answered with no usable credentials") from None


def _name_flags(text: str) -> str:
    """`<command line>: profiles.command-line.role_arn: ...` becomes `--role-arn: ...`."""
    text = text.removeprefix(f"{FLAGS_SOURCE}: ")
    return re.sub(rf"profiles\.{FLAGS_PROFILE}\.([a-z_0-9]+)", lambda m: _flag(m[1]), text)


def _flag(key: str) -> str:
    return _FLAG_OF.get(key, "--" + key.replace("_", "-"))


def _message(text: str) -> str:
    try:
        document = json.loads(text)
        return f"{document['Code']}: {document['Message']}"
    except (ValueError, KeyError, TypeError):
        return " ".join(text.split())[:200] or "no message"


def _reason(exc: BaseException) -> str:
    return redact(str(exc).splitlines()[0])[:200] if str(exc) else type(exc).__name__
