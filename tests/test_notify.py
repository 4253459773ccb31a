"""The systemd notification protocol, spoken by the real `serve` process to a socket we own."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from rolesanywhere_agent.notify import Notifier

from .conftest import World
from .processes import AGENT, free_port, http_status, running

WAIT_SECONDS = 30.0


@dataclass
class NotifyListener:
    """A datagram socket in the role of systemd: collects what the agent sends."""

    sock: socket.socket
    address: str
    messages: list[dict[str, str]] = field(default_factory=list)

    def wait_for(
        self, wanted: Callable[[dict[str, str]], bool], after: int = 0
    ) -> dict[str, str]:
        """The first message from index `after` on that `wanted` accepts, waiting for it."""
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            for message in self.messages[after:]:
                if wanted(message):
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no such message; got {self.messages}")
            self.sock.settimeout(remaining)
            self.messages.append(_parse(self.sock.recv(4096)))


def _parse(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines())


@pytest.fixture(params=["path", "abstract"])
def listener(request) -> Iterator[NotifyListener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "abstract":
        name = f"rolesanywhere-test-{uuid.uuid4().hex}"
        sock.bind(b"\0" + name.encode())
        address = "@" + name
    else:
        # A short folder: socket paths are limited to 107 bytes, pytest's tmp_path is long.
        folder = tempfile.mkdtemp(prefix="ra-notify-")
        address = f"{folder}/notify.sock"
        sock.bind(address)
    try:
        yield NotifyListener(sock, address)
    finally:
        sock.close()
        if request.param == "path":
            os.unlink(address)
            os.rmdir(os.path.dirname(address))


@pytest.fixture
def emulator(world: World, tmp_path: Path) -> Iterator[str]:
    world.add_leaf("rsa", "rsa2048")
    world.add_leaf("ec", "p256")
    config = world.write_emulator_yaml(tmp_path)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    argv = [*AGENT, "emulator", "--config", str(config), "--port", str(port), "--controls"]
    with running(argv, f"{endpoint}/_emulator/counters", tmp_path / "emulator.log"):
        yield endpoint


def control(endpoint: str, method: str, path: str, document: dict | None = None) -> dict:
    data = json.dumps(document).encode() if document is not None else None
    request = urllib.request.Request(f"{endpoint}/_emulator/{path}", data=data, method=method)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def start_agent(
    world: World, tmp_path: Path, endpoint: str, env: dict[str, str]
) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(world.agent_document(endpoint, port=port)))
    log = (tmp_path / "agent.log").open("wb")
    argv = [*AGENT, "serve", "--config", str(config)]
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    return process, port


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=WAIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def agent_env(listener: NotifyListener, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_USEC", "WATCHDOG_PID")}
    env.update(NOTIFY_SOCKET=listener.address, **extra)
    return env


def test_ready_only_after_first_sessions_then_stopping(
    world: World, tmp_path: Path, emulator: str, listener: NotifyListener
) -> None:
    # Slow grants widen the window in which a premature READY would be seen.
    control(emulator, "POST", "faults", {"delay": 0.5, "times": 2})
    process, port = start_agent(world, tmp_path, emulator, agent_env(listener))
    try:
        ready = listener.wait_for(lambda m: "READY" in m)
        granted = control(emulator, "GET", "counters")["create_session"]
        health = http_status(f"http://127.0.0.1:{port}/health")
    finally:
        code = stop(process)
    stopping = listener.wait_for(lambda m: "STOPPING" in m)

    assert ready == {"READY": "1", "STATUS": "2 of 2 profiles ready"}
    assert granted == {"success": 2}
    assert health == 200
    before_ready = [m["STATUS"] for m in listener.messages[: listener.messages.index(ready)]]
    assert before_ready[0] == "0 of 2 profiles ready; starting: ec, rsa"
    assert before_ready[1] in ("1 of 2 profiles ready; starting: ec",
                               "1 of 2 profiles ready; starting: rsa")
    assert before_ready[2:] == ["2 of 2 profiles ready"]
    assert stopping == {"STOPPING": "1", "STATUS": "stopping"}
    assert code == 0
    assert not any("WATCHDOG" in m for m in listener.messages)  # none asked for


def test_ready_with_the_reason_when_the_first_refresh_fails(
    world: World, tmp_path: Path, emulator: str, listener: NotifyListener
) -> None:
    control(emulator, "POST", "faults", {"status": 403, "message": "Disabled trust anchor"})
    process, port = start_agent(world, tmp_path, emulator, agent_env(listener))
    try:
        ready = listener.wait_for(lambda m: "READY" in m)
        health = http_status(f"http://127.0.0.1:{port}/health")
    finally:
        stop(process)

    reason = "AccessDeniedException (403): Disabled trust anchor"
    assert ready == {
        "READY": "1",
        "STATUS": f"0 of 2 profiles ready; unavailable: ec ({reason}), rsa ({reason})",
    }
    assert health == 503


def test_watchdog_pings_when_asked_for(
    world: World, tmp_path: Path, emulator: str, listener: NotifyListener
) -> None:
    env = agent_env(listener, WATCHDOG_USEC="200000")
    process, _ = start_agent(world, tmp_path, emulator, env)
    try:
        listener.wait_for(lambda m: "READY" in m)
        ready_at = len(listener.messages)
        # Pings go on after READY, not only while starting.
        ping = listener.wait_for(lambda m: "WATCHDOG" in m, after=ready_at)
    finally:
        code = stop(process)

    assert ping == {"WATCHDOG": "1"}
    assert code == 0


def test_watchdog_for_another_pid_is_not_ours(monkeypatch) -> None:
    environ = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    mine = {**environ, "WATCHDOG_PID": str(os.getpid())}

    assert Notifier(environ).watchdog_interval is None
    assert Notifier(mine).watchdog_interval == 1.0
    assert Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "0"}).watchdog_interval is None


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})

    notifier.ready("x")
    notifier.stopping()

    assert notifier.enabled is False
    assert notifier.address is None


def test_sighup_sends_reloading_then_ready(
    world: World, tmp_path: Path, emulator: str, listener: NotifyListener
) -> None:
    process, _ = start_agent(world, tmp_path, emulator, agent_env(listener))
    try:
        listener.wait_for(lambda m: "READY" in m)
        ready_at = len(listener.messages)
        process.send_signal(signal.SIGHUP)
        reloading = listener.wait_for(lambda m: "RELOADING" in m, after=ready_at)
        after = listener.messages.index(reloading) + 1
        ready_again = listener.wait_for(lambda m: "READY" in m, after=after)
    finally:
        code = stop(process)

    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
    assert ready_again == {"READY": "1", "STATUS": "2 of 2 profiles ready"}
    assert code == 0
