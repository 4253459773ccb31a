"""botocore/boto3 and the AWS CLI v1 as real child processes against the agent; C19, C20, C23.

Each child calls STS GetCallerIdentity on the emulator, which verifies the SigV4 signature
made with the served credentials: a printed ARN proves the whole path.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from .conftest import PYTHON
from .sdk_clients import AWS_CLI_CALL, BOTOCORE, container_env, run

ROLE_ARN_PREFIX = "arn:aws:sts::111122223333:assumed-role/web/"

# Counts how often botocore asks the container endpoint, then makes 1,000 calls (case C23).
_MANY_CALLS = """
import boto3, botocore.utils as utils
fetches = 0
original = utils.ContainerMetadataFetcher.retrieve_full_uri
def counting(self, *args, **kwargs):
    global fetches
    fetches += 1
    return original(self, *args, **kwargs)
utils.ContainerMetadataFetcher.retrieve_full_uri = counting
sts = boto3.client("sts")
arns = {sts.get_caller_identity()["Arn"] for _ in range(1000)}
print(fetches, len(arns))
"""


@pytest.fixture
async def stack(stack_factory):
    return await stack_factory(agent_extra={"imds": {"port": 0}}, real_time=True)


async def test_case_c20_aws_cli_full_uri_hosts(stack) -> None:
    """The agent listens on 127.0.0.1 only. localhost works (it resolves to 127.0.0.1 for
    urllib3); [::1] has no listener; 127.0.0.2 is accepted by botocore's check but refused."""
    hosts = ("127.0.0.1", "localhost", "[::1]", "127.0.0.2")

    outcomes = await asyncio.gather(
        *(run(AWS_CLI_CALL, container_env(stack, host=host)) for host in hosts)
    )

    results = {host: outcome.ok for host, outcome in zip(hosts, outcomes, strict=True)}
    assert results == {"127.0.0.1": True, "localhost": True, "[::1]": False, "127.0.0.2": False}
    assert "Error when retrieving credentials from container-role" in outcomes[2].stderr


async def test_case_c19_token_never_rotates_under_a_running_daemon(stack_factory) -> None:
    """The agent writes a token once and keeps it: across refreshes and a restart, a client
    that copied the value at start and one that re-reads the file both keep working."""
    stack = await stack_factory(real_time=True)
    path = Path(stack.agent.exports("web").token_file)
    token, stamp = path.read_bytes(), path.stat().st_mtime_ns
    copied, by_file = container_env(stack, token="env"), container_env(stack)
    before = await run(BOTOCORE, copied)

    for _ in range(3):
        assert await stack.agent.sessions["web"].refresh_now()
    during = await asyncio.gather(run(BOTOCORE, copied), run(BOTOCORE, by_file))
    await stack.agent.stop()
    restarted = await stack_factory(leaves=(), real_time=True)
    after = await run(BOTOCORE, container_env(restarted, token="env"))

    assert stack.calls() == 4 and restarted.calls() == 1
    assert path.read_bytes() == token and path.stat().st_mtime_ns == stamp
    assert restarted.token("web") == token.decode()
    for outcome in (before, *during, after):
        assert outcome.ok, outcome.stderr
        assert outcome.arn.startswith(ROLE_ARN_PREFIX)


async def test_case_c23_short_sessions_many_calls_zero_extra_create_session(
    stack_factory,
) -> None:
    """900 s sessions are always inside botocore's 15-minute refresh window, so it asks the
    agent before every call; the agent answers from its cache. The config load warns."""
    with capture_logs() as events:
        stack = await stack_factory(agent_extra={"session_duration": 900}, real_time=True)

    outcome = await run([PYTHON, "-c", _MANY_CALLS], container_env(stack), timeout=150)

    assert outcome.ok, outcome.stderr
    fetches, distinct_arns = map(int, outcome.stdout.split())
    assert fetches >= 1000 and distinct_arns == 1
    assert stack.emulator.sts_counters == {"success": 1000}
    assert stack.emulator.counters == {"success": 1}  # zero extra CreateSession
    warnings = [e["detail"] for e in events if e["event"] == "config_warning"]
    assert warnings == [
        "profiles.web.session_duration: 900 s sessions make SDKs poll constantly "
        "(botocore refreshes within 15 min of expiry); consider 3600"
    ]
