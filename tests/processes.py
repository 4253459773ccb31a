"""Start the real CLI as child processes and wait until they answer, by polling, not sleeping."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

AGENT = [sys.executable, "-m", "rolesanywhere_agent.cli"]
READY_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(url: str, headers: dict[str, str] | None = None) -> int | None:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@contextmanager
def running(
    argv: list[str], ready_url: str, log_path: Path, pass_fds: tuple[int, ...] = ()
) -> Iterator[subprocess.Popen]:
    """Run `argv` until the block ends; ready once `ready_url` answers at all."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, pass_fds=pass_fds)
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while http_status(ready_url) is None:
                if process.poll() is not None:
                    raise AssertionError(f"{argv[3]} exited: {log_path.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{argv[3]} not ready: {log_path.read_text()[-2000:]}")
                time.sleep(0.05)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def log_events(path: Path) -> list[dict]:
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events
