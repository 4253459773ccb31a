"""Upstream faults played by the emulator: every one keeps the last good session, backs off
with jitter, says so once with the service's own words, and recovers in one backoff step."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from structlog.testing import capture_logs

from rolesanywhere_agent.credentials import format_expiration
from rolesanywhere_agent.emulator import EmulatorConfig, Fault
from rolesanywhere_agent.sessions import State

from .conftest import START, Stack
from .polling import attempt_at

UPSTREAM_TIMEOUT = 0.3
SERVICE_UNAVAILABLE = "ServiceUnavailableException"


@dataclass(frozen=True)
class Outage:
    """How to break the upstream, how to heal it, and what the agent must report."""

    name: str
    start: Callable[[Stack], Awaitable[None]]
    heal: Callable[[Stack, EmulatorConfig], Awaitable[None]]
    error: Callable[[Stack], str]
    error_type: str
    denied: bool = False


def inject(fault: Fault) -> Callable[[Stack], Awaitable[None]]:
    async def start(stack: Stack) -> None:
        stack.emulator.inject(fault)

    return start


async def clear(stack: Stack, original: EmulatorConfig) -> None:
    stack.emulator.clear_faults()


def fixed(text: str) -> Callable[[Stack], str]:
    return lambda stack: text


async def stop_emulator(stack: Stack) -> None:
    await stack.emulator.stop()


async def restart_emulator(stack: Stack, original: EmulatorConfig) -> None:
    await stack.emulator.start(port=port_of(stack))


async def disable_anchor(stack: Stack) -> None:
    """An operator disables the trust anchor: the emulator's anchor gets `enabled=False`."""
    config = stack.emulator.config
    anchor = replace(config.trust_anchors[0], enabled=False)
    stack.emulator.config = replace(config, trust_anchors=(anchor,))


async def revoke_leaf(stack: Stack) -> None:
    """Upload a CRL from the issuing CA that lists the agent's certificate."""
    issuer = stack.world.intermediate
    revoked = (
        x509.RevokedCertificateBuilder()
        .serial_number(stack.world.leaves["web"].certificate.serial_number)
        .revocation_date(START - timedelta(hours=1))
        .build()
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(START - timedelta(days=1))
        .next_update(START + timedelta(days=30))
        .add_revoked_certificate(revoked)
        .sign(issuer.key, hashes.SHA256())
    )
    config = stack.emulator.config
    anchor = replace(config.trust_anchors[0], crls=(crl,))
    stack.emulator.config = replace(config, trust_anchors=(anchor,))


async def restore_config(stack: Stack, original: EmulatorConfig) -> None:
    stack.emulator.config = original


def sessions_url(stack: Stack) -> str:
    return f"{stack.endpoint}/sessions"


def port_of(stack: Stack) -> int:
    return int(stack.endpoint.rsplit(":", 1)[1])


OUTAGES = [
    Outage(
        "connection_refused",
        stop_emulator,
        restart_emulator,
        lambda s: (
            f"cannot reach {sessions_url(s)}: Cannot connect to host 127.0.0.1:{port_of(s)} "
            f"ssl:default [Connect call failed ('127.0.0.1', {port_of(s)})]"
        ),
        "TransportError",
    ),
    Outage(
        "connection_dropped",
        inject(Fault(drop_connection=True)),
        clear,
        lambda s: f"cannot reach {sessions_url(s)}: Server disconnected",
        "TransportError",
    ),
    Outage(
        "timeout",
        inject(Fault(delay=1.0)),
        clear,
        lambda s: f"no answer from {sessions_url(s)} within {UPSTREAM_TIMEOUT:g} s",
        "TransportError",
    ),
    Outage(
        "http_500",
        inject(Fault(status=500, message="We encountered an internal error.")),
        clear,
        fixed("InternalServerException (500): We encountered an internal error."),
        "ServiceError",
    ),
    Outage(
        "http_502_html_from_a_proxy",
        inject(Fault(status=502, body="<html><body>502 Bad Gateway</body></html>")),
        clear,
        fixed("HTTP502 (502): <html><body>502 Bad Gateway</body></html>"),
        "ServiceError",
    ),
    Outage(
        "http_503",
        inject(
            Fault(status=503, error_type=SERVICE_UNAVAILABLE, message="Service is unavailable")
        ),
        clear,
        fixed("ServiceUnavailableException (503): Service is unavailable"),
        "ServiceError",
    ),
    Outage(
        "throttled_429",
        inject(Fault(status=429, message="Rate exceeded")),
        clear,
        fixed("ThrottlingException (429): Rate exceeded"),
        "Throttled",
    ),
    Outage(
        "anchor_disabled_403",
        disable_anchor,
        restore_config,
        fixed("AccessDeniedException (403): Trust anchor is disabled"),
        "AccessDenied",
        denied=True,
    ),
    Outage(
        "certificate_revoked_403",
        revoke_leaf,
        restore_config,
        fixed("AccessDeniedException (403): Certificate is revoked"),
        "AccessDenied",
        denied=True,
    ),
    Outage(
        "validation_400",
        inject(Fault(status=400, message="1 validation error detected at 'durationSeconds'")),
        clear,
        fixed("ValidationException (400): 1 validation error detected at 'durationSeconds'"),
        "ValidationError",
    ),
    Outage(
        "malformed_json",
        inject(Fault(status=201, body="{credentialSet: oops")),
        clear,
        fixed("CreateSession answer is not valid JSON"),
        "InvalidResponse",
    ),
    Outage(
        "truncated_json",
        inject(Fault(status=201, body='{"credentialSet": [{"credentials": {"accessKeyId": "AS')),
        clear,
        fixed("CreateSession answer is not valid JSON"),
        "InvalidResponse",
    ),
    Outage(
        "empty_credential_set",
        inject(Fault(empty_credential_set=True)),
        clear,
        fixed("CreateSession answer has an empty credentialSet"),
        "InvalidResponse",
    ),
    Outage(
        "empty_expiration",
        inject(Fault(expiration_override="")),
        clear,
        fixed("CreateSession answer has an unusable expiration ''"),
        "InvalidResponse",
    ),
    Outage(
        "past_expiration",
        inject(Fault(expiration_override="2026-12-04T11:00:00Z")),
        clear,
        fixed("CreateSession granted a session already expired at 2026-12-04 11:00:00+00:00"),
        "InvalidResponse",
    ),
    Outage(
        "grant_shorter_than_the_serving_margin",
        inject(Fault(grant_seconds=45)),
        clear,
        lambda s: (
            f"CreateSession granted only {short_grant_left(s, 45)} s, not more than the 60 s "
            "before expiry when serving stops"
        ),
        "InvalidResponse",
    ),
]


def short_grant_left(stack: Stack, seconds: int) -> int:
    """What is left of a grant of `seconds` at the planned attempt, by the agent's clock."""
    due = stack.agent.sessions["web"].next_attempt_at
    expiry = due.replace(microsecond=0) + timedelta(seconds=seconds)  # the wire has no fraction
    return round((expiry - due).total_seconds())


def warnings_of(events: list[dict], event: str) -> list[dict]:
    return [e for e in events if e["event"] == event and e["log_level"] == "warning"]


@pytest.mark.parametrize("outage", OUTAGES, ids=[o.name for o in OUTAGES])
async def test_outage_keeps_last_good_session_and_recovers(stack_factory, outage: Outage) -> None:
    stack = await stack_factory(agent_options={"upstream_timeout": UPSTREAM_TIMEOUT})
    session = stack.agent.sessions["web"]
    _, _, good = await stack.get("web")
    original = stack.emulator.config
    await outage.start(stack)
    expected = outage.error(stack)

    # Two failed attempts in a row: one warning with the service's words, then silence.
    with capture_logs() as events:
        due = session.next_attempt_at
        await attempt_at(stack)
        first_delay = (session.next_attempt_at - due).total_seconds()
        await attempt_at(stack)
    failed = warnings_of(events, "refresh_failed")
    assert [(e["error"], e["error_type"], e["state"]) for e in failed] == [
        (expected, outage.error_type, "degraded")
    ]
    assert failed[0]["serving_until"] == good["Expiration"]
    assert session.last_error == expected
    assert session.failures == 2
    low, high = (15, 30) if outage.denied else (1, 2)  # first step: base/2 .. base
    assert low <= first_delay <= high

    # The last good session is served, unchanged, while it is valid.
    status, _, body = await stack.get("web")
    assert (status, body) == (200, good)
    assert session.state == State.DEGRADED

    # Healed: the next planned attempt (one backoff step) brings a fresh session.
    await outage.heal(stack, original)
    with capture_logs() as events:
        await attempt_at(stack)
    refreshed = [e for e in events if e["event"] == "session_refreshed"]
    assert [(e["log_level"], e["state"]) for e in refreshed] == [("info", "ready")]
    status, _, body = await stack.get("web")
    assert status == 200
    assert body["AccessKeyId"] != good["AccessKeyId"]
    assert session.state == State.READY and session.failures == 0


@pytest.mark.parametrize(
    "fault",
    [
        Fault(status=500),
        Fault(expiration_override=""),
        Fault(empty_credential_set=True),
        Fault(expiration_override="2026-12-04T11:00:00Z"),
    ],
    ids=["500", "empty_expiration", "empty_set", "past_expiration"],
)
async def test_outage_past_expiry_gives_503_never_expired_or_empty(stack_factory, fault) -> None:
    stack = await stack_factory()
    _, _, good = await stack.get("web")
    stack.emulator.inject(fault)

    stack.clock.set(START + timedelta(minutes=59, seconds=30))
    status, headers, body = await stack.get("web")

    assert status == 503
    assert body["Code"] == "CredentialsUnavailable"
    assert set(body) == {"Code", "Message"}
    assert 1 <= int(headers["Retry-After"]) <= 300
    assert good["Expiration"] == format_expiration(START + timedelta(hours=1))


async def test_clients_do_not_bring_retries_forward_during_backoff(stack_factory) -> None:
    stack = await stack_factory()
    session = stack.agent.sessions["web"]
    stack.emulator.inject(Fault(status=403, message="Trust anchor is disabled"))
    stack.clock.set(START + timedelta(minutes=59, seconds=30))
    status, _, _ = await stack.get("web")  # this one tries, fails: backoff starts
    assert status == 503
    calls = stack.calls("fault")

    answers = await asyncio.gather(*(stack.get("web") for _ in range(50)))

    assert {status for status, _, _ in answers} == {503}
    assert stack.calls("fault") == calls == 1
    waits = {int(headers["Retry-After"]) for _, headers, _ in answers}
    assert len(waits) == 1 and 15 <= waits.pop() <= 31
    assert session.failures == 1


async def test_slow_answer_within_the_timeout_is_accepted(stack_factory) -> None:
    stack = await stack_factory(agent_options={"upstream_timeout": 2.0})
    session = stack.agent.sessions["web"]
    _, _, good = await stack.get("web")
    stack.emulator.inject(Fault(delay=0.5, times=1))

    stack.clock.set(session.next_attempt_at)
    await asyncio.sleep(0.1)  # let the scheduler send the slow request; nothing asserts on time
    status, _, during = await stack.get("web")
    await session.refresh_now()

    assert (status, during) == (200, good)
    _, _, after = await stack.get("web")
    assert after["AccessKeyId"] != good["AccessKeyId"]
    assert session.state == State.READY
    assert stack.calls() == 2


async def test_grant_shorter_than_asked_is_served_and_scheduled_from_its_expiry(
    stack_factory,
) -> None:
    stack = await stack_factory()
    session = stack.agent.sessions["web"]
    stack.emulator.inject(Fault(grant_seconds=1200, times=1))
    moment = session.next_attempt_at

    await attempt_at(stack)

    _, _, body = await stack.get("web")
    assert body["Expiration"] == format_expiration(moment.replace(microsecond=0) +
                                                   timedelta(seconds=1200))
    delay = (session.next_attempt_at - moment).total_seconds()
    assert 480 <= delay <= 600  # half of 1200 s, minus up to a tenth as jitter


@pytest.mark.parametrize(
    ("shift", "offset", "direction", "refusal"),
    [
        (360, -360, "behind", "Signature expired: "),
        (-360, 360, "ahead", "Signature not yet current: "),
    ],
    ids=["service_ahead", "service_behind"],
)
async def test_case_c13_clock_skew_is_measured_and_logged_once(
    stack_factory, shift: int, offset: int, direction: str, refusal: str
) -> None:
    stack = await stack_factory()
    session = stack.agent.sessions["web"]
    _, _, good = await stack.get("web")
    stack.emulator.shift_clock(shift)

    with capture_logs() as events:
        due = session.next_attempt_at
        await attempt_at(stack)
        delay = (session.next_attempt_at - due).total_seconds()
        await attempt_at(stack)
        await attempt_at(stack)

    skew = [e for e in events if e["event"] == "clock_skew"]
    assert len(skew) == 1
    assert skew[0]["log_level"] == "warning"
    assert abs(skew[0]["offset_seconds"] - offset) <= 1  # the Date header has whole seconds
    assert skew[0]["direction"] == direction
    assert "check NTP" in skew[0]["hint"]
    assert session.last_error.startswith(f"AccessDeniedException (403): {refusal}")
    assert stack.calls("AccessDeniedException") == 3
    assert 15 <= delay <= 30  # the AccessDenied backoff
    status, _, body = await stack.get("web")
    assert (status, body) == (200, good)

    # NTP fixed: the next attempt succeeds and the skew is reported gone, once.
    stack.emulator.shift_clock(-shift)
    with capture_logs() as events:
        await attempt_at(stack)
    assert [e["offset_seconds"] for e in events if e["event"] == "clock_skew_resolved"] == [0]
    assert session.state == State.READY
