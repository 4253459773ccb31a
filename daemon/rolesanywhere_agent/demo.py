"""`rolesanywhere-agent demo`: a throwaway PKI, the emulator, the agent, and real SDK calls.

Nothing here talks to AWS: the SDKs are pointed at the emulator on loopback and their only
credential source is the agent: its container endpoint, and for the first profile also its
IMDSv2 endpoint.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import pki
from .app import Agent
from .config import parse_config
from .emulator import Emulator, EmulatorConfig, Profile, TrustAnchor

REGION = "eu-west-1"
ACCOUNT = "111122223333"
CHILD_TIMEOUT_SECONDS = 60.0

_BOTO3_CALL = (
    "import boto3; "
    "print(boto3.client('sts').get_caller_identity()['Arn'])"
)


@dataclass(frozen=True)
class DemoProfile:
    name: str
    key_type: str
    role: str


PROFILES = (DemoProfile("rsa", "rsa2048", "demo-rsa"), DemoProfile("ec", "p256", "demo-ec"))


def build_pki(folder: Path) -> tuple[pki.Issued, dict[str, dict[str, Path]]]:
    """Root CA, intermediate, and one leaf per demo profile, written as openssl would."""
    root = pki.issue("Demo Root CA", ca=True, key_type="p384", days=2)
    intermediate = pki.issue("Demo Issuing CA", issuer=root, ca=True, key_type="p256", days=2)
    pki.write(folder / "root.pem", root.cert_pem)
    identities = {}
    for profile in PROFILES:
        leaf = pki.issue(f"demo-{profile.name}.example", issuer=intermediate,
                         key_type=profile.key_type, days=1)
        identities[profile.name] = pki.write_identity(folder / profile.name, leaf, [intermediate])
    return root, identities


def arns() -> tuple[str, str]:
    prefix = f"arn:aws:rolesanywhere:{REGION}:{ACCOUNT}"
    return f"{prefix}:trust-anchor/{uuid.uuid4()}", f"{prefix}:profile/{uuid.uuid4()}"


def role_arn(role: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:role/{role}"


def agent_document(
    identities: dict[str, dict[str, Path]], anchor: str, profile: str, endpoint: str
) -> dict:
    profiles = {}
    for demo in PROFILES:
        files = {key: str(path) for key, path in identities[demo.name].items()}
        profiles[demo.name] = {
            **files,
            "trust_anchor_arn": anchor,
            "profile_arn": profile,
            "role_arn": role_arn(demo.role),
            "endpoint": endpoint,
        }
    return {"listen": {"host": "127.0.0.1", "port": 0}, "profiles": profiles}


def sdk_environment(exports: dict[str, str], sts_endpoint: str) -> dict[str, str]:
    """A child environment whose only credential source is the agent."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(exports)
    env.update(
        {
            "AWS_REGION": REGION,  # the JS and Go SDKs read this one
            "AWS_DEFAULT_REGION": REGION,  # botocore and the AWS CLI v1 read this one
            "AWS_ENDPOINT_URL_STS": sts_endpoint,
            # Never fall back to a real instance metadata address, nor to files on this host.
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        }
    )
    return env


async def run_child(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), CHILD_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        return 1, f"timed out after {CHILD_TIMEOUT_SECONDS:g} s"
    return process.returncode or 0, output.decode(errors="replace").strip()


def aws_cli() -> str | None:
    beside = Path(sys.executable).parent / "aws"
    return str(beside) if beside.exists() else shutil.which("aws")


async def run_demo(once: bool, stop: asyncio.Event) -> int:
    with tempfile.TemporaryDirectory(prefix="rolesanywhere-demo-") as folder:
        return await _demo(Path(folder), once, stop)


async def _demo(folder: Path, once: bool, stop: asyncio.Event) -> int:
    root, identities = build_pki(folder)
    anchor, profile = arns()
    emulator = Emulator(
        EmulatorConfig(
            trust_anchors=(TrustAnchor(arn=anchor, certificates=(root.certificate,)),),
            profiles=(Profile(arn=profile, role_arns=tuple(role_arn(p.role) for p in PROFILES)),),
            account_id=ACCOUNT,
        )
    )
    endpoint = await emulator.start()
    document = agent_document(identities, anchor, profile, endpoint)
    document["token_dir"] = str(folder / "run")
    document["profiles"][PROFILES[0].name]["imds"] = {"port": 0}
    agent = Agent(parse_config(document, folder / "agent.yaml", os.environ))
    try:
        await agent.start()
        print(f"emulator: {endpoint}   agent: http://127.0.0.1:{agent.port}   files: {folder}")
        ok = await _check_clients(agent, endpoint)
        if not ok:
            return 1
        _print_exports(agent, endpoint)
        if once:
            print("\n(--once: the demo stops now, so these ports and files are gone; "
                  "run it without --once to use them.)")
            return 0
        print(f"\nHealth: curl http://127.0.0.1:{agent.port}/health")
        print("Serving until Ctrl-C.", flush=True)
        await stop.wait()
        return 0
    finally:
        await agent.stop()
        await emulator.stop()


async def _check_clients(agent: Agent, endpoint: str) -> bool:
    cli = aws_cli()
    ok = True
    for demo in PROFILES:
        env = sdk_environment(agent.exports(demo.name).as_dict(), endpoint)
        clients = [("boto3", [sys.executable, "-c", _BOTO3_CALL])]
        if cli:
            command = [cli, "sts", "get-caller-identity", "--endpoint-url", endpoint,
                       "--query", "Arn", "--output", "text"]
            clients.append(("aws cli", command))
        else:
            print("aws cli: not installed; pip install 'rolesanywhere-agent[demo]'")
            ok = False
        for label, argv in clients:
            code, output = await run_child(argv, env)
            shown = output if code == 0 else (output.splitlines() or ["no output"])[-1]
            verdict = "ok  " if code == 0 else "FAIL"
            print(f"{verdict} profile {demo.name:<3} via {label:<7}: {shown}", flush=True)
            ok = ok and code == 0
    return await _check_imds(agent, endpoint) and ok


async def _check_imds(agent: Agent, endpoint: str) -> bool:
    """boto3 with IMDS as its only credential source, pointed at the agent's listener."""
    demo = PROFILES[0]
    imds = agent.exports(demo.name).imds_endpoint
    assert imds is not None
    env = imds_environment(imds, endpoint)
    code, output = await run_child([sys.executable, "-c", _BOTO3_CALL], env)
    shown = output if code == 0 else (output.splitlines() or ["no output"])[-1]
    verdict = "ok  " if code == 0 else "FAIL"
    print(f"{verdict} profile {demo.name:<3} via boto3 over IMDS: {shown}", flush=True)
    return code == 0


def imds_environment(imds_endpoint: str, sts_endpoint: str) -> dict[str, str]:
    """A child environment whose only credential source is the agent's IMDS listener."""
    env = sdk_environment({}, sts_endpoint)
    del env["AWS_EC2_METADATA_DISABLED"]
    env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = imds_endpoint
    env["NO_PROXY"] = "127.0.0.1,localhost,::1"
    return env


def _print_exports(agent: Agent, endpoint: str) -> None:
    for demo in PROFILES:
        print(f"\n# In another shell, profile {demo.name!r}:")
        exports = agent.exports(demo.name).as_dict()
        exports.update(
            {"AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL_STS": endpoint}
        )
        for name, value in exports.items():
            print(f"export {name}={value}")
        print("# so that no other credential source on this machine gets in first:")
        if "AWS_EC2_METADATA_SERVICE_ENDPOINT" in exports:
            # IMDS points at the agent here: SDKs without the container provider use it.
            print("export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null")
        else:
            print("export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null "
                  "AWS_SHARED_CREDENTIALS_FILE=/dev/null")
        print("aws sts get-caller-identity")
