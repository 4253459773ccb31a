"""`rolesanywhere-agent credential-process`: helper-compatible flags, --config/--profile, and
botocore and the AWS CLI reading it as `credential_process` from an AWS config file."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from rolesanywhere_agent.emulator import Fault

from .conftest import AWS_CLI, BOTO3_CALLER, PYTHON, Stack, encrypt_key_file, sdk_env
from .processes import free_port
from .sdk_clients import AGENT_CLI, Outcome, child_env, run

EXPIRATION = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def flags(stack: Stack, profile: str = "web", **extra: str) -> list[str]:
    """aws_signing_helper-style flags for `profile`; `extra` adds or replaces some."""
    files = stack.world.identities[profile]
    options = {
        "certificate": str(files["certificate"]),
        "private_key": str(files["private_key"]),
        "intermediates": str(files["intermediates"]),
        "trust_anchor_arn": stack.world.anchor_arn,
        "profile_arn": stack.world.profile_arn,
        "role_arn": f"arn:aws:iam::111122223333:role/{profile}",
        "endpoint": stack.endpoint,
        **extra,
    }
    return [item for name, value in options.items()
            for item in (f"--{name.replace('_', '-')}", value)]


async def credential_process(*argv: str) -> Outcome:
    return await run([AGENT_CLI, "credential-process", *argv], child_env())


def agent_config(stack: Stack, port: int | None = None) -> Path:
    """The stack's agent configuration as a file, with the port it really listens on."""
    document = stack.world.agent_document(stack.endpoint, port=port or stack.agent.port)
    path = stack.world.folder / "agent.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def document_of(outcome: Outcome) -> dict:
    assert outcome.ok, outcome.stderr
    return json.loads(outcome.stdout)


async def test_flags_print_exactly_the_process_document(stack_factory) -> None:
    stack = await stack_factory(real_time=True)

    outcome = await credential_process(*flags(stack))

    document = document_of(outcome)
    assert list(document) == [
        "Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"
    ]
    assert document["Version"] == 1
    assert EXPIRATION.match(document["Expiration"])
    issued = stack.emulator.session(document["AccessKeyId"])
    assert issued is not None and issued.secret_access_key == document["SecretAccessKey"]
    assert outcome.stdout.count("\n") == 1 and outcome.stderr == ""
    assert stack.calls() == 2  # the agent's own session, and this one


async def test_flags_role_session_name_and_duration(stack_factory) -> None:
    stack = await stack_factory(profile={"accept_role_session_name": True}, real_time=True)

    outcome = await credential_process(
        *flags(stack, role_session_name="build-42", session_duration="900")
    )

    document = document_of(outcome)
    left = datetime.fromisoformat(document["Expiration"]) - datetime.now(UTC)
    assert 800 < left.total_seconds() <= 900
    issued = stack.emulator.session(document["AccessKeyId"])
    assert issued.session_name == "build-42"
    assert "900 s sessions make SDKs poll constantly" in outcome.stderr  # the config warning


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"role_arn": "bogus"},
         "--role-arn: expected arn:aws:iam::ACCOUNT:role/NAME, got 'bogus'"),
        ({"session_duration": "100"},
         "--session-duration: expected an integer from 900 to 43200, got 100"),
        ({"region": "mars-1"},
         "--region: 'mars-1' is not a region name like eu-west-1"),
        ({"endpoint": "ftp://example"},
         "--endpoint: expected an https:// URL, got 'ftp://example'"),
    ],
)
async def test_bad_flags_exit_2_naming_the_flag(stack_factory, change, message) -> None:
    stack = await stack_factory()

    outcome = await credential_process(*flags(stack, **change))

    assert (outcome.code, outcome.stdout) == (2, "")
    assert outcome.stderr == f"rolesanywhere-agent: {message}\n"


async def test_missing_certificate_and_mixed_modes_exit_2(tmp_path) -> None:
    missing = await credential_process("--role-arn", "arn:aws:iam::111122223333:role/web")
    mixed = await credential_process("--config", str(tmp_path / "a.yaml"), "--profile", "web",
                                     "--role-arn", "arn:aws:iam::111122223333:role/web")

    assert (missing.code, missing.stderr) == (
        2, "rolesanywhere-agent: --certificate is required (or use --config and --profile)\n"
    )
    assert (mixed.code, mixed.stderr) == (
        2, "rolesanywhere-agent: --role-arn: not used with --config; set it in the profile\n"
    )


async def test_service_refusal_exits_1_with_the_services_message(stack_factory) -> None:
    stack = await stack_factory(real_time=True)
    stack.emulator.inject(Fault(status=403, error_type="AccessDeniedException",
                                message="Untrusted signing certificate"))

    outcome = await credential_process(*flags(stack))

    assert (outcome.code, outcome.stdout) == (1, "")
    assert outcome.stderr == (
        "rolesanywhere-agent: AccessDeniedException (403): Untrusted signing certificate\n"
    )


@pytest.fixture
async def encrypted(stack_factory):
    """The stack's key re-written as encrypted PKCS#8, and a passphrase file beside it."""
    stack = await stack_factory(real_time=True)
    encrypt_key_file(stack.world.identities["web"]["private_key"], b"correct horse")
    (stack.world.folder / "pass.txt").write_text("correct horse\n")
    return stack


async def test_pkcs8_password_from_a_file(encrypted) -> None:
    passphrase = str(encrypted.world.folder / "pass.txt")

    ok = await credential_process(*flags(encrypted), "--pkcs8-password", passphrase)
    without = await credential_process(*flags(encrypted))

    assert document_of(ok)["Version"] == 1
    assert without.code == 2
    assert without.stderr.startswith(
        "rolesanywhere-agent: key.pem is encrypted; set --pkcs8-password"
    )


async def test_pkcs8_password_prompted_with_dash(encrypted) -> None:
    """With no terminal (a new session), getpass reads the line from stdin instead."""
    process = await asyncio.create_subprocess_exec(
        AGENT_CLI, "credential-process", *flags(encrypted), "--pkcs8-password", "-",
        env=child_env(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    out, err = await asyncio.wait_for(process.communicate(b"correct horse\n"), 60)

    assert process.returncode == 0, err.decode()
    assert json.loads(out)["Version"] == 1
    assert b"correct horse" not in out + err


async def test_config_mode_asks_the_running_agent(stack_factory) -> None:
    stack = await stack_factory(real_time=True)

    outcome = await credential_process("--config", str(agent_config(stack)), "--profile", "web")

    document = document_of(outcome)
    assert document["AccessKeyId"] == stack.agent.sessions["web"].current.access_key_id
    assert stack.calls() == 1  # no CreateSession of its own
    assert outcome.stderr == ""


async def test_config_mode_signs_itself_when_the_agent_is_down(stack_factory) -> None:
    stack = await stack_factory(real_time=True)
    config = agent_config(stack, port=free_port())  # nobody listens there

    outcome = await credential_process("--config", str(config), "--profile", "web", "--debug")

    document = document_of(outcome)
    assert document["AccessKeyId"] != stack.agent.sessions["web"].current.access_key_id
    assert stack.calls() == 2
    assert "agent_unreachable" in outcome.stderr


async def test_config_mode_reports_the_agents_refusal(stack_factory) -> None:
    stack = await stack_factory(real_time=True)
    stack.emulator.inject(Fault(status=500, times=100))
    stack.clock.jump(3600 - 30)

    outcome = await credential_process("--config", str(agent_config(stack)), "--profile", "web")

    assert (outcome.code, outcome.stdout) == (1, "")
    assert re.fullmatch(
        r"rolesanywhere-agent: agent at http://127\.0\.0\.1:\d+/v1/credentials/web answered "
        r"503: CredentialsUnavailable: no valid session for profile 'web' yet; retry in \d+ s\n",
        outcome.stderr,
    )


@pytest.mark.parametrize(("client", "mode"), [
    ("botocore", "flags"), ("botocore", "config"), ("aws cli", "flags"), ("aws cli", "config"),
])
async def test_sdk_reads_credential_process_from_its_config_file(
    stack_factory, client: str, mode: str
) -> None:
    stack = await stack_factory(real_time=True)
    argv = flags(stack) if mode == "flags" else ["--config", str(agent_config(stack)),
                                                 "--profile", "web"]
    aws_config = stack.world.folder / "aws-config"
    aws_config.write_text(
        "[default]\n"
        f"credential_process = {AGENT_CLI} credential-process {' '.join(argv)}\n"
    )
    env = sdk_env({}, stack.endpoint)
    env["AWS_CONFIG_FILE"] = str(aws_config)  # the one case where it is not /dev/null
    command = [PYTHON, "-c", BOTO3_CALLER] if client == "botocore" else [
        AWS_CLI, "sts", "get-caller-identity", "--query", "Arn", "--output", "text"]

    outcome = await run(command, env)

    assert outcome.ok, outcome.stderr
    assert outcome.arn.startswith("arn:aws:sts::111122223333:assumed-role/web/")
    assert stack.calls() == (2 if mode == "flags" else 1)


async def test_a_session_about_to_expire_is_not_printed(stack_factory) -> None:
    stack = await stack_factory(real_time=True)
    stack.emulator.inject(Fault(grant_seconds=30, times=1))

    outcome = await credential_process(*flags(stack))

    assert outcome.code == 1
    assert outcome.stdout == ""
    assert re.fullmatch(
        r"rolesanywhere-agent: the session expires in [1-3][0-9] s, within the 60 s the agent "
        r"keeps as a margin; not printed\n",
        outcome.stderr,
    )
