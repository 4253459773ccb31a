"""Identity loading: every certificate and key format, chain ordering, and file rotation.

The PKI is made at run time; files a real tool writes (openssl) are made with that tool.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from rolesanywhere_agent import pki
from rolesanywhere_agent.errors import IdentityError
from rolesanywhere_agent.identity import (
    ECDSA_ALGORITHM,
    RSA_ALGORITHM,
    Identity,
    IdentityFiles,
    IdentitySource,
    load_certificates,
    load_identity,
    load_pkcs12,
    order_chain,
)
from rolesanywhere_agent.signing import (
    canonical_request,
    credential_scope,
    sign_request,
    string_to_sign,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
START = NOW - timedelta(days=1)
URL = "https://rolesanywhere.eu-west-1.amazonaws.com/sessions"
BODY = b'{"durationSeconds":3600}'
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER
PKCS8 = serialization.PrivateFormat.PKCS8
TRADITIONAL = serialization.PrivateFormat.TraditionalOpenSSL
PLAIN = serialization.NoEncryption()


def issue(name: str, issuer: pki.Issued | None = None, **kwargs) -> pki.Issued:
    kwargs.setdefault("not_before", START)
    return pki.issue(name, issuer=issuer, **kwargs)


@dataclass(frozen=True)
class Tree:
    """root ← policy CA ← issuing CA ← leaves."""

    root: pki.Issued
    policy: pki.Issued
    issuing: pki.Issued
    leaf: pki.Issued
    rsa_leaf: pki.Issued


@pytest.fixture(scope="module")
def tree() -> Tree:
    root = issue("Example Root", ca=True, days=3650)
    policy = issue("Example Policy CA", root, ca=True, days=1800)
    issuing = issue("Example Issuing CA", policy, ca=True, days=900)
    leaf = issue("web-01", issuing, key_type="p256")
    rsa_leaf = issue("web-02", issuing, key_type="rsa2048")
    return Tree(root, policy, issuing, leaf, rsa_leaf)


def write(path: Path, data: bytes) -> Path:
    return pki.write(path, data)


def key_bytes(key, encoding=PEM, fmt=PKCS8, encryption=PLAIN) -> bytes:
    return key.private_bytes(encoding, fmt, encryption)


def cert_der(issued: pki.Issued) -> bytes:
    return issued.certificate.public_bytes(DER)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True)


def refusal(files: IdentityFiles) -> str:
    with pytest.raises(IdentityError) as caught:
        load_identity(files, NOW)
    message = str(caught.value)
    assert "\n" not in message
    return message


def pair(folder: Path, leaf: pki.Issued, key: bytes | None = None) -> IdentityFiles:
    return IdentityFiles(
        certificate=write(folder / "cert.pem", leaf.cert_pem),
        private_key=write(folder / "key.pem", leaf.key_pem if key is None else key),
    )


def same_key(loaded, issued: pki.Issued) -> bool:
    def spki(key) -> bytes:
        return key.public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    return spki(loaded) == spki(issued.key)


def authorization(signed_headers: dict[str, str]) -> dict[str, str]:
    match = re.fullmatch(
        r"(?P<algorithm>\S+) Credential=(?P<serial>\d+)/(?P<scope>\S+), "
        r"SignedHeaders=(?P<signed>\S+), Signature=(?P<signature>[0-9a-f]+)",
        signed_headers["authorization"],
    )
    assert match is not None, signed_headers["authorization"]
    return match.groupdict()


def sign(identity: Identity):
    return sign_request(
        method="POST",
        url=URL,
        headers={"Content-Type": "application/json"},
        body=BODY,
        certificate=identity.certificate,
        chain=identity.chain,
        signer=identity.signer,
        region="eu-west-1",
        now=NOW,
    )


def verify_signature(signed, public_key) -> dict[str, str]:
    """Rebuild the string to sign from the sent headers and check the signature over it."""
    auth = authorization(signed.headers)
    names = auth["signed"].split(";")
    request = canonical_request("POST", "/sessions", "", signed.headers, names, BODY)
    text = string_to_sign(auth["algorithm"], signed.headers["x-amz-date"], auth["scope"], request)
    signature = bytes.fromhex(auth["signature"])
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, text.encode(), padding.PKCS1v15(), hashes.SHA256())
    else:
        public_key.verify(signature, text.encode(), ec.ECDSA(hashes.SHA256()))
    return auth


def b64(issued: pki.Issued) -> str:
    return base64.b64encode(cert_der(issued)).decode()


# --- certificates -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "encoding"), [("cert.pem", DER), ("cert.der", PEM), ("cert.crt", DER)]
)
def test_certificate_format_is_sniffed_from_content(tmp_path, tree, name, encoding):
    path = write(tmp_path / name, tree.leaf.certificate.public_bytes(encoding))

    assert load_certificates(path) == [tree.leaf.certificate]


def test_case_c06a_der_certificate_and_der_pkcs8_key(tmp_path, tree):
    files = IdentityFiles(
        certificate=write(tmp_path / "cert.der", cert_der(tree.leaf)),
        private_key=write(tmp_path / "key.der", key_bytes(tree.leaf.key, DER)),
    )

    identity = load_identity(files, NOW)

    assert identity.certificate == tree.leaf.certificate
    assert identity.key_type == "EC P-256"
    assert identity.signer.algorithm == ECDSA_ALGORITHM


OPENSSL_PREAMBLE = (
    b"Bag Attributes\n"
    b"    localKeyID: 5A 0B 3C 11 9F 2E 44 01 \n"
    b"    friendlyName: web-01\n"
    b"subject=CN = web-01\n"
    b"\n"
    b"issuer=CN = Example Issuing CA\n"
    b"\n"
)


def test_case_c06b_pem_with_bag_attributes_and_subject_lines(tmp_path, tree):
    """`openssl pkcs12 -nodes` output: text before each block, in cert.crt and key.pem."""
    cert = OPENSSL_PREAMBLE + tree.leaf.cert_pem
    key = b"Bag Attributes\n    localKeyID: 5A 0B\nKey Attributes: <No Attributes>\n"
    files = IdentityFiles(
        certificate=write(tmp_path / "cert.crt", cert),
        private_key=write(tmp_path / "key.pem", key + tree.leaf.key_pem),
    )

    identity = load_identity(files, NOW)

    assert identity.certificate == tree.leaf.certificate
    assert identity.fingerprint == tree.leaf.certificate.fingerprint(hashes.SHA256()).hex()


def windows(data: bytes) -> bytes:
    return b"\xef\xbb\xbf" + data.replace(b"\n", b"\r\n") + b"\r\n\r\n\r\n"


def test_case_c04a_bom_crlf_and_blank_lines_load_to_the_same_fingerprint(tmp_path, tree):
    clean = load_identity(pair(tmp_path / "clean", tree.rsa_leaf), NOW)
    files = IdentityFiles(
        certificate=write(tmp_path / "win" / "cert.pem", windows(tree.rsa_leaf.cert_pem)),
        private_key=write(tmp_path / "win" / "key.pem", windows(tree.rsa_leaf.key_pem)),
        intermediates=write(tmp_path / "win" / "chain.pem", windows(tree.issuing.cert_pem)),
    )

    saved_by_windows = load_identity(files, NOW)

    first_line = files.certificate.read_bytes().split(b"\n")[0]
    assert first_line == b"\xef\xbb\xbf-----BEGIN CERTIFICATE-----\r"
    assert saved_by_windows.fingerprint == clean.fingerprint
    assert saved_by_windows.chain == (tree.issuing.certificate,)
    assert same_key(saved_by_windows.signer._key, tree.rsa_leaf)


@pytest.mark.parametrize("which", ["certificate", "private_key"])
@pytest.mark.parametrize("bom", [b"\xff\xfe", b""], ids=["with-bom", "without-bom"])
def test_case_c04b_utf16_file_is_refused_with_one_line(tmp_path, tree, which, bom):
    files = pair(tmp_path, tree.leaf)
    path = getattr(files, which)
    text = path.read_text().replace("\n", "\r\n")
    path.write_bytes(bom + text.encode("utf-16-le"))

    assert refusal(files) == f"{path}: file is UTF-16; re-save as UTF-8/ASCII"


def test_fullchain_certificate_file_gives_the_chain(tmp_path, tree):
    """cert-manager and ACME clients write the leaf followed by its chain and the root."""
    fullchain = tree.leaf.cert_pem + tree.issuing.cert_pem + tree.policy.cert_pem
    files = IdentityFiles(
        certificate=write(tmp_path / "fullchain.pem", fullchain + tree.root.cert_pem),
        private_key=write(tmp_path / "key.pem", tree.leaf.key_pem),
    )

    identity = load_identity(files, NOW)

    assert identity.certificate == tree.leaf.certificate
    assert identity.chain == (tree.issuing.certificate, tree.policy.certificate)
    assert identity.dropped == ()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: t.leaf.cert_pem[:300], "truncated PEM (a BEGIN line without its END line)"),
        (
            lambda t: t.leaf.cert_pem[:100] + t.leaf.cert_pem[-26:],
            "a CERTIFICATE block is corrupt",
        ),
        (lambda t: t.leaf.key_pem, "no CERTIFICATE block (found PRIVATE KEY)"),
        (lambda t: b"hello world\n", "not a PEM or DER X.509 certificate"),
        (lambda t: b"", "file is empty"),
    ],
    ids=["truncated", "corrupt", "key-not-cert", "garbage", "empty"],
)
def test_unusable_certificate_file(tmp_path, tree, make, message):
    files = pair(tmp_path, tree.leaf)
    files.certificate.write_bytes(make(tree))

    assert refusal(files) == f"{files.certificate}: {message}"


def test_missing_file(tmp_path, tree):
    files = pair(tmp_path, tree.leaf)
    files.private_key.unlink()

    assert refusal(files) == f"{files.private_key}: file not found"


def test_directory_instead_of_a_file(tmp_path, tree):
    files = pair(tmp_path, tree.leaf)
    files.certificate.unlink()
    files.certificate.mkdir()

    assert refusal(files) == f"{files.certificate}: is a directory, expected a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path, tree):
    files = pair(tmp_path, tree.leaf)
    files.private_key.chmod(0)

    assert refusal(files) == (
        f"{files.private_key}: permission denied; let the agent's user read it"
    )


def test_expired_certificate(tmp_path, tree):
    old = issue("web-old", tree.issuing, not_before=NOW - timedelta(days=40), days=30)
    files = pair(tmp_path, old)

    assert refusal(files) == (
        f"{files.certificate}: certificate expired at 2026-02-19T12:00:00Z; install a renewed one"
    )


def test_not_yet_valid_certificate(tmp_path, tree):
    future = issue("web-new", tree.issuing, not_before=NOW + timedelta(hours=2))
    files = pair(tmp_path, future)

    assert refusal(files) == (
        f"{files.certificate}: certificate not valid before 2026-03-01T14:00:00Z; check the clock"
    )


def test_ca_certificate_used_as_leaf(tmp_path, tree):
    files = pair(tmp_path, tree.issuing)

    assert refusal(files) == (
        f"{files.certificate}: this is a CA certificate; configure the end-entity one"
    )


# --- keys ---------------------------------------------------------------------------------

KEY_FORMATS = {
    "pkcs1-pem": ("rsa", PEM, TRADITIONAL, b"-----BEGIN RSA PRIVATE KEY-----"),
    "pkcs1-der": ("rsa", DER, TRADITIONAL, b"\x30\x82"),
    "sec1-pem": ("ec", PEM, TRADITIONAL, b"-----BEGIN EC PRIVATE KEY-----"),
    "sec1-der": ("ec", DER, TRADITIONAL, b"\x30"),
    "pkcs8-pem-rsa": ("rsa", PEM, PKCS8, b"-----BEGIN PRIVATE KEY-----"),
    "pkcs8-pem-ec": ("ec", PEM, PKCS8, b"-----BEGIN PRIVATE KEY-----"),
    "pkcs8-der-rsa": ("rsa", DER, PKCS8, b"\x30\x82"),
    "pkcs8-der-ec": ("ec", DER, PKCS8, b"\x30"),
}


@pytest.mark.parametrize("form", sorted(KEY_FORMATS))
def test_key_formats_load(tmp_path, tree, form):
    kind, encoding, fmt, start = KEY_FORMATS[form]
    leaf = tree.rsa_leaf if kind == "rsa" else tree.leaf
    data = key_bytes(leaf.key, encoding, fmt)
    files = pair(tmp_path, leaf, data)

    identity = load_identity(files, NOW)

    assert data.startswith(start)
    assert same_key(identity.signer._key, leaf)
    assert identity.key_type == ("RSA 2048" if kind == "rsa" else "EC P-256")


@needs_openssl
def test_case_c05_ec_parameters_block_before_the_key(tmp_path, tree):
    """`openssl ecparam -genkey` writes EC PARAMETERS, then the SEC1 key; both load as P-384."""
    openssl("ecparam", "-genkey", "-name", "secp384r1", "-out", "key.pem", cwd=tmp_path)
    key_file = tmp_path / "key.pem"
    key = serialization.load_pem_private_key(
        key_file.read_bytes().split(b"-----END EC PARAMETERS-----")[1], None
    )
    leaf = issue("p384-host", tree.issuing, key=key)
    files = IdentityFiles(
        certificate=write(tmp_path / "cert.pem", leaf.cert_pem),
        private_key=key_file,
        intermediates=write(tmp_path / "chain.pem", tree.issuing.cert_pem),
    )

    identity = load_identity(files, NOW)
    signed = sign(identity)

    labels = re.findall(rb"-----BEGIN ([A-Z ]+)-----", key_file.read_bytes())
    assert labels == [b"EC PARAMETERS", b"EC PRIVATE KEY"]
    assert identity.key_type == "EC P-384"
    auth = verify_signature(signed, key.public_key())
    assert auth["algorithm"] == "AWS4-X509-ECDSA-SHA256"
    assert auth["signed"] == "content-type;host;x-amz-date;x-amz-x509;x-amz-x509-chain"
    assert signed.headers["x-amz-x509-chain"] == b64(tree.issuing)


def encrypt_with_cryptography(folder: Path, leaf: pki.Issued) -> bytes:
    return key_bytes(leaf.key, encryption=serialization.BestAvailableEncryption(b"s3cret pass"))


def encrypt_with_openssl(*cipher: str):
    def make(folder: Path, leaf: pki.Issued) -> bytes:
        write(folder / "plain.pem", leaf.key_pem)
        openssl(
            "pkcs8",
            "-topk8",
            *cipher,
            "-in",
            "plain.pem",
            "-out",
            "enc.pem",
            "-passout",
            "pass:s3cret pass",
            cwd=folder,
        )
        return (folder / "enc.pem").read_bytes()

    return make


def openssl_has_scrypt() -> bool:
    if OPENSSL is None:
        return False
    result = subprocess.run([OPENSSL, "pkcs8", "-help"], capture_output=True, text=True)
    return "-scrypt" in result.stdout + result.stderr


ENCRYPTIONS = [
    pytest.param(encrypt_with_cryptography, b"aes-256-cbc", id="cryptography-pbes2"),
    pytest.param(
        encrypt_with_openssl("-v2", "aes-256-cbc"),
        b"aes-256-cbc",
        id="openssl-pbes2-aes256",
        marks=needs_openssl,
    ),
    pytest.param(
        encrypt_with_openssl("-v2", "aes-256-cbc", "-v2prf", "hmacWithSHA512"),
        b"hmacWithSHA512",
        id="openssl-pbes2-sha512",
        marks=needs_openssl,
    ),
    pytest.param(
        encrypt_with_openssl("-scrypt"),
        b"scrypt",
        id="openssl-scrypt",
        marks=pytest.mark.skipif(
            not openssl_has_scrypt(), reason="this openssl has no `pkcs8 -scrypt`"
        ),
    ),
]


def pbes2_names(folder: Path, data: bytes) -> bytes:
    """The algorithm names inside an ENCRYPTED PRIVATE KEY, as openssl asn1parse prints them."""
    if OPENSSL is None:
        return b"aes-256-cbc"  # the cryptography default, unverifiable without openssl
    write(folder / "probe.pem", data)
    result = subprocess.run(
        [OPENSSL, "asn1parse", "-in", "probe.pem"], cwd=folder, capture_output=True, check=True
    )
    return result.stdout


@pytest.mark.parametrize(("encrypt", "marker"), ENCRYPTIONS)
def test_case_c07a_encrypted_pkcs8_with_passphrase_file(tmp_path, tree, encrypt, marker):
    data = encrypt(tmp_path, tree.rsa_leaf)
    files = IdentityFiles(
        certificate=write(tmp_path / "cert.pem", tree.rsa_leaf.cert_pem),
        private_key=write(tmp_path / "key.pem", data),
        # `echo 's3cret pass' > passphrase`: the newline is not part of the passphrase.
        passphrase_file=write(tmp_path / "passphrase", b"s3cret pass\n"),
    )

    identity = load_identity(files, NOW)

    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert marker in pbes2_names(tmp_path, data)
    assert same_key(identity.signer._key, tree.rsa_leaf)
    assert "s3cret" not in repr(identity)


def test_encrypted_der_pkcs8_with_passphrase_file(tmp_path, tree):
    encryption = serialization.BestAvailableEncryption(b"s3cret")
    files = IdentityFiles(
        certificate=write(tmp_path / "cert.der", cert_der(tree.leaf)),
        private_key=write(tmp_path / "key.der", key_bytes(tree.leaf.key, DER, PKCS8, encryption)),
        passphrase_file=write(tmp_path / "passphrase", b"s3cret\r\n"),
    )

    assert same_key(load_identity(files, NOW).signer._key, tree.leaf)


@pytest.mark.parametrize("encoding", [PEM, DER], ids=["pem", "der"])
def test_case_c07b_encrypted_key_without_passphrase_file(tmp_path, tree, encoding):
    encryption = serialization.BestAvailableEncryption(b"s3cret")
    files = pair(tmp_path, tree.leaf, key_bytes(tree.leaf.key, encoding, PKCS8, encryption))

    assert refusal(files) == (f"key.pem is encrypted; set `passphrase_file` ({files.private_key})")


def test_wrong_passphrase(tmp_path, tree):
    encryption = serialization.BestAvailableEncryption(b"s3cret")
    files = IdentityFiles(
        certificate=write(tmp_path / "cert.pem", tree.leaf.cert_pem),
        private_key=write(tmp_path / "key.pem", key_bytes(tree.leaf.key, encryption=encryption)),
        passphrase_file=write(tmp_path / "passphrase", b"not it\n"),
    )

    message = refusal(files)

    assert message == f"{files.private_key}: wrong passphrase (from `passphrase_file`)"
    assert "not it" not in message


@needs_openssl
@pytest.mark.parametrize(
    "make",
    [
        [
            "genrsa",
            "-aes256",
            "-traditional",
            "-passout",
            "pass:s3cret",
            "-out",
            "key.pem",
            "2048",
        ],
        [
            "rsa",
            "-in",
            "plain.pem",
            "-aes256",
            "-traditional",
            "-passout",
            "pass:s3cret",
            "-out",
            "key.pem",
        ],
    ],
    ids=["genrsa", "rsa"],
)
def test_case_c07c_legacy_proc_type_encrypted_rsa_key(tmp_path, tree, make):
    """The legacy OpenSSL encryption loads with the passphrase file, and asks for one without."""
    write(tmp_path / "plain.pem", key_bytes(tree.rsa_leaf.key, PEM, TRADITIONAL))
    openssl(*make, cwd=tmp_path)
    key_file = tmp_path / "key.pem"
    key = serialization.load_pem_private_key(key_file.read_bytes(), b"s3cret")
    leaf = issue("legacy-host", tree.issuing, key=key)
    files = IdentityFiles(
        certificate=write(tmp_path / "cert.pem", leaf.cert_pem),
        private_key=key_file,
        passphrase_file=write(tmp_path / "passphrase", b"s3cret"),
    )

    identity = load_identity(files, NOW)
    without = IdentityFiles(certificate=files.certificate, private_key=key_file)

    head = key_file.read_bytes().splitlines()[:3]
    assert head[0] == b"-----BEGIN RSA PRIVATE KEY-----"
    assert head[1] == b"Proc-Type: 4,ENCRYPTED"
    assert head[2].startswith(b"DEK-Info: AES-256-CBC,")
    assert identity.key_type == "RSA 2048"
    assert refusal(without) == f"key.pem is encrypted; set `passphrase_file` ({key_file})"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda leaf: leaf.key_pem[:200], "truncated PEM (a BEGIN line without its END line)"),
        (lambda leaf: leaf.cert_pem, "no private key block (found CERTIFICATE)"),
        (
            lambda leaf: b"hello world\n",
            "not a private key in a known format (PKCS#1, SEC1 or PKCS#8, PEM or DER; or PKCS#12)",
        ),
        (lambda leaf: b"\r\n", "file is empty"),
    ],
    ids=["truncated", "cert-not-key", "garbage", "empty"],
)
def test_unusable_key_file(tmp_path, tree, make, message):
    files = pair(tmp_path, tree.leaf, make(tree.leaf))

    assert refusal(files) == f"{files.private_key}: {message}"


SUPPORTED = [
    ("rsa2048", "RSA 2048", RSA_ALGORITHM),
    ("rsa3072", "RSA 3072", RSA_ALGORITHM),
    ("rsa4096", "RSA 4096", RSA_ALGORITHM),
    ("p256", "EC P-256", ECDSA_ALGORITHM),
    ("p384", "EC P-384", ECDSA_ALGORITHM),
    ("p521", "EC P-521", ECDSA_ALGORITHM),
]


@pytest.mark.parametrize(("key_type", "description", "algorithm"), SUPPORTED)
def test_supported_key_types_sign_with_sha256(tmp_path, tree, key_type, description, algorithm):
    leaf = issue(f"{key_type}-host", tree.issuing, key_type=key_type)

    identity = load_identity(pair(tmp_path, leaf), NOW)
    auth = verify_signature(sign(identity), leaf.key.public_key())

    assert identity.key_type == description
    assert identity.signer.algorithm == algorithm
    assert auth["algorithm"] == algorithm
    assert auth["serial"] == str(leaf.certificate.serial_number)


def test_algorithm_stays_sha256_when_the_ca_signed_with_sha384(tmp_path, tree):
    leaf = issue("sha384-host", tree.issuing, key_type="rsa2048", hash_algorithm=hashes.SHA384())

    identity = load_identity(pair(tmp_path, leaf), NOW)

    assert leaf.certificate.signature_hash_algorithm.name == "sha384"
    assert identity.signer.algorithm == "AWS4-X509-RSA-SHA256"


USE = "use RSA (2048 bits or more) or EC P-256, P-384 or P-521"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (ed25519.Ed25519PrivateKey.generate, f"Ed25519 keys are not supported; {USE}"),
        (ed448.Ed448PrivateKey.generate, f"Ed448 keys are not supported; {USE}"),
        (lambda: dsa.generate_private_key(2048), f"DSA keys are not supported; {USE}"),
        (
            lambda: rsa.generate_private_key(65537, 1024),
            "RSA key of 1024 bits; use 2048 or more",
        ),
        (
            lambda: ec.generate_private_key(ec.SECP256K1()),
            f"EC curve secp256k1 is not supported; {USE}",
        ),
    ],
    ids=["ed25519", "ed448", "dsa", "rsa1024", "secp256k1"],
)
def test_unsupported_keys_are_refused_by_type(tmp_path, tree, make, message):
    files = pair(tmp_path, tree.leaf, key_bytes(make()))

    assert refusal(files) == f"{files.private_key}: {message}"


def test_case_c09_key_from_the_previous_rotation(tmp_path, tree):
    previous = issue("web-01", tree.issuing)
    current = issue("web-01", tree.issuing)
    files = pair(tmp_path, current, previous.key_pem)

    assert refusal(files) == (
        f"key.pem does not match cert.pem: the key belongs to another certificate "
        f"({files.private_key} vs {files.certificate}); install the key issued with it"
    )


# --- PKCS#12 ------------------------------------------------------------------------------


def p12_by_cryptography(folder: Path, leaf, cas, password: bytes | None) -> Path:
    encryption = serialization.BestAvailableEncryption(password) if password else PLAIN
    data = pkcs12.serialize_key_and_certificates(
        b"web-01", leaf.key, leaf.certificate, [c.certificate for c in cas], encryption
    )
    return write(folder / "identity.p12", data)


def p12_by_openssl(*extra: str):
    def make(folder: Path, leaf, cas, password: bytes | None) -> Path:
        write(folder / "leaf.pem", leaf.cert_pem + leaf.key_pem)
        certfile: list[str] = []
        if cas:
            write(folder / "cas.pem", b"".join(c.cert_pem for c in cas))
            certfile = ["-certfile", "cas.pem"]
        openssl(
            "pkcs12",
            "-export",
            *extra,
            "-in",
            "leaf.pem",
            *certfile,
            "-out",
            "identity.p12",
            "-passout",
            f"pass:{(password or b'').decode()}",
            cwd=folder,
        )
        return folder / "identity.p12"

    return make


PKCS12_MAKERS = [
    pytest.param(p12_by_cryptography, b"s3cret", id="cryptography-password"),
    pytest.param(p12_by_cryptography, None, id="cryptography-no-password"),
    pytest.param(p12_by_openssl(), b"s3cret", id="openssl-password", marks=needs_openssl),
    pytest.param(p12_by_openssl(), None, id="openssl-empty-password", marks=needs_openssl),
]


@pytest.mark.parametrize(("make", "password"), PKCS12_MAKERS)
def test_pkcs12_bundle(tmp_path, tree, make, password):
    path = make(tmp_path, tree.leaf, [tree.policy, tree.issuing, tree.root], password)
    passphrase = write(tmp_path / "passphrase", password + b"\n") if password else None

    identity = load_identity(IdentityFiles(pkcs12=path, passphrase_file=passphrase), NOW)

    assert identity.certificate == tree.leaf.certificate
    assert identity.chain == (tree.issuing.certificate, tree.policy.certificate)
    assert same_key(identity.signer._key, tree.leaf)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(p12_by_cryptography, id="cryptography"),
        pytest.param(p12_by_openssl(), id="openssl", marks=needs_openssl),
    ],
)
def test_pkcs12_wrong_password(tmp_path, tree, make):
    path = make(tmp_path, tree.leaf, [], b"s3cret")
    files = IdentityFiles(pkcs12=path, passphrase_file=write(tmp_path / "passphrase", b"nope"))

    assert refusal(files) == f"wrong password for identity.p12 ({path})"


def test_pkcs12_password_not_configured(tmp_path, tree):
    path = p12_by_cryptography(tmp_path, tree.leaf, [], b"s3cret")

    assert refusal(IdentityFiles(pkcs12=path)) == (
        f"identity.p12 is password-protected; set `passphrase_file` ({path})"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"not a bundle", "not a PKCS#12 bundle (.p12/.pfx)"), (b"\n", "file is empty")],
    ids=["garbage", "empty"],
)
def test_pkcs12_file_that_is_not_a_bundle(tmp_path, data, message):
    path = write(tmp_path / "identity.p12", data)
    files = IdentityFiles(pkcs12=path, passphrase_file=write(tmp_path / "passphrase", b"x"))

    assert refusal(files) == f"{path}: {message}"


def openssl_can_write_rc2() -> bool:
    if OPENSSL is None:
        return False
    probe = subprocess.run(
        [
            OPENSSL,
            "enc",
            "-rc2-40-cbc",
            "-K",
            "00" * 5,
            "-iv",
            "00" * 8,
            "-provider",
            "legacy",
            "-provider",
            "default",
        ],
        input=b"x",
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.skipif(
    not openssl_can_write_rc2(), reason="openssl without the legacy provider cannot write RC2-40"
)
def test_case_c08_rc2_40_pkcs12_from_an_old_export(tmp_path, tree):
    path = p12_by_openssl("-legacy")(tmp_path, tree.leaf, [tree.issuing], b"s3cret")
    info = subprocess.run(
        [
            OPENSSL,
            "pkcs12",
            "-in",
            str(path),
            "-info",
            "-noout",
            "-legacy",
            "-passin",
            "pass:s3cret",
        ],
        capture_output=True,
        text=True,
        check=True,
    )

    key, cert, extra = load_pkcs12(path, b"s3cret")
    with pytest.raises(IdentityError) as wrong:
        load_pkcs12(path, b"nope")

    assert "pbeWithSHA1And40BitRC2-CBC" in info.stderr + info.stdout
    assert cert == tree.leaf.certificate
    assert extra == [tree.issuing.certificate]
    assert same_key(key, tree.leaf)
    assert str(wrong.value) == f"wrong password for identity.p12 ({path})"


# --- chain ordering -----------------------------------------------------------------------


def test_case_c01_chain_file_out_of_order_with_the_root(tmp_path, tree):
    chain = tree.root.cert_pem + tree.policy.cert_pem + tree.issuing.cert_pem
    files = IdentityFiles(
        certificate=write(tmp_path / "cert.pem", tree.leaf.cert_pem),
        private_key=write(tmp_path / "key.pem", tree.leaf.key_pem),
        intermediates=write(tmp_path / "chain.pem", chain),
    )

    identity = load_identity(files, NOW)
    signed = sign(identity)

    assert identity.chain == (tree.issuing.certificate, tree.policy.certificate)
    assert identity.dropped == ()
    assert signed.headers["x-amz-x509-chain"] == f"{b64(tree.issuing)},{b64(tree.policy)}"
    assert signed.headers["x-amz-x509"] == b64(tree.leaf)
    auth = verify_signature(signed, tree.leaf.key.public_key())
    assert auth["signed"].split(";") == [
        "content-type",
        "host",
        "x-amz-date",
        "x-amz-x509",
        "x-amz-x509-chain",
    ]


def test_case_c03_unrelated_cas_and_a_leaf_copy_are_dropped(tmp_path, tree):
    """Only the intermediate on the path is sent; every unrelated CA is reported by subject."""
    other_root = issue("Smartcard Root A", ca=True)
    another_root = issue("Smartcard Root B", ca=True)
    unrelated = [
        other_root,
        issue("Smartcard Sub CA 1", other_root, ca=True),
        # Same subject as the real issuing CA, another key: must not be taken for it.
        issue("Example Issuing CA", other_root, ca=True),
        another_root,
        issue("Smartcard Sub CA 2", another_root, ca=True),
        issue("Example Policy CA", another_root, ca=True),
    ]
    bundle = [*unrelated[:3], tree.leaf, tree.issuing, *unrelated[3:]]
    files = IdentityFiles(
        certificate=write(tmp_path / "cert.pem", tree.leaf.cert_pem),
        private_key=write(tmp_path / "key.pem", tree.leaf.key_pem),
        intermediates=write(tmp_path / "chain.pem", b"".join(c.cert_pem for c in bundle)),
    )

    identity = load_identity(files, NOW)
    signed = sign(identity)

    assert identity.chain == (tree.issuing.certificate,)
    assert identity.dropped == (
        "CN=Smartcard Root A",
        "CN=Smartcard Sub CA 1",
        "CN=Example Issuing CA",
        "CN=Smartcard Root B",
        "CN=Smartcard Sub CA 2",
        "CN=Example Policy CA",
    )
    assert signed.headers["x-amz-x509-chain"] == b64(tree.issuing)
    assert b64(tree.leaf) not in signed.headers["x-amz-x509-chain"].split(",")


def test_no_intermediates_gives_an_empty_chain(tmp_path, tree):
    identity = load_identity(pair(tmp_path, tree.leaf), NOW)

    assert identity.chain == ()
    assert identity.dropped == ()


def test_case_c02_no_chain_header(tmp_path, tree):
    """No intermediates: the header is absent from the request and from SignedHeaders."""
    direct = issue("direct-host", tree.root)

    signed = sign(load_identity(pair(tmp_path, direct), NOW))

    assert "x-amz-x509-chain" not in signed.headers
    auth = verify_signature(signed, direct.key.public_key())
    assert auth["signed"] == "content-type;host;x-amz-date;x-amz-x509"
    assert auth["scope"] == credential_scope(NOW, "eu-west-1")


def test_order_chain_keeps_repeats_out():
    root = issue("R", ca=True)
    mid = issue("M", root, ca=True)
    leaf = issue("L", mid)

    chain, dropped = order_chain(
        leaf.certificate, [mid.certificate, leaf.certificate, mid.certificate, root.certificate]
    )

    assert chain == [mid.certificate]
    assert dropped == []


def test_order_chain_stops_at_a_loop():
    """Two CAs that cross-sign each other must not send the loop forever."""
    a = issue("Loop A", ca=True)
    b = issue("Loop B", a, ca=True)
    a_by_b = issue("Loop A", b, ca=True, key=a.key)
    leaf = issue("L", b)

    chain, _ = order_chain(leaf.certificate, [a_by_b.certificate, b.certificate])

    assert chain == [b.certificate, a_by_b.certificate]


# --- IdentitySource: rotation on disk -----------------------------------------------------


def replace(path: Path, data: bytes) -> None:
    """Write next to the file and rename over it, as cert-manager and certbot do."""
    staged = path.with_name(path.name + ".new")
    staged.write_bytes(data)
    os.replace(staged, path)


def test_source_picks_up_files_replaced_on_disk(tmp_path, tree):
    files = pair(tmp_path, tree.leaf)
    source = IdentitySource(files, lambda: NOW)
    first = source.current()
    renewed = issue("web-01", tree.issuing)

    replace(files.certificate, renewed.cert_pem)
    replace(files.private_key, renewed.key_pem)
    second = source.current()

    assert first.certificate == tree.leaf.certificate
    assert second.certificate == renewed.certificate
    assert same_key(second.signer._key, renewed)
    assert source.problem is None
    assert source.current() is second


def test_source_keeps_the_last_good_identity_during_a_half_done_rotation(tmp_path, tree):
    files = pair(tmp_path, tree.leaf)
    source = IdentitySource(files, lambda: NOW)
    good = source.current()
    renewed = issue("web-01", tree.issuing)

    replace(files.certificate, renewed.cert_pem)
    during = source.current()
    problem = source.problem
    replace(files.private_key, renewed.key_pem)
    after = source.current()

    assert during is good
    assert problem == (
        f"key.pem does not match cert.pem: the key belongs to another certificate "
        f"({files.private_key} vs {files.certificate}); install the key issued with it"
    )
    assert after.certificate == renewed.certificate
    assert source.problem is None


def test_source_raises_when_the_first_load_fails(tmp_path, tree):
    files = pair(tmp_path, tree.leaf, tree.rsa_leaf.key_pem)

    with pytest.raises(IdentityError, match=r"^key\.pem does not match cert\.pem"):
        IdentitySource(files, lambda: NOW).current()


def test_identity_repr_hides_the_key(tmp_path, tree):
    identity = load_identity(pair(tmp_path, tree.rsa_leaf), NOW)

    text = repr(identity)

    assert "FileKeySigner(RSA 2048)" in text
    assert str(tree.rsa_leaf.key.private_numbers().d) not in text


def test_signatures_do_not_verify_with_another_key(tmp_path, tree):
    """The verifier used above can fail: a signature checked with the wrong key is refused."""
    signed = sign(load_identity(pair(tmp_path, tree.rsa_leaf), NOW))
    other = issue("other", tree.issuing, key_type="rsa2048")

    with pytest.raises(InvalidSignature):
        verify_signature(signed, other.key.public_key())
