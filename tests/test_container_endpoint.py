"""The container-credentials endpoint and /health: every status, exact bodies, real clients."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from rolesanywhere_agent.credentials import Credentials, format_expiration, parse_expiration
from rolesanywhere_agent.emulator import Fault

from .conftest import BOTO3_CALLER, PYTHON, sdk_env

EXPIRATION = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


async def raw(stack, path: str, method: str = "GET", **headers: str):
    async with stack.http.request(method, f"{stack.base}{path}", headers=headers) as response:
        return response.status, dict(response.headers), await response.json()


async def test_200_body_is_exact(stack_factory) -> None:
    stack = await stack_factory()

    status, headers, body = await stack.get("web")

    assert status == 200
    assert EXPIRATION.match(body["Expiration"])
    assert body["AccountId"] == "111122223333"
    assert len(body["SecretAccessKey"]) == 40


async def test_case_c18_authorization_forms(stack_factory) -> None:
    stack = await stack_factory()
    token = stack.token("web")
    url = f"{stack.base}/v1/credentials/web"

    async def status_with(headers: dict[str, str]) -> tuple[int, dict]:
        async with stack.http.get(url, headers=headers) as response:
            return response.status, await response.json()

    assert (await status_with({"Authorization": token}))[0] == 200
    assert (await status_with({"authorization": token}))[0] == 200
    unauthorized = {"Code": "Unauthorized", "Message": "missing or wrong authorization token"}
    assert await status_with({"Authorization": f"Bearer {token}"}) == (401, unauthorized)
    assert await status_with({"Authorization": token[:-1] + "x"}) == (401, unauthorized)
    assert await status_with({}) == (401, unauthorized)


async def test_bad_host_is_refused_before_anything_else(stack_factory) -> None:
    stack = await stack_factory()

    status, _, body = await raw(stack, "/v1/credentials/web", Host="evil.example:9912")

    assert status == 403
    assert body == {
        "Code": "InvalidHost",
        "Message": "Host header is not an allowed loopback name",
    }


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "[::1]", "LOCALHOST", "[0:0:0:0:0:0:0:1]"]
)
async def test_loopback_host_names_are_allowed(stack_factory, host: str) -> None:
    stack = await stack_factory()

    status, _, _ = await stack.get("web", Host=f"{host}:{stack.agent.port}")

    assert status == 200


async def test_unknown_profile_is_404(stack_factory) -> None:
    stack = await stack_factory()

    status, _, body = await raw(stack, "/v1/credentials/nope", Authorization=stack.token("web"))

    expected = {"Code": "ProfileNotFound", "Message": "no profile named 'nope'"}
    assert (status, body) == (404, expected)


async def test_other_methods_are_405(stack_factory) -> None:
    stack = await stack_factory()

    status, headers, body = await raw(stack, "/v1/credentials/web", method="POST")

    assert status == 405
    assert headers["Allow"] == "GET"
    assert body == {"Code": "MethodNotAllowed", "Message": "use GET"}


async def test_unknown_path_is_404_json(stack_factory) -> None:
    stack = await stack_factory()

    status, _, body = await raw(stack, "/latest/meta-data/")

    assert (status, body) == (404, {"Code": "NotFound", "Message": "no such path"})


async def test_health_reports_state_without_secrets(stack_factory) -> None:
    stack = await stack_factory(leaves=(("web", "rsa2048"), ("edge", "p256")))
    _, _, creds = await stack.get("web")

    status, _, body = await raw(stack, "/health")

    assert status == 200
    assert body["status"] == "ok"
    assert sorted(body["profiles"]) == ["edge", "web"]
    web = body["profiles"]["web"]
    assert web["state"] == "ready"
    assert web["expiration"] == creds["Expiration"]
    assert web["failures"] == 0 and web["last_error"] is None
    text = str(body)
    for secret in (creds["SecretAccessKey"], creds["Token"], stack.token("web")):
        assert secret not in text


async def test_case_c17_daemon_writes_token_without_newline_mode_0600(stack_factory) -> None:
    stack = await stack_factory()
    path = Path(stack.agent.exports("web").token_file)

    token = path.read_bytes()

    assert token == token.strip() and len(token) >= 43
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_case_c17_operator_token_with_trailing_newline_is_stripped(
    stack_factory, world
) -> None:
    (world.folder / "run").mkdir(parents=True, mode=0o700)
    (world.folder / "run" / "web.token").write_text("operator-chosen-token-0123456789\n")

    with capture_logs() as events:
        stack = await stack_factory()

    warnings = [e for e in events if e["event"] == "token_file_whitespace"]
    assert len(warnings) == 1 and warnings[0]["profile"] == "web"
    assert "operator-chosen" not in str(events)
    assert stack.token("web") == "operator-chosen-token-0123456789\n"
    status, _, _ = await stack.get("web", Authorization="operator-chosen-token-0123456789")
    assert status == 200


async def test_token_reused_across_restarts(stack_factory, world) -> None:
    first = await stack_factory()
    token = first.token("web")
    await first.agent.stop()

    second = await stack_factory(leaves=())

    assert second.token("web") == token


async def test_operator_rewriting_the_token_file_is_honoured(stack_factory) -> None:
    stack = await stack_factory()
    path = Path(stack.agent.exports("web").token_file)
    old = stack.token("web")
    replacement = path.with_name("new.token")
    replacement.write_text("rotated-by-operator-0123456789abcdef")
    os.replace(replacement, path)

    assert (await stack.get("web", Authorization="rotated-by-operator-0123456789abcdef"))[0] == 200
    assert (await stack.get("web", Authorization=old))[0] == 401


def test_case_c15_expiration_format_and_what_botocore_does_with_others() -> None:
    """The agent always emits ...Z; botocore fails on a time without a zone (the check bites)."""
    from botocore.credentials import RefreshableCredentials

    creds = Credentials("ASIAEXAMPLE", "s", "t", parse_expiration("2026-12-04T15:35:00.123Z"))
    assert creds.container_json()["Expiration"] == "2026-12-04T15:35:00Z"
    assert format_expiration(parse_expiration("2026-12-04T16:35:00+01:00")) == (
        "2026-12-04T15:35:00Z"
    )

    def botocore_accepts(expiration: str) -> bool:
        refreshed = {"access_key": "a", "secret_key": "s", "token": "t",
                     "expiry_time": expiration}
        creds = RefreshableCredentials.create_from_metadata(refreshed, lambda: refreshed, "t")
        try:
            creds.refresh_needed()
        except TypeError:
            return False
        return True

    assert botocore_accepts("2026-12-04T15:35:00Z")
    assert botocore_accepts("2026-12-04T15:35:00.123Z")
    assert not botocore_accepts("2026-12-04T15:35:00")


async def test_case_c20_printed_uri_uses_127_0_0_1(stack_factory) -> None:
    stack = await stack_factory()

    exports = stack.agent.exports("web").as_dict()

    assert exports["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == (
        f"http://127.0.0.1:{stack.agent.port}/v1/credentials/web"
    )


@pytest.mark.parametrize(
    ("host", "works"),
    [("127.0.0.1", True), ("localhost", True), ("[::1]", False), ("127.0.0.2", False)],
)
async def test_case_c20_botocore_full_uri_hosts(stack_factory, host: str, works: bool) -> None:
    """The agent listens on 127.0.0.1 only: [::1] has no listener, 127.0.0.2 is refused."""
    stack = await stack_factory(real_time=True)
    exports = stack.agent.exports("web").as_dict()
    exports["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = (
        f"http://{host}:{stack.agent.port}/v1/credentials/web"
    )
    env = sdk_env(exports, stack.endpoint)

    result = await asyncio.to_thread(
        subprocess.run, [PYTHON, "-c", BOTO3_CALLER], env=env, capture_output=True, text=True,
        timeout=60,
    )

    assert (result.returncode == 0) is works, result.stderr[-500:]


async def test_expired_session_is_never_served_to_botocore(stack_factory) -> None:
    stack = await stack_factory()
    stack.emulator.inject(Fault(status=500))
    stack.clock.jump(3600 - 30)

    status, headers, body = await stack.get("web")

    assert status == 503
    assert body["Code"] == "CredentialsUnavailable"
    assert "Retry-After" in headers


async def test_connection_to_health_with_plain_client(stack_factory) -> None:
    stack = await stack_factory()

    async with aiohttp.ClientSession() as http, http.get(f"{stack.base}/health") as response:
        assert response.status == 200
        assert (await response.json())["profiles"]["web"]["expiration"] == format_expiration(
            stack.agent.sessions["web"].current.expiration
        )


async def test_reused_token_file_gets_the_configured_mode_back(stack_factory, world) -> None:
    (world.folder / "run").mkdir(parents=True, mode=0o700)
    path = world.folder / "run" / "web.token"
    path.write_text("operator-chosen-token-0123456789")
    path.chmod(0o666)

    with capture_logs() as events:
        await stack_factory()

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    corrected = [e for e in events if e["event"] == "token_file_mode_corrected"]
    assert [(e["was"], e["now"]) for e in corrected] == [("0o666", "0o600")]


async def test_deleted_token_file_is_written_back(stack_factory) -> None:
    stack = await stack_factory()
    path = Path(stack.agent.exports("web").token_file)
    token = stack.token("web")
    path.unlink()

    status, _, _ = await stack.get("web", Authorization=token)

    assert status == 200
    assert path.read_text() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_unusable_or_foreign_writable_rewrite_keeps_the_old_token(stack_factory) -> None:
    stack = await stack_factory()
    path = Path(stack.agent.exports("web").token_file)
    token = stack.token("web")

    path.write_text("short")
    with capture_logs() as events:
        first = (await stack.get("web", Authorization=token))[0]
    path.write_text("planted-by-another-user-0123456789")
    path.chmod(0o666)
    with capture_logs() as later:
        planted = (await stack.get("web", Authorization="planted-by-another-user-0123456789"))[0]

    assert first == 200
    assert [e["event"] for e in events if e["event"].startswith("token_file")] == [
        "token_file_unusable"
    ]
    assert planted == 401
    assert [e["event"] for e in later if e["event"].startswith("token_file")] == [
        "token_file_unsafe"
    ]
    assert (await stack.get("web", Authorization=token))[0] == 200
