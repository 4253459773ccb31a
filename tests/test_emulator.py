"""The emulator, driven over real loopback sockets with requests signed by `signing`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import boto3
import pytest
import structlog
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from iam_rolesanywhere_session import IAMRolesAnywhereSigner

from rolesanywhere_agent import cli, pki
from rolesanywhere_agent.clock import FakeClock
from rolesanywhere_agent.credentials import format_expiration
from rolesanywhere_agent.emulator import (
    Emulator,
    EmulatorConfig,
    Fault,
    Profile,
    TrustAnchor,
    load_config,
    serve,
)
from rolesanywhere_agent.errors import ConfigError
from rolesanywhere_agent.identity import (
    ECDSA_ALGORITHM,
    RSA_ALGORITHM,
    FileKeySigner,
    IdentityFiles,
    load_identity,
)
from rolesanywhere_agent.signing import (
    AMZ_DATE_FORMAT,
    SignedRequest,
    amz_date,
    canonical_request,
    certificate_header,
    chain_header,
    sign_request,
    string_to_sign,
)

REGION = "eu-west-1"
ACCOUNT = "111122223333"
ANCHOR_ARN = f"arn:aws:rolesanywhere:{REGION}:{ACCOUNT}:trust-anchor/7c8d2f1e-anchor"
PROFILE_ARN = f"arn:aws:rolesanywhere:{REGION}:{ACCOUNT}:profile/3a9b4e5f-profile"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/web"
OTHER_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/admin"
UNTRUSTED = "Untrusted signing certificate"
ACCESS_DENIED = "AccessDeniedException"
VALIDATION = "ValidationException"
NOT_FOUND = "ResourceNotFoundException"


# ---------------------------------------------------------------------------------------------
# A throwaway PKI: a root, an intermediate under it, a foreign root, and four identities.


@dataclass(frozen=True)
class World:
    root: pki.Issued
    intermediate: pki.Issued
    foreign_root: pki.Issued
    folder: Path
    identities: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RawIdentity:
    """An identity built without load_identity, for leaves it rightly refuses to load."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    signer: FileKeySigner

    @property
    def serial(self) -> int:
        return self.certificate.serial_number


def load(folder: Path, leaf: pki.Issued, chain: Sequence[pki.Issued] = ()) -> Any:
    files = pki.write_identity(folder, leaf, list(chain))
    return load_identity(IdentityFiles(**files), datetime.now(UTC))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    folder = tmp_path_factory.mktemp("pki")
    root = pki.issue("emulator-root", ca=True, key_type="p256")
    intermediate = pki.issue("emulator-intermediate", issuer=root, ca=True, key_type="p256")
    foreign_root = pki.issue("foreign-root", ca=True, key_type="p256")
    made = World(root=root, intermediate=intermediate, foreign_root=foreign_root, folder=folder)

    leaves = {
        "rsa": (pki.issue("leaf-rsa", issuer=root, key_type="rsa2048"), []),
        "ec": (pki.issue("leaf-ec", issuer=root, key_type="p256"), []),
        "rsa-chain": (
            pki.issue("leaf-rsa-chain", issuer=intermediate, key_type="rsa2048"),
            [intermediate],
        ),
        "ec-chain": (
            pki.issue("leaf-ec-chain", issuer=intermediate, key_type="p384"),
            [intermediate],
        ),
    }
    for name, (leaf, chain) in leaves.items():
        made.identities[name] = load(folder / name, leaf, chain)
    return made


def make_config(
    world: World,
    *,
    anchor_enabled: bool = True,
    profile_enabled: bool = True,
    cap: int = 3600,
    accept_session_name: bool = False,
    crls: tuple[x509.CertificateRevocationList, ...] = (),
    roles: tuple[str, ...] = (ROLE_ARN,),
    anchor_certificates: tuple[x509.Certificate, ...] | None = None,
    extra_profiles: tuple[Profile, ...] = (),
) -> EmulatorConfig:
    anchor = TrustAnchor(
        arn=ANCHOR_ARN,
        certificates=anchor_certificates or (world.root.certificate,),
        enabled=anchor_enabled,
        crls=crls,
    )
    profile = Profile(
        arn=PROFILE_ARN,
        role_arns=roles,
        enabled=profile_enabled,
        duration_seconds=cap,
        accept_role_session_name=accept_session_name,
    )
    return EmulatorConfig(trust_anchors=(anchor,), profiles=(profile, *extra_profiles))


def make_crl(
    issuer: pki.Issued, serials: Sequence[int], *, signing_key: Any = None
) -> x509.CertificateRevocationList:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(now - timedelta(hours=1))
        .next_update(now + timedelta(days=1))
    )
    for serial in serials:
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - timedelta(minutes=30))
            .build()
        )
        builder = builder.add_revoked_certificate(revoked)
    return builder.sign(signing_key or issuer.key, hashes.SHA256())


# ---------------------------------------------------------------------------------------------
# Emulators, a client session, and signed requests.


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


StartEmulator = Callable[..., Awaitable[Emulator]]


@pytest.fixture
async def start_emulator(clock: FakeClock) -> AsyncIterator[StartEmulator]:
    started: list[Emulator] = []

    async def start(config: EmulatorConfig, *, controls: bool = False) -> Emulator:
        emulator = Emulator(config, clock=clock, controls=controls)
        await emulator.start()
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        await emulator.stop()


@pytest.fixture
async def emulator(start_emulator: StartEmulator, world: World) -> Emulator:
    return await start_emulator(make_config(world))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def session_body(**changes: Any) -> bytes:
    document: dict[str, Any] = {
        "durationSeconds": 3600,
        "profileArn": PROFILE_ARN,
        "roleArn": ROLE_ARN,
        "trustAnchorArn": ANCHOR_ARN,
    }
    document.update(changes)
    return json.dumps({k: v for k, v in document.items() if v is not None}).encode()


def arn_query() -> str:
    return urlencode(
        {"profileArn": PROFILE_ARN, "roleArn": ROLE_ARN, "trustAnchorArn": ANCHOR_ARN}
    )


def signed(
    identity: Any,
    base_url: str,
    now: datetime,
    *,
    body: bytes | None = None,
    query: str = "",
    region: str = REGION,
    signer: Any = None,
    headers: dict[str, str] | None = None,
) -> SignedRequest:
    """A request signed exactly as the agent signs it."""
    url = f"{base_url}/sessions" + (f"?{query}" if query else "")
    return sign_request(
        method="POST",
        url=url,
        headers={"Content-Type": "application/json", **(headers or {})},
        body=session_body() if body is None else body,
        certificate=identity.certificate,
        chain=identity.chain,
        signer=signer or identity.signer,
        region=region,
        now=now,
    )


def forge(
    identity: Any,
    base_url: str,
    now: datetime,
    *,
    body: bytes | None = None,
    algorithm: str | None = None,
    serial: str | None = None,
    scope_date: datetime | None = None,
    service: str = "rolesanywhere",
    terminator: str = "aws4_request",
    unsigned: Sequence[str] = (),
    drop: Sequence[str] = (),
    replace: dict[str, str] | None = None,
) -> SignedRequest:
    """A correctly signed request with one deliberate defect in what it claims."""
    body = session_body() if body is None else body
    url = f"{base_url}/sessions"
    date = amz_date(now)
    headers = {
        "content-type": "application/json",
        "host": urlsplit(url).netloc,
        "x-amz-date": date,
        "x-amz-x509": certificate_header(identity.certificate),
    }
    if identity.chain:
        headers["x-amz-x509-chain"] = chain_header(identity.chain)
    headers.update(replace or {})
    for name in drop:
        headers.pop(name)

    names = sorted(name for name in headers if name not in unsigned)
    scope = f"{(scope_date or now).strftime('%Y%m%d')}/{REGION}/{service}/{terminator}"
    request = canonical_request("POST", "/sessions", "", headers, names, body)
    name = algorithm or identity.signer.algorithm
    signature = identity.signer.sign(string_to_sign(name, date, scope, request).encode()).hex()
    headers["authorization"] = (
        f"{name} Credential={serial or identity.serial}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return SignedRequest(method="POST", url=url, headers=headers, body=body)


async def send(http: aiohttp.ClientSession, request: SignedRequest) -> Answer:
    async with http.post(request.url, headers=request.headers, data=request.body) as response:
        return Answer(response.status, dict(response.headers), await response.read())


def assert_refused(answer: Answer, status: int, error_type: str, message: str) -> None:
    assert (status, error_type) == (answer.status, answer.headers.get("X-Amzn-ErrorType"))
    assert {"__type": error_type, "message": message} == answer.json()


def assert_granted(answer: Answer, identity: Any, now: datetime, seconds: int = 3600) -> dict:
    assert answer.status == 201, answer.body
    document = answer.json()
    (item,) = document["credentialSet"]
    credentials = item["credentials"]
    session_name = format(identity.serial, "x")

    assert re.fullmatch(r"ASIA[A-Z0-9]{16}", credentials["accessKeyId"])
    assert len(credentials["secretAccessKey"]) == 40
    assert len(credentials["sessionToken"]) >= 300
    assert format_expiration(now + timedelta(seconds=seconds)) == credentials["expiration"]
    assert item["roleArn"] == ROLE_ARN
    assert (
        f"arn:aws:sts::{ACCOUNT}:assumed-role/web/{session_name}"
        == (item["assumedRoleUser"]["arn"])
    )
    assert re.fullmatch(
        rf"AROA[A-Z2-7]{{17}}:{session_name}", item["assumedRoleUser"]["assumedRoleId"]
    )
    assert identity.certificate.subject.rfc4514_string() == item["sourceIdentity"]
    assert document["subjectArn"].startswith(f"arn:aws:rolesanywhere:{REGION}:{ACCOUNT}:subject/")
    return credentials


# ---------------------------------------------------------------------------------------------
# The test helper itself: forge() without a defect is what the agent's signer produces.


def test_forge_without_defects_signs_like_the_agent(world: World) -> None:
    identity = world.identities["rsa-chain"]
    now = datetime.now(UTC)

    ours = signed(identity, "http://127.0.0.1:1", now)
    forged = forge(identity, "http://127.0.0.1:1", now)

    assert ours.headers["authorization"] == forged.headers["authorization"]


# ---------------------------------------------------------------------------------------------
# CreateSession: success.


@pytest.mark.parametrize("kind", ["rsa", "ec", "rsa-chain", "ec-chain"])
@pytest.mark.parametrize("arns_in", ["body", "query"])
async def test_grants_a_session(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    world: World,
    clock: FakeClock,
    kind: str,
    arns_in: str,
) -> None:
    identity = world.identities[kind]
    if arns_in == "body":
        request = signed(identity, emulator.url, clock.now())
    else:
        body = json.dumps({"durationSeconds": 3600}).encode()
        request = signed(identity, emulator.url, clock.now(), body=body, query=arn_query())

    answer = await send(http, request)

    credentials = assert_granted(answer, identity, clock.now())
    assert emulator.counters == {"success": 1}
    session = emulator.session(credentials["accessKeyId"])
    assert session is not None
    assert credentials["secretAccessKey"] == session.secret_access_key
    assert credentials["sessionToken"] == session.session_token


@pytest.mark.parametrize("kind", ["rsa-chain", "ec"])
async def test_grants_a_request_signed_by_an_independent_signer(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    world: World,
    clock: FakeClock,
    kind: str,
) -> None:
    """iam-rolesanywhere-session signs with the real clock, which the fake clock starts at."""
    folder = world.folder / kind
    chain = folder / "chain.pem"
    signer = IAMRolesAnywhereSigner(
        certificate=(folder / "cert.pem").read_bytes(),
        private_key=(folder / "key.pem").read_bytes(),
        certificate_chain=chain.read_bytes() if chain.exists() else None,
        region=REGION,
    )
    request = AWSRequest(method="POST", url=f"{emulator.url}/sessions", data=session_body())
    signer.add_auth(request)

    answer = await send(
        http, SignedRequest("POST", request.url, dict(request.headers.items()), request.body)
    )

    assert_granted(answer, world.identities[kind], clock.now())


async def test_every_issued_session_is_new(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    identity = world.identities["ec"]

    first = (await send(http, signed(identity, emulator.url, clock.now()))).json()
    second = (await send(http, signed(identity, emulator.url, clock.now()))).json()

    a, b = (doc["credentialSet"][0]["credentials"] for doc in (first, second))
    assert a["accessKeyId"] != b["accessKeyId"]
    assert a["secretAccessKey"] != b["secretAccessKey"]
    assert a["sessionToken"] != b["sessionToken"]


async def test_answers_carry_the_emulator_clock_in_the_date_header(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    clock.advance(90)
    granted = await send(http, signed(world.identities["rsa"], emulator.url, clock.now()))
    async with http.get(f"{emulator.url}/nowhere") as missing:
        missing_date = missing.headers["Date"]

    expected = format_datetime(clock.now(), usegmt=True)
    assert expected == granted.headers["Date"]
    assert (404, expected) == (missing.status, missing_date)


async def test_duration_defaults_to_an_hour(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    identity = world.identities["rsa"]
    body = session_body(durationSeconds=None)

    answer = await send(http, signed(identity, emulator.url, clock.now(), body=body))

    assert_granted(answer, identity, clock.now(), seconds=3600)


@pytest.mark.parametrize(("asked", "granted"), [(3600, 1800), (1800, 1800), (900, 900)])
async def test_grants_no_longer_than_the_profile_allows(
    start_emulator: StartEmulator,
    http: aiohttp.ClientSession,
    world: World,
    clock: FakeClock,
    asked: int,
    granted: int,
) -> None:
    emulator = await start_emulator(make_config(world, cap=1800))
    identity = world.identities["ec"]
    body = session_body(durationSeconds=asked)

    answer = await send(http, signed(identity, emulator.url, clock.now(), body=body))

    assert_granted(answer, identity, clock.now(), seconds=granted)


async def test_uses_the_role_session_name_when_the_profile_accepts_it(
    start_emulator: StartEmulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    emulator = await start_emulator(make_config(world, accept_session_name=True))
    body = session_body(roleSessionName="deploy-bot")

    answer = await send(http, signed(world.identities["ec"], emulator.url, clock.now(), body=body))

    item = answer.json()["credentialSet"][0]
    assert answer.status == 201
    assert f"arn:aws:sts::{ACCOUNT}:assumed-role/web/deploy-bot" == item["assumedRoleUser"]["arn"]


async def test_accepts_a_date_exactly_five_minutes_off(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    identity = world.identities["rsa"]
    early = signed(identity, emulator.url, clock.now() - timedelta(minutes=5))
    late = signed(identity, emulator.url, clock.now() + timedelta(minutes=5))

    answers = [await send(http, early), await send(http, late)]

    assert [answer.status for answer in answers] == [201, 201]


async def test_ignores_a_crl_not_signed_by_the_issuer(
    start_emulator: StartEmulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    identity = world.identities["rsa"]
    impostor_key = ec.generate_private_key(ec.SECP256R1())
    crl = make_crl(world.root, [identity.serial], signing_key=impostor_key)
    emulator = await start_emulator(make_config(world, crls=(crl,)))

    answer = await send(http, signed(identity, emulator.url, clock.now()))

    assert answer.status == 201


# ---------------------------------------------------------------------------------------------
# CreateSession: refusals of the signature and its headers (403 AccessDeniedException).


async def test_refuses_a_request_without_authorization(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    request = signed(world.identities["rsa"], emulator.url, clock.now())
    del request.headers["authorization"]

    answer = await send(http, request)

    assert_refused(answer, 403, ACCESS_DENIED, "Missing Authorization header")
    assert emulator.counters == {ACCESS_DENIED: 1}


@pytest.mark.parametrize(
    "value",
    [
        "AWS4-X509-RSA-SHA256 Credential=1/20260101/eu-west-1/rolesanywhere/aws4_request",
        "AWS4-X509-RSA-SHA256 Credential=1/2/3, SignedHeaders=host, Signature=ab",
        "AWS4-X509-RSA-SHA256 Credential=1/a/b/c/d, SignedHeaders=host, Signature=XYZ",
    ],
)
async def test_refuses_a_malformed_authorization_header(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock, value: str
) -> None:
    request = signed(world.identities["rsa"], emulator.url, clock.now())
    request.headers["authorization"] = value

    answer = await send(http, request)

    assert_refused(answer, 403, ACCESS_DENIED, "Malformed Authorization header")


async def test_refuses_an_unknown_algorithm(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    request = forge(
        world.identities["rsa"], emulator.url, clock.now(), algorithm="AWS4-HMAC-SHA256"
    )

    answer = await send(http, request)

    assert_refused(answer, 403, ACCESS_DENIED, "Unsupported signing algorithm AWS4-HMAC-SHA256")


@pytest.mark.parametrize(
    ("kind", "claimed", "key"), [("ec", RSA_ALGORITHM, "EC"), ("rsa", ECDSA_ALGORITHM, "RSA")]
)
async def test_refuses_an_algorithm_that_does_not_match_the_key(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    world: World,
    clock: FakeClock,
    kind: str,
    claimed: str,
    key: str,
) -> None:
    request = forge(world.identities[kind], emulator.url, clock.now(), algorithm=claimed)

    answer = await send(http, request)

    message = f"Signing algorithm {claimed} does not match the certificate's {key} key"
    assert_refused(answer, 403, ACCESS_DENIED, message)


async def test_refuses_a_request_without_the_certificate_header(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    request = forge(world.identities["rsa"], emulator.url, clock.now(), drop=["x-amz-x509"])

    answer = await send(http, request)

    assert_refused(answer, 403, ACCESS_DENIED, "Missing X-Amz-X509 header")


async def test_refuses_a_malformed_certificate_header(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    replace = {"x-amz-x509": "bm90IGEgY2VydGlmaWNhdGU="}
    request = forge(world.identities["rsa"], emulator.url, clock.now(), replace=replace)

    answer = await send(http, request)

    assert_refused(answer, 403, ACCESS_DENIED, "Malformed X-Amz-X509 header")


async def test_refuses_a_request_without_x_amz_date(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    request = forge(world.identities["rsa"], emulator.url, clock.now(), drop=["x-amz-date"])

    answer = await send(http, request)

    assert_refused(answer, 403, ACCESS_DENIED, "Missing X-Amz-Date header")


async def test_refuses_a_malformed_x_amz_date(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    replace = {"x-amz-date": clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")}
    request = forge(world.identities["rsa"], emulator.url, clock.now(), replace=replace)

    answer = await send(http, request)

    assert_refused(
        answer, 403, ACCESS_DENIED, "X-Amz-Date must be in the form YYYYMMDD'T'HHMMSS'Z'"
    )


async def test_refuses_a_signature_older_than_five_minutes(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    signed_at = clock.now() - timedelta(minutes=5, seconds=1)
    request = signed(world.identities["rsa"], emulator.url, signed_at)

    answer = await send(http, request)

    now, stamp = clock.now(), signed_at.strftime(AMZ_DATE_FORMAT)
    limit = (now - timedelta(minutes=5)).strftime(AMZ_DATE_FORMAT)
    message = (
        f"Signature expired: {stamp} is now earlier than {limit} "
        f"({now.strftime(AMZ_DATE_FORMAT)} - 5 min.)"
    )
    assert_refused(answer, 403, ACCESS_DENIED, message)


async def test_refuses_a_signature_from_more_than_five_minutes_ahead(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    signed_at = clock.now() + timedelta(minutes=5, seconds=1)
    request = signed(world.identities["ec"], emulator.url, signed_at)

    answer = await send(http, request)

    now, stamp = clock.now(), signed_at.strftime(AMZ_DATE_FORMAT)
    limit = (now + timedelta(minutes=5)).strftime(AMZ_DATE_FORMAT)
    message = (
        f"Signature not yet current: {stamp} is still later than {limit} "
        f"({now.strftime(AMZ_DATE_FORMAT)} + 5 min.)"
    )
    assert_refused(answer, 403, ACCESS_DENIED, message)


async def test_refuses_a_scope_date_other_than_the_request_date(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    yesterday = clock.now() - timedelta(days=1)
    request = forge(world.identities["rsa"], emulator.url, clock.now(), scope_date=yesterday)

    answer = await send(http, request)

    date = amz_date(clock.now())
    message = (
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from "
        f"HTTP: '{yesterday.strftime('%Y%m%d')}' != '{date[:8]}', from '{date}'."
    )
    assert_refused(answer, 403, ACCESS_DENIED, message)


async def test_refuses_a_scope_region_other_than_the_anchor_region(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    request = signed(world.identities["rsa"], emulator.url, clock.now(), region="us-east-1")

    answer = await send(http, request)

    message = "Credential should be scoped to a valid region, not 'us-east-1'."
    assert_refused(answer, 403, ACCESS_DENIED, message)


async def test_refuses_a_scope_for_another_service(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    request = forge(world.identities["rsa"], emulator.url, clock.now(), service="sts")

    answer = await send(http, request)

    message = "Credential should be scoped to correct service: 'rolesanywhere'."
    assert_refused(answer, 403, ACCESS_DENIED, message)


async def test_refuses_a_scope_with_a_wrong_terminator(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    request = forge(world.identities["rsa"], emulator.url, clock.now(), terminator="aws4_req")

    answer = await send(http, request)

    message = (
        "Credential should be scoped with a valid terminator: 'aws4_request', not 'aws4_req'."
    )
    assert_refused(answer, 403, ACCESS_DENIED, message)


@pytest.mark.parametrize("spelling", ["other", "hex"])
async def test_refuses_a_credential_serial_other_than_the_leaf_serial(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock, spelling: str
) -> None:
    identity = world.identities["rsa"]
    serial = str(identity.serial + 1) if spelling == "other" else format(identity.serial, "x")
    request = forge(identity, emulator.url, clock.now(), serial=serial)

    answer = await send(http, request)

    message = "Credential serial number does not match the X-Amz-X509 certificate"
    assert_refused(answer, 403, ACCESS_DENIED, message)


@pytest.mark.parametrize("header", ["host", "x-amz-date", "x-amz-x509", "x-amz-x509-chain"])
async def test_refuses_a_required_header_left_unsigned(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock, header: str
) -> None:
    request = forge(world.identities["ec-chain"], emulator.url, clock.now(), unsigned=[header])

    answer = await send(http, request)

    assert_refused(answer, 403, ACCESS_DENIED, f"SignedHeaders must include {header}")


async def test_refuses_an_empty_chain_header(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    headers = {"X-Amz-X509-Chain": ""}
    request = signed(world.identities["rsa"], emulator.url, clock.now(), headers=headers)
    assert "x-amz-x509-chain" in request.headers["authorization"]

    answer = await send(http, request)

    assert_refused(answer, 403, ACCESS_DENIED, "Empty X-Amz-X509-Chain header")


async def test_refuses_a_malformed_chain_header(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    identity = world.identities["rsa-chain"]
    replace = {"x-amz-x509-chain": chain_header(identity.chain) + ",%%%"}
    request = forge(identity, emulator.url, clock.now(), replace=replace)

    answer = await send(http, request)

    assert_refused(answer, 403, ACCESS_DENIED, "Malformed X-Amz-X509-Chain header")


@pytest.mark.parametrize("kind", ["rsa", "ec"])
async def test_refuses_a_body_changed_after_signing(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock, kind: str
) -> None:
    request = signed(world.identities[kind], emulator.url, clock.now())
    tampered = SignedRequest(
        request.method, request.url, request.headers, session_body(durationSeconds=7200)
    )

    answer = await send(http, tampered)

    assert_refused(answer, 403, ACCESS_DENIED, "Invalid signature")


async def test_refuses_query_arns_changed_after_signing(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    body = json.dumps({"durationSeconds": 3600}).encode()
    query = arn_query()
    request = signed(world.identities["ec"], emulator.url, clock.now(), body=body, query=query)
    moved = request.url.replace("role%2Fweb", "role%2Fadmin")
    assert moved != request.url

    answer = await send(http, SignedRequest("POST", moved, request.headers, body))

    assert_refused(answer, 403, ACCESS_DENIED, "Invalid signature")


async def test_refuses_a_signature_made_by_another_key(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    identity = world.identities["ec"]
    other_signer = world.identities["ec-chain"].signer
    request = signed(identity, emulator.url, clock.now(), signer=other_signer)

    answer = await send(http, request)

    assert_refused(answer, 403, ACCESS_DENIED, "Invalid signature")


# ---------------------------------------------------------------------------------------------
# CreateSession: refusals of the certificate path (403 AccessDeniedException).


async def test_refuses_a_leaf_from_another_ca(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock, tmp_path: Path
) -> None:
    identity = load(tmp_path, pki.issue("stranger", issuer=world.foreign_root))

    answer = await send(http, signed(identity, emulator.url, clock.now()))

    assert_refused(answer, 403, ACCESS_DENIED, UNTRUSTED)


async def test_refuses_a_leaf_whose_intermediate_was_not_sent(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    identity = world.identities["ec-chain"]
    lone = RawIdentity(identity.certificate, (), identity.signer)

    answer = await send(http, signed(lone, emulator.url, clock.now()))

    assert_refused(answer, 403, ACCESS_DENIED, UNTRUSTED)


async def test_trusts_an_intermediate_anchor_without_a_chain(
    start_emulator: StartEmulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    anchor = (world.intermediate.certificate,)
    emulator = await start_emulator(make_config(world, anchor_certificates=anchor))
    identity = world.identities["ec-chain"]
    lone = RawIdentity(identity.certificate, (), identity.signer)

    answer = await send(http, signed(lone, emulator.url, clock.now()))

    assert answer.status == 201


async def test_refuses_a_leaf_that_expired(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock, tmp_path: Path
) -> None:
    identity = load(tmp_path, pki.issue("short-lived", issuer=world.root, days=1))
    clock.advance(2 * 86400)

    answer = await send(http, signed(identity, emulator.url, clock.now()))

    assert_refused(answer, 403, ACCESS_DENIED, UNTRUSTED)


async def test_refuses_a_chain_whose_intermediate_expired(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock, tmp_path: Path
) -> None:
    intermediate = pki.issue("short-ca", issuer=world.root, ca=True, days=1)
    leaf = pki.issue("leaf-under-short-ca", issuer=intermediate, days=10)
    identity = load(tmp_path, leaf, [intermediate])
    clock.advance(2 * 86400)

    answer = await send(http, signed(identity, emulator.url, clock.now()))

    assert_refused(answer, 403, ACCESS_DENIED, UNTRUSTED)


async def test_refuses_a_chain_through_a_certificate_that_is_not_a_ca(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock, tmp_path: Path
) -> None:
    not_ca = pki.issue("not-a-ca", issuer=world.root, ca=False)
    identity = load(tmp_path, pki.issue("leaf-of-not-ca", issuer=not_ca), [not_ca])
    assert len(identity.chain) == 1

    answer = await send(http, signed(identity, emulator.url, clock.now()))

    assert_refused(answer, 403, ACCESS_DENIED, UNTRUSTED)


async def test_refuses_a_ca_certificate_as_leaf(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    # load_identity rightly refuses a CA leaf, so this identity is assembled by hand.
    ca_leaf = pki.issue("ca-as-leaf", issuer=world.root, ca=True)
    identity = RawIdentity(ca_leaf.certificate, (), FileKeySigner(ca_leaf.key))

    answer = await send(http, signed(identity, emulator.url, clock.now()))

    assert_refused(answer, 403, ACCESS_DENIED, UNTRUSTED)


@pytest.mark.parametrize("revoked", ["leaf", "intermediate"])
async def test_refuses_a_revoked_certificate(
    start_emulator: StartEmulator,
    http: aiohttp.ClientSession,
    world: World,
    clock: FakeClock,
    revoked: str,
) -> None:
    identity = world.identities["rsa-chain"]
    if revoked == "leaf":
        crl = make_crl(world.intermediate, [identity.serial])
    else:
        crl = make_crl(world.root, [world.intermediate.certificate.serial_number])
    emulator = await start_emulator(make_config(world, crls=(crl,)))

    answer = await send(http, signed(identity, emulator.url, clock.now()))

    assert_refused(answer, 403, ACCESS_DENIED, "Certificate is revoked")


async def test_refuses_when_the_trust_anchor_is_disabled(
    start_emulator: StartEmulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    emulator = await start_emulator(make_config(world, anchor_enabled=False))

    answer = await send(http, signed(world.identities["rsa"], emulator.url, clock.now()))

    assert_refused(answer, 403, ACCESS_DENIED, "Trust anchor is disabled")


# ---------------------------------------------------------------------------------------------
# CreateSession: refusals about the profile, the role and the parameters.


async def test_refuses_when_the_profile_is_disabled(
    start_emulator: StartEmulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    emulator = await start_emulator(make_config(world, profile_enabled=False))

    answer = await send(http, signed(world.identities["rsa"], emulator.url, clock.now()))

    assert_refused(answer, 403, ACCESS_DENIED, "Profile is disabled")


async def test_refuses_a_role_the_profile_does_not_list(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    body = session_body(roleArn=OTHER_ROLE_ARN)

    answer = await send(
        http, signed(world.identities["rsa"], emulator.url, clock.now(), body=body)
    )

    message = f"Unable to assume role for arn {OTHER_ROLE_ARN}: not listed in the profile"
    assert_refused(answer, 403, ACCESS_DENIED, message)


async def test_refuses_a_session_name_the_profile_does_not_accept(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    body = session_body(roleSessionName="deploy-bot")

    answer = await send(
        http, signed(world.identities["rsa"], emulator.url, clock.now(), body=body)
    )

    assert_refused(answer, 403, ACCESS_DENIED, "Not authorized to set roleSessionName.")


async def test_refuses_an_unknown_trust_anchor(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    body = session_body(trustAnchorArn=ANCHOR_ARN.replace("7c8d2f1e", "0f0f0f0f"))

    answer = await send(
        http, signed(world.identities["rsa"], emulator.url, clock.now(), body=body)
    )

    assert_refused(answer, 404, NOT_FOUND, "Trust anchor not found")
    assert emulator.counters == {NOT_FOUND: 1}


async def test_refuses_an_unknown_profile(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    body = session_body(profileArn=PROFILE_ARN.replace("profile/", "profile/other-"))

    answer = await send(
        http, signed(world.identities["rsa"], emulator.url, clock.now(), body=body)
    )

    assert_refused(answer, 404, NOT_FOUND, "Profile not found")


async def test_refuses_a_profile_of_another_region(
    start_emulator: StartEmulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    elsewhere = PROFILE_ARN.replace(REGION, "us-east-1")
    profile = Profile(arn=elsewhere, role_arns=(ROLE_ARN,))
    emulator = await start_emulator(make_config(world, extra_profiles=(profile,)))
    body = session_body(profileArn=elsewhere)

    answer = await send(
        http, signed(world.identities["rsa"], emulator.url, clock.now(), body=body)
    )

    assert_refused(answer, 404, NOT_FOUND, "Profile not found")


def _constraint(name: str, shown: str, rule: str) -> str:
    return (
        f"1 validation error detected: Value {shown} at '{name}' failed to satisfy "
        f"constraint: {rule}"
    )


@pytest.mark.parametrize(
    ("duration", "message"),
    [
        (
            899,
            _constraint(
                "durationSeconds", "'899'", "Member must have value greater than or equal to 900"
            ),
        ),
        (
            43201,
            _constraint(
                "durationSeconds", "'43201'", "Member must have value less than or equal to 43200"
            ),
        ),
        ("3600", _constraint("durationSeconds", "'3600'", "Member must be an integer")),
        (3600.5, _constraint("durationSeconds", "'3600.5'", "Member must be an integer")),
        (True, _constraint("durationSeconds", "'True'", "Member must be an integer")),
    ],
)
async def test_refuses_a_duration_out_of_range(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    world: World,
    clock: FakeClock,
    duration: Any,
    message: str,
) -> None:
    body = session_body(durationSeconds=duration)

    answer = await send(http, signed(world.identities["ec"], emulator.url, clock.now(), body=body))

    assert_refused(answer, 400, VALIDATION, message)
    assert emulator.counters == {VALIDATION: 1}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"roleArn": None}, _constraint("roleArn", "null", "Member must not be null")),
        ({"profileArn": None}, _constraint("profileArn", "null", "Member must not be null")),
        (
            {"trustAnchorArn": "arn:aws:rolesanywhere:eu-west-1:111122223333:profile/x"},
            _constraint(
                "trustAnchorArn",
                "'arn:aws:rolesanywhere:eu-west-1:111122223333:profile/x'",
                "Member must be a valid ARN",
            ),
        ),
        ({"roleArn": 7}, _constraint("roleArn", "'7'", "Member must be a string")),
    ],
)
async def test_refuses_missing_or_malformed_arns(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    world: World,
    clock: FakeClock,
    changes: dict[str, Any],
    message: str,
) -> None:
    body = session_body(**changes)

    answer = await send(http, signed(world.identities["ec"], emulator.url, clock.now(), body=body))

    assert_refused(answer, 400, VALIDATION, message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "Request body is not valid JSON"),
        (b"[1, 2]", "Request body must be a JSON object"),
    ],
)
async def test_refuses_a_body_that_is_not_a_json_object(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    world: World,
    clock: FakeClock,
    body: bytes,
    message: str,
) -> None:
    answer = await send(http, signed(world.identities["ec"], emulator.url, clock.now(), body=body))

    assert_refused(answer, 400, VALIDATION, message)


async def test_refuses_arns_that_differ_between_query_and_body(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    body = session_body(profileArn=PROFILE_ARN + "-other")
    request = signed(
        world.identities["ec"], emulator.url, clock.now(), body=body, query=arn_query()
    )

    answer = await send(http, request)

    message = "profileArn differs between the query string and the body"
    assert_refused(answer, 400, VALIDATION, message)


async def test_refuses_a_malformed_session_name(
    start_emulator: StartEmulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    emulator = await start_emulator(make_config(world, accept_session_name=True))
    body = session_body(roleSessionName="has space")

    answer = await send(http, signed(world.identities["ec"], emulator.url, clock.now(), body=body))

    rule = r"Member must satisfy regular expression pattern: [\w+=,.@-]{2,64}"
    assert_refused(answer, 400, VALIDATION, _constraint("roleSessionName", "'has space'", rule))


# ---------------------------------------------------------------------------------------------
# Faults, in-process and over HTTP.


async def test_an_error_fault_answers_for_its_times_then_clears(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    emulator.inject(Fault(status=503, error_type="ServiceUnavailable", message="busy", times=2))
    identity = world.identities["rsa"]

    answers = [await send(http, signed(identity, emulator.url, clock.now())) for _ in range(3)]

    assert_refused(answers[0], 503, "ServiceUnavailable", "busy")
    assert_refused(answers[1], 503, "ServiceUnavailable", "busy")
    assert answers[2].status == 201
    assert emulator.counters == {"fault": 2, "success": 1}
    assert emulator.pending_faults == 0


@pytest.mark.parametrize(
    ("fault", "status", "error_type"),
    [
        (Fault(status=429), 429, "ThrottlingException"),
        (Fault(status=500), 500, "InternalServerException"),
        (Fault(error_type="AccessDeniedException"), 403, "AccessDeniedException"),
    ],
)
async def test_an_error_fault_fills_status_and_type_from_each_other(
    emulator: Emulator,
    http: aiohttp.ClientSession,
    world: World,
    clock: FakeClock,
    fault: Fault,
    status: int,
    error_type: str,
) -> None:
    emulator.inject(fault)

    answer = await send(http, signed(world.identities["rsa"], emulator.url, clock.now()))

    assert_refused(answer, status, error_type, "")


async def test_a_fault_without_times_stays_until_cleared(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    emulator.inject(Fault(status=500))
    identity = world.identities["rsa"]
    first = await send(http, signed(identity, emulator.url, clock.now()))
    second = await send(http, signed(identity, emulator.url, clock.now()))

    emulator.clear_faults()
    third = await send(http, signed(identity, emulator.url, clock.now()))

    assert [first.status, second.status, third.status] == [500, 500, 201]


async def test_a_dropped_connection_fault_gives_no_answer(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    emulator.inject(Fault(drop_connection=True, times=1))

    with pytest.raises(aiohttp.ServerDisconnectedError):
        await send(http, signed(world.identities["rsa"], emulator.url, clock.now()))

    assert emulator.counters == {"fault": 1}


async def test_a_body_fault_sends_the_raw_body(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    emulator.inject(Fault(body='{"credentialSet": [{"credent', times=1))

    answer = await send(http, signed(world.identities["rsa"], emulator.url, clock.now()))

    assert (answer.status, answer.body) == (201, b'{"credentialSet": [{"credent')


async def test_a_grant_seconds_fault_issues_a_short_session(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    emulator.inject(Fault(grant_seconds=120, times=1))
    identity = world.identities["ec"]

    answer = await send(http, signed(identity, emulator.url, clock.now()))

    credentials = assert_granted(answer, identity, clock.now(), seconds=120)
    session = emulator.session(credentials["accessKeyId"])
    assert session is not None and clock.now() + timedelta(seconds=120) == session.expiration
    assert emulator.counters == {"success": 1}


@pytest.mark.parametrize("override", ["", "2001-01-01T00:00:00Z"])
async def test_an_expiration_override_fault_replaces_the_expiration(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock, override: str
) -> None:
    emulator.inject(Fault(expiration_override=override, times=1))

    answer = await send(http, signed(world.identities["ec"], emulator.url, clock.now()))

    assert answer.status == 201
    assert override == answer.json()["credentialSet"][0]["credentials"]["expiration"]
    assert emulator.counters == {"fault": 1}


async def test_an_empty_credential_set_fault(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    emulator.inject(Fault(empty_credential_set=True, times=1))

    answer = await send(http, signed(world.identities["ec"], emulator.url, clock.now()))

    assert (answer.status, answer.json()["credentialSet"]) == (201, [])


async def test_a_shaping_fault_does_not_hide_a_refusal(
    start_emulator: StartEmulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    emulator = await start_emulator(make_config(world, anchor_enabled=False))
    emulator.inject(Fault(empty_credential_set=True, times=1))

    answer = await send(http, signed(world.identities["ec"], emulator.url, clock.now()))

    assert_refused(answer, 403, ACCESS_DENIED, "Trust anchor is disabled")


async def test_a_delay_fault_holds_the_answer_back(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    emulator.inject(Fault(delay=0.3, times=1))
    loop = asyncio.get_running_loop()
    started = loop.time()

    answer = await send(http, signed(world.identities["rsa"], emulator.url, clock.now()))

    assert loop.time() - started >= 0.3
    assert answer.status == 201


async def test_http_controls_inject_count_shift_and_clear(
    start_emulator: StartEmulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    emulator = await start_emulator(make_config(world), controls=True)
    controls = f"{emulator.url}/_emulator"
    identity = world.identities["rsa"]

    async with http.post(f"{controls}/faults", json={"status": 429, "times": 1}) as response:
        assert (response.status, await response.json()) == (201, {"faults": 1})
    throttled = await send(http, signed(identity, emulator.url, clock.now()))
    async with http.post(f"{controls}/faults", json={"status": 500}) as response:
        assert response.status == 201
    async with http.delete(f"{controls}/faults") as response:
        assert (response.status, await response.json()) == (200, {"faults": 0})
    granted = await send(http, signed(identity, emulator.url, clock.now()))
    async with http.get(f"{controls}/counters") as response:
        counters = await response.json()
    async with http.post(f"{controls}/clock", json={"shift_seconds": 120}) as response:
        shifted = await response.json()
        shifted_date = response.headers["Date"]

    assert_refused(throttled, 429, "ThrottlingException", "")
    assert granted.status == 201
    assert counters == {"create_session": {"fault": 1, "success": 1}, "sts": {}}
    later = clock.now() + timedelta(seconds=120)
    assert {"now": format_expiration(later)} == shifted
    assert format_datetime(later, usegmt=True) == shifted_date


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"colour": "red"}, "bad fault: unknown field 'colour'"),
        ({"status": "503"}, "bad fault: field 'status' has the wrong type"),
        ({"status": 99}, "bad fault: status must be an HTTP status from 200 to 599"),
        ({"times": 0}, "bad fault: times must be positive, or None for until cleared"),
        ([1], "bad fault: expected a JSON object"),
    ],
)
async def test_http_controls_refuse_a_bad_fault(
    start_emulator: StartEmulator,
    http: aiohttp.ClientSession,
    world: World,
    document: Any,
    message: str,
) -> None:
    emulator = await start_emulator(make_config(world), controls=True)

    async with http.post(f"{emulator.url}/_emulator/faults", json=document) as response:
        answer = (response.status, await response.json())

    assert (400, {"message": message}) == answer
    assert emulator.pending_faults == 0


async def test_http_controls_are_absent_unless_enabled(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{emulator.url}/_emulator/faults", json={"status": 500}) as response:
        status = response.status

    assert status == 404
    assert emulator.pending_faults == 0


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "example.invalid"])
async def test_controls_refuse_a_host_that_is_not_loopback(world: World, host: str) -> None:
    emulator = Emulator(make_config(world), controls=True)

    with pytest.raises(ConfigError) as raised:
        await emulator.start(host=host)

    assert f"emulator controls need a loopback host, not {host!r}" == str(raised.value)
    assert emulator.url is None


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback on this host")
async def test_listens_on_ipv6_loopback(world: World, http: aiohttp.ClientSession) -> None:
    emulator = Emulator(make_config(world), controls=True)
    try:
        url = await emulator.start(host="::1")
        async with http.get(f"{url}/_emulator/counters") as response:
            status = response.status
    finally:
        await emulator.stop()

    assert url.startswith("http://[::1]:")
    assert status == 200


# ---------------------------------------------------------------------------------------------
# STS GetCallerIdentity, called by a real botocore client with the issued credentials.


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_") or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")


async def issue(
    http: aiohttp.ClientSession, emulator: Emulator, identity: Any, now: datetime
) -> dict:
    answer = await send(http, signed(identity, emulator.url, now))
    assert answer.status == 201
    return answer.json()["credentialSet"][0]["credentials"]


def caller_identity(url: str, key: str, secret: str, token: str) -> dict[str, Any]:
    client = boto3.session.Session().client(
        "sts",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    return client.get_caller_identity()


async def sts_error(url: str, key: str, secret: str, token: str) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as raised:
        await asyncio.to_thread(caller_identity, url, key, secret, token)
    response = raised.value.response
    status = response["ResponseMetadata"]["HTTPStatusCode"]
    return status, response["Error"]["Code"], response["Error"]["Message"]


async def test_sts_knows_the_issued_credentials(
    aws_env: None, emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    identity = world.identities["ec-chain"]
    creds = await issue(http, emulator, identity, clock.now())

    reply = await asyncio.to_thread(
        caller_identity,
        emulator.url,
        creds["accessKeyId"],
        creds["secretAccessKey"],
        creds["sessionToken"],
    )

    session_name = format(identity.serial, "x")
    assert f"arn:aws:sts::{ACCOUNT}:assumed-role/web/{session_name}" == reply["Arn"]
    assert re.fullmatch(rf"AROA[A-Z2-7]{{17}}:{session_name}", reply["UserId"])
    assert reply["Account"] == ACCOUNT
    assert emulator.sts_counters == {"success": 1}
    assert emulator.sts_calls == 1


async def test_sts_accepts_a_signed_get(
    emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    creds = await issue(http, emulator, world.identities["rsa"], clock.now())
    url = f"{emulator.url}/?Action=GetCallerIdentity&Version=2011-06-15"
    request = AWSRequest(method="GET", url=url)
    boto_creds = BotoCredentials(
        creds["accessKeyId"], creds["secretAccessKey"], creds["sessionToken"]
    )
    SigV4Auth(boto_creds, "sts", REGION).add_auth(request)

    async with http.get(url, headers=dict(request.headers.items())) as response:
        status, text = response.status, await response.text()
        content_type = response.headers["Content-Type"]

    assert (status, content_type.split(";")[0]) == (200, "text/xml")
    assert f"<Account>{ACCOUNT}</Account>" in text


async def test_sts_refuses_a_wrong_secret(
    aws_env: None, emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    creds = await issue(http, emulator, world.identities["rsa"], clock.now())
    wrong = creds["secretAccessKey"][:-1] + ("A" if creds["secretAccessKey"][-1] != "A" else "B")

    error = await sts_error(emulator.url, creds["accessKeyId"], wrong, creds["sessionToken"])

    message = (
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method. "
        "Consult the service documentation for details."
    )
    assert (403, "SignatureDoesNotMatch", message) == error
    assert emulator.sts_counters == {"SignatureDoesNotMatch": 1}


async def test_sts_refuses_a_wrong_session_token(
    aws_env: None, emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    first = await issue(http, emulator, world.identities["rsa"], clock.now())
    second = await issue(http, emulator, world.identities["rsa"], clock.now())

    error = await sts_error(
        emulator.url, first["accessKeyId"], first["secretAccessKey"], second["sessionToken"]
    )

    message = "The security token included in the request is invalid."
    assert (403, "InvalidClientTokenId", message) == error


async def test_sts_refuses_an_unknown_access_key(
    aws_env: None, emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    creds = await issue(http, emulator, world.identities["rsa"], clock.now())

    error = await sts_error(
        emulator.url, "ASIAUNKNOWNKEY000000", creds["secretAccessKey"], creds["sessionToken"]
    )

    message = "The security token included in the request is invalid."
    assert (403, "InvalidClientTokenId", message) == error


async def test_sts_refuses_expired_credentials(
    aws_env: None, emulator: Emulator, http: aiohttp.ClientSession, world: World, clock: FakeClock
) -> None:
    creds = await issue(http, emulator, world.identities["rsa"], clock.now())
    emulator.shift_clock(3600)

    error = await sts_error(
        emulator.url, creds["accessKeyId"], creds["secretAccessKey"], creds["sessionToken"]
    )

    message = "The security token included in the request is expired"
    assert (403, "ExpiredToken", message) == error
    assert emulator.sts_counters == {"ExpiredToken": 1}


async def test_sts_refuses_an_unsigned_call(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    body = "Action=GetCallerIdentity&Version=2011-06-15"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}

    async with http.post(emulator.url + "/", data=body, headers=headers) as response:
        status, text = response.status, await response.text()

    assert status == 403
    assert "<Code>MissingAuthenticationToken</Code>" in text
    assert "<Type>Sender</Type>" in text


# ---------------------------------------------------------------------------------------------
# The YAML configuration.


def write_pem(path: Path, *items: Any) -> Path:
    data = b"".join(item.public_bytes(serialization.Encoding.PEM) for item in items)
    return pki.write(path, data)


def test_loads_a_config_file(world: World, tmp_path: Path) -> None:
    write_pem(tmp_path / "ca.pem", world.root.certificate, world.intermediate.certificate)
    crl = make_crl(world.root, [5])
    write_pem(tmp_path / "root.crl.pem", crl)
    (tmp_path / "emulator.yaml").write_text(
        f"""
account_id: "{ACCOUNT}"
trust_anchors:
  - arn: {ANCHOR_ARN}
    certificates: [ca.pem]
    crls: [root.crl.pem]
  - arn: {ANCHOR_ARN}-off
    certificates: ca.pem
    enabled: false
profiles:
  - arn: {PROFILE_ARN}
    role_arns: [{ROLE_ARN}, {OTHER_ROLE_ARN}]
    duration_seconds: 1800
    accept_role_session_name: true
"""
    )

    config = load_config(tmp_path / "emulator.yaml")

    certificates = (world.root.certificate, world.intermediate.certificate)
    expected = EmulatorConfig(
        trust_anchors=(
            TrustAnchor(arn=ANCHOR_ARN, certificates=certificates, crls=(crl,)),
            TrustAnchor(arn=f"{ANCHOR_ARN}-off", certificates=certificates, enabled=False),
        ),
        profiles=(
            Profile(
                arn=PROFILE_ARN,
                role_arns=(ROLE_ARN, OTHER_ROLE_ARN),
                duration_seconds=1800,
                accept_role_session_name=True,
            ),
        ),
        account_id=ACCOUNT,
    )
    assert expected == config


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- a list", "(top level): expected a mapping"),
        (
            "colour: red",
            "colour: unknown key; expected one of account_id, profiles, trust_anchors",
        ),
        ("account_id: 12345", "account_id: expected a 12-digit account id as a quoted string"),
        ("trust_anchors: {}", "trust_anchors: expected a list"),
        (
            "trust_anchors: [{arn: 'arn:aws:iam::111122223333:role/x', certificates: [ca.pem]}]",
            "trust_anchors[0].arn: expected arn:aws:rolesanywhere:REGION:ACCOUNT:trust-anchor/ID",
        ),
        (
            f"trust_anchors: [{{arn: '{ANCHOR_ARN}', certificates: []}}]",
            "trust_anchors[0].certificates: expected a list of PEM file paths",
        ),
        (
            f"trust_anchors: [{{arn: '{ANCHOR_ARN}', certificates: [leaf.pem]}}]",
            "trust_anchors[0].certificates[0]: "
            "{folder}/leaf.pem holds a certificate that is not a CA",
        ),
        (
            f"trust_anchors: [{{arn: '{ANCHOR_ARN}', certificates: [ca.pem], crls: [ca.pem]}}]",
            "trust_anchors[0].crls[0]: "
            "{folder}/ca.pem is not a PEM or DER certificate revocation list",
        ),
        (
            f"trust_anchors: [{{arn: '{ANCHOR_ARN}', certificates: [gone.pem]}}]",
            "trust_anchors[0].certificates[0]: {folder}/gone.pem: file not found",
        ),
        (
            f"trust_anchors: [{{arn: '{ANCHOR_ARN}', certificates: [ca.pem], enabled: 'no'}}]",
            "trust_anchors[0].enabled: expected true or false",
        ),
        (
            f"profiles: [{{arn: '{PROFILE_ARN}', role_arns: []}}]",
            "profiles[0].role_arns: expected a non-empty list of role ARNs",
        ),
        (
            f"profiles: [{{arn: '{PROFILE_ARN}', role_arns: ['arn:aws:iam::{ACCOUNT}:user/x']}}]",
            "profiles[0].role_arns[0]: expected arn:aws:iam::ACCOUNT:role/NAME",
        ),
        (
            f"profiles: [{{arn: '{PROFILE_ARN}', role_arns: ['{ROLE_ARN}'],"
            " duration_seconds: 60}]",
            "profiles[0].duration_seconds: expected an integer from 900 to 43200",
        ),
        (
            f"profiles: [{{arn: '{PROFILE_ARN}', role_arns: ['{ROLE_ARN}']}},"
            f" {{arn: '{PROFILE_ARN}', role_arns: ['{ROLE_ARN}']}}]",
            f"profiles[1].arn: duplicate ARN {PROFILE_ARN}",
        ),
        ("profiles: [{arn: [}", "not valid YAML at line 1"),
    ],
)
def test_config_errors_name_the_file_and_key(
    world: World, tmp_path: Path, text: str, problem: str
) -> None:
    write_pem(tmp_path / "ca.pem", world.root.certificate)
    write_pem(tmp_path / "leaf.pem", world.identities["rsa"].certificate)
    path = tmp_path / "emulator.yaml"
    path.write_text(text)

    with pytest.raises(ConfigError) as raised:
        load_config(path)

    assert f"{path}: {problem.format(folder=tmp_path)}" == str(raised.value)


def test_config_error_for_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "absent.yaml")

    assert f"{tmp_path / 'absent.yaml'}: file not found" == str(raised.value)


# ---------------------------------------------------------------------------------------------
# Running from a config file, as the CLI does.


async def test_serve_listens_until_cancelled(
    world: World, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    write_pem(tmp_path / "ca.pem", world.root.certificate)
    config = tmp_path / "emulator.yaml"
    config.write_text(f"trust_anchors: [{{arn: '{ANCHOR_ARN}', certificates: [ca.pem]}}]\n")

    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(serve(config, "127.0.0.1", 0, True))
        async with asyncio.timeout(10):
            while not any(entry["event"] == "emulator_listening" for entry in logs):
                await asyncio.sleep(0)
        (listening,) = [entry for entry in logs if entry["event"] == "emulator_listening"]
        async with http.get(f"{listening['url']}/_emulator/counters") as response:
            status = response.status
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert status == 200
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", listening["url"])
    assert listening["controls"] is True


def test_cli_command_reports_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["emulator", "--config", str(tmp_path / "absent.yaml")])

    assert code == 2
    expected = f"rolesanywhere-agent: {tmp_path / 'absent.yaml'}: file not found\n"
    assert expected == capsys.readouterr().err
