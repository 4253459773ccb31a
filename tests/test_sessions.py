"""Refresh, single flight, backoff and outages: the real agent and emulator, one fake clock."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from rolesanywhere_agent.credentials import format_expiration
from rolesanywhere_agent.emulator import Fault
from rolesanywhere_agent.sessions import RefreshPolicy, State

from .conftest import START

CONCURRENT = 200


async def fan_out(stack, count: int = CONCURRENT) -> list[tuple[int, dict, dict]]:
    return await asyncio.gather(*(stack.get("web") for _ in range(count)))


async def refresh_due(stack, moment) -> None:
    """Move the clock to `moment` and wait for the scheduler's own refresh attempt to end."""
    session = stack.agent.sessions["web"]
    attempts = session.attempts
    stack.clock.set(moment)
    while session.attempts == attempts:
        await asyncio.sleep(0.005)


async def test_first_session_is_fetched_before_ready(stack_factory) -> None:
    stack = await stack_factory()

    status, headers, body = await stack.get("web")

    assert status == 200
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert stack.calls() == 1
    assert body["Expiration"] == format_expiration(START + timedelta(hours=1))
    assert body["RoleArn"] == "arn:aws:iam::111122223333:role/web"
    assert body["AccountId"] == "111122223333"
    assert body["AccessKeyId"].startswith("ASIA")
    assert sorted(body) == sorted(
        ["AccessKeyId", "SecretAccessKey", "Token", "Expiration", "AccountId", "RoleArn"]
    )


# Generous: on a loaded machine 200 waiting clients may take longer than the default 1 s.
PATIENT = RefreshPolicy(cold_wait=30)


async def test_case_c22_single_flight_on_cold_cache(stack_factory) -> None:
    stack = await stack_factory(wait_ready=False, policy=PATIENT)
    stack.emulator.inject(Fault(delay=0.3, times=1))

    answers = await fan_out(stack)

    assert {status for status, _, _ in answers} == {200}
    assert len({body["AccessKeyId"] for _, _, body in answers}) == 1
    assert stack.calls() == 1


async def test_case_c22_single_flight_on_about_to_expire_cache(stack_factory) -> None:
    stack = await stack_factory(policy=PATIENT)
    _, _, before = await stack.get("web")
    stack.emulator.inject(Fault(delay=0.3, times=1))

    # 30 s before expiry: inside the 60 s margin, so nothing cached may be served.
    stack.clock.set(START + timedelta(minutes=59, seconds=30))
    answers = await fan_out(stack)

    assert {status for status, _, _ in answers} == {200}
    assert {body["AccessKeyId"] for _, _, body in answers} != {before["AccessKeyId"]}
    assert len({body["AccessKeyId"] for _, _, body in answers}) == 1
    assert stack.calls() == 2


async def test_case_c24_refresh_scheduled_from_granted_expiration(stack_factory) -> None:
    stack = await stack_factory(profile={"duration_seconds": 900})
    session = stack.agent.sessions["web"]

    _, _, body = await stack.get("web")

    assert body["Expiration"] == format_expiration(START + timedelta(minutes=15))
    # The first refresh after a start comes anywhere before the usual point (fleet phase).
    first = (session.next_attempt_at - START).total_seconds()
    assert 0 <= first <= 450
    refreshed_at = session.next_attempt_at
    await refresh_due(stack, refreshed_at)
    assert stack.calls() == 2
    _, _, after = await stack.get("web")
    assert after["AccessKeyId"] != body["AccessKeyId"]
    # On schedule: half of the 900 s granted, minus up to a tenth as jitter: 360..450 s.
    delay = (session.next_attempt_at - refreshed_at).total_seconds()
    assert 360 <= delay <= 450


async def test_case_c25_outage_across_refresh_point(stack_factory) -> None:
    stack = await stack_factory()
    session = stack.agent.sessions["web"]
    _, _, good = await stack.get("web")
    stack.emulator.inject(Fault(status=500, message="internal failure"))

    # Across the refresh point: the refresh fails, the same valid session is served.
    await refresh_due(stack, session.next_attempt_at + timedelta(seconds=1))
    status, _, body = await stack.get("web")
    assert status == 200
    assert body == good
    assert session.state == State.DEGRADED
    assert stack.calls("fault") == 1

    # Past the serving cut-off: 503 with Retry-After, never the expired session.
    stack.clock.set(START + timedelta(minutes=59, seconds=1))
    status, headers, body = await stack.get("web")
    assert status == 503
    assert body["Code"] == "CredentialsUnavailable"
    assert 1 <= int(headers["Retry-After"]) <= 300
    assert "SecretAccessKey" not in body

    # Healed: the next backoff step brings a fresh session.
    stack.emulator.clear_faults()
    await refresh_due(stack, session.next_attempt_at)
    status, _, body = await stack.get("web")
    assert status == 200
    assert body["AccessKeyId"] != good["AccessKeyId"]
    assert session.state == State.READY


async def test_case_c25_connection_refused_keeps_last_good(stack_factory) -> None:
    stack = await stack_factory()
    session = stack.agent.sessions["web"]
    _, _, good = await stack.get("web")
    await stack.emulator.stop()

    await refresh_due(stack, session.next_attempt_at)

    assert session.last_error is not None and "cannot reach" in session.last_error
    status, _, body = await stack.get("web")
    assert (status, body) == (200, good)


async def test_case_c16_empty_expiration_is_refused_and_previous_kept(stack_factory) -> None:
    stack = await stack_factory()
    session = stack.agent.sessions["web"]
    _, _, good = await stack.get("web")
    stack.emulator.inject(Fault(expiration_override=""))

    await refresh_due(stack, session.next_attempt_at)

    assert session.last_error == "CreateSession answer has an unusable expiration ''"
    status, _, body = await stack.get("web")
    assert (status, body) == (200, good)
    assert body["Expiration"] == format_expiration(START + timedelta(hours=1))


async def test_case_c14_wall_clock_jump_never_serves_expired(stack_factory) -> None:
    stack = await stack_factory()
    _, _, before = await stack.get("web")

    # Suspend/resume: the wall clock jumps two hours with the refresh timer still pending.
    stack.clock.jump(2 * 3600)
    answers = await fan_out(stack, 20)

    assert {status for status, _, _ in answers} == {200}
    bodies = {body["AccessKeyId"] for _, _, body in answers}
    assert len(bodies) == 1 and before["AccessKeyId"] not in bodies
    assert {body["Expiration"] for _, _, body in answers} == {
        format_expiration(START + timedelta(hours=3))
    }
    assert stack.calls() == 2


async def test_case_c21_cold_cache_answers_503_within_cold_wait(stack_factory) -> None:
    policy = RefreshPolicy(cold_wait=0.2)
    stack = await stack_factory(wait_ready=False, policy=policy)
    stack.emulator.inject(Fault(delay=3, times=1))

    status, headers, body = await stack.get("web")

    assert status == 503
    assert body == {
        "Code": "CredentialsUnavailable",
        "Message": "no valid session for profile 'web' yet; retry in 1 s",
    }
    assert headers["Retry-After"] == "1"
    assert stack.calls() == 0


async def test_case_c21_refresh_in_flight_answers_from_cache(stack_factory) -> None:
    stack = await stack_factory()
    session = stack.agent.sessions["web"]
    _, _, good = await stack.get("web")
    stack.emulator.inject(Fault(delay=3, times=1))

    flight = session.refresh_now()
    status, _, body = await stack.get("web")

    assert not flight.done()  # still waiting on the slow emulator, yet we were answered
    assert (status, body) == (200, good)
    await flight
    assert stack.calls() == 2


async def test_backoff_grows_and_is_longer_for_access_denied(stack_factory) -> None:
    stack = await stack_factory()
    session = stack.agent.sessions["web"]
    stack.emulator.inject(Fault(status=503))
    delays = []
    for _ in range(3):
        before = session.next_attempt_at
        await refresh_due(stack, before)
        delays.append((session.next_attempt_at - before).total_seconds())
    stack.emulator.clear_faults()
    stack.emulator.inject(Fault(status=403, message="Trust anchor is disabled"))
    before = session.next_attempt_at
    await refresh_due(stack, before)
    denied = (session.next_attempt_at - before).total_seconds()

    assert 1 <= delays[0] <= 2 and 2 <= delays[1] <= 4 and 4 <= delays[2] <= 8
    assert 120 <= denied <= 240  # fourth failure in a row, AccessDenied base 30 s
    assert session.last_error == "AccessDeniedException (403): Trust anchor is disabled"
