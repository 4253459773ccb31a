"""Changes under a running agent: identity files rotated on disk, token files rewritten,
the configuration reloaded (in-process and by SIGHUP), and stopping on signals."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import signal
import stat
import subprocess
import threading
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from structlog.testing import capture_logs

from rolesanywhere_agent import pki
from rolesanywhere_agent.app import Reload
from rolesanywhere_agent.cli import EXIT_FAILURE, run_until_signalled
from rolesanywhere_agent.config import parse_config
from rolesanywhere_agent.credentials import format_expiration
from rolesanywhere_agent.emulator import Fault
from rolesanywhere_agent.sessions import State

from .conftest import START, Stack, World, role_arn
from .polling import attempt_at, until, until_sync
from .processes import AGENT, free_port, log_events, running

# --- identity rotation ---------------------------------------------------------------------


def new_leaf(world: World, issuer: pki.Issued | None = None, **kwargs) -> pki.Issued:
    return pki.issue(
        "web.example",
        issuer=issuer or world.intermediate,
        key_type="rsa2048",
        not_before=kwargs.pop("not_before", world.not_before),
        days=kwargs.pop("days", 3650),
        **kwargs,
    )


def replace_atomically(path: Path, data: bytes) -> None:
    """What cert-manager, certbot and configuration tools do: write aside, then rename."""
    temporary = path.with_name(f".{path.name}.new")
    pki.write(temporary, data, stat.S_IMODE(path.stat().st_mode))
    os.replace(temporary, path)


def rewrite_in_place(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:  # same inode, truncated and written again
        handle.write(data)


def serial_seen_by_emulator(stack: Stack, body: dict) -> str:
    # Without roleSessionName the service names the session after the leaf serial, in hex.
    return stack.emulator.session(body["AccessKeyId"]).session_name


async def test_rotation_by_rename_with_a_new_issuing_ca_is_used_at_next_refresh(
    stack_factory,
) -> None:
    stack = await stack_factory()
    world = stack.world
    files = world.identities["web"]
    _, _, before = await stack.get("web")
    issuing = pki.issue(
        "Test Issuing CA 2", issuer=world.root, ca=True, not_before=world.not_before, days=3650
    )
    leaf = new_leaf(world, issuer=issuing)

    replace_atomically(files["intermediates"], issuing.cert_pem)
    replace_atomically(files["private_key"], leaf.key_pem)
    replace_atomically(files["certificate"], leaf.cert_pem)
    with capture_logs() as events:
        await attempt_at(stack)

    _, _, after = await stack.get("web")
    old_serial = format(world.leaves["web"].certificate.serial_number, "x")
    assert serial_seen_by_emulator(stack, before) == old_serial
    assert serial_seen_by_emulator(stack, after) == format(leaf.certificate.serial_number, "x")
    rotated = [e for e in events if e["event"] == "identity_rotated"]
    assert [e["serial"] for e in rotated] == [str(leaf.certificate.serial_number)]
    assert not [e for e in events if e["event"] == "identity_rotation_pending"]


async def test_rotation_in_place_is_used_at_next_refresh(stack_factory) -> None:
    stack = await stack_factory()
    files = stack.world.identities["web"]
    leaf = new_leaf(stack.world)

    rewrite_in_place(files["private_key"], leaf.key_pem)
    rewrite_in_place(files["certificate"], leaf.cert_pem)
    await attempt_at(stack)

    _, _, after = await stack.get("web")
    assert serial_seen_by_emulator(stack, after) == format(leaf.certificate.serial_number, "x")


async def test_half_done_rotation_keeps_last_good_pair_and_warns_once(stack_factory) -> None:
    stack = await stack_factory()
    session = stack.agent.sessions["web"]
    files = stack.world.identities["web"]
    old_serial = format(stack.world.leaves["web"].certificate.serial_number, "x")
    leaf = new_leaf(stack.world)

    # The certificate arrives first; the key only later.
    replace_atomically(files["certificate"], leaf.cert_pem)
    with capture_logs() as events:
        await attempt_at(stack)
        _, _, first = await stack.get("web")
        await attempt_at(stack)
        _, _, second = await stack.get("web")

    pending = [e for e in events if e["event"] == "identity_rotation_pending"]
    assert len(pending) == 1
    assert pending[0]["log_level"] == "warning"
    assert pending[0]["problem"].startswith("key.pem does not match cert.pem")
    assert pending[0]["serving_serial"] == str(stack.world.leaves["web"].certificate.serial_number)
    assert serial_seen_by_emulator(stack, first) == old_serial
    assert serial_seen_by_emulator(stack, second) == old_serial
    assert session.state == State.READY and stack.calls() == 3

    # The key arrives: the next refresh signs with the new pair and says so, once.
    replace_atomically(files["private_key"], leaf.key_pem)
    with capture_logs() as events:
        await attempt_at(stack)
    _, _, third = await stack.get("web")
    assert serial_seen_by_emulator(stack, third) == format(leaf.certificate.serial_number, "x")
    assert [e["event"] for e in events if e["event"].startswith("identity_")] == [
        "identity_rotated"
    ]


async def test_expired_certificate_is_not_sent_and_renewal_recovers(
    stack_factory, world: World
) -> None:
    # Valid until 10 minutes after START: the first refresh works, the scheduled one cannot.
    leaf = new_leaf(world, not_before=START - timedelta(days=1), days=1 + 10 / 1440)
    world.leaves["web"] = leaf
    world.identities["web"] = pki.write_identity(world.folder / "web", leaf, [world.intermediate])
    stack = await stack_factory(leaves=())
    session = stack.agent.sessions["web"]
    _, _, good = await stack.get("web")

    # The first refresh after the certificate's end, whenever the scheduler planned it.
    await attempt_at(stack, max(session.next_attempt_at, START + timedelta(minutes=11)))

    cert_path = world.identities["web"]["certificate"]
    expired_at = format_expiration(leaf.certificate.not_valid_after_utc)
    assert expired_at == "2026-12-04T12:10:00Z"
    assert session.last_error == (
        f"{cert_path}: certificate expired at {expired_at}; install a renewed one"
    )
    assert stack.emulator.counters == {"success": 1}  # nothing was sent with the expired one
    assert (await stack.get("web"))[2] == good
    assert 15 <= (session.next_attempt_at - stack.clock.now()).total_seconds() <= 30

    renewed = new_leaf(world, key=leaf.key)
    replace_atomically(cert_path, renewed.cert_pem)
    await attempt_at(stack)
    assert session.state == State.READY
    assert stack.emulator.counters == {"success": 2}


async def test_token_file_rewritten_in_place_is_honoured(stack_factory) -> None:
    stack = await stack_factory()
    path = Path(stack.agent.exports("web").token_file)
    old = stack.token("web")

    rewrite_in_place(path, b"operator-rewrote-this-token-0123456789")

    new = "operator-rewrote-this-token-0123456789"
    assert (await stack.get("web", Authorization=new))[0] == 200
    assert (await stack.get("web", Authorization=old))[0] == 401


# --- Agent.reload ----------------------------------------------------------------------------


def reparse(stack: Stack, document: dict):
    return parse_config(document, stack.world.folder / "agent.yaml", os.environ)


def current_document(stack: Stack) -> dict:
    return stack.world.agent_document(stack.endpoint)


async def test_reload_adds_removes_and_keeps_profiles(stack_factory) -> None:
    stack = await stack_factory(leaves=(("web", "rsa2048"), ("edge", "p256")))
    _, _, web_before = await stack.get("web")
    web_token = stack.token("web")
    web_session = stack.agent.sessions["web"]
    edge_session = stack.agent.sessions["edge"]
    document = current_document(stack)
    stack.world.add_leaf("api", "p384")
    stack.emulator.config = stack.world.emulator_config()
    document["profiles"]["api"] = current_document(stack)["profiles"]["api"]
    del document["profiles"]["edge"]

    with capture_logs() as events:
        result = await stack.agent.reload(reparse(stack, document))
    await stack.agent.sessions["api"].first_outcome()

    assert result == Reload(added=("api",), removed=("edge",), kept=("web",))
    reloaded = [e for e in events if e["event"] == "config_reloaded"]
    assert [(e["added"], e["removed"], e["changed"], e["kept"]) for e in reloaded] == [
        (["api"], ["edge"], [], ["web"])
    ]
    # Unchanged: the same session object, the same cached credentials, the same token.
    assert stack.agent.sessions["web"] is web_session
    status, _, web_after = await stack.get("web")
    assert (status, web_after) == (200, web_before)
    assert stack.token("web") == web_token
    # Added: served with its own token. Removed: gone, and its refresher stopped.
    status, _, api = await stack.get("api")
    assert status == 200 and api["RoleArn"] == role_arn("api")
    url = f"{stack.base}/v1/credentials/edge"
    async with stack.http.get(url, headers={"Authorization": web_token}) as response:
        assert (response.status, await response.json()) == (
            404, {"Code": "ProfileNotFound", "Message": "no profile named 'edge'"}
        )
    assert edge_session._runner.done()
    assert stack.calls() == 3  # web, edge at start; api after the reload


async def test_reload_of_a_changed_profile_gets_a_new_session_and_keeps_its_token(
    stack_factory,
) -> None:
    stack = await stack_factory()
    _, _, before = await stack.get("web")
    token = stack.token("web")
    document = current_document(stack)
    document["profiles"]["web"]["session_duration"] = 1800

    result = await stack.agent.reload(reparse(stack, document))
    await stack.agent.sessions["web"].first_outcome()

    assert result == Reload(changed=("web",))
    status, _, after = await stack.get("web")
    assert status == 200 and after["AccessKeyId"] != before["AccessKeyId"]
    assert after["Expiration"] == format_expiration(START + timedelta(seconds=1800))
    assert stack.token("web") == token


async def test_reload_of_a_token_file_setting_keeps_the_session(stack_factory) -> None:
    stack = await stack_factory()
    _, _, before = await stack.get("web")
    session = stack.agent.sessions["web"]
    document = current_document(stack)
    new_path = stack.world.folder / "run" / "web-2.token"
    document["profiles"]["web"]["token_file"] = str(new_path)

    result = await stack.agent.reload(reparse(stack, document))

    assert result == Reload(changed=("web",))
    assert stack.agent.sessions["web"] is session
    assert stack.agent.exports("web").token_file == str(new_path)
    status, _, after = await stack.get("web", Authorization=new_path.read_text())
    assert (status, after) == (200, before)
    assert stack.calls() == 1


async def test_reload_during_an_outage_keeps_serving_the_same_roles_session(
    stack_factory,
) -> None:
    stack = await stack_factory()
    _, _, before = await stack.get("web")
    stack.emulator.inject(Fault(status=503))
    document = current_document(stack)
    document["profiles"]["web"]["session_duration"] = 1800

    result = await stack.agent.reload(reparse(stack, document))
    await stack.agent.sessions["web"].first_outcome()

    assert result == Reload(changed=("web",))
    status, _, after = await stack.get("web")
    assert (status, after) == (200, before)
    assert stack.agent.sessions["web"].state == State.DEGRADED


async def test_reload_while_a_client_waits_still_answers_it(stack_factory) -> None:
    stack = await stack_factory()
    stack.clock.jump(3600 - 30)  # inside the serving margin: the next client has to wait
    stack.emulator.inject(Fault(delay=2, times=1))
    waiting = asyncio.create_task(stack.get("web"))
    old = stack.agent.sessions["web"]
    await until(lambda: old._inflight is not None and not old._inflight.done(), "a refresh")
    document = current_document(stack)
    document["profiles"]["web"]["session_duration"] = 1800

    await stack.agent.reload(reparse(stack, document))
    status, headers, body = await waiting

    assert status == 503
    assert body["Code"] == "CredentialsUnavailable" and "Retry-After" in headers


async def test_a_refused_reload_changes_no_token_file(stack_factory) -> None:
    stack = await stack_factory(leaves=(("web", "rsa2048"), ("edge", "p256")))
    path = Path(stack.agent.exports("web").token_file)
    own_group = grp.getgrgid(os.getgid()).gr_name
    document = current_document(stack)
    document["profiles"]["web"]["token_file"] = {"mode": "0640", "group": own_group}
    document["profiles"]["edge"]["token_file"] = {"group": "no-such-group-x"}

    result = await stack.agent.reload(reparse(stack, document))

    assert result is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(path.parent.glob(".*.tmp"))


def mismatched_profile(stack: Stack) -> dict:
    """A new profile whose key belongs to another certificate (a rotation gone wrong)."""
    stack.world.add_leaf("api", "rsa2048")
    files = stack.world.identities["api"]
    files["private_key"].write_bytes(stack.world.leaves["web"].key_pem)
    return current_document(stack)["profiles"]["api"]


@pytest.mark.parametrize("problem", ["key_mismatch", "listen_changed", "world_writable_tokens"])
async def test_reload_refuses_a_bad_config_whole_and_keeps_running(
    stack_factory, problem: str
) -> None:
    stack = await stack_factory()
    _, _, before = await stack.get("web")
    sessions = dict(stack.agent.sessions)
    document = current_document(stack)
    document["profiles"]["web"]["session_duration"] = 1800  # would change, if accepted
    if problem == "key_mismatch":
        document["profiles"]["api"] = mismatched_profile(stack)
        cert = stack.world.identities["api"]["private_key"].parent
        expected = (
            f"key.pem does not match cert.pem: the key belongs to another certificate "
            f"({cert}/key.pem vs {cert}/cert.pem); install the key issued with it"
        )
    elif problem == "listen_changed":
        document["listen"]["port"] = free_port()
        expected = (
            f"{stack.world.folder}/agent.yaml: listen: the listener's settings need a restart"
        )
    else:
        document["profiles"]["api"] = mismatched_profile(stack)
        stack.world.identities["api"]["private_key"].write_bytes(stack.world.leaves["api"].key_pem)
        loose = stack.world.folder / "shared-tmp"
        loose.mkdir(mode=0o777)
        loose.chmod(0o777)
        document["profiles"]["api"]["token_file"] = str(loose / "api.token")
        expected = (
            f"{loose}: token folder is world-writable; use a folder only the agent can write "
            "(chmod o-w)"
        )

    with capture_logs() as events:
        result = await stack.agent.reload(reparse(stack, document))

    assert result is None
    refused = [e for e in events if e["event"] == "config_reload_refused"]
    assert [(e["log_level"], e["error"]) for e in refused] == [("error", expected)]
    assert refused[0]["hint"] == "the previous configuration keeps running"
    assert stack.agent.sessions == sessions
    assert stack.agent.config.profiles["web"].session.duration_seconds == 3600
    status, _, body = await stack.get("web")
    assert (status, body) == (200, before)
    assert stack.calls() == 1


# --- the real process: SIGHUP, SIGTERM, a second signal --------------------------------------


class Served:
    """An emulator and an agent started from the CLI, with the agent's config file at hand."""

    def __init__(self, world: World, folder: Path) -> None:
        self.world = world
        self.folder = folder
        self.emulator_port = free_port()
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.emulator_port}"
        self.config = folder / "agent.yaml"
        self.log = folder / "agent.log"

    def write_config(self, profiles: list[str], text: str | None = None) -> None:
        document = self.world.agent_document(self.endpoint, port=self.port)
        document["log"]["level"] = "info"
        document["profiles"] = {name: document["profiles"][name] for name in profiles}
        self.config.write_text(text if text is not None else yaml.safe_dump(document))

    def get(self, profile: str, token_of: str | None = None) -> tuple[int, dict]:
        token_file = self.world.folder / "run" / f"{token_of or profile}.token"
        token = token_file.read_text() if token_file.exists() else "none"
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/credentials/{profile}",
            headers={"Authorization": token},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)
        except OSError:
            return 0, {}

    def events(self, name: str) -> list[dict]:
        return [e for e in log_events(self.log) if e.get("event") == name]


@pytest.fixture
def served(world: World, tmp_path: Path):
    world.add_leaf("web", "rsa2048")
    world.add_leaf("api", "p256")
    emulator_yaml = world.write_emulator_yaml(tmp_path)
    served = Served(world, tmp_path)
    served.write_config(["web"])
    port = str(served.emulator_port)
    argv = [*AGENT, "emulator", "--config", str(emulator_yaml), "--port", port]
    with running(argv, f"{served.endpoint}/", tmp_path / "emulator.log"):
        yield served


def start_agent(served: Served) -> subprocess.Popen:
    """The agent, ready once its health endpoint answers; its JSON log goes to `served.log`."""
    log = served.log.open("wb")
    process = subprocess.Popen(
        [*AGENT, "serve", "--config", str(served.config)], stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    until_sync(lambda: served.get("web")[0] == 200 or process.poll() is not None, "agent ready")
    assert process.poll() is None, served.log.read_text()[-2000:]
    return process


def stop_agent(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def test_sighup_reloads_profiles_and_refuses_a_broken_file(served: Served) -> None:
    process = start_agent(served)
    try:
        _, web = served.get("web")

        served.write_config(["web", "api"])
        process.send_signal(signal.SIGHUP)
        until_sync(lambda: served.get("api")[0] == 200, "the added profile to serve")
        assert served.get("web") == (200, web)

        served.write_config([], text="profiles:\n  web: [unclosed\n")
        process.send_signal(signal.SIGHUP)
        until_sync(lambda: served.events("config_reload_refused"), "the refusal to be logged")
        refused = served.events("config_reload_refused")
        assert [e["error"] for e in refused] == [
            f"{served.config}: not valid YAML (expected ',' or ']', but got '<stream end>' at "
            "line 3)"
        ]
        assert served.get("web") == (200, web)
        assert served.get("api")[0] == 200

        served.write_config(["api"])
        process.send_signal(signal.SIGHUP)
        until_sync(lambda: served.get("web", token_of="api")[0] == 404, "web to be removed")
        assert served.get("api")[0] == 200

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        stop_agent(process)
    events = [e["event"] for e in log_events(served.log)]
    assert events.count("config_reloaded") == 2
    assert events[-2:] == ["shutdown_requested", "agent_stopped"]


def test_sigterm_drains_within_a_bounded_time(served: Served) -> None:
    process = start_agent(served)
    try:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        stop_agent(process)
    events = [e["event"] for e in log_events(served.log)]
    assert events[-2:] == ["shutdown_requested", "agent_stopped"]


def test_second_sigterm_forces_the_exit(served: Served) -> None:
    process = start_agent(served)
    try:
        # Stopped, the process holds both signals pending; resumed, it sees them together,
        # so the second one arrives while the first one's drain has only begun.
        process.send_signal(signal.SIGSTOP)
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGCONT)
        assert process.wait(timeout=15) == EXIT_FAILURE
    finally:
        stop_agent(process)
    events = [e["event"] for e in log_events(served.log)]
    assert "shutdown_forced" in events


def test_second_signal_ends_a_drain_that_hangs() -> None:
    """In-process, with a drain that never ends on its own: only the second signal ends it."""
    draining = threading.Event()
    running_body = threading.Event()

    async def body(stop: asyncio.Event) -> int:
        running_body.set()
        await stop.wait()
        draining.set()
        await asyncio.Event().wait()  # a drain stuck forever
        return 0

    def signaller() -> None:
        running_body.wait(10)
        os.kill(os.getpid(), signal.SIGTERM)
        draining.wait(10)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=signaller)
    thread.start()
    try:
        assert run_until_signalled(body) == EXIT_FAILURE
    finally:
        thread.join(10)
    assert draining.is_set()
