"""Real-world cases (../shared/cases/README.md) replayed end to end that no other test file
covers: C08 through the agent and the CLI, C10 as far as file keys allow."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from rolesanywhere_agent import pki
from rolesanywhere_agent.identity import FileKeySigner

from .conftest import World
from .processes import AGENT, free_port

PASSWORD = "s3cret"


def rc2_bundle(world: World, name: str) -> dict:
    """`identity.p12` as an old export makes it: RC2-40 certificate bag, 3DES key bag."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    files = world.identities[name]
    folder = files["certificate"].parent
    bundle = folder / "identity.p12"
    made = subprocess.run(
        [
            "openssl", "pkcs12", "-export", "-legacy",
            "-certpbe", "PBE-SHA1-RC2-40", "-keypbe", "PBE-SHA1-3DES",
            "-in", str(files["certificate"]), "-inkey", str(files["private_key"]),
            "-certfile", str(files["intermediates"]),
            "-out", str(bundle), "-passout", f"pass:{PASSWORD}",
        ],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"openssl cannot write RC2-40 (no legacy provider?): {made.stderr[-200:]}")
    info = subprocess.run(
        ["openssl", "pkcs12", "-in", str(bundle), "-info", "-noout", "-legacy",
         "-passin", f"pass:{PASSWORD}"],
        capture_output=True, text=True, check=True,
    )
    assert "pbeWithSHA1And40BitRC2-CBC" in info.stdout + info.stderr
    return {"pkcs12": bundle, "passphrase_file": folder / "p12.pass"}


async def test_case_c08_rc2_40_pkcs12_serves_through_the_emulator(
    stack_factory, world: World
) -> None:
    world.add_leaf("web", "rsa2048")
    identity = rc2_bundle(world, "web")
    pki.write(identity["passphrase_file"], f"{PASSWORD}\n".encode(), 0o600)
    world.identities["web"] = identity

    stack = await stack_factory(leaves=())
    status, _, body = await stack.get("web")

    assert status == 200
    # The issuing CA inside the bundle went out as the chain: the anchor holds only the root.
    loaded = stack.agent.sessions["web"].identity.loaded
    assert [c.subject.rfc4514_string() for c in loaded.chain] == ["CN=Test Issuing CA"]
    serial = world.leaves["web"].certificate.serial_number
    assert stack.emulator.session(body["AccessKeyId"]).session_name == format(serial, "x")


def test_case_c08_wrong_password_is_one_distinct_line(world: World) -> None:
    world.add_leaf("web", "p256")
    identity = rc2_bundle(world, "web")
    pki.write(identity["passphrase_file"], b"not-the-password", 0o600)
    world.identities["web"] = identity
    config = world.folder / "agent.yaml"
    document = world.agent_document("http://127.0.0.1:9", port=free_port())
    config.write_text(yaml.safe_dump(document))

    result = subprocess.run(
        [*AGENT, "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"rolesanywhere-agent: wrong password for identity.p12 ({identity['pkcs12']})"
    ]


@pytest.mark.skip(
    reason="C10 needs SoftHSM and the PKCS#11 key backend (DESIGN §3, 'later'), not built yet"
)
def test_case_c10_pkcs11_raw_signatures_are_der_encoded() -> None:
    """SoftHSM P-256/P-384/P-521 keys, 200 signings each, every request verified."""


@pytest.mark.parametrize("curve", ["p256", "p384", "p521"])
def test_case_c10_file_key_ecdsa_signatures_are_canonical_der(curve: str) -> None:
    """What can be checked without a token: 200 signings per curve, each a minimal DER
    SEQUENCE{r, s} (leading zero bytes stripped, as the service expects) that verifies."""
    key = pki.new_key(curve)
    signer = FileKeySigner(key)
    public = key.public_key()

    for index in range(200):
        data = f"string to sign {index}".encode()
        signature = signer.sign(data)
        r, s = decode_dss_signature(signature)
        assert encode_dss_signature(r, s) == signature  # minimal, canonical DER
        public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
