"""The systemd units: hardening score, `systemd-analyze verify`, and socket activation."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rolesanywhere_agent.activation import inherited_socket

from .conftest import World
from .processes import AGENT, free_port, http_status, running

UNITS = Path(__file__).parent.parent / "systemd"
SERVICE = UNITS / "rolesanywhere-agent.service"
SOCKET = UNITS / "rolesanywhere-agent.socket"
ANALYZE = shutil.which("systemd-analyze")
MAX_EXPOSURE = 1.5
HAND_OVER = (
    "import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); os.close(fd); "
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='agent'); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def settings(path: Path) -> dict[str, list[str]]:
    """Every `Key=value` of a unit file, keys repeated as systemd allows."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@needs_analyze
def test_hardening_exposure_is_at_most_1_5() -> None:
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", str(SERVICE)],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)

    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


@needs_analyze
def test_units_verify_clean(tmp_path: Path) -> None:
    # verify insists that ExecStart's binary exists: point it at this venv's entry point.
    binary = Path(sys.executable).parent / "rolesanywhere-agent"
    text = SERVICE.read_text().replace(
        "ExecStart=/usr/local/bin/rolesanywhere-agent", f"ExecStart={binary}"
    )
    assert str(binary) in text
    (tmp_path / SERVICE.name).write_text(text)
    shutil.copy(SOCKET, tmp_path / SOCKET.name)

    result = subprocess.run(
        [ANALYZE, "verify", SERVICE.name, SOCKET.name],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )

    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_service_is_type_notify_with_watchdog_and_runtime_directory() -> None:
    unit = settings(SERVICE)

    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] == ["30s"]
    assert unit["RuntimeDirectory"] == ["rolesanywhere-agent"]
    assert unit["DynamicUser"] == ["yes"]
    assert "LoadCredential=web.key:" in SERVICE.read_text()  # documented for keys
    assert settings(SOCKET)["ListenStream"] == ["127.0.0.1:9912"]


def test_agent_serves_on_the_socket_systemd_hands_over(world: World, tmp_path: Path) -> None:
    world.add_leaf("web", "p256")
    unused = f"http://127.0.0.1:{free_port()}"  # nothing listens: the first refresh fails
    configured_port = free_port()
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(world.agent_document(unused, port=configured_port)))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    # As systemd does it: the socket as fd 3, LISTEN_PID naming the process that execs.
    argv = [sys.executable, "-c", HAND_OVER, str(listener.fileno()),
            *AGENT, "serve", "--config", str(config)]
    url = f"http://127.0.0.1:{port}/health"

    try:
        with running(argv, url, tmp_path / "agent.log", pass_fds=(listener.fileno(),)):
            health = http_status(url)
            configured = http_status(f"http://127.0.0.1:{configured_port}/health")
    finally:
        listener.close()

    assert health == 503  # served on the inherited socket; no session from a closed port
    assert configured is None  # the configured port was never bound


def test_inherited_socket_is_ignored_when_meant_for_another_process() -> None:
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "agent", "HOME": "/"}

    assert inherited_socket(environ) is None
    assert environ == {"HOME": "/"}  # removed, so that no child process picks them up
