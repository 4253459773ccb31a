"""How CreateSession reaches the service: ca_bundle, insecure, proxies (C12), FIPS regions
(C11) and role_session_name, each end to end against the emulator."""

from __future__ import annotations

import ipaddress
import os
import random
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from structlog.testing import capture_logs

from rolesanywhere_agent import pki
from rolesanywhere_agent.app import Agent
from rolesanywhere_agent.config import parse_config
from rolesanywhere_agent.emulator import Emulator
from rolesanywhere_agent.errors import AccessDenied, ConfigError
from rolesanywhere_agent.identity import load_identity
from rolesanywhere_agent.rolesanywhere import RolesAnywhereClient, SessionRequest
from rolesanywhere_agent.sessions import State

from .conftest import ACCOUNT, START, World
from .loopback_proxy import LoopbackProxy
from .sdk_clients import AGENT_CLI, BOTOCORE, child_env, container_env, run

SIGNED_WITH_CHAIN = "content-type;host;x-amz-date;x-amz-x509;x-amz-x509-chain"


@dataclass
class TlsFiles:
    ca_bundle: Path
    server: ssl.SSLContext


def tls_files(folder: Path) -> TlsFiles:
    """A private CA and a server certificate for 127.0.0.1, as a corporate endpoint has."""
    ca = pki.issue("Test TLS CA", ca=True, key_type="p256", days=2)
    key = pki.new_key("p256")
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        ), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    server = pki.Issued(cert, key)
    ca_bundle = pki.write(folder / "tls-ca.pem", ca.cert_pem)
    pki.write(folder / "tls-server.pem", server.cert_pem)
    pki.write(folder / "tls-server.key", server.key_pem, 0o600)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "tls-server.pem", folder / "tls-server.key")
    return TlsFiles(ca_bundle, context)


@dataclass
class Upstream:
    """An emulator (over TLS or plain HTTP), maybe a reverse proxy, and an agent."""

    emulator: Emulator
    agent: Agent
    endpoint: str
    reverse_proxy: LoopbackProxy | None = None


@pytest.fixture
async def upstream(world: World, clock) -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []
    proxies: list[LoopbackProxy] = []
    agents: list[Agent] = []

    async def build(
        tls: TlsFiles | None = None, rewrite: dict[str, str] | None = None, **profile: Any
    ) -> Upstream:
        """`rewrite`: put a reverse proxy in front that sets these headers on the way."""
        if not world.identities:
            world.add_leaf("web", "p256")
        emulator = Emulator(world.emulator_config(), clock=clock, controls=True)
        runner = web.AppRunner(emulator.app(), access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server if tls else None).start()
        port = runner.addresses[0][1]
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        reverse = None
        if rewrite is not None:
            reverse = LoopbackProxy(upstream=("127.0.0.1", port), set_headers=rewrite)
            proxies.append(reverse)
            url = await reverse.start()

        document = world.agent_document(url, **profile)
        agent = Agent(parse_config(document, world.folder / "a.yaml", os.environ),
                      clock=clock, rng=random.Random(7))
        agents.append(agent)
        await agent.start()
        return Upstream(emulator, agent, url, reverse)

    yield build
    for agent in agents:
        await agent.stop()
    for proxy in proxies:
        await proxy.stop()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def proxy() -> AsyncIterator[LoopbackProxy]:
    forward = LoopbackProxy()
    await forward.start()
    yield forward
    await forward.stop()


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Whatever this machine sets, the test decides the proxy variables."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                 "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


async def test_ca_bundle_trusts_a_private_ca(upstream, world, no_proxy_env) -> None:
    tls = tls_files(world.folder)

    served = await upstream(tls, ca_bundle=str(tls.ca_bundle))

    assert served.agent.sessions["web"].state is State.READY
    assert served.emulator.counters == {"success": 1}


async def test_without_ca_bundle_the_private_ca_is_refused(upstream, world, no_proxy_env) -> None:
    served = await upstream(tls_files(world.folder))

    session = served.agent.sessions["web"]
    assert session.state is State.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in session.last_error
    assert session.last_error.startswith(f"cannot reach {served.endpoint}/sessions: ")
    assert served.emulator.counters == {}


async def test_insecure_skips_verification_and_warns_at_every_start(
    upstream, world, no_proxy_env
) -> None:
    tls = tls_files(world.folder)

    with capture_logs() as events:
        first = await upstream(tls, insecure=True)
        await first.agent.stop()
        second = await upstream(tls, insecure=True)

    assert second.agent.sessions["web"].state is State.READY
    warnings = [e for e in events if e["event"] == "tls_verification_disabled"]
    assert [(w["profile"], w["log_level"]) for w in warnings] == [("web", "warning")] * 2
    assert warnings[0]["endpoint"] == first.endpoint


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ca_bundle": "/nonexistent/ca.pem"}, "/nonexistent/ca.pem: ca_bundle file not found"),
        ({"ca_bundle": "ca.pem", "insecure": True},
         "profiles.web.insecure: not used together with ca_bundle; drop one"),
        ({"proxy": "socks://x"},
         "profiles.web.proxy: expected a URL like http://proxy.example:3128, got 'socks://x'"),
        ({"insecure": "yes"}, "profiles.web.insecure: expected true or false, got 'yes'"),
    ],
)
async def test_bad_upstream_options_stop_the_start(upstream, world, options, message) -> None:
    with pytest.raises(ConfigError) as raised:
        await upstream(**options)

    assert str(raised.value).endswith(message)


async def test_a_ca_bundle_that_is_not_pem_stops_the_start(upstream, world) -> None:
    bogus = world.folder / "bogus.pem"
    bogus.write_text("not a certificate\n")

    with pytest.raises(ConfigError, match=r"bogus\.pem: ca_bundle is not a PEM file of CA"):
        await upstream(ca_bundle=str(bogus))


async def test_case_c12_create_session_through_an_https_proxy(
    upstream, world, proxy, no_proxy_env
) -> None:
    tls = tls_files(world.folder)
    no_proxy_env.setenv("HTTPS_PROXY", proxy.url)

    served = await upstream(tls, ca_bundle=str(tls.ca_bundle))

    assert served.agent.sessions["web"].state is State.READY
    assert proxy.connects == [served.endpoint.removeprefix("https://")]


async def test_case_c12_no_proxy_is_honoured(upstream, world, proxy, no_proxy_env) -> None:
    tls = tls_files(world.folder)
    no_proxy_env.setenv("HTTPS_PROXY", proxy.url)
    no_proxy_env.setenv("NO_PROXY", "127.0.0.1,localhost")

    served = await upstream(tls, ca_bundle=str(tls.ca_bundle))

    assert served.agent.sessions["web"].state is State.READY
    assert proxy.connects == []


async def test_case_c12_http_proxy_on_the_shared_client(upstream, proxy, no_proxy_env) -> None:
    """Without upstream options every profile shares one client that reads the proxy
    variables; a plain-HTTP endpoint goes through HTTP_PROXY in absolute form."""
    no_proxy_env.setenv("HTTP_PROXY", proxy.url)

    served = await upstream()

    assert served.agent.sessions["web"].state is State.READY
    assert [(seen.method, seen.target) for seen in proxy.forwarded] == [("POST", "/sessions")]
    assert f"SignedHeaders={SIGNED_WITH_CHAIN}," in proxy.forwarded[0].headers["authorization"]


async def test_credential_process_tls_flags(upstream, world, clock, proxy) -> None:
    """--no-verify-ssl skips verification; --with-proxy is needed for HTTPS_PROXY to apply,
    as with aws_signing_helper."""
    clock.set(datetime.now(UTC).replace(microsecond=0))  # the child signs by the real clock
    tls = tls_files(world.folder)
    served = await upstream(tls, ca_bundle=str(tls.ca_bundle))
    files = world.identities["web"]
    argv = [
        AGENT_CLI, "credential-process", "--endpoint", served.endpoint,
        "--certificate", str(files["certificate"]), "--private-key", str(files["private_key"]),
        "--intermediates", str(files["intermediates"]),
        "--trust-anchor-arn", world.anchor_arn, "--profile-arn", world.profile_arn,
        "--role-arn", "arn:aws:iam::111122223333:role/web",
    ]
    env = {**child_env(), "HTTPS_PROXY": proxy.url}

    verified = await run(argv, env)
    unverified = await run([*argv, "--no-verify-ssl"], env)
    proxied = await run([*argv, "--no-verify-ssl", "--with-proxy"], env)

    assert verified.code == 1 and "CERTIFICATE_VERIFY_FAILED" in verified.stderr
    assert unverified.ok and proxied.ok, unverified.stderr + proxied.stderr
    assert "tls_verification_disabled" in unverified.stderr
    assert proxy.connects == [served.endpoint.removeprefix("https://")]  # only --with-proxy


async def test_explicit_proxy_option_and_no_proxy(upstream, world, proxy, no_proxy_env) -> None:
    tls = tls_files(world.folder)
    options = {"ca_bundle": str(tls.ca_bundle), "proxy": proxy.url}

    via_proxy = await upstream(tls, **options)
    await via_proxy.agent.stop()
    no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
    direct = await upstream(tls, **options)

    assert via_proxy.agent.sessions["web"].state is State.READY
    assert direct.agent.sessions["web"].state is State.READY
    assert proxy.connects == [via_proxy.endpoint.removeprefix("https://")]


async def test_case_c12_reverse_proxy_rewriting_hop_by_hop_headers(
    upstream, no_proxy_env
) -> None:
    """A proxy that rewrites Connection and User-Agent and adds X-Forwarded-For: none of
    them is signed, so the emulator's strict verification still passes."""
    rewrite = {"User-Agent": "corporate-proxy/1.0", "X-Forwarded-For": "10.1.2.3"}

    served = await upstream(rewrite=rewrite)

    assert served.agent.sessions["web"].state is State.READY
    assert served.emulator.counters == {"success": 1}
    (seen,) = served.reverse_proxy.forwarded
    assert seen.headers["user-agent"] == "corporate-proxy/1.0"
    assert seen.headers["connection"] == "close"
    assert seen.headers["x-forwarded-for"] == "10.1.2.3"
    assert f"SignedHeaders={SIGNED_WITH_CHAIN}," in seen.headers["authorization"]


def us_gov_world(world: World) -> World:
    prefix = f"arn:aws-us-gov:rolesanywhere:us-gov-west-1:{ACCOUNT}"
    world.anchor_arn = f"{prefix}:trust-anchor/{uuid.uuid4()}"
    world.profile_arn = f"{prefix}:profile/{uuid.uuid4()}"
    return world


@pytest.mark.parametrize(
    ("region", "host"),
    [
        ("us-gov-west-1-fips", "https://rolesanywhere-fips.us-gov-west-1.amazonaws.com"),
        ("fips-us-gov-west-1", "https://rolesanywhere-fips.us-gov-west-1.amazonaws.com"),
        ("us-gov-west-1", "https://rolesanywhere.us-gov-west-1.amazonaws.com"),
    ],
)
def test_case_c11_fips_markers_pick_the_host_and_keep_the_scope_clean(
    world, region, host
) -> None:
    world = us_gov_world(world)
    world.add_leaf("web", "p256")
    document = world.agent_document("unused", region=region)
    del document["profiles"]["web"]["endpoint"]

    session = parse_config(document, world.folder / "a.yaml", os.environ).profiles["web"].session

    assert (session.region, session.endpoint) == ("us-gov-west-1", host)


@pytest.mark.parametrize("region", ["us-gov-west-1-fips", "fips-us-gov-west-1"])
async def test_case_c11_fips_region_end_to_end(upstream, world, region, no_proxy_env) -> None:
    """Through a recording proxy: the scope names the clean region, and the emulator, which
    checks the scope against the trust anchor's region, grants the session."""
    us_gov_world(world)

    served = await upstream(rewrite={}, region=region)

    assert served.agent.sessions["web"].state is State.READY
    assert served.emulator.counters == {"success": 1}
    (seen,) = served.reverse_proxy.forwarded
    assert "/us-gov-west-1/rolesanywhere/aws4_request, " in seen.headers["authorization"]


async def test_case_c11_an_unstripped_fips_region_would_be_refused(
    upstream, world, no_proxy_env
) -> None:
    """The check can fail: the same request signed with the marker left in the scope."""
    us_gov_world(world)
    served = await upstream(region="us-gov-west-1-fips")
    request = served.agent.sessions["web"].request
    identity = load_identity(served.agent.config.profiles["web"].identity, START)
    unstripped = SessionRequest(request.trust_anchor_arn, request.profile_arn,
                                request.role_arn, "us-gov-west-1-fips", request.endpoint)

    async with aiohttp.ClientSession() as http:
        with pytest.raises(AccessDenied) as refused:
            await RolesAnywhereClient(http).create_session(identity, unstripped, START)

    assert refused.value.service_message == (
        "Credential should be scoped to a valid region, not 'us-gov-west-1-fips'."
    )


async def test_role_session_name_end_to_end(stack_factory) -> None:
    stack = await stack_factory(
        profile={"accept_role_session_name": True},
        agent_extra={"role_session_name": "web-agent-01"},
        real_time=True,
    )

    outcome = await run(BOTOCORE, container_env(stack))

    assert outcome.ok, outcome.stderr
    assert outcome.arn == "arn:aws:sts::111122223333:assumed-role/web/web-agent-01"


async def test_role_session_name_refused_where_the_profile_does_not_accept_it(
    stack_factory,
) -> None:
    stack = await stack_factory(agent_extra={"role_session_name": "web-agent-01"})

    session = stack.agent.sessions["web"]
    assert session.state is State.UNAVAILABLE
    assert session.last_error == (
        "AccessDeniedException (403): Not authorized to set roleSessionName."
    )
