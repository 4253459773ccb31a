"""`rolesanywhere-agent serve` with a bad configuration or identity: exit code 2 and exactly
one line on stderr that names the file, never a traceback, never a network call."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from rolesanywhere_agent import pki

from .conftest import World
from .processes import AGENT, free_port

# Never contacted: every case fails before the first CreateSession.
UNUSED_ENDPOINT = "http://127.0.0.1:9"


@dataclass
class Setup:
    world: World
    config: Path
    document: dict
    held: list[socket.socket]

    @property
    def files(self) -> dict[str, Path]:
        return self.world.identities["web"]

    def save(self) -> None:
        self.config.write_text(yaml.safe_dump(self.document))

    @property
    def profile(self) -> dict:
        return self.document["profiles"]["web"]


@pytest.fixture
def setup(world: World) -> Iterator[Setup]:
    world.add_leaf("web", "p256")
    document = world.agent_document(UNUSED_ENDPOINT, port=free_port())
    result = Setup(world, world.folder / "agent.yaml", document, [])
    result.save()
    yield result
    for sock in result.held:
        sock.close()


def serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENT, "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def missing_config(s: Setup) -> str:
    s.config.unlink()
    return f"{s.config}: config file not found"


def yaml_syntax(s: Setup) -> str:
    s.config.write_text("listen: {host: 127.0.0.1\nprofiles: {}\n")
    return f"{s.config}: not valid YAML (expected ',' or '}}', but got ':' at line 2)"


def unknown_key(s: Setup) -> str:
    s.profile["private_kye"] = s.profile.pop("private_key")
    s.save()
    # The list of expected keys follows; it grows with the product, so it is not pinned here.
    return f"{s.config}: profiles.web.private_kye: unknown key (did you mean private_key?); "


def remote_host(s: Setup) -> str:
    s.document["listen"]["host"] = "0.0.0.0"
    s.save()
    return (
        f"{s.config}: listen.host: '0.0.0.0' is not a loopback address; use 127.0.0.1 or set "
        "listen.allow_remote: true"
    )


def missing_certificate(s: Setup) -> str:
    s.files["certificate"].unlink()
    return f"{s.files['certificate']}: file not found"


def key_of_another_certificate(s: Setup) -> str:
    other = pki.issue("old.example", issuer=s.world.intermediate, key_type="p256")
    s.files["private_key"].write_bytes(other.key_pem)
    folder = s.files["certificate"].parent
    return (
        f"key.pem does not match cert.pem: the key belongs to another certificate "
        f"({folder}/key.pem vs {folder}/cert.pem); install the key issued with it"
    )


def utf16_certificate(s: Setup) -> str:
    path = s.files["certificate"]
    path.write_bytes(b"\xff\xfe" + path.read_text().encode("utf-16-le"))
    return f"{path}: file is UTF-16; re-save as UTF-8/ASCII"


def encrypt_key(s: Setup, passphrase: bytes) -> None:
    key = serialization.load_pem_private_key(s.files["private_key"].read_bytes(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    s.files["private_key"].write_bytes(encrypted)


def encrypted_key_without_passphrase(s: Setup) -> str:
    encrypt_key(s, b"correct horse")
    return f"key.pem is encrypted; set `passphrase_file` ({s.files['private_key']})"


def wrong_passphrase(s: Setup) -> str:
    encrypt_key(s, b"correct horse")
    passphrase = s.world.folder / "web" / "passphrase"
    pki.write(passphrase, b"battery staple\n", 0o600)
    s.profile["passphrase_file"] = str(passphrase)
    s.save()
    return f"{s.files['private_key']}: wrong passphrase (from `passphrase_file`)"


def expired_certificate(s: Setup) -> str:
    leaf = pki.issue(
        "web.example",
        issuer=s.world.intermediate,
        key_type="p256",
        not_before=datetime.now(UTC) - timedelta(days=10),
        days=5,
    )
    s.files["certificate"].write_bytes(leaf.cert_pem)
    s.files["private_key"].write_bytes(leaf.key_pem)
    end = leaf.certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{s.files['certificate']}: certificate expired at {end}; install a renewed one"


def world_writable_token_folder(s: Setup) -> str:
    folder = s.world.folder / "run"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    return (
        f"{folder}: token folder is world-writable; use a folder only the agent can write "
        "(chmod o-w)"
    )


def pkcs12_wrong_password(s: Setup) -> str:
    """Case C08: an RC2-40 bundle from `openssl pkcs12 -legacy`, opened with the wrong one."""
    bundle = s.world.folder / "web" / "identity.p12"
    openssl_rc2_bundle(s, bundle, b"s3cret")
    passphrase = pki.write(s.world.folder / "web" / "p12.pass", b"not-it", 0o600)
    for key in ("certificate", "private_key", "intermediates"):
        s.profile.pop(key)
    s.profile.update(pkcs12=str(bundle), passphrase_file=str(passphrase))
    s.save()
    return f"wrong password for identity.p12 ({bundle})"


def openssl_rc2_bundle(s: Setup, bundle: Path, password: bytes) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    made = subprocess.run(
        [
            "openssl", "pkcs12", "-export", "-legacy",
            "-certpbe", "PBE-SHA1-RC2-40", "-keypbe", "PBE-SHA1-3DES",
            "-in", str(s.files["certificate"]), "-inkey", str(s.files["private_key"]),
            "-certfile", str(s.files["intermediates"]),
            "-out", str(bundle), "-passout", f"pass:{password.decode()}",
        ],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"openssl cannot write RC2-40 (no legacy provider?): {made.stderr[-200:]}")


def port_in_use(s: Setup) -> str:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    s.document["listen"]["port"] = taken.getsockname()[1]
    s.save()
    s.held.append(taken)
    port = taken.getsockname()[1]
    return f"{s.config}: listen: cannot listen on 127.0.0.1:{port} (Address already in use)"


CASES: list[Callable[[Setup], str]] = [
    missing_config,
    yaml_syntax,
    unknown_key,
    remote_host,
    missing_certificate,
    key_of_another_certificate,
    utf16_certificate,
    encrypted_key_without_passphrase,
    wrong_passphrase,
    expired_certificate,
    world_writable_token_folder,
    pkcs12_wrong_password,
    port_in_use,
]


@pytest.mark.parametrize("breaker", CASES, ids=[case.__name__ for case in CASES])
def test_serve_refuses_with_one_line_and_exit_2(setup: Setup, breaker) -> None:
    message = breaker(setup)

    result = serve(setup.config)

    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    if message.endswith("; "):
        assert lines[0].startswith(f"rolesanywhere-agent: {message}expected one of ")
    else:
        assert lines == [f"rolesanywhere-agent: {message}"]
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    # Nothing was started on the way: no token written for a profile that never served.
    if breaker is not world_writable_token_folder:
        assert not (setup.world.folder / "run" / "web.token").exists()


# `env` warns while the agent has not written the token file yet; that line is expected.
WARNING_NO_TOKEN_PREFIX = "rolesanywhere-agent: warning: "


def test_a_reader_that_went_away_gets_no_traceback(world: World) -> None:
    world.add_leaf("web", "p256")
    config = world.folder / "agent.yaml"
    config.write_text(yaml.safe_dump(world.agent_document("http://127.0.0.1:1")))
    reader, writer = os.pipe()
    os.close(reader)  # as `| head` does once it has read enough

    try:
        result = subprocess.run(
            [*AGENT, "env", "--config", str(config), "--profile", "web"],
            stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60,
        )
    finally:
        os.close(writer)

    lines = [line for line in result.stderr.splitlines()
             if not line.startswith(WARNING_NO_TOKEN_PREFIX)]
    assert (result.returncode, lines) == (1, [])
