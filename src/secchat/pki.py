"""SecChat's X.509 public key infrastructure: one conference CA, one Ed25519 certificate per peer.

Why: the thesis (§4.1) assumes a PKI that binds exactly one signature key to every peer; the
directory, the authenticated links (mutual TLS 1.3) and the secure multicast signatures all rest
on it.  Everything SecChat does with certificates goes through this module, so there is one
place that decides what "a valid SecChat identity" means:

* a certificate is valid for SecChat when a *trusted* CA whose subject equals the certificate's
  issuer signed it (directly: SecChat has no intermediates), both are inside their validity
  windows at ``now``, the issuer is a CA (``BasicConstraints(ca=True)``) and the leaf is not;
* an identity is the pair (subject CN, issuer CN); :class:`Identity` uses the issuer's *common
  name*, not its full RFC 4514 string, because that is what users see and type;
* keys are Ed25519 only; private keys at rest are encrypted under a passphrase stretched by
  scrypt (:mod:`secchat.passphrase`), in 0600 files inside 0700 folders; key stores of the old
  format (PKCS#8 under PBKDF2) still open and are upgraded in place.

Failures raise :class:`PkiError` with a machine-readable ``code`` and a one-sentence message;
foreign exceptions from ``cryptography`` are translated here and never escape.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .codec import canonical
from .crypto import Aead, CryptoError, Signer, Verifier
from .passphrase import PASSPHRASE_KDF, PassphraseKdf, WeakPassphrase, check_new_passphrase

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CLOCK_SKEW",
    "IDENTITY_CERT_FILE",
    "IDENTITY_KEY_FILE",
    "IDENTITY_REQUEST_FILE",
    "KEY_STORE_FORMAT",
    "Identity",
    "LocalIdentity",
    "PkiError",
    "cert_from_pem",
    "cert_to_pem",
    "certs_from_pem",
    "certs_to_pem",
    "check_identity_files",
    "create_ca",
    "fingerprint",
    "generate_key",
    "identity_of",
    "issue_certificate",
    "key_store_kdf",
    "load_identity",
    "load_private_key",
    "make_private_dir",
    "make_request",
    "request_from_pem",
    "request_to_pem",
    "save_private_key",
    "sign_request",
    "signer_of",
    "tighten_private",
    "verifier_of",
    "verify_certificate",
    "write_file_atomically",
]

#: File names of an identity directory (``secchat ca issue --out D`` writes them, the rest reads).
IDENTITY_CERT_FILE = "identity.pem"
IDENTITY_KEY_FILE = "identity.key"
#: A certificate signing request waiting for the CA (``secchat init`` writes it).
IDENTITY_REQUEST_FILE = "request.pem"
#: The trusted CA bundle of an identity directory, and a CA directory's own files.
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"

_log = logging.getLogger(__name__)

#: New certificates start this much before ``now`` so that peers with slightly slow clocks accept them.
CLOCK_SKEW = timedelta(minutes=5)


class PkiError(Exception):
    """A certificate, key or key store failed a check.

    ``code`` is machine-readable: ``bad_pem``, ``unknown_ca``, ``expired``, ``not_yet_valid``,
    ``wrong_passphrase``, ``bad_signature``, ``not_a_ca``, ``not_a_leaf``, ``no_name``,
    ``unsupported_key``, ``no_key_store``, ``weak_passphrase``, ``no_identity``,
    ``key_mismatch``.  ``str(e)`` is one sentence.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a certificate names: its subject CN and its issuer's CN."""

    name: str
    issuer: str

    def __str__(self) -> str:
        return f"{self.name}@{self.issuer}"


# --------------------------------------------------------------------------- keys and certificates


def generate_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("datetimes passed to secchat.pki must be timezone-aware")
    return now


def _name(common_name: str) -> x509.Name:
    if not common_name or len(common_name) > 64:
        raise ValueError("a common name is 1..64 characters")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def create_ca(
    name: str,
    *,
    key: Ed25519PrivateKey | None = None,
    valid_days: int = 3650,
    now: datetime | None = None,
) -> tuple[Ed25519PrivateKey, x509.Certificate]:
    """A self-signed root CA ``CN=name`` that may only sign certificates."""
    now = _now(now)
    key = key or generate_key()
    subject = _name(name)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, None)
    )
    return key, cert


def issue_certificate(
    ca_key: Ed25519PrivateKey,
    ca_cert: x509.Certificate,
    name: str,
    public_key: Ed25519PublicKey,
    *,
    valid_days: int = 365,
    not_before: datetime | None = None,
    now: datetime | None = None,
) -> x509.Certificate:
    """A leaf certificate ``CN=name`` for mutual TLS and signatures, signed by the CA."""
    now = _now(now)
    start = _now(not_before) if not_before is not None else now - CLOCK_SKEW
    return (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, None)
    )


# --------------------------------------------------------------------------- requests


def make_request(key: Ed25519PrivateKey, name: str) -> x509.CertificateSigningRequest:
    """A certificate signing request ``CN=name`` for ``key``, signed by it (proof of possession).

    The user's machine makes it; the CA signs it (:func:`sign_request`) without ever seeing the
    private key.
    """
    return x509.CertificateSigningRequestBuilder().subject_name(_name(name)).sign(key, None)


def request_to_pem(request: x509.CertificateSigningRequest) -> bytes:
    return request.public_bytes(serialization.Encoding.PEM)


def request_from_pem(data: bytes) -> x509.CertificateSigningRequest:
    """A request from PEM; ``PkiError("bad_pem")`` on anything else."""
    try:
        return x509.load_pem_x509_csr(bytes(data))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PkiError("bad_pem", "the data is not a PEM certificate signing request") from None


def sign_request(
    ca_key: Ed25519PrivateKey,
    ca_cert: x509.Certificate,
    request: x509.CertificateSigningRequest,
    *,
    valid_days: int = 365,
    now: datetime | None = None,
) -> x509.Certificate:
    """Issue the certificate a request asks for, after checking it.

    Only the subject's common name and the public key are taken from the request (no extension
    it asks for is copied).  ``PkiError``: ``bad_signature`` (the request is not signed by its own
    key), ``unsupported_key`` (not Ed25519), ``no_name`` (not exactly one common name).
    """
    try:
        valid = request.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise PkiError(
            "bad_signature", "the request is not signed by the key it asks a certificate for"
        )
    key = request.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise PkiError("unsupported_key", "the request's key is not an Ed25519 key")
    name = _common_name(request.subject, "request")
    if len(request.subject) != 1:
        raise PkiError("no_name", "the request's subject must be exactly one common name")
    try:
        return issue_certificate(ca_key, ca_cert, name, key, valid_days=valid_days, now=now)
    except ValueError as exc:
        raise PkiError("no_name", str(exc)) from None


# --------------------------------------------------------------------------- verification


def _common_name(name: x509.Name, what: str) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1 or not isinstance(attrs[0].value, str) or not attrs[0].value:
        raise PkiError("no_name", f"the certificate's {what} has no single common name")
    return attrs[0].value


def identity_of(cert: x509.Certificate) -> Identity:
    """The identity a certificate names (no validity check: see :func:`verify_certificate`)."""
    return Identity(_common_name(cert.subject, "subject"), _common_name(cert.issuer, "issuer"))


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False
    except ValueError:  # malformed extensions
        return False


def _check_window(cert: x509.Certificate, now: datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise PkiError(
            "not_yet_valid",
            f"the {what} certificate is not valid before {cert.not_valid_before_utc.isoformat()}",
        )
    if now > cert.not_valid_after_utc:
        raise PkiError(
            "expired", f"the {what} certificate expired on {cert.not_valid_after_utc.isoformat()}"
        )


def verify_certificate(
    cert: x509.Certificate, trusted: Sequence[x509.Certificate], *, now: datetime | None = None
) -> Identity:
    """Check ``cert`` against the trusted CAs and return the identity it proves.

    Raises :class:`PkiError`: ``unknown_ca`` (no trusted CA has the issuer's name),
    ``bad_signature`` (none of them signed it), ``not_a_ca`` (the issuer is not a CA),
    ``not_a_leaf`` (a CA certificate offered as a peer's), ``expired`` / ``not_yet_valid``
    (the leaf or its CA outside its validity window), ``no_name``.
    """
    now = _now(now)
    identity = identity_of(cert)
    candidates = [ca for ca in trusted if ca.subject == cert.issuer]
    if not candidates:
        raise PkiError("unknown_ca", f"the certificate of {identity} is not issued by a trusted CA")
    issuer: x509.Certificate | None = None
    for ca in candidates:
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            continue
        issuer = ca
        break
    if issuer is None:
        raise PkiError(
            "bad_signature", f"the certificate of {identity} does not carry a valid CA signature"
        )
    if not _is_ca(issuer):
        raise PkiError("not_a_ca", f"the issuer of {identity} is not a certificate authority")
    if _is_ca(cert):
        raise PkiError("not_a_leaf", f"{identity} is a CA certificate, not a peer's certificate")
    _check_window(issuer, now, f"CA {identity.issuer}'s")
    _check_window(cert, now, f"{identity}'s")
    return identity


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, lowercase hex without colons."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def verifier_of(cert: x509.Certificate) -> Verifier:
    """The Ed25519 signature verifier of a certificate's key."""
    key = cert.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise PkiError("unsupported_key", "the certificate's key is not an Ed25519 key")
    try:
        return Verifier.from_public_key(key)
    except CryptoError as exc:
        raise PkiError("unsupported_key", f"the certificate's key is unusable: {exc}") from None


def signer_of(key: Ed25519PrivateKey) -> Signer:
    """The Ed25519 signer of a private key."""
    if not isinstance(key, Ed25519PrivateKey):
        raise PkiError("unsupported_key", "the private key is not an Ed25519 key")
    return Signer.from_private_key(key)


# --------------------------------------------------------------------------- PEM


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def certs_to_pem(certs: Sequence[x509.Certificate]) -> bytes:
    """A PEM bundle."""
    return b"".join(cert_to_pem(c) for c in certs)


def cert_from_pem(data: bytes) -> x509.Certificate:
    """The (first) certificate of a PEM text; ``PkiError("bad_pem")`` on anything else."""
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    try:
        return x509.load_pem_x509_certificate(bytes(data))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PkiError("bad_pem", "the data is not a PEM-encoded X.509 certificate") from None


def certs_from_pem(data: bytes) -> list[x509.Certificate]:
    """All certificates of a PEM bundle (at least one)."""
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    try:
        certs = x509.load_pem_x509_certificates(bytes(data))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PkiError("bad_pem", "the data is not a bundle of PEM-encoded X.509 certificates") from None
    if not certs:
        raise PkiError("bad_pem", "the PEM bundle holds no certificate")
    return certs


# --------------------------------------------------------------------------- key store


def write_file_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows it
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


#: The key store format: a JSON object (below), the key encrypted with AES-256-GCM under a key
#: that :data:`secchat.passphrase.PASSPHRASE_KDF` derives from the passphrase and a random salt.
KEY_STORE_FORMAT = "secchat-key-store/2"
#: A key store is a few hundred bytes; anything much larger is not one of ours.
_MAX_KEY_STORE = 64 * 1024
_LEGACY_PEM = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"


class _KeyStoreFile(msgspec.Struct, forbid_unknown_fields=True):
    """``identity.key`` / ``ca.key``: every field the decryption needs, authenticated as AAD."""

    format: str
    kdf: str
    n: int
    r: int
    p: int
    salt: bytes
    nonce: bytes
    ciphertext: bytes


def _key_store_aad(store: _KeyStoreFile) -> bytes:
    return canonical(store.format, store.kdf, store.n, store.r, store.p, store.salt)


def tighten_private(path: Path) -> None:
    """Make a folder 0700 or a file 0600 if it is ours and looser; never fails."""
    with contextlib.suppress(OSError):
        st = os.stat(path)
        private = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        if st.st_mode & 0o077 and st.st_uid == os.getuid():
            os.chmod(path, st.st_mode & private & 0o777)


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) as a folder only its owner may enter; tighten an existing one."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    tighten_private(path)
    return path


def _write_key_store(path: Path, key: Ed25519PrivateKey, passphrase: str) -> None:
    kdf = PASSPHRASE_KDF
    salt = os.urandom(16)
    store = _KeyStoreFile(KEY_STORE_FORMAT, "scrypt", kdf.n, kdf.r, kdf.p, salt, b"", b"")
    nonce = os.urandom(12)
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    aead = Aead(kdf.derive(passphrase, salt))
    sealed = msgspec.structs.replace(
        store, nonce=nonce, ciphertext=aead.seal(nonce, der, _key_store_aad(store))
    )
    make_private_dir(Path(path).parent)
    write_file_atomically(Path(path), msgspec.json.encode(sealed) + b"\n", 0o600)


def save_private_key(path: Path, key: Ed25519PrivateKey, passphrase: str) -> None:
    """Store ``key`` encrypted under a new ``passphrase``: mode 0600 in a 0700 folder, atomically.

    A passphrase shorter than :data:`secchat.passphrase.MIN_PASSPHRASE_LENGTH` is refused
    (``weak_passphrase``).
    """
    try:
        check_new_passphrase(passphrase)
    except WeakPassphrase as exc:
        raise PkiError("weak_passphrase", str(exc)) from None
    _write_key_store(path, key, passphrase)


def _open_key_store(path: Path, data: bytes, passphrase: str) -> tuple[bytes, bool]:
    """The PKCS#8 DER inside a key store, and whether the store should be rewritten."""
    if _LEGACY_PEM in data:  # PKCS#8 under PBKDF2 (SecChat 0.1): cheap to attack, upgrade it
        try:
            key = serialization.load_pem_private_key(data, password=passphrase.encode("utf-8"))
        except (ValueError, TypeError):
            raise PkiError("wrong_passphrase", f"wrong passphrase for key store {path}") from None
        except UnsupportedAlgorithm:
            raise PkiError(
                "unsupported_key", f"key store {path} uses an unsupported algorithm"
            ) from None
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return der, True
    try:
        store = msgspec.json.decode(data, type=_KeyStoreFile)
        if store.format != KEY_STORE_FORMAT or store.kdf != "scrypt":
            raise ValueError(f"unknown format {store.format!r} / {store.kdf!r}")
        kdf = PassphraseKdf(store.n, store.r, store.p)
        if not 16 <= len(store.salt) <= 64:
            raise ValueError("bad salt length")
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        raise PkiError("bad_pem", f"{path} is not a SecChat key store") from None
    try:
        der = Aead(kdf.derive(passphrase, store.salt)).open(
            store.nonce, store.ciphertext, _key_store_aad(store)
        )
    except CryptoError:
        raise PkiError("wrong_passphrase", f"wrong passphrase for key store {path}") from None
    return der, kdf.weaker_than(PASSPHRASE_KDF)


def load_private_key(path: Path, passphrase: str) -> Ed25519PrivateKey:
    """Load a key store written by :func:`save_private_key`.

    A key store in an older format (PKCS#8 under PBKDF2) or under weaker KDF parameters is
    rewritten in the current format with the same passphrase, atomically (the old file stays
    whole until the new one replaces it).  A key store readable by others is made 0600.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_KEY_STORE + 1)
    except FileNotFoundError:
        raise PkiError("no_key_store", f"there is no key store at {path}") from None
    except OSError as exc:
        raise PkiError("no_key_store", f"cannot read key store {path}: {exc.strerror}") from None
    if len(data) > _MAX_KEY_STORE:
        raise PkiError("bad_pem", f"{path} is too large to be a SecChat key store")
    der, upgrade = _open_key_store(path, data, passphrase)
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PkiError("unsupported_key", f"key store {path} holds no usable key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PkiError("unsupported_key", f"key store {path} does not hold an Ed25519 key")
    tighten_private(path)
    tighten_private(path.parent)
    if upgrade:
        try:
            _write_key_store(path, key, passphrase)
        except OSError as exc:  # still usable; try again next time
            _log.warning("could not upgrade key store %s: %s", path, exc.strerror)
        else:
            _log.info("upgraded key store %s to %s", path, PASSPHRASE_KDF.describe())
    return key


def key_store_kdf(path: Path) -> str:
    """How a key store's passphrase is stretched, for ``secchat identity show``."""
    try:
        data = Path(path).read_bytes()[: _MAX_KEY_STORE + 1]
    except OSError:
        return "unreadable"
    if _LEGACY_PEM in data:
        return "PKCS#8 with PBKDF2 (old format; upgraded when next unlocked)"
    try:
        store = msgspec.json.decode(data, type=_KeyStoreFile)
        return PassphraseKdf(store.n, store.r, store.p).describe()
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        return "unknown format"


# --------------------------------------------------------------------------- identity directories


@dataclass(frozen=True, slots=True)
class LocalIdentity:
    """This peer's key, certificate and trusted CAs, as ``secchat ca issue --out D`` wrote them."""

    key: Ed25519PrivateKey
    cert: x509.Certificate
    trusted: tuple[x509.Certificate, ...]

    @property
    def identity(self) -> Identity:
        return identity_of(self.cert)


def check_identity_files(directory: Path) -> None:
    """``PkiError("no_identity")`` unless ``directory`` holds a certificate, its CA and a key
    store (cheap: for saying so before a passphrase is asked)."""
    directory = Path(directory)
    for name in (IDENTITY_CERT_FILE, CA_CERT_FILE, IDENTITY_KEY_FILE):
        if (directory / name).exists():
            continue
        pending = (directory / IDENTITY_REQUEST_FILE).exists()
        if pending and (directory / IDENTITY_KEY_FILE).exists():
            raise PkiError(
                "no_identity",
                f"the certificate for {directory} is not installed yet: have the CA sign"
                f" {directory / IDENTITY_REQUEST_FILE}, then run `secchat identity install CERT`",
            )
        raise PkiError("no_identity", f"{directory / name} is missing: not an identity directory")


def load_identity(directory: Path, passphrase: str) -> LocalIdentity:
    """Load and check an identity directory: the key must match the certificate, which must verify."""
    directory = Path(directory)
    check_identity_files(directory)
    try:
        cert = cert_from_pem((directory / IDENTITY_CERT_FILE).read_bytes())
        trusted = tuple(certs_from_pem((directory / CA_CERT_FILE).read_bytes()))
    except FileNotFoundError as exc:
        raise PkiError("no_identity", f"{exc.filename} is missing: not an identity directory") from None
    key = load_private_key(directory / IDENTITY_KEY_FILE, passphrase)
    if signer_of(key).public_bytes != verifier_of(cert).public_bytes:
        raise PkiError("key_mismatch", f"the key in {directory} does not belong to its certificate")
    verify_certificate(cert, trusted)
    return LocalIdentity(key, cert, trusted)
