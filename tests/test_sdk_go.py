"""AWS SDK for Go v2 (Debian's golang-github-aws-aws-sdk-go-v2-dev) as a real client; C20, C26.

tests/go/caller is built offline in GOPATH mode against the packaged SDK; the test skips
with the reason when Go or the package is missing (.ci/run installs both).
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from rolesanywhere_agent.endpoints.imds import TTL_HEADER, ImdsEndpoint

from .sdk_clients import container_env, imds_env, run

# Where a failure is expected, one attempt: the SDK's backoff would only add seconds.
ONE_ATTEMPT = {"AWS_MAX_ATTEMPTS": "1"}


@pytest.fixture
async def stack(stack_factory):
    return await stack_factory(agent_extra={"imds": {"port": 0}}, real_time=True)


async def test_case_c20_full_uri_hosts(stack, go_caller) -> None:
    """Go resolves the host and requires every address to be loopback, then dials them in
    turn: localhost works beside a 127.0.0.1-only listener; [::1] and 127.0.0.2 do not."""
    hosts = ("127.0.0.1", "localhost", "[::1]", "127.0.0.2")

    outcomes = await asyncio.gather(
        *(run([str(go_caller)], {**container_env(stack, token="env", host=host), **ONE_ATTEMPT})
          for host in hosts)
    )

    results = {host: outcome.ok for host, outcome in zip(hosts, outcomes, strict=True)}
    assert results == {"127.0.0.1": True, "localhost": True, "[::1]": False, "127.0.0.2": False}
    assert "connection refused" in outcomes[2].stderr


async def test_case_c26_go_needs_the_ttl_header_echoed(stack, go_caller) -> None:
    """The same IMDS endpoint with the TTL header stripped from its answers: Go cannot use
    the token, falls back to tokenless reads and gets 401s, so the check can fail. The
    agent's own listener echoes the header and Go succeeds (above)."""
    app = web.Application()
    app.add_routes(ImdsEndpoint(stack.agent.sessions, "web", stack.clock).routes())

    async def strip_ttl(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.pop(TTL_HEADER, None)

    app.on_response_prepare.append(strip_ttl)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
        outcome = await run([str(go_caller)], {**imds_env(stack, endpoint=url), **ONE_ATTEMPT})
    finally:
        await runner.cleanup()

    assert not outcome.ok
    assert "no EC2 IMDS role found" in outcome.stderr
    assert "StatusCode: 401" in outcome.stderr
