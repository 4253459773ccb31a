"""Shared fixtures: a throwaway PKI, the real emulator, the real agent, real SDK processes."""

from __future__ import annotations

import os
import random
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import yaml
from cryptography.hazmat.primitives import serialization

from rolesanywhere_agent import pki
from rolesanywhere_agent.app import Agent
from rolesanywhere_agent.clock import FakeClock
from rolesanywhere_agent.config import parse_config
from rolesanywhere_agent.emulator import Emulator, EmulatorConfig, Profile, TrustAnchor
from rolesanywhere_agent.sessions import RefreshPolicy

REGION = "eu-west-1"
ACCOUNT = "111122223333"
START = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)
# Certificates valid from here for ten years: at START (fake clocks) and now (real ones).
CERTS_FROM = datetime(2026, 1, 1, tzinfo=UTC)


def role_arn(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:role/{name}"


@dataclass
class World:
    """A root CA, an issuing CA, leaves on disk, and the ARNs that tie them to an account."""

    folder: Path
    root: pki.Issued
    intermediate: pki.Issued
    anchor_arn: str
    profile_arn: str
    not_before: datetime | None = None
    identities: dict[str, dict[str, Path]] = field(default_factory=dict)
    leaves: dict[str, pki.Issued] = field(default_factory=dict)

    def add_leaf(self, name: str, key_type: str, chain: bool = True) -> Path:
        leaf = pki.issue(
            f"{name}.example", issuer=self.intermediate, key_type=key_type,
            not_before=self.not_before, days=3650,
        )
        self.leaves[name] = leaf
        chain_certs = [self.intermediate] if chain else []
        self.identities[name] = pki.write_identity(self.folder / name, leaf, chain_certs)
        return self.folder / name

    def emulator_config(self, **profile: Any) -> EmulatorConfig:
        roles = tuple(role_arn(name) for name in self.identities)
        return EmulatorConfig(
            trust_anchors=(
                TrustAnchor(arn=self.anchor_arn, certificates=(self.root.certificate,)),
            ),
            profiles=(Profile(arn=self.profile_arn, role_arns=roles, **profile),),
            account_id=ACCOUNT,
        )

    def write_emulator_yaml(self, folder: Path) -> Path:
        """The emulator config file that `rolesanywhere-agent emulator --config` reads."""
        (folder / "root.pem").write_bytes(self.root.cert_pem)
        path = folder / "emulator.yaml"
        roles = [role_arn(name) for name in self.identities]
        document = {
            "account_id": ACCOUNT,
            "trust_anchors": [{"arn": self.anchor_arn, "certificates": ["root.pem"]}],
            "profiles": [{"arn": self.profile_arn, "role_arns": roles}],
        }
        path.write_text(yaml.safe_dump(document))
        return path

    def agent_document(self, endpoint: str, port: int = 0, **extra: Any) -> dict[str, Any]:
        profiles = {}
        for name, files in self.identities.items():
            profiles[name] = {
                **{key: str(path) for key, path in files.items()},
                "trust_anchor_arn": self.anchor_arn,
                "profile_arn": self.profile_arn,
                "role_arn": role_arn(name),
                "endpoint": endpoint,
                **extra,
            }
        return {
            "listen": {"host": "127.0.0.1", "port": port},
            "log": {"format": "json", "level": "debug"},
            "token_dir": str(self.folder / "run"),
            "profiles": profiles,
        }


def encrypt_key_file(path: Path, passphrase: bytes) -> None:
    """Rewrite a PEM private key in place as encrypted PKCS#8 (PBES2, AES-256)."""
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    ))


def make_world(folder: Path, not_before: datetime = CERTS_FROM) -> World:
    root = pki.issue("Test Root CA", ca=True, key_type="p256", not_before=not_before, days=3650)
    intermediate = pki.issue(
        "Test Issuing CA", issuer=root, ca=True, key_type="p256", not_before=not_before,
        days=3650,
    )
    prefix = f"arn:aws:rolesanywhere:{REGION}:{ACCOUNT}"
    return World(
        folder=folder,
        root=root,
        intermediate=intermediate,
        anchor_arn=f"{prefix}:trust-anchor/{uuid.uuid4()}",
        profile_arn=f"{prefix}:profile/{uuid.uuid4()}",
        not_before=not_before,
    )


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Undo what an in-process `cli.main` configured: its stream is closed after the test."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@dataclass
class Stack:
    """The emulator and the agent in this process, on real loopback sockets, one clock."""

    world: World
    clock: FakeClock
    emulator: Emulator
    agent: Agent
    http: aiohttp.ClientSession
    endpoint: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.agent.port}"

    def token(self, profile: str) -> str:
        return Path(self.agent.exports(profile).token_file).read_text()

    async def get(self, profile: str, **headers: str) -> tuple[int, dict[str, Any], Any]:
        if "Authorization" not in headers:
            headers["Authorization"] = self.token(profile)
        url = f"{self.base}/v1/credentials/{profile}"
        async with self.http.get(url, headers=headers) as response:
            return response.status, dict(response.headers), await response.json()

    def calls(self, outcome: str = "success") -> int:
        return self.emulator.counters.get(outcome, 0)


StackFactory = Callable[..., Any]


@pytest.fixture
async def stack_factory(
    world: World, clock: FakeClock
) -> AsyncIterator[Callable[..., Any]]:
    """Build (emulator, agent) pairs sharing the fake clock; everything is stopped after."""
    started: list[Stack] = []
    http = aiohttp.ClientSession()

    async def build(
        leaves: tuple[tuple[str, str], ...] = (("web", "rsa2048"),),
        profile: dict[str, Any] | None = None,
        agent_extra: dict[str, Any] | None = None,
        wait_ready: bool = True,
        policy: RefreshPolicy | None = None,
        real_time: bool = False,
        agent_options: dict[str, Any] | None = None,
    ) -> Stack:
        if real_time:
            # SDK processes judge expiry by the real clock: start the fake one at "now".
            clock.set(datetime.now(UTC).replace(microsecond=0))
        for name, key_type in leaves:
            world.add_leaf(name, key_type)
        emulator = Emulator(world.emulator_config(**(profile or {})), clock=clock, controls=True)
        endpoint = await emulator.start()
        document = world.agent_document(endpoint, **(agent_extra or {}))
        config = parse_config(document, world.folder / "agent.yaml", os.environ)
        agent = Agent(
            config, clock=clock, policy=policy, rng=random.Random(7), **(agent_options or {})
        )
        stack = Stack(world, clock, emulator, agent, http, endpoint)
        started.append(stack)
        await agent.start(wait_ready=wait_ready)
        return stack

    yield build
    for stack in started:
        await stack.agent.stop()
        await stack.emulator.stop()
    await http.close()


def sdk_env(exports: dict[str, str], sts_endpoint: str, **extra: str) -> dict[str, str]:
    """A child environment whose only credential source is what `exports` names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(exports)
    env.update(
        AWS_REGION=REGION,  # read by the JS and Go SDKs
        AWS_DEFAULT_REGION=REGION,  # read by botocore and the AWS CLI v1
        AWS_ENDPOINT_URL_STS=sts_endpoint,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        **extra,
    )
    return env


PYTHON = sys.executable
AWS_CLI = str(Path(sys.executable).parent / "aws")
BOTO3_CALLER = (
    "import boto3; print(boto3.client('sts').get_caller_identity()['Arn'])"
)


@pytest.fixture(scope="session")
def go_caller(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/go/caller built once per run against Debian's Go SDK (skips when absent)."""
    from .sdk_clients import build_go_caller  # sdk_clients imports this module

    return build_go_caller(tmp_path_factory.mktemp("go"))
