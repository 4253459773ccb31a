"""(b) Upstream calls under load: 1,000 concurrent clients across a refresh.

The emulator and the agent run in this process on loopback sockets with one simulated clock,
so the refresh point is reached exactly; each CreateSession answer is delayed 0.5 s so that
every client request arrives while the refresh is in flight. Goal: exactly one call.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import yaml
from common import World, machine, report

from rolesanywhere_agent import logs
from rolesanywhere_agent.app import Agent
from rolesanywhere_agent.clock import FakeClock
from rolesanywhere_agent.config import parse_config
from rolesanywhere_agent.emulator import Emulator, Fault
from rolesanywhere_agent.emulator.model import load_config

CLIENTS = 1000
DELAY = 0.5
SETTLE_SECONDS = 10.0


async def storm(http: aiohttp.ClientSession, url: str, token: str) -> list[int]:
    async def one() -> int:
        async with http.get(url, headers={"Authorization": token}) as response:
            await response.read()
            return response.status

    return await asyncio.gather(*(one() for _ in range(CLIENTS)))


async def settled(session, attempts: int) -> None:
    """Wait (bounded) until the refresh that the storm met has finished."""
    async with asyncio.timeout(SETTLE_SECONDS):
        while session.attempts == attempts:
            await asyncio.sleep(0.01)


async def scenario(name: str, emulator: Emulator, agent: Agent, clock: FakeClock,
                   moment: datetime, http: aiohttp.ClientSession, token: str) -> None:
    session = agent.sessions["p000"]
    before, attempts = sum(emulator.counters.values()), session.attempts
    emulator.inject(Fault(delay=DELAY, times=1))
    clock.set(moment)
    began = time.perf_counter()
    statuses = await storm(http, f"http://127.0.0.1:{agent.port}/v1/credentials/p000", token)
    elapsed = time.perf_counter() - began
    await settled(session, attempts)
    calls = sum(emulator.counters.values()) - before
    ok = statuses.count(200)
    report(f"{name}: CreateSession calls", f"{calls} ({ok}/{CLIENTS} answered 200)",
           "exactly 1", calls == 1 and ok == CLIENTS)
    print(f"  all {CLIENTS} answered in {elapsed:.2f} s; the refresh took {DELAY} s or more")


async def main() -> None:
    logs.configure("json", "error")
    print(f"refresh storm: {CLIENTS} concurrent clients; {machine()}")
    with tempfile.TemporaryDirectory(prefix="ra-bench-") as folder:
        world = World(Path(folder))
        clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
        emulator = Emulator(load_config(world.emulator_config()), clock=clock, controls=True)
        endpoint = await emulator.start()
        path = world.agent_config(endpoint, 0)
        config = parse_config(yaml.safe_load(path.read_text()), path, os.environ)
        agent = Agent(config, clock=clock, rng=random.Random(1))
        await agent.start()
        session = agent.sessions["p000"]
        connector = aiohttp.TCPConnector(limit=CLIENTS)
        try:
            async with aiohttp.ClientSession(connector=connector) as http:
                token = world.token("p000")
                await scenario("refresh point, cache valid", emulator, agent, clock,
                               session.next_attempt_at, http, token)
                expiry = session.current.expiration - timedelta(seconds=30)
                await scenario("expiry, cold cache", emulator, agent, clock, expiry, http, token)
        finally:
            await agent.stop()
            await emulator.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
