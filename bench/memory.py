"""(d) Resident memory of `rolesanywhere-agent serve` with 1 and with 100 profiles.

Measured as VmRSS once every profile has its first session (READY=1 on a notify socket) and
each profile has served one request. Goals: < 40 MB and < 60 MB.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
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
    rss_kib,
    stop,
    wait_ready,
)

GOALS_MB = {1: 40, 100: 60}
# What the agent cannot go below: the interpreter with the two libraries it is built on.
FLOOR = (
    "import aiohttp.web, cryptography.x509; "
    "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])"
)


def floor_mb() -> float:
    output = subprocess.run([sys.executable, "-c", FLOOR], capture_output=True, text=True,
                            check=True).stdout
    return int(output) / 1024


def measure(profiles: int) -> float:
    with tempfile.TemporaryDirectory(prefix="ra-bench-") as folder:
        world = World(Path(folder), profiles)
        with emulator(world) as endpoint, notify_socket(Path(folder)) as (sock, address):
            port = free_port()
            config = world.agent_config(endpoint, port)
            with (Path(folder) / "agent.log").open("wb") as log:
                child = subprocess.Popen(
                    [*AGENT, "serve", "--config", str(config)],
                    stdout=log, stderr=subprocess.STDOUT, env=quiet_env(NOTIFY_SOCKET=address),
                )
                try:
                    wait_ready(sock, child, 60)
                    for name in world.names:
                        url = f"http://127.0.0.1:{port}/v1/credentials/{name}"
                        status, _ = get(url, {"Authorization": world.token(name)})
                        assert status == 200, (name, status)
                    return rss_kib(child.pid) / 1024
                finally:
                    stop(child)


def main() -> None:
    print(f"memory: VmRSS after first sessions and one request per profile; {machine()}")
    floor = floor_mb()
    for profiles, goal in GOALS_MB.items():
        mb = measure(profiles)
        report(f"resident memory, {profiles} profile(s)", f"{mb:.1f} MB ({mb / floor:.2f}x floor)",
               f"< {goal} MB", mb < goal)
    print(f"  floor: python importing aiohttp.web and cryptography.x509 alone: {floor:.1f} MB")


if __name__ == "__main__":
    main()
