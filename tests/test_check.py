"""`rolesanywhere-agent check [--live]`: the report per profile and the exit codes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from rolesanywhere_agent import pki
from rolesanywhere_agent.emulator import Fault

from .conftest import World
from .sdk_clients import AGENT_CLI, Outcome, child_env, run


def write_config(world: World, endpoint: str = "http://127.0.0.1:1") -> Path:
    path = world.folder / "agent.yaml"
    path.write_text(yaml.safe_dump(world.agent_document(endpoint)))
    return path


async def check(config: Path, *extra: str) -> Outcome:
    return await run([AGENT_CLI, "check", "--config", str(config), *extra], child_env())


def section(outcome: Outcome, profile: str) -> list[str]:
    blocks = outcome.stdout.split("\n\n")
    block = next(b for b in blocks if b.startswith(f"profile {profile}\n"))
    return block.splitlines()[1:]


async def test_reports_what_each_profile_will_send(world: World) -> None:
    world.add_leaf("web", "rsa2048")
    world.add_leaf("edge", "p384", chain=False)
    leaf = world.leaves["web"].certificate

    outcome = await check(write_config(world))

    assert outcome.code == 0, outcome.stdout + outcome.stderr
    not_after = leaf.not_valid_after_utc
    days = int((not_after - datetime.now(UTC)).total_seconds() / 86400)
    assert section(outcome, "web") == [
        "  subject       CN=web.example",
        "  issuer        CN=Test Issuing CA",
        f"  serial        {leaf.serial_number} (decimal, as sent in Credential=)",
        f"  not after     {not_after:%Y-%m-%dT%H:%M:%SZ} ({days} days left)",
        "  key           RSA 2048",
        "  chain sent    CN=Test Issuing CA",
        "  dropped       none",
        "  endpoint      http://127.0.0.1:1",
        "  role          arn:aws:iam::111122223333:role/web",
    ]
    assert section(outcome, "edge")[4:6] == [
        "  key           EC P-384",
        "  chain sent    none (no X-Amz-X509-Chain header)",
    ]
    assert outcome.stdout.endswith("\n2 of 2 profiles usable\n")
    assert outcome.stderr == ""


async def test_warns_about_expiry_and_dropped_certificates(world: World) -> None:
    soon = pki.issue("soon.example", issuer=world.intermediate, key_type="p256", days=5)
    stranger = pki.issue("Unrelated CA", ca=True, key_type="p256", days=30)
    world.identities["soon"] = pki.write_identity(
        world.folder / "soon", soon, [world.intermediate, stranger]
    )

    outcome = await check(write_config(world))

    lines = section(outcome, "soon")
    assert outcome.code == 0
    assert "  dropped       CN=Unrelated CA" in lines
    assert lines[-2:] == [
        f"  warning: certificate expires in 4 days; renew it before "
        f"{soon.certificate.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
        "  warning: certificates not on the path to the leaf are not sent",
    ]


async def test_an_unusable_identity_exits_2_and_the_others_are_still_reported(
    world: World,
) -> None:
    world.add_leaf("web", "p256")
    world.add_leaf("old", "p256")
    other = pki.issue("other.example", issuer=world.intermediate, key_type="p256", days=30)
    world.identities["old"]["private_key"].write_bytes(other.key_pem)
    expired = pki.issue("gone.example", issuer=world.intermediate, key_type="p256",
                        not_before=datetime.now(UTC) - timedelta(days=10), days=1)
    world.identities["gone"] = pki.write_identity(world.folder / "gone", expired, [])

    outcome = await check(write_config(world))

    assert outcome.code == 2
    assert section(outcome, "web")[0] == "  subject       CN=web.example"
    assert section(outcome, "old")[-1] == (
        f"  NOT USABLE: key.pem does not match cert.pem: the key belongs to another "
        f"certificate ({world.folder}/old/key.pem vs {world.folder}/old/cert.pem); "
        "install the key issued with it"
    )
    assert re.fullmatch(
        r"  NOT USABLE: .*/gone/cert\.pem: certificate expired at .*Z; install a renewed one",
        section(outcome, "gone")[-1],
    )
    assert outcome.stdout.endswith("\n1 of 3 profiles usable; check gone, old\n")


async def test_live_reports_the_services_answer(stack_factory) -> None:
    stack = await stack_factory(leaves=(("web", "rsa2048"), ("edge", "p256")), real_time=True)
    config = write_config(stack.world, stack.endpoint)

    ok = await check(config, "--live")
    stack.emulator.inject(Fault(status=403, error_type="AccessDeniedException",
                                message="Untrusted signing certificate", times=2))
    refused = await check(config, "--live")

    assert ok.code == 0, ok.stdout
    assert re.fullmatch(r"  createsession ok: ASIA\w+ until \S+Z \(3\d\d\d s\)",
                        section(ok, "web")[-1])
    assert refused.code == 1
    for profile in ("web", "edge"):
        assert section(refused, profile)[-1] == (
            "  createsession refused: AccessDeniedException (403): Untrusted signing certificate"
        )
    assert refused.stdout.endswith("\n0 of 2 profiles usable; check edge, web\n")


async def test_config_error_exits_2_without_a_report(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("profiles: {}\n")

    outcome = await check(config)

    assert (outcome.code, outcome.stdout) == (2, "")
    assert outcome.stderr == (
        f"rolesanywhere-agent: {config}: profiles: expected at least one profile\n"
    )



async def test_live_refuses_a_grant_the_agent_would_not_serve(stack_factory) -> None:
    stack = await stack_factory(real_time=True)
    config = write_config(stack.world, stack.endpoint)
    stack.emulator.inject(Fault(grant_seconds=30, times=1))

    outcome = await check(config, "--live")

    assert outcome.code == 1
    assert re.fullmatch(
        r"  createsession refused: granted only [1-3][0-9] s, until \S+Z; the agent stops "
        r"serving 60 s before expiry",
        section(outcome, "web")[-1],
    )


async def test_a_token_group_that_does_not_exist_is_not_usable(world: World) -> None:
    world.add_leaf("web", "p256")
    document = world.agent_document("http://127.0.0.1:1")
    document["profiles"]["web"]["token_file"] = {"mode": "0640", "group": "no-such-group-x"}
    config = world.folder / "agent.yaml"
    config.write_text(yaml.safe_dump(document))

    outcome = await check(config)

    assert outcome.code == 2
    assert section(outcome, "web")[-1] == (
        f"  NOT USABLE: {world.folder}/run/web.token: token_file.group 'no-such-group-x' "
        "does not exist"
    )
