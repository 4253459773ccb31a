"""Abuse of the loopback listener with raw sockets: malformed and oversized requests, odd
methods, idle and slow connections, and random requests from hypothesis. Always a prompt
4xx (or the documented 503), never a 5xx or a traceback, never a hang."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from .conftest import Stack, make_world
from .polling import until
from .processes import AGENT, free_port, http_status, log_events, running

IDLE = 0.5
CAP = 20
OPTIONS = {"idle_timeout": IDLE, "max_connections": CAP}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def parse(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(status, headers, body)


async def exchange(port: int, data: bytes, timeout: float = 5.0) -> Answer:
    """Send raw bytes and read the answer; the request asks the server to close after it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    return parse(raw)


def request(stack: Stack, method: str = "GET", path: str = "/v1/credentials/web",
            *extra: str, token: str | None = None) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: 127.0.0.1:{stack.agent.port}",
        f"Authorization: {token if token is not None else stack.token('web')}",
        "Connection: close",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.mark.parametrize(
    ("name", "build", "status"),
    [
        ("request_line_garbage", lambda s: b"HELLO THERE\r\n\r\n", 400),
        ("binary_garbage", lambda s: bytes(range(256)) + b"\r\n\r\n", 400),
        ("header_without_colon", lambda s: request(s, "GET", "/health", "NoColonHere"), 400),
        ("header_value_with_nul", lambda s: request(s, "GET", "/health", "X-A: a\x00b"), 400),
        ("oversized_header", lambda s: request(s, "GET", "/health", "X-Big: " + "a" * 9000), 400),
        ("too_many_headers", lambda s: request(s, "GET", "/health",
                                               *(f"X-{i}: v" for i in range(100))), 400),
        ("very_long_path", lambda s: request(s, "GET", "/v1/credentials/" + "w" * 5000), 400),
        ("long_path_within_limits", lambda s: request(s, "GET", "/v1/credentials/" + "w" * 3000),
         404),
        ("bad_content_length", lambda s: request(s, "GET", "/health", "Content-Length: -1"), 400),
        ("http_2_version_and_foreign_host", lambda s: b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 403),
        ("proxy_form_naming_another_host",
         lambda s: request(s, "GET", "http://evil.example/health"), 400),
        ("asterisk_form", lambda s: request(s, "OPTIONS", "*"), 400),
        # aiohttp's own Expect handler answers 500 to a value that is not UTF-8.
        ("expect_not_utf8", lambda s: request(s, "GET", "/health", "Expect: \x80"), 417),
        ("expect_not_utf8_unknown_path", lambda s: request(s, "GET", "/x", "Expect: \xff"), 417),
        ("expect_not_utf8_asterisk", lambda s: request(s, "OPTIONS", "*", "Expect: \xff"), 417),
        ("expect_100_continue", lambda s: request(s, "GET", "/v1/credentials/web",
                                                  "Expect: 100-continue"), 200),
    ],
)
async def test_malformed_requests_get_a_prompt_4xx(stack_factory, name, build, status) -> None:
    stack = await stack_factory(agent_options=OPTIONS)

    with capture_logs() as events:
        answer = await exchange(stack.agent.port, build(stack))

    assert answer.status == status
    assert not [e for e in events if e["log_level"] in ("error", "critical")]
    assert stack.token("web") not in str(events)
    assert (await stack.get("web"))[0] == 200  # and the agent is unharmed


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
async def test_methods_other_than_get_are_405(stack_factory, method: str) -> None:
    stack = await stack_factory(agent_options=OPTIONS)

    answer = await exchange(stack.agent.port, request(stack, method))

    assert answer.status == 405
    assert answer.headers["allow"] == "GET"
    assert answer.json() == {"Code": "MethodNotAllowed", "Message": "use GET"}


async def test_head_is_405_without_a_body(stack_factory) -> None:
    stack = await stack_factory(agent_options=OPTIONS)

    answer = await exchange(stack.agent.port, request(stack, "HEAD"))

    assert (answer.status, answer.headers["allow"], answer.body) == (405, "GET", b"")


async def test_connections_above_the_cap_get_503_and_idle_ones_are_closed(
    stack_factory,
) -> None:
    stack = await stack_factory(agent_options=OPTIONS)
    port = stack.agent.port
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CAP)]
    server = stack.agent._runner.server
    await until(lambda: len(server.connections) == CAP, "the idle connections to be accepted")

    with capture_logs() as events:
        refused = await asyncio.gather(*(exchange(port, request(stack)) for _ in range(3)))

    assert {answer.status for answer in refused} == {503}
    assert refused[0].headers["retry-after"] == "1"
    assert refused[0].json() == {
        "Code": "TooManyConnections",
        "Message": "too many open connections; retry shortly",
    }
    limit = [e for e in events if e["event"] == "connection_limit_reached"]
    assert [(e["log_level"], e["max_connections"]) for e in limit] == [("warning", CAP)]

    # Idle connections are closed by the agent after IDLE seconds: reading gives end of file.
    for reader, writer in idle:
        assert await asyncio.wait_for(reader.read(), IDLE + 5) == b""
        writer.close()
    assert (await exchange(port, request(stack))).status == 200


async def test_slow_client_is_cut_off_and_others_are_served_meanwhile(stack_factory) -> None:
    stack = await stack_factory(agent_options=OPTIONS)
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.agent.port)
    data = request(stack)
    started = time.monotonic()

    async def dribble() -> None:
        for index in range(len(data) - 1):  # never the last byte: the head stays incomplete
            writer.write(data[index : index + 1])
            await asyncio.sleep(0.02)
            if reader.at_eof() or writer.is_closing():
                return

    dribbling = asyncio.create_task(dribble())
    served = await exchange(stack.agent.port, request(stack))
    closed = await asyncio.wait_for(reader.read(), IDLE + 5)
    dribbling.cancel()
    writer.close()

    assert served.status == 200
    assert closed == b""
    assert time.monotonic() - started < IDLE + 5


async def test_host_header_checks_hold_on_every_path(stack_factory) -> None:
    stack = await stack_factory(agent_options=OPTIONS)
    data = request(stack).replace(
        f"Host: 127.0.0.1:{stack.agent.port}".encode(), b"Host: attacker.example"
    )

    answer = await exchange(stack.agent.port, data)

    assert answer.status == 403
    assert answer.json()["Code"] == "InvalidHost"
    assert stack.token("web").encode() not in answer.body


# --- hypothesis against the real process -----------------------------------------------------


@dataclass(frozen=True)
class Target:
    port: int
    token: str
    log: Path
    process: subprocess.Popen


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Iterator[Target]:
    folder = tmp_path_factory.mktemp("abuse")
    world = make_world(folder)
    world.add_leaf("web", "p256")
    emulator_yaml = world.write_emulator_yaml(folder)
    emulator_port, port = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{emulator_port}"
    config = folder / "agent.yaml"
    document = world.agent_document(endpoint, port=port)
    config.write_text(yaml.safe_dump(document))
    emulator = [*AGENT, "emulator", "--config", str(emulator_yaml), "--port", str(emulator_port)]
    agent = [*AGENT, "serve", "--config", str(config)]
    with (
        running(emulator, f"{endpoint}/", folder / "emulator.log"),
        running(agent, f"http://127.0.0.1:{port}/health", folder / "agent.log") as process,
    ):
        token = (folder / "run" / "web.token").read_text()
        yield Target(port, token, folder / "agent.log", process)


def raw_exchange(port: int, data: bytes, expect_answer: bool, head_only: bool) -> bytes:
    """Send `data`; when its head is complete, read one whole answer (or until close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
        except OSError:
            return b""  # the agent already closed on us: an answer to garbage, not a hang
        if not expect_answer:
            return b""
        received = b""
        deadline = time.monotonic() + 5
        while not answer_complete(received, head_only):
            if time.monotonic() > deadline:
                raise AssertionError(f"no complete answer within 5 s to {data[:200]!r}")
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            received += chunk
        return received


def answer_complete(received: bytes, head_only: bool) -> bool:
    head, found, body = received.partition(b"\r\n\r\n")
    if not found:
        return False
    if head_only:
        return True
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


latin1 = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=40)
printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
token_chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ!#$%&'*+-.^_`|~0"
methods = st.sampled_from(
    ["GET", "GET", "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "BREW"]
)
paths = st.sampled_from(
    [
        "/v1/credentials/web",
        "/v1/credentials/web",
        "/v1/credentials/web/",
        "/v1/credentials/",
        "/v1/credentials/other",
        "/v1/credentials/%2e%2e/health",
        "/v1/credentials/web?x=1",
        "/health",
        "/",
        "*",
        "//",
        "http://127.0.0.1/v1/credentials/web",
    ]
)
header_names = st.sampled_from(
    ["Content-Length", "Transfer-Encoding", "Expect", "Upgrade", "X-Forwarded-For", "Cookie"]
) | st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_", min_size=1, max_size=20)
header_values = st.sampled_from(["0", "5", "-1", "chunked", "100-continue", "websocket"])


def mostly(draw, usual, rare):
    """`usual` nine times in ten, `rare` (the odd or broken variant) otherwise."""
    return draw(rare) if draw(st.integers(0, 9)) == 0 else draw(usual)


@st.composite
def requests(draw, token: str, port: int) -> tuple[bytes, bool, bool]:
    """(bytes, whether an answer must come, whether it is a HEAD answer without a body)."""
    if draw(st.integers(0, 19)) == 0:
        garbage = draw(st.binary(max_size=3000))
        return garbage, False, False
    method = mostly(draw, methods, st.text(alphabet=token_chars, min_size=1, max_size=12))
    path = mostly(draw, paths, latin1.map(lambda text: "/" + text))
    version = mostly(draw, st.just("HTTP/1.1"), st.sampled_from(["HTTP/1.0", "HTTP/0.9", ""]))
    host = mostly(
        draw,
        st.just(f"127.0.0.1:{port}"),
        st.sampled_from([f"localhost:{port}", f"[::1]:{port}", "evil.example", None]),
    )
    auth = mostly(draw, st.just(token), st.sampled_from([f"Bearer {token}", token + "x", ""]))
    headers = [("Host", host), ("Authorization", auth), ("Connection", "close")]
    values = st.one_of(header_values, printable, latin1)
    headers += draw(st.lists(st.tuples(header_names, values), max_size=4))
    lines = [f"{method} {path} {version}".rstrip()]
    lines += [f"{name}: {value}" for name, value in headers if value is not None]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    body = mostly(draw, st.just(b""), st.binary(max_size=200))
    return head + body, True, method == "HEAD"


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_random_requests_never_get_5xx_or_hang(target: Target, data) -> None:
    raw, expect_answer, head_only = data.draw(requests(target.token, target.port))

    received = raw_exchange(target.port, raw, expect_answer, head_only)

    if received:
        assert re.match(rb"HTTP/\d\.\d \d{3} ", received), received[:200]
        status = int(received.split(b" ", 2)[1])
        event(f"status {status}")
        assert status < 500 or status == 503, received[:500]
        if status == 200 and b"/v1/credentials/web " in raw.split(b"\r\n", 1)[0]:
            answer = parse(received)
            assert set(answer.json()) >= {"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}


def test_after_the_random_requests_the_agent_is_healthy_and_logged_no_traceback(
    target: Target,
) -> None:
    assert target.process.poll() is None
    assert http_status(f"http://127.0.0.1:{target.port}/health") == 200
    text = target.log.read_text()
    assert "Traceback" not in text
    assert target.token not in text
    assert not [e for e in log_events(target.log) if e.get("level") in ("error", "critical")]
