"""(c) Start to ready: `rolesanywhere-agent serve` from exec until its first session is cached
(READY=1 on a notify socket, then /health answers 200), against the bare interpreter start
`python -c 'import aiohttp, cryptography'`. Goal: less than 1.5 times the bare start.

The package is compiled to bytecode first, as `pip install` does; an editable checkout run
with PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module at every start.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    AGENT,
    World,
    emulator,
    free_port,
    get,
    machine,
    notify_socket,
    quiet_env,
    report,
    stop,
    wait_ready,
)

RUNS = 9
GOAL = 1.5
BARE = [sys.executable, "-c", "import aiohttp, cryptography"]


def bare_start() -> float:
    began = time.perf_counter()
    subprocess.run(BARE, check=True)
    return time.perf_counter() - began


def agent_start(world: World, endpoint: str, folder: Path) -> float:
    with notify_socket(folder) as (sock, address):
        port = free_port()
        config = world.agent_config(endpoint, port)
        with (folder / "agent.log").open("ab") as log:
            began = time.perf_counter()
            child = subprocess.Popen(
                [*AGENT, "serve", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, env=quiet_env(NOTIFY_SOCKET=address),
            )
            try:
                wait_ready(sock, child, 60)
                elapsed = time.perf_counter() - began
                status, _ = get(f"http://127.0.0.1:{port}/health")
                assert status == 200, status
            finally:
                stop(child)
    return elapsed


def main() -> None:
    package = Path(__file__).resolve().parent.parent / "daemon"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)
    print(f"startup: median of {RUNS} runs each, alternating; {machine()}")
    with tempfile.TemporaryDirectory(prefix="ra-bench-") as folder:
        world = World(Path(folder))
        with emulator(world) as endpoint:
            bare, agent = [], []
            for _ in range(RUNS):
                bare.append(bare_start())
                agent.append(agent_start(world, endpoint, Path(folder)))
    bare_ms, agent_ms = statistics.median(bare) * 1000, statistics.median(agent) * 1000
    ratio = agent_ms / bare_ms
    report("start to ready / bare aiohttp+cryptography import",
           f"{ratio:.2f} ({agent_ms:.0f} ms vs {bare_ms:.0f} ms)", f"< {GOAL}", ratio < GOAL)


if __name__ == "__main__":
    main()
