"""Real SDK clients as child processes: botocore, the AWS CLI v1, JS v3 and Go v2.

Each child sees only the credential source under test: empty config and credentials files,
and instance metadata disabled unless IMDS is the source, then pointed at our own listener.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import AWS_CLI, BOTO3_CALLER, PYTHON, Stack, sdk_env

TESTS = Path(__file__).parent
JS_DIR = TESTS / "js"
GO_DIR = TESTS / "go" / "caller"
GOPATH = Path("/usr/share/gocode")
GO_SDK = GOPATH / "src/github.com/aws/aws-sdk-go-v2/config"
NODE = shutil.which("node")
CHILD_TIMEOUT = 90.0

requires_js = pytest.mark.skipif(
    NODE is None or not (JS_DIR / "node_modules" / "@aws-sdk" / "client-sts").is_dir(),
    reason="JS SDK not installed: run `make test` (npm ci in tests/js) with Node.js 20+",
)

BOTOCORE = [PYTHON, "-c", BOTO3_CALLER]
AGENT_CLI = str(Path(PYTHON).parent / "rolesanywhere-agent")
AWS_CLI_CALL = [AWS_CLI, "sts", "get-caller-identity", "--query", "Arn", "--output", "text"]


def js(provider: str, *extra: str) -> list[str]:
    assert NODE is not None
    return [NODE, str(JS_DIR / "caller.mjs"), provider, *extra]


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.code == 0

    @property
    def arn(self) -> str:
        return self.stdout.strip()

    def why(self) -> str:
        """The last line of stderr: what a failing client said, for messages and the table."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else f"exit {self.code}, no output"


async def run(argv: list[str], env: dict[str, str], timeout: float = CHILD_TIMEOUT) -> Outcome:
    """Run a client to completion while this event loop keeps serving the agent."""
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{argv[:3]} did not finish within {timeout:g} s") from None
    return Outcome(process.returncode or 0, out.decode(), err.decode())


def child_env() -> dict[str, str]:
    """For our own CLI: no AWS settings and no proxy, only what its flags or config say."""
    drop = ("AWS_", "HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def container_env(
    stack: Stack, profile: str = "web", *, token: str = "file", host: str = "127.0.0.1"
) -> dict[str, str]:
    """The agent's container endpoint as the only source; the token from file or env."""
    exports = stack.agent.exports(profile).as_dict()
    exports.pop("AWS_EC2_METADATA_SERVICE_ENDPOINT", None)
    exports.pop("NO_PROXY", None)
    exports["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = (
        f"http://{host}:{stack.agent.port}/v1/credentials/{profile}"
    )
    if token == "env":
        del exports["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]
        exports["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = stack.token(profile)
    return sdk_env(exports, stack.endpoint)


def imds_env(stack: Stack, profile: str = "web", endpoint: str | None = None) -> dict[str, str]:
    """The agent's IMDS listener as the only source: metadata enabled, pointed at it."""
    exports = stack.agent.exports(profile)
    assert exports.imds_endpoint is not None, "profile has no imds port"
    env = sdk_env({}, stack.endpoint)
    del env["AWS_EC2_METADATA_DISABLED"]
    env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = endpoint or exports.imds_endpoint
    env["NO_PROXY"] = "127.0.0.1,localhost,::1"
    return env


def build_go_caller(folder: Path) -> Path:
    """Build tests/go/caller offline against Debian's packaged SDK; skip when it is absent."""
    go = shutil.which("go")
    if go is None or not GO_SDK.is_dir():
        pytest.skip(
            "Go SDK v2 not installed: apt-get install golang-go "
            "golang-github-aws-aws-sdk-go-v2-dev (.ci/run does this)"
        )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GO")},
        "GO111MODULE": "off",  # GOPATH mode: the Debian packages, no module download
        "GOPATH": str(GOPATH),
        "GOPROXY": "off",
        "GOFLAGS": "",
    }
    if "HOME" not in env:
        env["GOCACHE"] = str(folder / "gocache")
    binary = folder / "caller"
    result = subprocess.run(
        [go, "build", "-o", str(binary), "."], cwd=GO_DIR, env=env,
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return binary
