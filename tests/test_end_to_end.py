"""The real CLI: emulator and agent as processes, boto3 and the AWS CLI as their clients."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import AWS_CLI, BOTO3_CALLER, PYTHON, World, sdk_env
from .processes import AGENT, free_port, http_status, log_events, running


@pytest.fixture
def processes(world: World, tmp_path: Path):
    """The emulator and the agent started from the CLI with config files, two profiles."""
    world.add_leaf("rsa", "rsa2048")
    world.add_leaf("ec", "p384")
    emulator_yaml = world.write_emulator_yaml(tmp_path)
    emulator_port, agent_port = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{emulator_port}"
    agent_yaml = tmp_path / "agent.yaml"
    agent_yaml.write_text(yaml.safe_dump(world.agent_document(endpoint, port=agent_port)))

    emulator_argv = [
        *AGENT,
        "emulator",
        "--config",
        str(emulator_yaml),
        "--port",
        str(emulator_port),
    ]
    agent_argv = [*AGENT, "serve", "--config", str(agent_yaml)]
    with (
        running(emulator_argv, f"{endpoint}/", tmp_path / "emulator.log"),
        running(agent_argv, f"http://127.0.0.1:{agent_port}/health", tmp_path / "agent.log"),
    ):
        yield endpoint, agent_yaml, tmp_path / "agent.log"


def exports_of(agent_yaml: Path, profile: str) -> dict[str, str]:
    output = subprocess.run(
        [*AGENT, "env", "--config", str(agent_yaml), "--profile", profile, "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return yaml.safe_load(output)


@pytest.mark.parametrize("profile", ["rsa", "ec"])
def test_boto3_child_reads_the_agent_and_calls_sts(processes, profile: str) -> None:
    endpoint, agent_yaml, _ = processes
    env = sdk_env(exports_of(agent_yaml, profile), endpoint)

    result = subprocess.run(
        [PYTHON, "-c", BOTO3_CALLER], env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    arn = result.stdout.strip()
    assert arn.startswith(f"arn:aws:sts::111122223333:assumed-role/{profile}/"), arn


@pytest.mark.parametrize("profile", ["rsa", "ec"])
def test_aws_cli_child_reads_the_agent_and_calls_sts(processes, profile: str) -> None:
    endpoint, agent_yaml, _ = processes
    env = sdk_env(exports_of(agent_yaml, profile), endpoint)

    result = subprocess.run(
        [
            AWS_CLI,
            "sts",
            "get-caller-identity",
            "--endpoint-url",
            endpoint,
            "--query",
            "Arn",
            "--output",
            "text",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(f"arn:aws:sts::111122223333:assumed-role/{profile}/")


def test_env_prints_loopback_uri_and_token_file(processes) -> None:
    _, agent_yaml, _ = processes
    config = yaml.safe_load(agent_yaml.read_text())
    port = config["listen"]["port"]

    exports = exports_of(agent_yaml, "rsa")

    assert exports == {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://127.0.0.1:{port}/v1/credentials/rsa",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": f"{config['token_dir']}/rsa.token",
    }
    assert http_status(f"http://127.0.0.1:{port}/health") == 200


def test_agent_logs_hold_no_secret(processes) -> None:
    endpoint, agent_yaml, log_path = processes
    exports = exports_of(agent_yaml, "rsa")
    token = Path(exports["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]).read_text()
    env = sdk_env(exports, endpoint)
    check = (
        "import boto3; c = boto3.Session().get_credentials().get_frozen_credentials(); "
        "print(c.secret_key); print(c.token)"
    )
    secret, session_token = subprocess.run(
        [PYTHON, "-c", check], env=env, capture_output=True, text=True, check=True
    ).stdout.split()

    text = log_path.read_text()

    assert [e["event"] for e in log_events(log_path)].count("session_refreshed") == 2
    for value in (secret, session_token, token):
        assert value not in text
