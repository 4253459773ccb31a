"""A thousand concurrent clients against the container endpoint during a refresh: every one
gets valid credentials and the service sees exactly one CreateSession. Not timed."""

from __future__ import annotations

import asyncio
import resource
from datetime import timedelta

import aiohttp
import pytest

from rolesanywhere_agent.credentials import parse_expiration
from rolesanywhere_agent.emulator import Fault
from rolesanywhere_agent.sessions import RefreshPolicy

from .conftest import START, Stack

CLIENTS = 1000
# Each client costs a descriptor here and one in the agent (same process), plus some spare.
DESCRIPTORS_NEEDED = 2 * CLIENTS + 512


@pytest.fixture(autouse=True)
def enough_descriptors():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < DESCRIPTORS_NEEDED:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {DESCRIPTORS_NEEDED}")
    if soft != resource.RLIM_INFINITY and soft < DESCRIPTORS_NEEDED:
        resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTORS_NEEDED, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def crowd(stack: Stack) -> list[tuple[int, dict]]:
    """CLIENTS requests at once, each on its own connection."""
    url = f"{stack.base}/v1/credentials/web"
    headers = {"Authorization": stack.token("web")}
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def one() -> tuple[int, dict]:
            async with http.get(url, headers=headers) as response:
                return response.status, await response.json()

        return await asyncio.gather(*(one() for _ in range(CLIENTS)))


def assert_valid(answers: list[tuple[int, dict]], now, keys: set[str]) -> None:
    assert [status for status, _ in answers] == [200] * CLIENTS
    for _, body in answers:
        assert body["AccessKeyId"] in keys
        assert body["SecretAccessKey"] and body["Token"]
        assert parse_expiration(body["Expiration"]) - now > timedelta(seconds=60)


async def test_thousand_clients_during_a_refresh_get_valid_credentials(stack_factory) -> None:
    stack = await stack_factory()
    session = stack.agent.sessions["web"]
    _, _, before = await stack.get("web")
    stack.emulator.inject(Fault(delay=1.0, times=1))  # keeps the refresh in flight a while
    stack.clock.set(session.next_attempt_at)
    flight = session.refresh_now()  # the scheduler's own attempt, shared

    answers = await crowd(stack)
    await flight

    after = session.current.access_key_id
    assert_valid(answers, stack.clock.now(), {before["AccessKeyId"], after})
    assert stack.calls() == 2  # the first session, and exactly one refresh


async def test_thousand_clients_at_an_expiring_cache_share_one_create_session(
    stack_factory,
) -> None:
    # Each waits for the one refresh; a loaded CI machine may need more than the default 1 s.
    stack = await stack_factory(policy=RefreshPolicy(cold_wait=10.0))
    stack.emulator.inject(Fault(delay=0.3, times=1))
    stack.clock.set(START + timedelta(minutes=59, seconds=30))  # inside the serving margin

    answers = await crowd(stack)

    keys = {body["AccessKeyId"] for _, body in answers}
    assert len(keys) == 1
    assert_valid(answers, stack.clock.now(), keys)
    assert stack.calls() == 2
