"""Local security: who may bind where, who may read the secrets on disk, how tokens are
compared, and a whole life cycle whose every log line is searched for secrets."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import random
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from structlog.testing import capture_logs

from rolesanywhere_agent import logs, pki, tokens
from rolesanywhere_agent.app import Agent, bind
from rolesanywhere_agent.clock import FakeClock
from rolesanywhere_agent.config import parse_config
from rolesanywhere_agent.emulator import Emulator, Fault
from rolesanywhere_agent.emulator.issued import CredentialStore
from rolesanywhere_agent.errors import ConfigError

from .conftest import PYTHON, World, sdk_env

# --- where the agent listens -----------------------------------------------------------------


@pytest.fixture
async def agent_on(world: World, clock: FakeClock) -> AsyncIterator[Callable[..., Any]]:
    """Start agents on a given socket with a given `listen` section; all stopped after."""
    world.add_leaf("web", "p256")
    emulator = Emulator(world.emulator_config(), clock=clock, controls=True)
    endpoint = await emulator.start()
    agents: list[Agent] = []

    async def start(listen: dict, sock: socket.socket | None = None) -> Agent:
        document = world.agent_document(endpoint)
        document["listen"] = listen
        config = parse_config(document, world.folder / "agent.yaml", os.environ)
        agent = Agent(config, clock=clock, sock=sock, rng=random.Random(1))
        agents.append(agent)
        await agent.start()
        return agent

    yield start
    for agent in agents:
        await agent.stop()
    await emulator.stop()


async def fetch(agent: Agent, host: str, address: str = "127.0.0.1", token: str | None = None):
    token_file = Path(agent.exports("web").token_file)
    headers = {"Host": host}
    headers["Authorization"] = token if token is not None else token_file.read_text()
    url = f"http://{address}:{agent.port}/v1/credentials/web"
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        return response.status, await response.json()


async def test_allow_remote_warns_at_every_start_and_keeps_tokens_and_host_checks(
    agent_on,
) -> None:
    """The config says 0.0.0.0; the test hands in a loopback socket, so nothing is exposed."""
    listen = {"host": "0.0.0.0", "port": 0, "allow_remote": True,
              "allowed_hosts": ["agent.internal"]}

    with capture_logs() as events:
        first = await agent_on(listen, bind("127.0.0.1", 0))
        await first.stop()
        agent = await agent_on(listen, bind("127.0.0.1", 0))

    warnings = [e for e in events if e["event"] == "listening_beyond_loopback"]
    assert [(e["log_level"], e["host"]) for e in warnings] == [("warning", "0.0.0.0")] * 2
    port = agent.port
    assert (await fetch(agent, f"agent.internal:{port}"))[0] == 200
    assert await fetch(agent, f"agent.internal:{port}", token="") == (
        401, {"Code": "Unauthorized", "Message": "missing or wrong authorization token"}
    )
    assert await fetch(agent, f"10.1.2.3:{port}") == (
        403, {"Code": "InvalidHost", "Message": "Host header is not an allowed loopback name"}
    )


async def test_other_loopback_address_needs_no_allow_remote_but_its_host_must_be_listed(
    agent_on,
) -> None:
    with capture_logs() as events:
        plain = await agent_on({"host": "127.0.0.2", "port": 0})
        listed = await agent_on({"host": "127.0.0.2", "port": 0, "allowed_hosts": ["127.0.0.2"]})

    assert not [e for e in events if e["event"] == "listening_beyond_loopback"]
    assert (await fetch(plain, f"127.0.0.2:{plain.port}", "127.0.0.2"))[0] == 403
    assert (await fetch(plain, f"127.0.0.1:{plain.port}", "127.0.0.2"))[0] == 200
    assert (await fetch(listed, f"127.0.0.2:{listed.port}", "127.0.0.2"))[0] == 200


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback in this environment")
async def test_ipv6_loopback_listener(agent_on) -> None:
    agent = await agent_on({"host": "::1", "port": 0})

    assert (await fetch(agent, f"[::1]:{agent.port}", "[::1]"))[0] == 200


def test_non_loopback_host_without_allow_remote_is_refused(world: World) -> None:
    world.add_leaf("web", "p256")
    document = world.agent_document("http://127.0.0.1:9")
    document["listen"] = {"host": "192.0.2.10", "port": 9912}

    with pytest.raises(ConfigError) as refused:
        parse_config(document, world.folder / "agent.yaml", {})

    assert str(refused.value) == (
        f"{world.folder}/agent.yaml: listen.host: '192.0.2.10' is not a loopback address; use "
        "127.0.0.1 or set listen.allow_remote: true"
    )


# --- secrets on disk -------------------------------------------------------------------------


def encrypt_key(world: World, name: str, passphrase: bytes, mode: int) -> Path:
    """Re-write `name`'s key encrypted, and its passphrase file with `mode`; returns the latter."""
    files = world.identities[name]
    key = world.leaves[name].key
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    pki.write(files["private_key"], encrypted, 0o600)
    return pki.write(files["private_key"].with_name("passphrase"), passphrase + b"\n", mode)


async def test_readable_key_and_passphrase_files_are_warned_about(
    stack_factory, world: World
) -> None:
    world.add_leaf("web", "p256")
    world.add_leaf("edge", "rsa2048")
    world.add_leaf("api", "p384")
    passphrase = encrypt_key(world, "edge", b"correct horse", 0o640)
    world.identities["edge"]["passphrase_file"] = passphrase
    world.identities["web"]["private_key"].chmod(0o644)

    with capture_logs() as events:
        await stack_factory(leaves=())

    warned = [
        (e["profile"], e["path"], e["mode"], e["readable_by"], e["hint"])
        for e in events
        if e["event"] == "secret_file_readable"
    ]
    web_key = world.identities["web"]["private_key"]
    assert sorted(warned) == [
        ("edge", str(passphrase), "0640", "group", f"chmod 600 {passphrase}"),
        ("web", str(web_key), "0644", "others", f"chmod 600 {web_key}"),
    ]
    assert all(e["log_level"] == "warning" for e in events if e["event"] == "secret_file_readable")


async def test_world_writable_token_folder_stops_the_start(world: World, clock) -> None:
    world.add_leaf("web", "p256")
    folder = world.folder / "run"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    config = parse_config(world.agent_document("http://127.0.0.1:9"), world.folder / "a.yaml", {})
    agent = Agent(config, clock=clock)

    with pytest.raises(ConfigError) as refused:
        await agent.start()

    assert str(refused.value) == (
        f"{folder}: token folder is world-writable; use a folder only the agent can write "
        "(chmod o-w)"
    )
    assert not (folder / "web.token").exists()


async def test_token_comparison_is_constant_time(stack_factory, monkeypatch) -> None:
    stack = await stack_factory()
    token = stack.token("web")
    compared: list[tuple[bytes, bytes]] = []
    real = tokens.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", spy)
    statuses = [
        (await stack.get("web", Authorization=value))[0]
        for value in (token, "short", token + "-longer", token[:-1] + "?")
    ]

    assert statuses == [200, 401, 401, 401]
    # Every presented value, whatever its length, goes through compare_digest.
    assert [a for a, _ in compared] == [
        token.encode(), b"short", (token + "-longer").encode(), (token[:-1] + "?").encode()
    ]
    assert {b for _, b in compared} == {token.encode()}


# --- a whole life cycle, every log line searched --------------------------------------------


def pem_fragments(pem: bytes) -> list[str]:
    """The base64 lines of a PEM body: any of them in a log would leak key material."""
    lines = [line.strip() for line in pem.decode().splitlines()]
    return [line for line in lines if line and not line.startswith("-----") and ":" not in line]


@pytest.fixture
def every_log_line(monkeypatch) -> Callable[[], str]:
    """Route the real structlog pipeline and stdlib logging (aiohttp) into one buffer."""
    buffer = io.StringIO()
    logs.configure("json", "debug", stream=buffer)
    handler = logging.StreamHandler(buffer)
    root = logging.getLogger()
    root.addHandler(handler)
    monkeypatch.setattr(root, "level", logging.DEBUG)
    yield buffer.getvalue
    root.removeHandler(handler)
    structlog.reset_defaults()


async def test_full_cycle_logs_hold_no_secret(
    stack_factory, world: World, every_log_line, monkeypatch
) -> None:
    issued = []
    original_issue = CredentialStore.issue

    def recording_issue(self, **kwargs):
        session = original_issue(self, **kwargs)
        issued.append(session)
        return session

    monkeypatch.setattr(CredentialStore, "issue", recording_issue)
    world.add_leaf("web", "rsa2048")
    passphrase = b"correct horse battery staple"
    world.identities["web"]["passphrase_file"] = encrypt_key(world, "web", passphrase, 0o600)

    # Start (first session), and serve to botocore in a child process.
    stack = await stack_factory(leaves=(), real_time=True)
    session = stack.agent.sessions["web"]
    env = sdk_env(stack.agent.exports("web").as_dict(), stack.endpoint)
    child = await asyncio.to_thread(
        subprocess.run,
        [PYTHON, "-c", "import boto3; print(boto3.client('sts').get_caller_identity()['Arn'])"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert child.returncode == 0, child.stderr[-500:]

    # Refresh, fault, recover; a bad request carrying the token; a wrong token.
    assert await session.refresh_now()
    stack.emulator.inject(Fault(status=500, message="internal failure"))
    assert not await session.refresh_now()
    stack.emulator.clear_faults()
    assert await session.refresh_now()
    token = stack.token("web")
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.agent.port)
    writer.write(f"GET /v1/credentials/web HTTP/1.1\r\nAuthorization: {token}\r\nX: \0\r\n\r\n"
                 .encode())
    await reader.read()
    writer.close()
    assert (await stack.get("web", Authorization=token[::-1]))[0] == 401

    # Reload with a second profile, then stop.
    world.add_leaf("api", "p256")
    stack.emulator.config = world.emulator_config()
    document = world.agent_document(stack.endpoint)
    assert await stack.agent.reload(parse_config(document, world.folder / "agent.yaml", {}))
    await stack.agent.sessions["api"].first_outcome()
    api_token = stack.token("api")
    assert (await stack.get("api"))[0] == 200
    await stack.agent.stop()

    text = every_log_line()
    events = {line.split('"event": "')[1].split('"')[0] for line in text.splitlines()
              if '"event": "' in line}
    assert {"session_refreshed", "refresh_failed", "config_reloaded", "agent_stopped",
            "request_unauthorized", "http_request_rejected"} <= events
    secrets = [token, api_token, passphrase.decode()]
    secrets += [s.secret_access_key for s in issued] + [s.session_token for s in issued]
    for name in ("web", "api"):
        secrets += pem_fragments(world.leaves[name].key_pem)
    secrets += pem_fragments(world.identities["web"]["private_key"].read_bytes())
    assert len(issued) >= 4
    leaked = [secret[:8] + "..." for secret in secrets if secret in text]
    assert leaked == []
