"""AWS SDK for JavaScript v3 (from npm, tests/js) as real Node.js processes; C15, C20, C26.

Each child resolves credentials with one provider and calls STS GetCallerIdentity on the
emulator, or with `--resolve` only prints the expiration it parsed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from .conftest import sdk_env
from .sdk_clients import container_env, js, requires_js, run

pytestmark = requires_js



@pytest.fixture
async def stack(stack_factory):
    return await stack_factory(agent_extra={"imds": {"port": 0}}, real_time=True)


@asynccontextmanager
async def stub(routes: list[web.RouteDef]) -> AsyncIterator[str]:
    """A throwaway loopback server for answers the agent would never give."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_case_c20_full_uri_hosts(stack) -> None:
    """fromHttp (and the default chain, which tries it first) accepts every loopback name;
    Node 20 tries ::1 and 127.0.0.1 for localhost. The legacy fromContainerMetadata allows
    only localhost and 127.0.0.1. [::1] and 127.0.0.2 have no listener."""
    hosts = ("127.0.0.1", "localhost", "[::1]", "127.0.0.2")
    runs = {
        (provider, host): run(js(provider), container_env(stack, token=token, host=host))
        for provider, token in (("http", "file"), ("chain", "file"), ("container", "env"))
        for host in hosts
    }

    outcomes = dict(zip(runs, await asyncio.gather(*runs.values()), strict=True))

    works = {key for key, outcome in outcomes.items() if outcome.ok}
    assert works == {
        ("http", "127.0.0.1"), ("http", "localhost"),
        ("chain", "127.0.0.1"), ("chain", "localhost"),
        ("container", "127.0.0.1"), ("container", "localhost"),
    }
    assert outcomes["container", "[::1]"].why() == (
        "CredentialsProviderError: [::1] is not a valid container metadata service hostname"
    )
    assert "ECONNREFUSED" in outcomes["http", "[::1]"].stderr + outcomes["http", "[::1]"].why()


async def test_case_c15_from_http_accepts_only_a_z_suffix() -> None:
    """The check can fail: a `+00:00` offset (Python's isoformat) or no zone at all is
    refused by fromHttp, after its retries. The agent always sends `...Z`, which it accepts
    (test_provider_calls_sts_with_the_agents_credentials)."""
    served = {
        "z": "2030-01-02T03:04:05Z",
        "millis": "2030-01-02T03:04:05.123Z",
        "offset": "2030-01-02T03:04:05+00:00",
        "naive": "2030-01-02T03:04:05",
    }

    async def credentials(request: web.Request) -> web.Response:
        expiration = served[request.match_info["variant"]]
        return web.json_response({"AccessKeyId": "ASIASTUB", "SecretAccessKey": "stub-secret",
                                  "Token": "stub-token", "Expiration": expiration})

    async with stub([web.get("/creds/{variant}", credentials)]) as url:
        outcomes = await asyncio.gather(
            *(run(js("http", "--resolve"), env_for(f"{url}/creds/{name}")) for name in served)
        )

    pairs = zip(served, outcomes, strict=True)
    seen = {name: (outcome.ok, outcome.stdout.strip() or outcome.why()) for name, outcome in pairs}
    assert seen == {
        "z": (True, "2030-01-02T03:04:05.000Z"),
        "millis": (True, "2030-01-02T03:04:05.123Z"),
        "offset": (False, "TypeError: Invalid RFC-3339 date-time value"),
        "naive": (False, "TypeError: Invalid RFC-3339 date-time value"),
    }


async def test_case_c26_a_400_token_answer_stops_from_instance_metadata() -> None:
    """A 400 on PUT /latest/api/token is final for JS v3 (no IMDSv1 fallback), so the
    agent's valid path must never answer 400: see test_imds.py for the bounds."""
    reads = 0

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=400, text="bad ttl")

    async def role(request: web.Request) -> web.Response:
        nonlocal reads
        reads += 1
        return web.Response(text="web")

    routes = [web.put("/latest/api/token", refuse),
              web.get("/latest/meta-data/iam/security-credentials/", role)]
    async with stub(routes) as url:
        env = {**env_for(None), "AWS_EC2_METADATA_SERVICE_ENDPOINT": url + "/"}
        del env["AWS_EC2_METADATA_DISABLED"]
        outcome = await run(js("imds", "--resolve"), env)

    assert not outcome.ok
    assert outcome.why() == "ProviderError: EC2 Metadata token request returned error"
    assert reads == 0


def env_for(full_uri: str | None) -> dict[str, str]:
    """A child environment for a stub server: no agent behind it."""
    exports = {"AWS_CONTAINER_AUTHORIZATION_TOKEN": "stub-token-0123456789"}
    if full_uri is not None:
        exports["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = full_uri
    return sdk_env(exports, "http://127.0.0.1:1")
