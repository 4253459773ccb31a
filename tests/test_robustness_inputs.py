"""Hostile or accidental inputs: certificates cryptography cannot parse, FIFOs and devices
where files belong, YAML alias bombs and huge integers, look-alike names and paths, and
listen hosts that SDKs do not all accept. Each fails with one line, or is survived."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtensionOID, NameOID
from structlog.testing import capture_logs

from rolesanywhere_agent.app import Agent, exports_for
from rolesanywhere_agent.cli import _reload
from rolesanywhere_agent.config import load_config, parse_config
from rolesanywhere_agent.errors import ConfigError, IdentityError
from rolesanywhere_agent.identity import (
    IdentityFiles,
    IdentitySource,
    load_identity,
    read_file,
)
from rolesanywhere_agent.notify import Notifier

from .conftest import START, World
from .processes import AGENT, free_port

# Never contacted: every case here fails or is judged before the first CreateSession.
UNUSED_ENDPOINT = "http://127.0.0.1:9"


def write_config(world: World, document: dict) -> Path:
    path = world.folder / "agent.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENT, "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )


def files_of(world: World, name: str = "web") -> IdentityFiles:
    paths = world.identities[name]
    return IdentityFiles(
        certificate=paths["certificate"],
        private_key=paths["private_key"],
        intermediates=paths.get("intermediates"),
    )


# --- certificates cryptography cannot fully parse ---------------------------------------------


def malformed_leaf(world: World, key: object) -> bytes:
    """A leaf for `key`, signed by the issuing CA, whose basicConstraints value is not DER."""
    start = world.not_before
    assert start is not None
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web.example")]))
        .issuer_name(world.intermediate.certificate.subject)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=3650))
        # A truncated BOOLEAN: cryptography raises ValueError when the extensions are read.
        .add_extension(
            x509.UnrecognizedExtension(ExtensionOID.BASIC_CONSTRAINTS, b"\x30\x03\x01\x01"),
            critical=True,
        )
        .sign(world.intermediate.key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_malformed_extension_is_an_identity_error_naming_the_file(world: World) -> None:
    world.add_leaf("web", "p256")
    cert = world.identities["web"]["certificate"]
    cert.write_bytes(malformed_leaf(world, world.leaves["web"].key))

    with pytest.raises(IdentityError) as raised:
        load_identity(files_of(world), START)

    assert str(raised.value).startswith(f"{cert}: a certificate is malformed (")
    assert "\n" not in str(raised.value)


def test_serve_with_a_malformed_extension_exits_2_with_one_line(world: World) -> None:
    world.add_leaf("web", "p256")
    cert = world.identities["web"]["certificate"]
    cert.write_bytes(malformed_leaf(world, world.leaves["web"].key))
    config = write_config(world, world.agent_document(UNUSED_ENDPOINT, port=free_port()))

    result = serve(config)

    assert result.returncode == 2
    assert result.stderr.startswith(f"rolesanywhere-agent: {cert}: a certificate is malformed")
    assert len(result.stderr.splitlines()) == 1


def test_identity_source_keeps_the_last_good_identity_through_a_malformed_rotation(
    world: World,
) -> None:
    world.add_leaf("web", "p256")
    source = IdentitySource(files_of(world), lambda: START)
    good = source.current()
    cert = world.identities["web"]["certificate"]

    cert.write_bytes(malformed_leaf(world, world.leaves["web"].key) + b"\n")

    assert source.current() is good
    assert source.problem is not None and source.problem.startswith(f"{cert}: ")


def test_identity_source_keeps_the_last_good_identity_through_any_failure(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.add_leaf("web", "p256")
    source = IdentitySource(files_of(world), lambda: START)
    good = source.current()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret-looking text that must not be recorded")

    monkeypatch.setattr("rolesanywhere_agent.identity.load_identity", broken)
    world.identities["web"]["certificate"].write_bytes(world.leaves["web"].cert_pem + b"\n")

    assert source.current() is good
    assert source.problem is not None and "RuntimeError" in source.problem
    assert "secret" not in source.problem


async def test_reload_with_a_malformed_certificate_is_refused(stack_factory) -> None:
    stack = await stack_factory()
    world = stack.world
    world.add_leaf("api", "p256")
    world.identities["api"]["certificate"].write_bytes(
        malformed_leaf(world, world.leaves["api"].key)
    )
    path = write_config(world, world.agent_document(stack.endpoint))

    with capture_logs() as events:
        await _reload(stack.agent, path, Notifier({}))

    refused = [e for e in events if e["event"] == "config_reload_refused"]
    assert len(refused) == 1 and "a certificate is malformed" in refused[0]["error"]
    assert "api" not in stack.agent.sessions


# --- FIFOs, devices and huge files where a small file belongs ---------------------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize("key", ["certificate", "private_key", "intermediates"])
def test_identity_file_that_is_a_fifo_is_refused(world: World, key: str) -> None:
    world.add_leaf("web", "p256")
    path = world.identities["web"][key]
    path.unlink()
    os.mkfifo(path)

    with pytest.raises(IdentityError) as raised:
        load_identity(files_of(world), START)

    assert str(raised.value) == f"{path}: not a regular file"


@pytest.mark.timeout(10)
def test_passphrase_file_that_is_a_fifo_or_a_device_is_refused(world: World) -> None:
    world.add_leaf("web", "p256")
    fifo = world.folder / "pass"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        files = IdentityFiles(
            certificate=world.identities["web"]["certificate"],
            private_key=world.identities["web"]["private_key"],
            passphrase_file=path,
        )
        with pytest.raises(IdentityError) as raised:
            load_identity(files, START)

        assert str(raised.value) == f"{path}: not a regular file"


def test_identity_file_over_1_mib_is_refused(world: World) -> None:
    path = world.folder / "big.pem"
    path.write_bytes(b"#" * (1024 * 1024 + 1))

    with pytest.raises(IdentityError) as raised:
        read_file(path)

    assert str(raised.value) == f"{path}: larger than 1 MiB; is this the right file?"


@pytest.mark.timeout(10)
def test_config_file_that_is_a_fifo_or_too_big_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "agent.yaml"
    os.mkfifo(fifo)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# padding\n" * 110_000)

    with pytest.raises(ConfigError) as fifo_error:
        load_config(fifo, {})
    with pytest.raises(ConfigError) as big_error:
        load_config(big, {})

    assert str(fifo_error.value) == f"{fifo}: not a regular file"
    assert str(big_error.value) == f"{big}: larger than 1 MiB; is this the right file?"


# --- YAML alias bombs and huge integers -------------------------------------------------------


def alias_bomb(depth: int) -> list:
    """What `a1: &a1 [*a0, *a0, ...]` nested `depth` times loads as: shared references,
    small in memory, 9**depth strings long once printed."""
    value: list = ["lol"] * 9
    for _ in range(depth):
        value = [value] * 9
    return value


@pytest.mark.timeout(20)
@pytest.mark.parametrize("section", ["listen.port", "log.level", "log.format"])
def test_alias_bomb_in_a_value_is_refused_quickly_and_briefly(
    world: World, section: str
) -> None:
    world.add_leaf("web", "p256")
    document = world.agent_document(UNUSED_ENDPOINT)
    group, key = section.split(".")
    document[group][key] = alias_bomb(7)
    started = time.monotonic()

    with pytest.raises(ConfigError) as raised:
        parse_config(document, world.folder / "agent.yaml", {})

    assert time.monotonic() - started < 2
    assert f": {section}: " in str(raised.value) and len(str(raised.value)) < 400


def test_huge_integer_is_not_valid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(f"listen: {{port: {'9' * 5000}}}\n")

    with pytest.raises(ConfigError) as raised:
        load_config(path, {})

    assert str(raised.value) == (
        f"{path}: not valid YAML (an integer with thousands of digits; quote it if it is text)"
    )


async def test_reload_with_a_huge_integer_is_refused(stack_factory) -> None:
    stack = await stack_factory()
    path = stack.world.folder / "agent.yaml"
    path.write_text(f"listen: {{port: {'9' * 5000}}}\n")

    with capture_logs() as events:
        await _reload(stack.agent, path, Notifier({}))

    refused = [e for e in events if e["event"] == "config_reload_refused"]
    assert len(refused) == 1 and "not valid YAML" in refused[0]["error"]


async def test_reload_survives_an_unexpected_error_without_its_text(
    stack_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await stack_factory()
    path = write_config(stack.world, stack.world.agent_document(stack.endpoint))

    def broken(*args: object) -> None:
        raise RuntimeError("text that could quote a secret")

    monkeypatch.setattr("rolesanywhere_agent.cli.load_config", broken)
    with capture_logs() as events:
        await _reload(stack.agent, path, Notifier({}))

    failed = [e for e in events if e["event"] == "config_reload_failed"]
    assert len(failed) == 1 and failed[0]["error"] == "RuntimeError"
    assert "secret" not in repr(events)
    status, _, _ = await stack.get("web")
    assert status == 200


# --- names and paths that only look right -----------------------------------------------------


def test_profile_name_with_a_trailing_newline_is_refused(world: World) -> None:
    world.add_leaf("web", "p256")
    document = world.agent_document(UNUSED_ENDPOINT)
    document["profiles"]["web\n"] = document["profiles"].pop("web")

    with pytest.raises(ConfigError) as raised:
        parse_config(document, world.folder / "agent.yaml", {})

    assert "profiles.'web\\n': expected a name of 1-64" in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("explicit", ["both", "default"])
def test_two_profiles_sharing_a_token_file_are_refused(world: World, explicit: str) -> None:
    world.add_leaf("web", "p256")
    world.add_leaf("api", "p256")
    document = world.agent_document(UNUSED_ENDPOINT)
    shared = world.folder / "run" / "web.token"  # web's default path
    document["profiles"]["api"]["token_file"] = str(shared)
    if explicit == "both":
        document["profiles"]["web"]["token_file"] = str(shared)
    source = world.folder / "agent.yaml"

    with pytest.raises(ConfigError) as raised:
        parse_config(document, source, {})

    assert str(raised.value) == (
        f"{source}: profiles.api.token_file: {shared} is also the token file of profiles.web; "
        "give each profile its own token_file"
    )


# --- the host put in FULL_URI ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "advertised"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("localhost", "127.0.0.1"),
        ("0.0.0.0", "127.0.0.1"),
        ("::", "127.0.0.1"),
        ("::1", "[::1]"),
        ("[::1]", "[::1]"),
        ("127.0.0.2", "127.0.0.2"),
        ("192.0.2.10", "192.0.2.10"),
    ],
)
def test_full_uri_names_where_the_agent_listens(world: World, host: str, advertised: str) -> None:
    world.add_leaf("web", "p256")
    document = world.agent_document(UNUSED_ENDPOINT, port=9912)
    document["listen"] = {"host": host, "port": 9912, "allow_remote": True}
    config = parse_config(document, world.folder / "agent.yaml", {})

    exports = exports_for(config, config.profiles["web"])

    assert exports.full_uri == f"http://{advertised}:9912/v1/credentials/web"


@pytest.mark.parametrize(
    ("host", "warned"), [("::1", True), ("127.0.0.2", True), ("127.0.0.1", False)]
)
def test_start_warns_when_full_uri_uses_a_host_some_sdks_refuse(
    world: World, host: str, warned: bool
) -> None:
    world.add_leaf("web", "p256")
    document = world.agent_document(UNUSED_ENDPOINT, port=9912)
    document["listen"]["host"] = host
    config = parse_config(document, world.folder / "agent.yaml", {})

    with capture_logs() as events:
        Agent(config)._announce(config)

    warnings = [e for e in events if e["event"] == "full_uri_host_not_portable"]
    assert len(warnings) == int(warned)
    if warned:
        assert "127.0.0.1" in warnings[0]["hint"] and "JS SDK" in warnings[0]["hint"]
