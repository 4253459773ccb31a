"""Cross-check signing.sign_request against an independent implementation.

The oracle is the PyPI package `iam-rolesanywhere-session` (a botocore SigV4Auth subclass).
Fed the same request at the same instant, its RSA Authorization header must be byte-identical
to ours; ECDSA signatures are randomised, so each side's signature is verified over the other
side's string to sign instead (DESIGN.md §4).
"""

from __future__ import annotations

import importlib
import re
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

import pytest
from botocore.awsrequest import AWSRequest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from iam_rolesanywhere_session import IAMRolesAnywhereSigner

from rolesanywhere_agent import pki
from rolesanywhere_agent.identity import FileKeySigner
from rolesanywhere_agent.rolesanywhere import SessionRequest
from rolesanywhere_agent.signing import (
    SignedRequest,
    canonical_request,
    sign_request,
    string_to_sign,
)

ORACLE_MODULE = importlib.import_module("iam_rolesanywhere_session.iam_rolesanywhere_session")
NOW = datetime(2026, 3, 1, 12, 34, 56, tzinfo=UTC)
REGION = "eu-west-1"
URL = f"https://rolesanywhere.{REGION}.amazonaws.com/sessions"
ANCHOR = f"arn:aws:rolesanywhere:{REGION}:111122223333:trust-anchor/a1b2c3d4"
PROFILE = f"arn:aws:rolesanywhere:{REGION}:111122223333:profile/e5f6a7b8"
ROLE = "arn:aws:iam::111122223333:role/web"
BODY = SessionRequest(ANCHOR, PROFILE, ROLE, REGION, URL, 3600, "web-01").body()
RSA_TYPES = ["rsa2048", "rsa3072", "rsa4096"]
EC_TYPES = ["p256", "p384", "p521"]
AUTHORIZATION = re.compile(
    r"(?P<algorithm>\S+) Credential=(?P<serial>\d+)/(?P<scope>\S+), "
    r"SignedHeaders=(?P<signed>\S+), Signature=(?P<signature>[0-9a-f]+)"
)


class PinnedDatetime(datetime):
    """The oracle reads `datetime.now(timezone.utc)` inside its module; this pins it."""

    @classmethod
    def now(cls, tz=None):  # noqa: ANN001, ANN206
        return NOW if tz is None else NOW.astimezone(tz)


class RecordingOracle(IAMRolesAnywhereSigner):
    """The oracle, keeping the canonical request and string to sign it computed."""

    recorded_request = ""
    recorded_string_to_sign = ""

    def canonical_request(self, request: AWSRequest) -> str:
        self.recorded_request = super().canonical_request(request)
        return self.recorded_request

    def string_to_sign(self, request: AWSRequest, canonical_request: str) -> str:
        self.recorded_string_to_sign = super().string_to_sign(request, canonical_request)
        return self.recorded_string_to_sign


@pytest.fixture(autouse=True)
def pinned_oracle(monkeypatch):
    monkeypatch.setattr(ORACLE_MODULE, "datetime", PinnedDatetime)
    # Keep botocore away from any real configuration or metadata service.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")


@pytest.fixture(scope="module")
def cas() -> tuple[pki.Issued, pki.Issued, pki.Issued]:
    """root ← policy CA ← issuing CA, every certificate signed with SHA-256."""
    root = pki.issue("Oracle Root", ca=True, key_type="p256")
    policy = pki.issue("Oracle Policy CA", issuer=root, ca=True, key_type="rsa2048")
    issuing = pki.issue("Oracle Issuing CA", issuer=policy, ca=True, key_type="p256")
    return root, policy, issuing


@pytest.fixture(scope="module")
def leaves(cas) -> dict[str, pki.Issued]:
    issuing = cas[2]
    return {
        key_type: pki.issue(f"{key_type}-host", issuer=issuing, key_type=key_type)
        for key_type in RSA_TYPES + EC_TYPES
    }


def oracle_sign(
    leaf: pki.Issued,
    chain: list[pki.Issued],
    url: str = URL,
    region: str = REGION,
    params: dict[str, str] | None = None,
) -> tuple[RecordingOracle, AWSRequest]:
    oracle = RecordingOracle(
        certificate=leaf.cert_pem,
        private_key=leaf.key_pem,
        certificate_chain=b"".join(c.cert_pem for c in chain) or None,
        region=region,
    )
    request = AWSRequest(method="POST", url=url, data=BODY, params=params or {})
    oracle.add_auth(request)
    return oracle, request


def our_sign(
    leaf: pki.Issued,
    chain: list[pki.Issued],
    content_type: str,
    url: str = URL,
    region: str = REGION,
) -> SignedRequest:
    return sign_request(
        method="POST",
        url=url,
        headers={"Content-Type": content_type},
        body=BODY,
        certificate=leaf.certificate,
        chain=[c.certificate for c in chain],
        signer=FileKeySigner(leaf.key),
        region=region,
        now=NOW,
    )


def parse(header: str) -> dict[str, str]:
    match = AUTHORIZATION.fullmatch(header)
    assert match is not None, header
    return match.groupdict()


def our_canonical_request(signed: SignedRequest, path: str = "/sessions", query: str = "") -> str:
    names = parse(signed.headers["authorization"])["signed"].split(";")
    return canonical_request("POST", path, query, signed.headers, names, BODY)


def our_string_to_sign(signed: SignedRequest, request: str) -> str:
    auth = parse(signed.headers["authorization"])
    return string_to_sign(auth["algorithm"], signed.headers["x-amz-date"], auth["scope"], request)


def assert_same_headers(request: AWSRequest, signed: SignedRequest, skip: tuple[str, ...] = ()):
    """Every header the oracle sends, we send with the same value, and no other."""
    theirs = {name.lower(): value for name, value in request.headers.items()}
    for name in skip:
        theirs.pop(name)
    ours = {name: value for name, value in signed.headers.items() if name not in skip}
    assert ours == theirs


def chain_for(cas, with_chain: bool) -> list[pki.Issued]:
    _, policy, issuing = cas
    return [issuing, policy] if with_chain else []


@pytest.mark.parametrize("with_chain", [False, True], ids=["no-chain", "chain"])
@pytest.mark.parametrize("key_type", RSA_TYPES)
def test_rsa_authorization_is_byte_identical(leaves, cas, key_type, with_chain):
    leaf, chain = leaves[key_type], chain_for(cas, with_chain)

    oracle, request = oracle_sign(leaf, chain)
    ours = our_sign(leaf, chain, request.headers["Content-Type"])

    assert request.headers["Content-Type"] == "application/x-amz-json-1.0"
    assert ours.headers["authorization"] == request.headers["Authorization"]
    assert_same_headers(request, ours)
    assert our_canonical_request(ours) == oracle.recorded_request
    auth = parse(ours.headers["authorization"])
    assert auth["algorithm"] == "AWS4-X509-RSA-SHA256"
    assert auth["serial"] == str(leaf.certificate.serial_number)
    assert auth["scope"] == f"20260301/{REGION}/rolesanywhere/aws4_request"
    expected = "content-type;host;x-amz-date;x-amz-x509"
    assert auth["signed"] == (expected + ";x-amz-x509-chain" if with_chain else expected)


@pytest.mark.parametrize("with_chain", [False, True], ids=["no-chain", "chain"])
@pytest.mark.parametrize("key_type", EC_TYPES)
def test_ecdsa_signatures_verify_over_each_others_string_to_sign(
    leaves, cas, key_type, with_chain
):
    leaf, chain = leaves[key_type], chain_for(cas, with_chain)
    public_key = leaf.key.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)

    oracle, request = oracle_sign(leaf, chain)
    ours = our_sign(leaf, chain, request.headers["Content-Type"])

    mine, theirs = parse(ours.headers["authorization"]), parse(request.headers["Authorization"])
    assert mine["algorithm"] == theirs["algorithm"] == "AWS4-X509-ECDSA-SHA256"
    assert mine["serial"] == theirs["serial"] == str(leaf.certificate.serial_number)
    assert mine["scope"] == theirs["scope"] == f"20260301/{REGION}/rolesanywhere/aws4_request"
    assert mine["signed"] == theirs["signed"]
    assert_same_headers(request, ours, skip=("authorization",))
    request_text = our_canonical_request(ours)
    assert request_text == oracle.recorded_request
    our_text = our_string_to_sign(ours, request_text)
    assert our_text == oracle.recorded_string_to_sign
    ecdsa = ec.ECDSA(hashes.SHA256())
    their_text = oracle.recorded_string_to_sign
    public_key.verify(bytes.fromhex(mine["signature"]), their_text.encode(), ecdsa)
    public_key.verify(bytes.fromhex(theirs["signature"]), our_text.encode(), ecdsa)


@pytest.mark.parametrize(
    ("url", "region"),
    [
        ("https://rolesanywhere-fips.us-gov-west-1.amazonaws.com/sessions", "us-gov-west-1"),
        ("https://rolesanywhere.cn-north-1.amazonaws.com.cn/sessions", "cn-north-1"),
        ("http://127.0.0.1:8443/sessions", REGION),
        ("https://[::1]:8443/sessions", REGION),
    ],
    ids=["fips", "china", "loopback-port", "ipv6-port"],
)
def test_other_hosts_and_regions_match(leaves, cas, url, region):
    leaf, chain = leaves["rsa2048"], chain_for(cas, True)

    oracle, request = oracle_sign(leaf, chain, url=url, region=region)
    ours = our_sign(leaf, chain, request.headers["Content-Type"], url=url, region=region)

    assert ours.headers["authorization"] == request.headers["Authorization"]
    assert ours.headers["host"] == url.split("/")[2]
    assert parse(ours.headers["authorization"])["scope"].split("/")[1] == region


QUERY = {"profileArn": PROFILE, "roleArn": ROLE, "trustAnchorArn": ANCHOR}


@pytest.mark.parametrize("where", ["in-url", "as-params"])
def test_arns_as_query_parameters_give_botocores_canonical_query(leaves, cas, where):
    """AWS's Go helper sends the three ARNs as the query; the canonical query must agree."""
    leaf, chain = leaves["rsa2048"], chain_for(cas, True)
    query = urlencode(QUERY, quote_via=quote, safe="-_.~")
    url = f"{URL}?{query}"

    if where == "in-url":
        oracle, request = oracle_sign(leaf, chain, url=url)
    else:
        oracle, request = oracle_sign(leaf, chain, params=QUERY)
    ours = our_sign(leaf, chain, request.headers["Content-Type"], url=url)

    canonical_query = oracle.recorded_request.split("\n")[2]
    assert canonical_query == (
        "profileArn=arn%3Aaws%3Arolesanywhere%3Aeu-west-1%3A111122223333%3Aprofile%2Fe5f6a7b8"
        "&roleArn=arn%3Aaws%3Aiam%3A%3A111122223333%3Arole%2Fweb"
        "&trustAnchorArn=arn%3Aaws%3Arolesanywhere%3Aeu-west-1%3A111122223333%3Atrust-anchor"
        "%2Fa1b2c3d4"
    )
    assert our_canonical_request(ours, query=query) == oracle.recorded_request
    assert ours.headers["authorization"] == request.headers["Authorization"]


def test_query_encoded_by_another_client_still_matches(leaves, cas):
    """Unreserved characters escaped needlessly (`%2D` for `-`) are normalised the same way."""
    leaf = leaves["rsa2048"]
    escaped = urlencode(QUERY, quote_via=quote, safe="").replace("-", "%2D")

    oracle, request = oracle_sign(leaf, [], params=QUERY)
    ours = our_sign(leaf, [], request.headers["Content-Type"], url=f"{URL}?{escaped}")

    assert ours.headers["authorization"] == request.headers["Authorization"]


def test_oracle_known_bug_names_the_algorithm_after_the_certificate_hash(cas):
    """The oracle says -SHA384 for a SHA-384-signed certificate; we always say SHA256.

    Everything else agrees, which also shows this test setup can tell the two apart.
    """
    leaf = pki.issue(
        "sha384-host", issuer=cas[1], key_type="rsa2048", hash_algorithm=hashes.SHA384()
    )

    oracle, request = oracle_sign(leaf, [])
    ours = our_sign(leaf, [], request.headers["Content-Type"])

    mine, theirs = parse(ours.headers["authorization"]), parse(request.headers["Authorization"])
    assert theirs["algorithm"] == "AWS4-X509-RSA-SHA384"
    assert mine["algorithm"] == "AWS4-X509-RSA-SHA256"
    assert mine["signature"] != theirs["signature"]
    assert our_canonical_request(ours) == oracle.recorded_request
    public_key = leaf.key.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    public_key.verify(
        bytes.fromhex(mine["signature"]),
        our_string_to_sign(ours, oracle.recorded_request).encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


def test_pinned_clock_reaches_the_oracle(leaves):
    _, request = oracle_sign(leaves["p256"], [])

    assert request.headers["X-Amz-Date"] == "20260301T123456Z"
