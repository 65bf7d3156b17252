"""A user's SecChat profile: one directory holding identity, accepted certificates, history, config.

Layout of ``home`` (default: the platform's user data directory, ``platformdirs``)::

    config.toml                  name, directory URL, listen / advertised address (below)
    identity/identity.key        Ed25519 key, encrypted under the passphrase (scrypt, see pki)
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
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

import platformdirs
import tomli_w

from .. import pki
from ..passphrase import WeakPassphrase, check_new_passphrase

__all__ = [
    "CONFIG_FILE",
    "HISTORY_FILE",
    "IDENTITY_DIR",
    "TRUST_FILE",
    "ProfileError",
    "Settings",
    "default_home",
    "init_profile",
    "load_settings",
    "save_settings",
]

CONFIG_FILE = "config.toml"
IDENTITY_DIR = "identity"
TRUST_FILE = "accepted-certificates.json"
HISTORY_FILE = "history.sqlite3"


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

    def __post_init__(self) -> None:
        if not self.directory.startswith(("http://", "https://")):
            raise ValueError(f"the directory URL must start with http:// or https://, not {self.directory!r}")
        if not 0 <= self.listen_port <= 65535:
            raise ValueError("listen_port must be in 0..65535")
        if self.listen_host in ("0.0.0.0", "::", "") and not self.advertise_host:
            raise ValueError("listening on every interface needs an advertise_host that peers can reach")

    @property
    def advertised(self) -> str:
        return self.advertise_host or self.listen_host


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
    data = {k: v for k, v in asdict(settings).items() if v != ""}
    pki.make_private_dir(Path(home))
    pki.write_file_atomically(Path(home) / CONFIG_FILE, tomli_w.dumps(data).encode("utf-8"), 0o600)


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
    force: bool = False,
) -> str:
    """Create an identity issued by the CA in ``ca_dir`` and the profile's config; return the
    certificate's fingerprint."""
    home = Path(home)
    try:
        check_new_passphrase(passphrase)
    except WeakPassphrase as exc:
        raise ProfileError("weak_passphrase", str(exc)) from None
    if (home / CONFIG_FILE).exists() and not force:
        raise ProfileError("exists", f"a profile already exists in {home} (use --force to replace it)")
    try:
        settings = Settings(name, directory, listen_host, listen_port, advertise_host)
    except ValueError as exc:
        raise ProfileError("bad_config", str(exc)) from None
    try:
        ca_cert = pki.cert_from_pem((Path(ca_dir) / pki.CA_CERT_FILE).read_bytes())
    except FileNotFoundError:
        raise ProfileError("no_ca", f"there is no CA in {ca_dir} (create one with `secchat ca init`)") from None
    except pki.PkiError as exc:
        raise ProfileError("no_ca", str(exc)) from None
    try:
        ca_key = pki.load_private_key(Path(ca_dir) / pki.CA_KEY_FILE, ca_passphrase)
        key = pki.generate_key()
        cert = pki.issue_certificate(ca_key, ca_cert, name, key.public_key())
        ident = home / IDENTITY_DIR
        pki.make_private_dir(home)
        pki.save_private_key(ident / pki.IDENTITY_KEY_FILE, key, passphrase)
    except pki.PkiError as exc:
        if exc.code == "wrong_passphrase":
            raise ProfileError("wrong_ca_passphrase", f"wrong passphrase for the CA key in {ca_dir}") from None
        raise ProfileError(exc.code, str(exc)) from None
    except ValueError as exc:
        raise ProfileError("bad_name", str(exc)) from None
    pki.write_file_atomically(ident / pki.IDENTITY_CERT_FILE, pki.cert_to_pem(cert), 0o600)
    pki.write_file_atomically(ident / pki.CA_CERT_FILE, pki.cert_to_pem(ca_cert), 0o600)
    history = home / HISTORY_FILE
    if history.exists():  # a history under another passphrase would be unreadable
        history.unlink()
    save_settings(home, settings)
    return pki.fingerprint(cert)
