"""(a) Serving cached credentials: wrk at 64 connections against the agent and against nginx
serving the same JSON body from a file, on this machine, one after the other.

Both servers get one CPU's worth of work: the agent is one process with one event loop, nginx
runs one worker. wrk sends the same request, Authorization header included, to both.
Goals: at least 0.5 times nginx's requests/s, p99 under 2 ms, no errors.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common import (
    AGENT,
    World,
    emulator,
    free_port,
    get,
    machine,
    process,
    quiet_env,
    report,
)

CONNECTIONS = 64
THREADS = 1
SECONDS = 10
WARMUP_SECONDS = 2
GOAL_RATIO = 0.5
GOAL_P99_MS = 2.0
NGINX_CONFIG = """
worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {folder}/tmp;
    proxy_temp_path {folder}/tmp;
    fastcgi_temp_path {folder}/tmp;
    uwsgi_temp_path {folder}/tmp;
    scgi_temp_path {folder}/tmp;
    types {{ }}
    default_type application/json;
    server {{
        listen 127.0.0.1:{port};
        root {folder}/www;
    }}
}}
"""
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class Load:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def wrk(url: str, script: Path, seconds: int) -> Load:
    argv = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency",
            "-s", str(script), url]
    output = subprocess.run(argv, capture_output=True, text=True, check=True,
                            timeout=seconds + 30).stdout
    return parse_wrk(output)


def parse_wrk(output: str) -> Load:
    def latency(percent: str) -> float:
        number, unit = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)$", output, re.M).groups()
        return float(number) * _UNITS[unit]

    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return Load(rate, latency("50"), latency("99"), errors)


def measure(url: str, script: Path) -> Load:
    wrk(url, script, WARMUP_SECONDS)
    return wrk(url, script, SECONDS)


def nginx_load(body: bytes, script: Path) -> Load:
    with tempfile.TemporaryDirectory(prefix="ra-bench-nginx-") as name:
        try:
            return _nginx_load(Path(name), body, script)
        except RuntimeError:
            print((Path(name) / "nginx-error.log").read_text(), file=sys.stderr)
            raise


def _nginx_load(folder: Path, body: bytes, script: Path) -> Load:
    port = free_port()
    target = folder / "www" / "v1" / "credentials" / "p000"
    target.parent.mkdir(parents=True)
    target.write_bytes(body)
    (folder / "tmp").mkdir()
    config = folder / "nginx.conf"
    config.write_text(NGINX_CONFIG.format(folder=folder, port=port))
    # nginx's worker runs as nobody when started by root: it must be able to read the body.
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    url = f"http://127.0.0.1:{port}/v1/credentials/p000"
    with process([shutil.which("nginx"), "-c", str(config), "-p", str(folder)], url,
                 folder / "nginx.log"):
        return measure(url, script)


def main() -> None:
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (Debian package {tool}; `make bench` installs it)")
    print(f"serving: wrk -t{THREADS} -c{CONNECTIONS} -d{SECONDS}s --latency; {machine()}")
    with tempfile.TemporaryDirectory(prefix="ra-bench-") as name:
        folder = Path(name)
        world = World(folder)
        with emulator(world) as endpoint:
            port = free_port()
            config = world.agent_config(endpoint, port)
            url = f"http://127.0.0.1:{port}/v1/credentials/p000"
            argv = [*AGENT, "serve", "--config", str(config)]
            with process(argv, f"http://127.0.0.1:{port}/health", folder / "agent.log",
                         env=quiet_env()):
                token = world.token("p000")
                status, body = get(url, {"Authorization": token})
                assert status == 200, status
                script = folder / "auth.lua"
                script.write_text(f'wrk.headers["Authorization"] = "{token}"\n')
                agent = measure(url, script)
            nginx = nginx_load(body, script)

    ratio = agent.requests_per_second / nginx.requests_per_second
    print(f"  agent {agent.requests_per_second:,.0f} req/s, p50 {agent.p50_ms:.2f} ms, "
          f"p99 {agent.p99_ms:.2f} ms; nginx {nginx.requests_per_second:,.0f} req/s, "
          f"p50 {nginx.p50_ms:.2f} ms, p99 {nginx.p99_ms:.2f} ms")
    report("requests/s, agent / nginx", f"{ratio:.2f}", f">= {GOAL_RATIO}", ratio >= GOAL_RATIO)
    report("p99 latency, agent", f"{agent.p99_ms:.2f} ms", f"< {GOAL_P99_MS} ms",
           agent.p99_ms < GOAL_P99_MS)
    report("errors, agent", str(agent.errors), "0", agent.errors == 0)


if __name__ == "__main__":
    os.environ.pop("NOTIFY_SOCKET", None)
    main()
