"""A user's SecChat profile: one directory holding identity, accepted certificates, history, config.

Layout of ``home`` (default: the platform's user data directory, ``platformdirs``)::

    config.toml                  name, directory URL, listen / advertised address (below)
    identity/identity.key        Ed25519 key, encrypted under the passphrase (scrypt, see pki)
    identity/request.pem         the certificate signing request ``secchat init`` made for the CA
    identity/next.key            after ``secchat identity rotate``: the new key, until installed
    identity/rotation.json       the rotation to it, signed by the old key (sent by ``register``)
    identity/identity.pem        certificate from the conference CA
    identity/ca.pem              the CA(s) this peer trusts
    accepted-certificates.json   the certificates the user accepted (directory.trust)
    history.sqlite3              delivered messages and saved key-exchange state, encrypted

The profile and its identity folder are 0700 and every file in them 0600 (an existing profile
that is looser is tightened when it is opened).

``config.toml``::

    name = "alice"
    directory = "http://127.0.0.1:8700"
    listen_host = "127.0.0.1"      # where peers connect to us
    listen_port = 0                # 0: any free port, published in the directory on join
    advertise_host = "127.0.0.1"   # the host published (default: listen_host)
    directory_timeout = 5.0        # seconds each directory operation may take in all
    directory_ca = "/etc/secchat/directory-ca.pem"   # https:// directory: the PEM bundle its
                                   # certificate must verify against (default: system trust);
                                   # a relative path is relative to the profile
    relay = "nats://relay:4222"    # optional: an untrusted NATS relay (comma-separated: a cluster)
    relay_only = false             # true: reach peers only through the relay
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import platformdirs
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .. import pki
from ..net.relay import RelayConfig
from ..passphrase import WeakPassphrase, check_new_passphrase

__all__ = [
    "CONFIG_FILE",
    "HISTORY_FILE",
    "IDENTITY_DIR",
    "TRUST_FILE",
    "ProfileError",
    "Settings",
    "create_profile",
    "default_home",
    "init_profile",
    "install_certificate",
    "load_settings",
    "profile_exists",
    "read_ca",
    "renewal_request",
    "rotation_request",
    "save_settings",
    "set_aside",
]

CONFIG_FILE = "config.toml"
IDENTITY_DIR = "identity"
TRUST_FILE = "accepted-certificates.json"
HISTORY_FILE = "history.sqlite3"
#: The key ``secchat identity rotate`` made, until its certificate is installed.
NEXT_KEY_FILE = "next.key"


class ProfileError(Exception):
    """A profile is missing, unreadable or cannot be created; ``code`` says which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Settings:
    """The documented contents of ``config.toml``."""

    name: str
    directory: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    advertise_host: str = ""
    directory_timeout: float = 5.0
    directory_ca: str = ""
    relay: str = ""
    relay_only: bool = False

    def __post_init__(self) -> None:
        self.relay_config()  # a bad relay URL is refused here, with the reason
        if not 0.1 <= self.directory_timeout <= 600:
            raise ValueError("directory_timeout must be in 0.1..600 seconds")
        if not self.directory.startswith(("http://", "https://")):
            raise ValueError(f"the directory URL must start with http:// or https://, not {self.directory!r}")
        if self.directory_ca and not self.directory.startswith("https://"):
            raise ValueError("directory_ca is used only with an https:// directory URL")
        if not 0 <= self.listen_port <= 65535:
            raise ValueError("listen_port must be in 0..65535")
        if self.listen_host in ("0.0.0.0", "::", "") and not self.advertise_host:
            raise ValueError("listening on every interface needs an advertise_host that peers can reach")

    @property
    def advertised(self) -> str:
        return self.advertise_host or self.listen_host

    def directory_ca_file(self, home: Path) -> Path | None:
        """The CA bundle of an https:// directory (relative to the profile), None: system trust."""
        return Path(home) / self.directory_ca if self.directory_ca else None

    def relay_config(self) -> RelayConfig | None:
        """The relay of this profile (:mod:`secchat.net.relay`), or None."""
        servers = tuple(u.strip() for u in self.relay.split(",") if u.strip())
        if not servers:
            if self.relay_only:
                raise ValueError("relay_only needs a relay URL")
            return None
        return RelayConfig(servers=servers, only=self.relay_only)


def default_home() -> Path:
    return Path(platformdirs.user_data_dir("secchat"))


def load_settings(home: Path) -> Settings:
    path = Path(home) / CONFIG_FILE
    pki.tighten_private(Path(home))
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError("no_profile", f"there is no SecChat profile in {home}: run `secchat init` first") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError("bad_config", f"{path} is unreadable: {exc}") from None
    try:
        return Settings(**data)
    except (TypeError, ValueError) as exc:
        raise ProfileError("bad_config", f"{path} is invalid: {exc}") from None


def save_settings(home: Path, settings: Settings) -> None:
    data = {k: v for k, v in asdict(settings).items() if v != "" and not (k == "relay_only" and not v)}
    pki.make_private_dir(Path(home))
    pki.write_file_atomically(Path(home) / CONFIG_FILE, tomli_w.dumps(data).encode("utf-8"), 0o600)


def profile_exists(home: Path) -> bool:
    """Whether ``home`` holds a profile (its config or its key), complete or not."""
    home = Path(home)
    return (home / CONFIG_FILE).exists() or (home / IDENTITY_DIR / pki.IDENTITY_KEY_FILE).exists()


#: What replacing a profile moves aside: its identity and its history (SQLite's side files too).
PROFILE_KEYS = (IDENTITY_DIR, HISTORY_FILE, HISTORY_FILE + "-wal", HISTORY_FILE + "-shm")


def set_aside(
    home: Path, names: tuple[str, ...] = PROFILE_KEYS, now: datetime | None = None
) -> Path | None:
    """Move ``names`` (default: a profile's identity and history) from ``home`` into
    ``home/replaced-<UTC time>/``; nothing is deleted.  Returns that folder, or None when there
    was nothing to move.  Also what ``secchat ca init --force`` does with an old CA."""
    home = Path(home)
    moving = [home / name for name in names if (home / name).exists()]
    if not moving:
        return None
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    aside = home / f"replaced-{stamp}"
    n = 1
    while aside.exists():
        n += 1
        aside = home / f"replaced-{stamp}-{n}"
    pki.make_private_dir(aside)
    for path in moving:
        os.replace(path, aside / path.name)
    return aside


def _may_create(home: Path, passphrase: str, replace: bool) -> None:
    try:
        check_new_passphrase(passphrase)
    except WeakPassphrase as exc:
        raise ProfileError("weak_passphrase", str(exc)) from None
    if profile_exists(home) and not replace:
        raise ProfileError("exists", f"a profile already exists in {home}")


def create_profile(
    home: Path,
    name: str,
    passphrase: str,
    directory: str,
    *,
    listen_host: str = "127.0.0.1",
    listen_port: int = 0,
    advertise_host: str = "",
    directory_ca: str = "",
    relay: str = "",
    relay_only: bool = False,
    replace: bool = False,
) -> x509.CertificateSigningRequest:
    """Make the user's key (stored under ``passphrase``), a certificate signing request for it
    (``identity/request.pem``, for the CA) and ``config.toml``; return the request.

    An existing profile is refused (``exists``) unless ``replace``: then its identity and history
    are set aside (:func:`set_aside`), never deleted.  Everything is checked before anything is
    written.
    """
    home = Path(home)
    _may_create(home, passphrase, replace)
    try:
        settings = Settings(name, directory, listen_host, listen_port, advertise_host,
                            directory_ca=directory_ca, relay=relay, relay_only=relay_only)
    except ValueError as exc:
        raise ProfileError("bad_config", str(exc)) from None
    key = pki.generate_key()
    try:
        request = pki.make_request(key, name)
    except ValueError as exc:
        raise ProfileError("bad_name", str(exc)) from None
    pki.make_private_dir(home)
    set_aside(home)  # the replaced profile's, or a stray history no passphrase here would open
    ident = pki.make_private_dir(home / IDENTITY_DIR)
    pki.save_private_key(ident / pki.IDENTITY_KEY_FILE, key, passphrase)
    pki.write_file_atomically(ident / pki.IDENTITY_REQUEST_FILE, pki.request_to_pem(request), 0o600)
    save_settings(home, settings)
    return request


def install_certificate(
    home: Path, certs: list[x509.Certificate], cas: list[x509.Certificate] | None = None
) -> x509.Certificate:
    """Complete a profile with the certificate the CA returned for its request.

    ``certs`` is what ``secchat ca sign`` wrote: the certificate, then its CA; ``cas`` overrides
    the CA.  The certificate must carry the request's key and the profile's name and verify
    against the CA.  Needs no passphrase: the request holds the public key.
    """
    home = Path(home)
    settings = load_settings(home)
    ident = home / IDENTITY_DIR
    try:
        request = pki.request_from_pem((ident / pki.IDENTITY_REQUEST_FILE).read_bytes())
    except FileNotFoundError:
        raise ProfileError(
            "no_request", f"there is no certificate request in {ident}: run `secchat init` first"
        ) from None
    except pki.PkiError as exc:
        raise ProfileError(exc.code, str(exc)) from None
    if not certs:
        raise ProfileError("bad_pem", "no certificate to install")
    cert, trusted = certs[0], list(cas) if cas else certs[1:]
    if not trusted:
        raise ProfileError("no_ca", "the certificate comes without its CA: pass the CA's too")
    try:
        if pki.verifier_of(cert).public_bytes != _public_bytes(request):
            raise ProfileError("key_mismatch", f"this certificate is not for the key in {ident}")
        identity = pki.verify_certificate(cert, trusted)
    except pki.PkiError as exc:
        raise ProfileError(exc.code, str(exc)) from None
    if identity.name != settings.name:
        raise ProfileError(
            "key_mismatch",
            f"this certificate names {identity.name!r}, the profile is {settings.name!r}",
        )
    if (ident / NEXT_KEY_FILE).exists() and _rotated_to(ident, cert):
        # the certificate of a rotation (the request is for next.key): the old key and
        # certificate are set aside, never deleted, and the new key takes their place
        set_aside(home, (f"{IDENTITY_DIR}/{pki.IDENTITY_KEY_FILE}", f"{IDENTITY_DIR}/{pki.IDENTITY_CERT_FILE}"))
        os.replace(ident / NEXT_KEY_FILE, ident / pki.IDENTITY_KEY_FILE)
    pki.write_file_atomically(ident / pki.CA_CERT_FILE, pki.certs_to_pem(trusted), 0o600)
    pki.write_file_atomically(ident / pki.IDENTITY_CERT_FILE, pki.cert_to_pem(cert), 0o600)
    return cert


def renewal_request(home: Path, passphrase: str) -> x509.CertificateSigningRequest:
    """A new request for the profile's *current* key and name (to renew its certificate: the CA
    signs it, :func:`install_certificate` installs the result); written to ``request.pem``."""
    home = Path(home)
    settings = load_settings(home)
    ident = home / IDENTITY_DIR
    try:
        key = pki.load_private_key(ident / pki.IDENTITY_KEY_FILE, passphrase)
    except pki.PkiError as exc:
        raise ProfileError(exc.code, str(exc)) from None
    request = pki.make_request(key, settings.name)
    set_aside(home, (f"{IDENTITY_DIR}/{NEXT_KEY_FILE}",))  # a rotation started before: cancelled
    pki.write_file_atomically(ident / pki.IDENTITY_REQUEST_FILE, pki.request_to_pem(request), 0o600)
    return request


def _rotated_to(ident: Path, cert: x509.Certificate) -> bool:
    from ..directory.identities import IdentityError, proof_for

    try:
        return proof_for(ident, cert) is not None
    except IdentityError as exc:
        raise ProfileError(exc.code, str(exc)) from None


def rotation_request(home: Path, passphrase: str, *, now: int | None = None) -> x509.CertificateSigningRequest:
    """Start a key rotation: a new key (``identity/next.key``, under the same passphrase), a
    request for it (``request.pem``, for the CA) and the rotation to it signed by the current
    key (``rotation.json``, which ``register`` sends).  The current key stays in use until the
    new certificate is installed (:func:`install_certificate`); a rotation started before and not
    installed is set aside."""
    import time

    from ..directory.identities import ROTATION_FILE, save_proof
    from ..directory.models import IdentityRotation

    home = Path(home)
    settings = load_settings(home)
    ident = home / IDENTITY_DIR
    try:
        current = pki.load_identity(ident, passphrase)
    except pki.PkiError as exc:
        raise ProfileError(exc.code, str(exc)) from None
    key = pki.generate_key()
    request = pki.make_request(key, settings.name)
    set_aside(home, (f"{IDENTITY_DIR}/{NEXT_KEY_FILE}",))
    identity = current.identity
    rotation = IdentityRotation(
        identity.name,
        identity.issuer,
        pki.verifier_of(current.cert).public_bytes,
        pki.signer_of(key).public_bytes,
        int(now if now is not None else time.time()),
    )
    signature = pki.signer_of(current.key).sign(rotation.signed_bytes())
    pki.save_private_key(ident / NEXT_KEY_FILE, key, passphrase)
    save_proof(ident / ROTATION_FILE, rotation, signature)
    pki.write_file_atomically(ident / pki.IDENTITY_REQUEST_FILE, pki.request_to_pem(request), 0o600)
    return request


def _public_bytes(request: x509.CertificateSigningRequest) -> bytes:
    key = request.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise ProfileError("unsupported_key", "the certificate request's key is not an Ed25519 key")
    return key.public_bytes_raw()


def read_ca(ca_dir: Path, ca_passphrase: str) -> tuple[Ed25519PrivateKey, x509.Certificate]:
    """The CA's key and certificate in ``ca_dir``; ``no_ca`` / ``wrong_ca_passphrase``."""
    try:
        ca_cert = pki.cert_from_pem((Path(ca_dir) / pki.CA_CERT_FILE).read_bytes())
        ca_key = pki.load_private_key(Path(ca_dir) / pki.CA_KEY_FILE, ca_passphrase)
    except FileNotFoundError:
        raise ProfileError(
            "no_ca", f"there is no CA in {ca_dir} (create one with `secchat ca init`)"
        ) from None
    except pki.PkiError as exc:
        if exc.code == "wrong_passphrase":
            raise ProfileError("wrong_ca_passphrase", f"wrong passphrase for the CA key in {ca_dir}") from None
        raise ProfileError("no_ca" if exc.code == "no_key_store" else exc.code, str(exc)) from None
    return ca_key, ca_cert


def init_profile(
    home: Path,
    name: str,
    passphrase: str,
    directory: str,
    ca_dir: Path,
    ca_passphrase: str,
    *,
    listen_host: str = "127.0.0.1",
    listen_port: int = 0,
    advertise_host: str = "",
    directory_ca: str = "",
    relay: str = "",
    relay_only: bool = False,
    replace: bool = False,
) -> str:
    """The one-machine shortcut: :func:`create_profile`, signed at once by the CA in ``ca_dir``
    (whose key is on this machine), and :func:`install_certificate`; returns the fingerprint.

    The CA and its passphrase are checked first, so a failure leaves no half-made profile.
    """
    home = Path(home)
    _may_create(home, passphrase, replace)
    ca_key, ca_cert = read_ca(ca_dir, ca_passphrase)
    request = create_profile(
        home, name, passphrase, directory, listen_host=listen_host, listen_port=listen_port,
        advertise_host=advertise_host, directory_ca=directory_ca, relay=relay, relay_only=relay_only,
        replace=replace,
    )
    try:
        cert = pki.sign_request(ca_key, ca_cert, request)
    except pki.PkiError as exc:
        raise ProfileError(exc.code, str(exc)) from None
    install_certificate(home, [cert, ca_cert])
    return pki.fingerprint(cert)


LOCK_FILE = "profile.lock"


class ProfileLock:
    """One process at a time runs a profile's network node (it publishes the profile's contact
    address: a second one would cut the first off).  An advisory ``flock`` on ``profile.lock``,
    which the kernel releases when the process dies, so a lock left by a crash is taken over at
    once; the file names the holder for the refusal's sentence."""

    def __init__(self, home: Path) -> None:
        self.path = Path(home) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, what: str) -> None:
        """Take the lock for ``what`` (e.g. ``secchat chat``); :class:`ProfileError` with code
        ``profile_in_use`` and one sentence if another process holds it."""
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 256).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            name = self.path.parent.name
            raise ProfileError("profile_in_use", f"the profile {name} is in use by {holder}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} ({what})".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
