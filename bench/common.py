"""What every benchmark shares: the machine line, goal lines, and a local world to run in.

Everything here runs on loopback: the emulator stands in for IAM Roles Anywhere, and no
benchmark reaches any other host.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from rolesanywhere_agent import pki

REGION = "eu-west-1"
ACCOUNT = "111122223333"
AGENT = [str(Path(sys.executable).parent / "rolesanywhere-agent")]
READY_TIMEOUT = 60.0


def machine() -> str:
    """nproc, CPU model and Python version: the figures mean little without them."""
    model = "unknown CPU"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs, {model}, Python {platform.python_version()}"


def report(name: str, measured: str, goal: str, met: bool) -> None:
    verdict = "met" if met else "MISSED"
    print(f"{name:<44} {measured:<34} goal {goal:<22} {verdict}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int | None, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return None, b""


class World:
    """A root CA, leaves for `profiles` profiles, and config files for emulator and agent."""

    def __init__(self, folder: Path, profiles: int = 1, key_type: str = "p256") -> None:
        self.folder = folder
        root = pki.issue("Bench Root CA", ca=True, key_type="p256", days=2)
        pki.write(folder / "root.pem", root.cert_pem)
        prefix = f"arn:aws:rolesanywhere:{REGION}:{ACCOUNT}"
        self.anchor = f"{prefix}:trust-anchor/{uuid.uuid4()}"
        self.profile = f"{prefix}:profile/{uuid.uuid4()}"
        self.names = [f"p{i:03d}" for i in range(profiles)]
        self.identities = {
            name: pki.write_identity(
                folder / name, pki.issue(f"{name}.bench", issuer=root, key_type=key_type, days=1),
                [],
            )
            for name in self.names
        }

    def role(self, name: str) -> str:
        return f"arn:aws:iam::{ACCOUNT}:role/{name}"

    def emulator_config(self) -> Path:
        path = self.folder / "emulator.yaml"
        path.write_text(yaml.safe_dump({
            "account_id": ACCOUNT,
            "trust_anchors": [{"arn": self.anchor, "certificates": ["root.pem"]}],
            "profiles": [{"arn": self.profile, "role_arns": [self.role(n) for n in self.names]}],
        }))
        return path

    def agent_config(self, endpoint: str, port: int, level: str = "warning") -> Path:
        profiles = {
            name: {
                **{key: str(path) for key, path in self.identities[name].items()},
                "trust_anchor_arn": self.anchor,
                "profile_arn": self.profile,
                "role_arn": self.role(name),
                "endpoint": endpoint,
            }
            for name in self.names
        }
        path = self.folder / "agent.yaml"
        path.write_text(yaml.safe_dump({
            "listen": {"host": "127.0.0.1", "port": port},
            "log": {"format": "json", "level": level},
            "token_dir": str(self.folder / "run"),
            "profiles": profiles,
        }))
        return path

    def token(self, name: str) -> str:
        return (self.folder / "run" / f"{name}.token").read_text()


@contextmanager
def process(argv: list[str], ready_url: str, log: Path, **popen) -> Iterator[subprocess.Popen]:
    """Run `argv` until the block ends; ready once `ready_url` answers 200."""
    with log.open("wb") as output:
        child = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, **popen)
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while get(ready_url)[0] != 200:
                if child.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{argv[:2]} did not start: {log.read_text()[-2000:]}")
                time.sleep(0.02)
            yield child
        finally:
            stop(child)


def stop(child: subprocess.Popen) -> None:
    child.terminate()
    try:
        child.wait(timeout=15)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


@contextmanager
def emulator(world: World) -> Iterator[str]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    argv = [*AGENT, "emulator", "--config", str(world.emulator_config()), "--port", str(port),
            "--controls"]
    with process(argv, f"{endpoint}/_emulator/counters", world.folder / "emulator.log"):
        yield endpoint


def create_session_calls(endpoint: str) -> int:
    _, body = get(f"{endpoint}/_emulator/counters")
    return sum(json.loads(body)["create_session"].values())


@contextmanager
def notify_socket(folder: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in the role of systemd, to learn the moment the agent is READY."""
    path = f"{folder}/notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()
        os.unlink(path)


def wait_ready(sock: socket.socket, child: subprocess.Popen, timeout: float) -> None:
    """Block until READY=1 arrives; fail if the agent exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or child.poll() is not None:
            raise RuntimeError("the agent did not become ready")
        sock.settimeout(min(remaining, 0.5))
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            continue
        if "READY=1" in message.splitlines():
            return


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def quiet_env(**extra: str) -> dict[str, str]:
    """The agent's environment: nothing inherited that could point it elsewhere."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "NOTIFY_", "LISTEN_", "WATCHDOG_"))}
    env.update(extra)
    return env
