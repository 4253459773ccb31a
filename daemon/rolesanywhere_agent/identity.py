"""An X.509 identity: the leaf certificate, the chain sent with it, and the key that signs.

Files are sniffed by content, never by extension: PEM (with any text around the blocks, a
UTF-8 BOM, CRLF endings), DER, PKCS#12. Every error names the file and what to do about it.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from .errors import IdentityError
from .signing import Signer

RSA_ALGORITHM = "AWS4-X509-RSA-SHA256"
ECDSA_ALGORITHM = "AWS4-X509-ECDSA-SHA256"
SUPPORTED_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
MIN_RSA_BITS = 2048
# Certificates, keys and passphrases are a few KiB; a bigger file is the wrong one (a log, a
# disk image, /dev/zero) and reading it whole would only exhaust memory.
MAX_FILE_BYTES = 1 << 20

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL
)
_PRIVATE_KEY_LABELS = {
    b"PRIVATE KEY",
    b"RSA PRIVATE KEY",
    b"EC PRIVATE KEY",
    b"ENCRYPTED PRIVATE KEY",
}

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class IdentityFiles:
    """Where an identity comes from: a certificate and key, or one PKCS#12 bundle."""

    certificate: Path | None = None
    private_key: Path | None = None
    intermediates: Path | None = None
    passphrase_file: Path | None = None
    pkcs12: Path | None = None

    def paths(self) -> list[Path]:
        fields = (self.certificate, self.private_key, self.intermediates, self.pkcs12)
        return [path for path in fields if path is not None]


class FileKeySigner:
    """A signer over a private key held in memory, loaded from a file."""

    def __init__(self, key: PrivateKey) -> None:
        self._key = key

    def __repr__(self) -> str:
        return f"FileKeySigner({key_description(self._key)})"

    @property
    def algorithm(self) -> str:
        return RSA_ALGORITHM if isinstance(self._key, rsa.RSAPrivateKey) else ECDSA_ALGORITHM

    def sign(self, data: bytes) -> bytes:
        if isinstance(self._key, rsa.RSAPrivateKey):
            return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        return self._key.public_key()


@dataclass(frozen=True)
class Identity:
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    signer: Signer
    key_type: str
    dropped: tuple[str, ...] = field(default=())

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string()

    @property
    def issuer(self) -> str:
        return self.certificate.issuer.rfc4514_string()

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def fingerprint(self) -> str:
        return self.certificate.fingerprint(hashes.SHA256()).hex()


def load_identity(
    files: IdentityFiles, now: datetime, passphrase: bytes | None = None
) -> Identity:
    """Load, pair and check an identity; raise IdentityError naming the file at fault.

    `passphrase`, when given (typed at a prompt), is used instead of `passphrase_file`.
    """
    if passphrase is None:
        passphrase = read_passphrase(files.passphrase_file)
    if files.pkcs12 is not None:
        key, leaf, extra = load_pkcs12(files.pkcs12, passphrase)
        key_path = cert_path = files.pkcs12
    else:
        assert files.certificate is not None and files.private_key is not None
        cert_path, key_path = files.certificate, files.private_key
        leaf, *extra = load_certificates(cert_path)
        key = load_private_key(key_path, passphrase)

    for cert in [leaf, *extra]:
        check_parses(cert, cert_path)
    if files.intermediates is not None:
        chain_certs = load_certificates(files.intermediates)
        for cert in chain_certs:
            check_parses(cert, files.intermediates)
        extra.extend(chain_certs)

    check_key_type(key, key_path)
    check_pair(key, leaf, key_path, cert_path)
    check_leaf(leaf, cert_path, now)
    chain, dropped = order_chain(leaf, extra)
    return Identity(
        certificate=leaf,
        chain=tuple(chain),
        signer=FileKeySigner(key),
        key_type=key_description(key),
        dropped=tuple(dropped),
    )


def read_passphrase(path: Path | None) -> bytes | None:
    if path is None:
        return None
    data = read_file(path)
    # `echo secret > file` leaves a newline that is not part of the passphrase.
    return data.rstrip(b"\r\n")


def read_file(path: Path) -> bytes:
    try:
        data = read_regular_file(path)
    except FileNotFoundError:
        raise IdentityError(f"{path}: file not found") from None
    except PermissionError:
        raise IdentityError(f"{path}: permission denied; let the agent's user read it") from None
    except IsADirectoryError:
        raise IdentityError(f"{path}: is a directory, expected a file") from None
    except OSError as exc:
        raise IdentityError(f"{path}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise IdentityError(f"{path}: {exc}") from None
    if _looks_utf16(data):
        raise IdentityError(f"{path}: file is UTF-16; re-save as UTF-8/ASCII")
    return data.removeprefix(b"\xef\xbb\xbf")


def read_regular_file(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes.

    Raises OSError when it cannot be opened or read, ValueError (with a message for the
    operator) when it is not a regular file or is too big.
    """
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever,
    # with the event loop stuck in the call.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        chunks = []
        size = 0
        # Read one byte past the limit: the file may have grown since fstat.
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise ValueError(f"larger than {_size_text(limit)}; is this the right file?")
    return b"".join(chunks)


def _size_text(size: int) -> str:
    return f"{size >> 20} MiB" if size % (1 << 20) == 0 else f"{size} bytes"


def read_nonempty(path: Path) -> bytes:
    data = read_file(path)
    if not data.strip():
        raise IdentityError(f"{path}: file is empty")
    return data


def pem_blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(label, whole block) for every PEM block, in order; text between blocks is ignored."""
    return [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(data)]


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle or a single DER certificate, in file order."""
    data = read_nonempty(path)
    blocks = pem_blocks(data)
    if not blocks and b"-----BEGIN" in data:
        raise IdentityError(f"{path}: truncated PEM (a BEGIN line without its END line)")
    if not blocks:
        try:
            return [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise IdentityError(f"{path}: not a PEM or DER X.509 certificate") from None

    certs = []
    for label, block in blocks:
        if label != b"CERTIFICATE":
            continue
        try:
            certs.append(x509.load_der_x509_certificate(_pem_body(block)))
        except (ValueError, binascii.Error):
            raise IdentityError(f"{path}: a CERTIFICATE block is corrupt") from None
    if not certs:
        labels = ", ".join(sorted({label.decode() for label, _ in blocks}))
        raise IdentityError(f"{path}: no CERTIFICATE block (found {labels})")
    return certs


def load_private_key(path: Path, passphrase: bytes | None) -> PrivateKey:
    data = read_nonempty(path)
    blocks = [block for label, block in pem_blocks(data) if label in _PRIVATE_KEY_LABELS]
    if not blocks and b"-----BEGIN" in data:
        if pem_blocks(data):
            labels = ", ".join(sorted({label.decode() for label, _ in pem_blocks(data)}))
            raise IdentityError(f"{path}: no private key block (found {labels})")
        raise IdentityError(f"{path}: truncated PEM (a BEGIN line without its END line)")
    if not blocks:
        return _load_der_key(path, data, passphrase)
    # An `EC PARAMETERS` block before the key (openssl ecparam -genkey) is skipped here.
    return _load_key(path, blocks[0], passphrase, serialization.load_pem_private_key)


def load_pkcs12(
    path: Path, password: bytes | None
) -> tuple[PrivateKey, x509.Certificate, list[x509.Certificate]]:
    data = read_nonempty(path)
    if not _is_pkcs12(data):
        raise IdentityError(f"{path}: not a PKCS#12 bundle (.p12/.pfx)")
    try:
        bundle = pkcs12.load_pkcs12(data, password)
    except ValueError as exc:
        raise IdentityError(_pkcs12_problem(path, password, exc)) from None
    except UnsupportedAlgorithm:
        raise IdentityError(
            f"{path}: PKCS#12 uses an unsupported cipher (such as RC2-40); re-export it "
            "with AES: openssl pkcs12 -legacy -in old.p12 -nodes | openssl pkcs12 -export"
        ) from None
    if bundle.key is None or bundle.cert is None:
        raise IdentityError(f"{path}: PKCS#12 bundle must hold both a key and its certificate")
    extra = [item.certificate for item in bundle.additional_certs]
    return bundle.key, bundle.cert.certificate, extra  # type: ignore[return-value]


def check_parses(cert: x509.Certificate, path: Path) -> None:
    """Parse now what cryptography parses lazily, so a malformed field fails here, naming
    the file, rather than as a ValueError wherever the certificate is next looked at."""
    try:
        cert.extensions  # noqa: B018
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        cert.public_key()
    except ValueError as exc:
        raise IdentityError(
            f"{path}: a certificate is malformed ({_reason(exc)}); reissue it"
        ) from None
    except UnsupportedAlgorithm:
        raise IdentityError(f"{path}: a certificate has an unsupported key; {_USE}") from None


def check_key_type(key: object, path: Path) -> None:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise IdentityError(f"{path}: RSA key of {key.key_size} bits; use 2048 or more")
        return
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in SUPPORTED_CURVES:
            raise IdentityError(f"{path}: EC curve {key.curve.name} is not supported; {_USE}")
        return
    kind = type(key).__name__.removeprefix("_").replace("PrivateKey", "") or "unknown"
    raise IdentityError(f"{path}: {kind} keys are not supported; {_USE}")


def check_pair(key: PrivateKey, cert: x509.Certificate, key_path: Path, cert_path: Path) -> None:
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise IdentityError(
            f"{key_path.name} does not match {cert_path.name}: the key belongs to another "
            f"certificate ({key_path} vs {cert_path}); install the key issued with it"
        )


def check_leaf(cert: x509.Certificate, path: Path, now: datetime) -> None:
    if is_ca(cert):
        raise IdentityError(f"{path}: this is a CA certificate; configure the end-entity one")
    if now < cert.not_valid_before_utc:
        start = cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
        raise IdentityError(f"{path}: certificate not valid before {start}; check the clock")
    if now >= cert.not_valid_after_utc:
        end = cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
        raise IdentityError(f"{path}: certificate expired at {end}; install a renewed one")


def order_chain(
    leaf: x509.Certificate, candidates: Sequence[x509.Certificate]
) -> tuple[list[x509.Certificate], list[str]]:
    """The path from the leaf's issuer upwards, without the self-signed root.

    Candidates that are not on the path (unrelated CAs, unrelated roots among them) are
    dropped and returned by subject so the caller can say so (case C03). Copies of the leaf
    or of a path certificate, and the root that ends the path, are dropped silently.
    """
    chain: list[x509.Certificate] = []
    seen = {leaf.fingerprint(hashes.SHA256())}
    current = leaf
    while True:
        issuer = _find_issuer(current, candidates, seen)
        if issuer is None:
            break
        seen.add(issuer.fingerprint(hashes.SHA256()))
        if _is_self_signed(issuer):
            break
        chain.append(issuer)
        current = issuer

    dropped = [
        c.subject.rfc4514_string()
        for c in candidates
        if c.fingerprint(hashes.SHA256()) not in seen
    ]
    return chain, dropped


def key_description(key: object) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"EC {SUPPORTED_CURVES.get(key.curve.name, key.curve.name)}"
    return type(key).__name__


_USE = "use RSA (2048 bits or more) or EC P-256, P-384 or P-521"
# cryptography's own text ("Could not deserialize key data...") says no more than this.
_NOT_A_KEY = "not a private key in a known format (PKCS#1, SEC1 or PKCS#8, PEM or DER; or PKCS#12)"


def _load_der_key(path: Path, data: bytes, passphrase: bytes | None) -> PrivateKey:
    if _is_pkcs12(data):
        key, _, _ = load_pkcs12(path, passphrase)
        return key
    return _load_key(path, data, passphrase, serialization.load_der_private_key)


KeyLoader = Callable[..., object]


def _load_key(
    path: Path, data: bytes, passphrase: bytes | None, loader: KeyLoader
) -> PrivateKey:
    encrypted = b"ENCRYPTED" in data[:200] or _is_encrypted_der(data)
    if encrypted and passphrase is None:
        raise IdentityError(f"{path.name} is encrypted; set `passphrase_file` ({path})")
    try:
        key = loader(data, password=passphrase if encrypted else None)
    except TypeError:
        raise IdentityError(f"{path.name} is encrypted; set `passphrase_file` ({path})") from None
    except ValueError:
        if encrypted:
            raise IdentityError(f"{path}: wrong passphrase (from `passphrase_file`)") from None
        raise IdentityError(f"{path}: {_NOT_A_KEY}") from None
    except UnsupportedAlgorithm as exc:
        raise IdentityError(f"{path}: unsupported key encryption ({_reason(exc)})") from None
    check_key_type(key, path)
    return key


def _pkcs12_problem(path: Path, password: bytes | None, exc: Exception) -> str:
    text = str(exc).lower()
    if "rc2" in text or "unsupported" in text:
        return (
            f"{path}: PKCS#12 uses RC2-40, which is not supported; re-export it with AES "
            "(openssl pkcs12 -legacy -in old.p12 -nodes | openssl pkcs12 -export)"
        )
    if password is None:
        return f"{path.name} is password-protected; set `passphrase_file` ({path})"
    return f"wrong password for {path.name} ({path})"


def _pem_body(block: bytes) -> bytes:
    lines = block.splitlines()[1:-1]
    return base64.b64decode(b"".join(line.strip() for line in lines if b":" not in line))


def _find_issuer(
    cert: x509.Certificate, candidates: Sequence[x509.Certificate], seen: set[bytes]
) -> x509.Certificate | None:
    for candidate in candidates:
        if candidate.fingerprint(hashes.SHA256()) in seen:
            continue
        if issued_by(cert, candidate):
            return candidate
    return None


def _is_self_signed(cert: x509.Certificate) -> bool:
    return issued_by(cert, cert)


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer`'s name and key signed `cert` (the emulator's path check uses it too)."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _looks_utf16(data: bytes) -> bool:
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return True
    head = data[:64]
    return len(head) >= 8 and head.count(0) * 3 >= len(head) and b"-\x00-\x00" in head


def _is_pkcs12(data: bytes) -> bool:
    # A PFX is SEQUENCE { INTEGER 3, ContentInfo ... }; a bare key starts differently.
    return len(data) > 8 and data[0] == 0x30 and b"\x02\x01\x03" in data[1:8]


def _is_encrypted_der(data: bytes) -> bool:
    # EncryptedPrivateKeyInfo starts with the PBES2 / PBES1 algorithm identifier.
    return b"\x2a\x86\x48\x86\xf7\x0d\x01\x05" in data[:32]


def _reason(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__


class IdentitySource:
    """The identity of one profile, re-read when its files change on disk.

    A rotation caught half done (a new certificate beside the old key) keeps the last good
    identity in use and records the problem; the next change of the files tries again.
    """

    def __init__(self, files: IdentityFiles, now: Callable[[], datetime]) -> None:
        self._files = files
        self._now = now
        self._stamp: tuple[tuple[int, int, int], ...] | None = None
        self.loaded: Identity | None = None
        self.problem: str | None = None

    def current(self) -> Identity:
        stamp = self._stamp_of()
        if self.loaded is None or stamp != self._stamp:
            self._reload(stamp)
        assert self.loaded is not None
        # A certificate that expired while in use would only earn a refusal from the service:
        # say so here, without a network call, until a renewed one is installed.
        certificate = self._files.certificate or self._files.pkcs12
        assert certificate is not None
        check_leaf(self.loaded.certificate, certificate, self._now())
        return self.loaded

    def _reload(self, stamp: tuple[tuple[int, int, int], ...]) -> None:
        try:
            self.loaded = load_identity(self._files, self._now())
            self.problem = None
        except IdentityError as exc:
            if self.loaded is None:
                raise
            self.problem = str(exc)
        except Exception as exc:  # noqa: BLE001 - a bad file must never cost the last good one
            # Only the type: the text of an unexpected error could quote key material.
            where = self._files.certificate or self._files.pkcs12
            problem = f"{where}: cannot load the identity ({type(exc).__name__})"
            if self.loaded is None:
                raise IdentityError(problem) from None
            self.problem = problem
        self._stamp = stamp

    def _stamp_of(self) -> tuple[tuple[int, int, int], ...]:
        # Known limitation: a file rewritten in place with the same size within one tick of
        # the file system's clock looks unchanged until its next change; renames always show.
        stamps = []
        for path in [*self._files.paths(), self._files.passphrase_file]:
            if path is None:
                continue
            try:
                info = path.stat()
            except OSError:
                stamps.append((0, 0, 0))
                continue
            stamps.append((info.st_mtime_ns, info.st_size, info.st_ino))
        return tuple(stamps)
