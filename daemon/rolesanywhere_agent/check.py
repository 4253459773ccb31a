"""`rolesanywhere-agent check [--live]`: is every profile usable, and what will it send?

Loads the configuration and every identity as `serve` does and prints, per profile, the
certificate, the key and the chain that goes with each CreateSession. `--live` also calls
CreateSession once per profile and prints the service's answer. Exit 0 only when every
profile is usable; 2 when a configuration or identity is not; 1 when only --live failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from . import logs
from .clock import SystemClock
from .config import ProfileConfig, load_config
from .credentials import format_expiration
from .errors import AgentError
from .identity import Identity, load_identity
from .rolesanywhere import RolesAnywhereClient, redact
from .sessions import RefreshPolicy
from .tokens import TokenFile
from .upstream import client_session, ssl_setting

EXPIRY_WARNING_DAYS = 14
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2  # as documented in cli.py


@dataclass
class ProfileReport:
    """What `check` found for one profile; `problem` makes it unusable."""

    profile: ProfileConfig
    identity: Identity | None = None
    facts: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problem: str | None = None
    live: str | None = None
    live_failed: bool = False

    def render(self) -> str:
        lines = [f"profile {self.profile.name}"]
        lines += [f"  {label:<13} {value}" for label, value in self.facts]
        lines += [f"  warning: {warning}" for warning in self.warnings]
        if self.problem is not None:
            lines.append(f"  NOT USABLE: {self.problem}")
        if self.live is not None:
            lines.append(f"  {'createsession':<13} {self.live}")
        return "\n".join(lines)


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], default_config: Path
) -> None:
    parser = commands.add_parser(
        "check", help="load the config and every identity; report what will be sent"
    )
    parser.add_argument("--config", type=Path, default=default_config)
    parser.add_argument("--live", action="store_true", help="also call CreateSession once")
    parser.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    logs.configure("console", "error")  # stdout is the report
    now = SystemClock().now()
    reports = [inspect(profile, now) for profile in config.profiles.values()]
    if args.live:
        asyncio.run(_live_all(reports, now))

    print("\n\n".join(report.render() for report in reports))
    print(f"\n{summary(reports)}")
    if any(report.problem for report in reports):
        return EXIT_USAGE
    return EXIT_FAILURE if any(report.live_failed for report in reports) else EXIT_OK


def inspect(profile: ProfileConfig, now: datetime) -> ProfileReport:
    """Load one profile's identity and TLS settings; describe them or the problem."""
    report = ProfileReport(profile)
    try:
        ssl_setting(profile.upstream)
        TokenFile(profile.name, profile.token_file).check()  # as `serve` would refuse it
        identity = load_identity(profile.identity, now)
    except AgentError as exc:
        report.problem = str(exc)
        report.facts.append(("endpoint", profile.session.endpoint))
        return report

    report.identity = identity
    days_left = (identity.not_after - now).total_seconds() / 86400
    chain = [cert.subject.rfc4514_string() for cert in identity.chain]
    report.facts += [
        ("subject", identity.subject),
        ("issuer", identity.issuer),
        ("serial", f"{identity.serial} (decimal, as sent in Credential=)"),
        ("not after", f"{format_expiration(identity.not_after)} ({int(days_left)} days left)"),
        ("key", identity.key_type),
        ("chain sent", "; ".join(chain) or "none (no X-Amz-X509-Chain header)"),
        ("dropped", "; ".join(identity.dropped) or "none"),
        ("endpoint", profile.session.endpoint),
        ("role", profile.session.role_arn),
    ]
    if days_left < EXPIRY_WARNING_DAYS:
        report.warnings.append(
            f"certificate expires in {int(days_left)} days; renew it before "
            f"{format_expiration(identity.not_after)}"
        )
    if identity.dropped:
        report.warnings.append("certificates not on the path to the leaf are not sent")
    if profile.upstream.insecure:
        report.warnings.append("insecure: true; TLS verification of the endpoint is off")
    return report


async def live(report: ProfileReport, now: datetime) -> None:
    """One CreateSession for a usable profile; record the outcome, never the secrets."""
    assert report.identity is not None
    profile = report.profile
    endpoint = profile.session.endpoint
    async with client_session(profile.upstream, endpoint, os.environ) as http:
        try:
            grant = await RolesAnywhereClient(http).create_session(
                report.identity, profile.session, now
            )
        except AgentError as exc:
            # redact: the messages are already clean; this keeps any later one so too.
            report.live, report.live_failed = f"refused: {redact(str(exc))}", True
            return
    seconds = int((grant.credentials.expiration - now).total_seconds())
    expiration = format_expiration(grant.credentials.expiration)
    if seconds <= RefreshPolicy.serve_margin:
        # The agent would refuse this grant (sessions.py): say so rather than "ok".
        margin = int(RefreshPolicy.serve_margin)
        report.live = (
            f"refused: granted only {seconds} s, until {expiration}; the agent stops "
            f"serving {margin} s before expiry"
        )
        report.live_failed = True
        return
    report.live = f"ok: {grant.credentials.access_key_id} until {expiration} ({seconds} s)"


def summary(reports: list[ProfileReport]) -> str:
    bad = [r.profile.name for r in reports if r.problem or r.live_failed]
    if not bad:
        return f"{len(reports)} of {len(reports)} profiles usable"
    return f"{len(reports) - len(bad)} of {len(reports)} profiles usable; check {', '.join(bad)}"


async def _live_all(reports: list[ProfileReport], now: datetime) -> None:
    await asyncio.gather(*(live(report, now) for report in reports if report.problem is None))
