"""The IMDSv2-compatible endpoint (DESIGN §7): tokens, paths, statuses, exports; C26, C27."""

from __future__ import annotations

import json
import re
import socket

import pytest
import yaml
from structlog.testing import capture_logs

from rolesanywhere_agent import cli
from rolesanywhere_agent.clock import FakeClock
from rolesanywhere_agent.credentials import format_expiration
from rolesanywhere_agent.emulator import Fault
from rolesanywhere_agent.endpoints.imds import ImdsTokens, instance_profile_id
from rolesanywhere_agent.errors import ConfigError

from .conftest import BOTO3_CALLER, PYTHON, START
from .loopback_proxy import LoopbackProxy
from .processes import free_port
from .sdk_clients import AGENT_CLI, child_env, imds_env, run

CREDENTIALS = "/latest/meta-data/iam/security-credentials"
INFO = "/latest/meta-data/iam/info"
TTL = "X-aws-ec2-metadata-token-ttl-seconds"
EXPIRATION = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
async def imds(stack_factory):
    """An agent whose profile `web` also has an IMDS listener."""
    return await stack_factory(agent_extra={"imds": {"port": 0}})


def base(stack) -> str:
    return stack.agent.exports("web").imds_endpoint.rstrip("/")


async def put_token(stack, ttl: str | None = "21600", **headers: str):
    if ttl is not None:
        headers[TTL] = ttl
    async with stack.http.put(f"{base(stack)}/latest/api/token", headers=headers) as response:
        return response.status, dict(response.headers), await response.text()


async def get(stack, path: str, token: str | None = None, method: str = "GET", **headers: str):
    if token is not None:
        headers["X-aws-ec2-metadata-token"] = token
    async with stack.http.request(method, f"{base(stack)}{path}", headers=headers) as response:
        return response.status, dict(response.headers), await response.text()


async def token_of(stack) -> str:
    status, _, token = await put_token(stack)
    assert status == 200
    return token


async def test_token_put_returns_a_token_and_echoes_the_ttl(imds) -> None:
    status, headers, token = await put_token(imds, "21600")

    assert status == 200
    assert headers[TTL] == "21600"
    assert headers["Content-Type"].startswith("text/plain")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)


@pytest.mark.parametrize(
    ("ttl", "status"),
    [("21600", 200), ("1", 200), (None, 400), ("0", 400), ("21601", 400), ("abc", 400),
     ("-5", 400), ("", 400)],
)
async def test_case_c26_token_ttl_bounds(imds, ttl: str | None, status: int) -> None:
    got, headers, body = await put_token(imds, ttl)

    assert got == status
    if status == 200:
        assert headers[TTL] == ttl
    else:
        assert TTL not in headers
        assert json.loads(body) == {
            "Code": "BadRequest",
            "Message": f"{TTL} must be an integer from 1 to 21600",
        }


async def test_case_c27_proxied_put_refused_and_tokenless_reads_401(imds) -> None:
    refused = await put_token(imds, "21600", **{"X-Forwarded-For": "203.0.113.7"})
    unauthorized = {
        "Code": "Unauthorized",
        "Message": "missing or expired token; PUT /latest/api/token to get one",
    }

    assert (refused[0], json.loads(refused[2])) == (
        400, {"Code": "BadRequest", "Message": "token requests through a proxy are refused"}
    )
    for path in (CREDENTIALS, f"{CREDENTIALS}/", f"{CREDENTIALS}/web", INFO):
        status, _, body = await get(imds, path)
        assert (status, json.loads(body)) == (401, unauthorized), path
    status, _, _ = await get(imds, f"{CREDENTIALS}/web", token="not-a-token-we-issued")
    assert status == 401


@pytest.mark.parametrize("path", [CREDENTIALS, f"{CREDENTIALS}/"])
async def test_role_list_with_and_without_slash(imds, path: str) -> None:
    status, headers, body = await get(imds, path, await token_of(imds))

    assert (status, body) == (200, "web")
    assert headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize("suffix", ["", "/"])
async def test_credentials_document_is_exact(imds, suffix: str) -> None:
    session = imds.agent.sessions["web"]

    status, headers, body = await get(imds, f"{CREDENTIALS}/web{suffix}", await token_of(imds))

    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    document = json.loads(body)
    creds = session.current
    assert document == {
        "Code": "Success",
        "LastUpdated": format_expiration(session.obtained_at),
        "Type": "AWS-HMAC",
        "AccessKeyId": creds.access_key_id,
        "SecretAccessKey": creds.secret_access_key,
        "Token": creds.session_token,
        "Expiration": format_expiration(creds.expiration),
    }
    assert EXPIRATION.match(document["Expiration"])
    assert document["LastUpdated"] == "2026-12-04T12:00:00Z"


async def test_another_role_is_404(imds) -> None:
    status, _, body = await get(imds, f"{CREDENTIALS}/admin", await token_of(imds))

    assert (status, json.loads(body)) == (
        404, {"Code": "NotFound", "Message": "no role named 'admin' on this endpoint"}
    )


async def test_iam_info(imds) -> None:
    status, _, body = await get(imds, INFO, await token_of(imds))

    assert status == 200
    assert json.loads(body) == {
        "Code": "Success",
        "LastUpdated": "2026-12-04T12:00:00Z",
        "InstanceProfileArn": "arn:aws:iam::111122223333:instance-profile/web",
        "InstanceProfileId": instance_profile_id("arn:aws:iam::111122223333:role/web"),
    }
    assert re.fullmatch(r"AIPA[A-Z2-7]{17}", json.loads(body)["InstanceProfileId"])


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("GET", "/latest/api/token", "PUT"), ("POST", "/latest/api/token", "PUT"),
     ("PUT", f"{CREDENTIALS}/web", "GET"), ("DELETE", CREDENTIALS, "GET")],
)
async def test_other_methods_are_405(imds, method: str, path: str, allow: str) -> None:
    status, headers, body = await get(imds, path, method=method)

    assert status == 405
    assert headers["Allow"] == allow
    assert json.loads(body) == {"Code": "MethodNotAllowed", "Message": f"use {allow}"}


async def test_unknown_paths_and_odd_expect_headers_get_json_errors(imds) -> None:
    unknown = await get(imds, "/latest/meta-data/", await token_of(imds))
    expect = await put_token(imds, "60", Expect="bogus")

    assert (unknown[0], json.loads(unknown[2])) == (
        404, {"Code": "NotFound", "Message": "no such path"}
    )
    assert (expect[0], json.loads(expect[2])) == (
        417, {"Code": "ExpectationFailed", "Message": "only Expect: 100-continue is understood"}
    )


async def test_host_allow_list_as_on_the_container_endpoint(imds) -> None:
    port = imds.agent.exports("web").imds_endpoint.rsplit(":", 1)[1].strip("/")

    refused = await put_token(imds, "60", Host="evil.example")
    allowed = await put_token(imds, "60", Host=f"localhost:{port}")

    assert (refused[0], json.loads(refused[2])) == (
        403, {"Code": "InvalidHost", "Message": "Host header is not an allowed loopback name"}
    )
    assert allowed[0] == 200


async def test_token_expires_by_the_wall_clock(imds) -> None:
    _, _, token = await put_token(imds, "60")
    assert (await get(imds, CREDENTIALS, token))[0] == 200

    imds.clock.jump(60)

    assert (await get(imds, CREDENTIALS, token))[0] == 401


def test_token_store_is_bounded_and_drops_the_soonest_to_expire() -> None:
    clock = FakeClock(START)
    tokens = ImdsTokens(clock, limit=3)
    short = tokens.issue(10)
    kept = [tokens.issue(600) for _ in range(2)]

    newest = tokens.issue(600)

    assert len(tokens) == 3
    assert not tokens.valid(short)
    assert all(tokens.valid(token) for token in [*kept, newest])
    clock.jump(600)
    tokens.issue(5)
    assert len(tokens) == 1  # expired ones are forgotten before a new one is counted


async def test_503_when_no_valid_session(imds) -> None:
    token = await token_of(imds)
    imds.emulator.inject(Fault(status=500, times=100))
    imds.clock.jump(3600 - 30)

    status, headers, body = await get(imds, f"{CREDENTIALS}/web", token)

    assert status == 503
    assert json.loads(body)["Code"] == "CredentialsUnavailable"
    assert int(headers["Retry-After"]) >= 1


async def test_no_token_or_secret_is_logged(imds) -> None:
    with capture_logs() as events:
        token = await token_of(imds)
        _, _, body = await get(imds, f"{CREDENTIALS}/web", token)
        await get(imds, CREDENTIALS, token="wrong-token")

    secret = json.loads(body)["SecretAccessKey"]
    assert [e["event"] for e in events if e["event"].startswith("imds")] == [
        "imds_token_issued", "imds_unauthorized"
    ]
    text = str(events)
    assert token not in text and secret not in text and "wrong-token" not in text


async def test_agent_logs_the_imds_exports_at_start(stack_factory) -> None:
    with capture_logs() as events:
        stack = await stack_factory(agent_extra={"imds": {"port": 0}})
    port = stack.agent.imds_ports["web"]

    serving = next(e for e in events if e["event"] == "profile_serving")
    assert serving["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == f"http://127.0.0.1:{port}/"
    assert serving["NO_PROXY"] == "127.0.0.1,localhost,::1"
    assert any(e["event"] == "listening_imds" and e["port"] == port for e in events)
    exports = stack.agent.exports("web").as_dict()
    assert exports["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == f"http://127.0.0.1:{port}/"
    assert exports["NO_PROXY"] == "127.0.0.1,localhost,::1"


@pytest.mark.parametrize(
    ("fmt", "line"),
    [("sh", "export AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:{port}/"),
     ("fish", "set -gx NO_PROXY 127.0.0.1,localhost,::1"),
     ("systemd", "Environment=AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:{port}/")],
)
def test_env_command_prints_imds_and_no_proxy(world, capsys, fmt: str, line: str) -> None:
    world.add_leaf("web", "p256")
    port = free_port()
    config = world.folder / "agent.yaml"
    config.write_text(yaml.safe_dump(world.agent_document("http://127.0.0.1:1", 9912,
                                                          imds={"port": port})))

    code = cli.main(["env", "--config", str(config), "--profile", "web", "--format", fmt])

    assert code == 0
    assert line.format(port=port) in capsys.readouterr().out.splitlines()


def test_env_without_imds_prints_no_imds_lines(world, capsys) -> None:
    world.add_leaf("web", "p256")
    config = world.folder / "agent.yaml"
    config.write_text(yaml.safe_dump(world.agent_document("http://127.0.0.1:1", 9912)))

    cli.main(["env", "--config", str(config), "--profile", "web", "--format", "json"])

    assert sorted(json.loads(capsys.readouterr().out)) == [
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI"
    ]


async def test_a_taken_imds_port_stops_the_start(stack_factory, world) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(ConfigError) as refused:
            await stack_factory(agent_extra={"imds": {"port": port}})

    source = world.folder / "agent.yaml"
    assert str(refused.value) == (
        f"{source}: profiles.web.imds.port: cannot listen on 127.0.0.1:{port} "
        "(Address already in use)"
    )


async def test_case_c27_botocore_through_a_proxy_gets_no_credentials(stack_factory) -> None:
    """botocore's IMDS client honours HTTP_PROXY: a proxy adds X-Forwarded-For, the PUT is
    refused with 400 and botocore stops (a 403 would have sent it on without a token).
    With the NO_PROXY that `env` prints, the same client goes direct and succeeds."""
    stack = await stack_factory(agent_extra={"imds": {"port": 0}}, real_time=True)
    proxy = LoopbackProxy(set_headers={"X-Forwarded-For": "203.0.113.7"})
    proxy_url = await proxy.start()
    try:
        proxied = imds_env(stack)
        del proxied["NO_PROXY"]
        proxied.update(HTTP_PROXY=proxy_url, http_proxy=proxy_url)
        direct = {**proxied, "NO_PROXY": "127.0.0.1,localhost,::1"}

        refused = await run([PYTHON, "-c", BOTO3_CALLER], proxied)
        calls = [(seen.method, seen.target) for seen in proxy.forwarded]
        served = await run([PYTHON, "-c", BOTO3_CALLER], direct)
    finally:
        await proxy.stop()

    assert not refused.ok
    assert refused.why() == "botocore.exceptions.NoCredentialsError: Unable to locate credentials"
    assert calls == [("PUT", "/latest/api/token")]  # never a tokenless (v1) read after it
    assert served.ok, served.stderr
    assert len(proxy.forwarded) == 1



async def test_demo_serves_its_first_profile_over_imds() -> None:
    outcome = await run([AGENT_CLI, "demo", "--once"], child_env(), timeout=150)

    assert outcome.ok, outcome.stdout + outcome.stderr
    lines = outcome.stdout.splitlines()
    assert any(
        re.fullmatch(r"ok   profile rsa via boto3 over IMDS: arn:aws:sts::111122223333:"
                     r"assumed-role/demo-rsa/[0-9a-f]+", line)
        for line in lines
    ), outcome.stdout
    exports = [line for line in lines if line.startswith("export AWS_EC2_METADATA_SERVICE")]
    assert len(exports) == 1
    assert re.fullmatch(r"export AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127\.0\.0\.1:\d+/",
                        exports[0])
