"""Upstream robustness: no proxy password in any message, every malformed 201 answer refused
in one line, and credential-process and socket activation failing in one line, not a trace."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from structlog.testing import capture_logs

from rolesanywhere_agent.app import Agent
from rolesanywhere_agent.clock import FakeClock
from rolesanywhere_agent.config import parse_config
from rolesanywhere_agent.emulator import Fault
from rolesanywhere_agent.errors import InvalidResponse
from rolesanywhere_agent.rolesanywhere import parse_grant, redact
from rolesanywhere_agent.sessions import State

from .conftest import START, Stack, World, encrypt_key_file, role_arn
from .polling import attempt_at, until
from .processes import AGENT
from .sdk_clients import AGENT_CLI, child_env, run
from .test_credential_process import agent_config, flags

PASSWORD = "Pr0xyS3cret"
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                   "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")
ROLE = role_arn("web")


@asynccontextmanager
async def raw_server(answer: bytes) -> AsyncIterator[int]:
    """A loopback TCP server that reads one request head, writes `answer` and hangs up."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.write(answer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


PROXY_407 = (
    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
    b'Proxy-Authenticate: Basic realm="corp"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'
)


# --- 1. a proxy's credentials never leave in a message ----------------------------------------


def test_redact_strips_userinfo_from_every_url() -> None:
    text = (
        "407, message='Proxy Authentication Required', url='http://user:Pr0xyS3cret@127.0.0.1:1'"
        " then https://u%40x:p@host.example/path and socks5://only-user@h"
    )

    assert redact(text) == (
        "407, message='Proxy Authentication Required', url='http://127.0.0.1:1'"
        " then https://host.example/path and socks5://h"
    )
    assert redact("no URL, a@b and https://plain.example/x") == (
        "no URL, a@b and https://plain.example/x"
    )


@pytest.mark.parametrize("where", ["profile", "environment"])
async def test_proxy_password_is_in_no_error_health_body_or_log(
    world: World, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    world.add_leaf("web", "p256")
    async with raw_server(PROXY_407) as port:
        proxy = f"http://user:{PASSWORD}@127.0.0.1:{port}"
        extra = {"proxy": proxy} if where == "profile" else {}
        if where == "environment":
            monkeypatch.setenv("HTTPS_PROXY", proxy)
        # An https endpoint: aiohttp sends CONNECT, and its 407 error names the proxy URL.
        document = world.agent_document("https://127.0.0.1:9", **extra)
        config = parse_config(document, world.folder / "agent.yaml", os.environ)
        agent = Agent(config, clock=clock, rng=random.Random(7))
        with capture_logs() as events:
            await agent.start(wait_ready=False)
            try:
                session = agent.sessions["web"]
                await until(lambda: session.last_error, "the first refresh to fail")
                url = f"http://127.0.0.1:{agent.port}/health"
                async with aiohttp.ClientSession() as http, http.get(url) as response:
                    health = await response.text()
            finally:
                await agent.stop()

    assert "407" in session.last_error and f"127.0.0.1:{port}" in session.last_error
    assert "user:" not in session.last_error
    assert [e for e in events if e["event"] == "refresh_failed"]
    for text in (session.last_error, health, repr(events)):
        assert PASSWORD not in text


# --- 2. a 201 that parses but is malformed is InvalidResponse, in one line --------------------


def answer(change: Callable[[dict[str, Any]], object] = lambda document: None) -> str:
    """A well-formed CreateSession answer for ROLE, then `change` applied to it."""
    document: dict[str, Any] = {
        "credentialSet": [{
            "assumedRoleUser": {"arn": "arn:aws:sts::111122223333:assumed-role/web/x",
                                "assumedRoleId": "AROA:x"},
            "credentials": {"accessKeyId": "ASIAEXAMPLE", "secretAccessKey": "s3cr3t",
                            "sessionToken": "t0k3n", "expiration": "2026-12-04T13:00:00Z"},
            "packedPolicySize": 0,
            "roleArn": ROLE,
            "sourceIdentity": "CN=web.example",
        }],
        "subjectArn": "arn:aws:rolesanywhere:eu-west-1:111122223333:subject/x",
    }
    change(document)
    return json.dumps(document)


def creds_of(document: dict[str, Any]) -> dict[str, Any]:
    return document["credentialSet"][0]["credentials"]


CHANGES: dict[str, Callable[[dict[str, Any]], object]] = {
    "expiration number": lambda d: creds_of(d).update(expiration=12345),
    "expiration overflows": lambda d: creds_of(d).update(expiration="9999-12-31T23:59:59-01:00"),
    "assumedRoleUser string": lambda d: d["credentialSet"][0].update(assumedRoleUser="x"),
    "assumedRoleUser arn number": lambda d: d["credentialSet"][0].update(
        assumedRoleUser={"arn": 7}
    ),
    "credentials list": lambda d: d["credentialSet"][0].update(credentials=["x"]),
    "credentials string": lambda d: d["credentialSet"][0].update(credentials="x"),
    "credentialSet dict": lambda d: d.update(credentialSet={"0": {}}),
    "credentialSet string": lambda d: d.update(credentialSet="abc"),
    "credentialSet of strings": lambda d: d.update(credentialSet=["x"]),
    "accessKeyId number": lambda d: creds_of(d).update(accessKeyId=1),
    "roleArn number": lambda d: d["credentialSet"][0].update(roleArn=5),
    "roleArn list": lambda d: d["credentialSet"][0].update(roleArn=[ROLE]),
    "another role": lambda d: d["credentialSet"][0].update(roleArn=role_arn("admin")),
}
MALFORMED = {name: answer(change) for name, change in CHANGES.items()} | {
    "document is a list": "[1, 2]",
    "document is a string": '"credentialSet"',
}


@pytest.mark.parametrize("text", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_answer_is_one_line_invalid_response(text: str) -> None:
    with pytest.raises(InvalidResponse) as caught:
        parse_grant(text, START, ROLE)

    message = str(caught.value)
    assert message.startswith("CreateSession ") and "\n" not in message
    assert "s3cr3t" not in message and "t0k3n" not in message


def test_well_formed_answer_is_accepted() -> None:
    creds = parse_grant(answer(), START, ROLE)

    assert (creds.access_key_id, creds.role_arn) == ("ASIAEXAMPLE", ROLE)
    assert creds.expiration == START + timedelta(hours=1)
    assert creds.assumed_role_arn.endswith("assumed-role/web/x")


async def test_answer_for_another_role_is_refused_and_the_good_session_kept(
    stack_factory,
) -> None:
    stack = await stack_factory()
    session = stack.agent.sessions["web"]
    _, _, good = await stack.get("web")
    other = role_arn("admin")
    later = (START + timedelta(hours=3)).isoformat().replace("+00:00", "Z")

    def tampered(document: dict[str, Any]) -> None:
        document["credentialSet"][0]["roleArn"] = other
        creds_of(document)["expiration"] = later

    stack.emulator.inject(Fault(status=201, body=answer(tampered)))
    await attempt_at(stack)

    assert session.last_error == f"CreateSession answered for role {other!r}, not {ROLE}"
    assert session.state == State.DEGRADED
    status, _, body = await stack.get("web")
    assert (status, body) == (200, good)


# --- 3. credential-process --pkcs8-password - --------------------------------------------------


async def prompted(stack: Stack) -> tuple[int, str, str]:
    """`--pkcs8-password -` with stdin at end of file and no terminal (a new session)."""
    process = await asyncio.create_subprocess_exec(
        AGENT_CLI, "credential-process", *flags(stack), "--pkcs8-password", "-",
        env=child_env(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_prompt_at_end_of_input_is_a_one_line_error(stack_factory) -> None:
    stack = await stack_factory(real_time=True)
    encrypt_key_file(stack.world.identities["web"]["private_key"], b"correct horse")

    code, out, err = await prompted(stack)

    assert (code, out) == (2, ""), err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        "rolesanywhere-agent: --pkcs8-password -: no passphrase typed (input closed); "
        "type it at the prompt or give a file: --pkcs8-password FILE"
    )


async def test_unencrypted_key_is_never_prompted_for(stack_factory) -> None:
    stack = await stack_factory(real_time=True)

    code, out, err = await prompted(stack)

    assert code == 0, err
    assert json.loads(out)["Version"] == 1
    assert err == ""  # no prompt, no getpass warning


# --- 4. credential-process --config: a port that does not speak HTTP --------------------------


@pytest.mark.parametrize(
    "garbage", [b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff garbage\r\n\r\n", b"HTTP/1.1 200\r\nX"]
)
async def test_config_mode_signs_itself_when_the_port_is_not_the_agent(
    stack_factory, garbage: bytes
) -> None:
    stack = await stack_factory(real_time=True)

    async with raw_server(garbage) as port:
        outcome = await run(
            [AGENT_CLI, "credential-process", "--config", str(agent_config(stack, port=port)),
             "--profile", "web", "--debug"],
            child_env(),
        )

    assert outcome.ok, outcome.stderr
    assert json.loads(outcome.stdout)["Version"] == 1
    assert "Traceback" not in outcome.stderr and "agent_unreachable" in outcome.stderr
    assert stack.calls() == 2  # the agent's own session, and this one


# --- 5. socket activation with fd 3 not a socket -----------------------------------------------

# LISTEN_PID must name the process that reads it: set it, arrange fd 3, then exec the agent.
HAND_OVER = (
    "import os, sys; os.closerange(3, 4); "
    "fd = os.open('/dev/null', os.O_RDONLY) if sys.argv[1] == 'file' else None; "
    "fd is None or (os.dup2(fd, 3), os.set_inheritable(3, True)); "
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


@pytest.mark.parametrize("fd3", ["file", "closed"])
def test_listen_fds_without_a_socket_is_a_one_line_error(
    world: World, tmp_path: Path, fd3: str
) -> None:
    world.add_leaf("web", "p256")
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(world.agent_document("http://127.0.0.1:9")))

    result = subprocess.run(
        [sys.executable, "-c", HAND_OVER, fd3, *AGENT, "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env=child_env(),
    )

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "LISTEN_FDS" in line]
    assert line.startswith("rolesanywhere-agent: socket activation: LISTEN_FDS=1 but file")
