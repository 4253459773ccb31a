"""Cases whose proof is the strict emulator granting (or never being asked for) a session."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from rolesanywhere_agent import pki
from rolesanywhere_agent.app import Agent
from rolesanywhere_agent.config import parse_config
from rolesanywhere_agent.emulator import Emulator, Fault
from rolesanywhere_agent.errors import IdentityError
from rolesanywhere_agent.sessions import RefreshPolicy

from .conftest import World


async def start_pair(world: World, document: dict) -> tuple[Emulator, Agent]:
    emulator = Emulator(world.emulator_config(), controls=True)
    endpoint = await emulator.start()
    for profile in document["profiles"].values():
        profile["endpoint"] = endpoint
    agent = Agent(parse_config(document, world.folder / "agent.yaml", os.environ))
    return emulator, agent


async def test_case_c01_two_intermediates_reach_a_root_only_anchor(world: World) -> None:
    policy_ca = pki.issue(
        "Policy CA", issuer=world.root, ca=True, not_before=world.not_before, days=3650
    )
    issuing_ca = pki.issue(
        "Issuing CA", issuer=policy_ca, ca=True, not_before=world.not_before, days=3650
    )
    leaf = pki.issue(
        "web.example",
        issuer=issuing_ca,
        key_type="rsa2048",
        not_before=world.not_before,
        days=3650,
    )
    # Chain file in the wrong order and with the root in it: the agent sorts and prunes.
    files = pki.write_identity(world.folder / "web", leaf, [world.root, policy_ca, issuing_ca])
    world.identities["web"] = files
    emulator, agent = await start_pair(world, world.agent_document("x"))

    try:
        await agent.start()
        session = agent.sessions["web"]
        chain = [cert.subject.rfc4514_string() for cert in session.identity.loaded.chain]

        assert chain == ["CN=Issuing CA", "CN=Policy CA"]
        assert session.servable() is not None
        assert emulator.counters == {"success": 1}
    finally:
        await agent.stop()
        await emulator.stop()


async def test_case_c01_without_the_policy_ca_the_emulator_refuses(world: World) -> None:
    policy_ca = pki.issue(
        "Policy CA", issuer=world.root, ca=True, not_before=world.not_before, days=3650
    )
    issuing_ca = pki.issue(
        "Issuing CA", issuer=policy_ca, ca=True, not_before=world.not_before, days=3650
    )
    leaf = pki.issue("web.example", issuer=issuing_ca, not_before=world.not_before, days=3650)
    world.identities["web"] = pki.write_identity(world.folder / "web", leaf, [issuing_ca])
    emulator, agent = await start_pair(world, world.agent_document("x"))

    try:
        await agent.start()

        assert agent.sessions["web"].last_error == (
            "AccessDeniedException (403): Untrusted signing certificate"
        )
        assert emulator.counters == {"AccessDeniedException": 1}
    finally:
        await agent.stop()
        await emulator.stop()


async def test_case_c02_no_chain_configured_is_accepted(world: World) -> None:
    direct = pki.issue("direct.example", issuer=world.root, not_before=world.not_before, days=3650)
    world.identities["web"] = pki.write_identity(world.folder / "direct", direct, [])
    emulator, agent = await start_pair(world, world.agent_document("x"))

    try:
        await agent.start()

        assert "intermediates" not in world.identities["web"]
        assert agent.sessions["web"].identity.loaded.chain == ()
        assert emulator.counters == {"success": 1}
    finally:
        await agent.stop()
        await emulator.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_case_c05_openssl_ecparam_key_signs_accepted_requests(world: World) -> None:
    folder = world.folder / "web"
    folder.mkdir()
    key = folder / "key.pem"
    subprocess.run(
        ["openssl", "ecparam", "-genkey", "-name", "secp384r1", "-out", str(key)], check=True
    )
    assert key.read_text().startswith("-----BEGIN EC PARAMETERS-----")
    ec_key = load_pem_private_key(
        key.read_bytes().split(b"-----END EC PARAMETERS-----")[1], password=None
    )
    leaf = pki.issue(
        "web.example",
        issuer=world.intermediate,
        key=ec_key,
        not_before=world.not_before,
        days=3650,
    )
    pki.write(folder / "cert.pem", leaf.cert_pem)
    pki.write(folder / "chain.pem", world.intermediate.cert_pem)
    world.identities["web"] = {
        "certificate": folder / "cert.pem",
        "private_key": key,
        "intermediates": folder / "chain.pem",
    }
    emulator, agent = await start_pair(world, world.agent_document("x"))

    try:
        await agent.start()
        signer = agent.sessions["web"].identity.loaded.signer

        assert signer.algorithm == "AWS4-X509-ECDSA-SHA256"
        assert agent.sessions["web"].identity.loaded.key_type == "EC P-384"
        assert emulator.counters == {"success": 1}
    finally:
        await agent.stop()
        await emulator.stop()


async def test_case_c09_mismatched_key_is_refused_before_any_network_call(
    world: World,
) -> None:
    world.add_leaf("web", "rsa2048")
    previous = pki.new_key("rsa2048")
    pki.write(
        world.identities["web"]["private_key"],
        pki.Issued(world.leaves["web"].certificate, previous).key_pem,
        0o600,
    )
    emulator, agent = await start_pair(world, world.agent_document("x"))

    try:
        with pytest.raises(IdentityError) as refused:
            await agent.start()

        assert str(refused.value).startswith("key.pem does not match cert.pem")
        assert emulator.counters == {}
    finally:
        await agent.stop()
        await emulator.stop()


_FETCHER = """
import json, sys, threading, urllib.request
url, token = sys.argv[1], sys.argv[2]
results = []
def fetch():
    request = urllib.request.Request(url, headers={"Authorization": token})
    with urllib.request.urlopen(request, timeout=30) as response:
        results.append((response.status, json.load(response)["AccessKeyId"]))
threads = [threading.Thread(target=fetch) for _ in range(10)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(results))
"""


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "about-to-expire"])
async def test_case_c22_twenty_processes_two_hundred_requests(stack_factory, warm: bool) -> None:
    # A loaded machine may take more than the default 1 s to answer 200 waiting clients: this
    # test is about how many CreateSession calls they cause, so it gives them time.
    patient = RefreshPolicy(cold_wait=30)
    stack = await stack_factory(wait_ready=warm, real_time=True, policy=patient)
    if warm:
        # Inside the 60 s serving margin: nothing cached may be handed out any more.
        stack.clock.jump(3600 - 30)
    stack.emulator.inject(Fault(delay=0.5, times=1))
    url = f"{stack.base}/v1/credentials/web"

    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _FETCHER,
            url,
            stack.token("web"),
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(20)
    ]
    outputs = [await process.communicate() for process in processes]
    results = [tuple(item) for out, _ in outputs for item in json.loads(out)]
    assert len(results) == 200
    assert {status for status, _ in results} == {200}
    assert len({key for _, key in results}) == 1
    assert stack.calls() == (2 if warm else 1)
