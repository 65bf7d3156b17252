"""``secchat init``, ``secchat ca ...`` and ``secchat identity ...``: identities and the CA.

The lifecycle, with nobody but the CA operator touching the CA's key::

    secchat init alice --home alice              # alice: her key, and alice/identity/request.pem
    secchat ca sign alice/identity/request.pem --out alice.pem      # the CA operator
    secchat identity install alice.pem --home alice                 # alice: the profile is complete

``secchat init NAME --ca-dir DIR`` is the one-machine shortcut (the CA's key is here: it signs at
once).  ``secchat ca issue NAME --out D`` makes a key *and* certificate on the CA's machine, for
the cluster and tests.  A CA directory holds ``ca.key`` (encrypted) and ``ca.pem``.  Passphrases
come from ``--passphrase-file``, the environment (``SECCHAT_PASSPHRASE``;
``SECCHAT_CA_PASSPHRASE`` for the CA's key) or a hidden prompt that names whose it is, and are
never echoed or logged.  Errors are one sentence on stderr and an exit code of
:mod:`secchat.app.exit_codes`.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import platformdirs
import typer
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secchat import pki
from secchat.passphrase import WeakPassphrase, check_new_passphrase

from .exit_codes import ExitCode, fail, fail_for

__all__ = [
    "CA_ENVS",
    "PASSPHRASE_ENV",
    "ca_app",
    "fail",
    "home_hint",
    "identity_app",
    "init",
    "read_passphrase",
    "resolve_home",
]

ca_app = typer.Typer(help="Run a conference certificate authority.", no_args_is_help=True)
identity_app = typer.Typer(
    help="This peer's identity: show it, install its certificate, renew it, rotate its key.",
    no_args_is_help=True,
)


@ca_app.callback()
def _ca() -> None:
    """Run a conference certificate authority."""


@identity_app.callback()
def _identity() -> None:
    """This peer's identity: show it, install its certificate, renew it, rotate its key."""


PASSPHRASE_ENV = "SECCHAT_PASSPHRASE"
CA_PASSPHRASE_ENV = "SECCHAT_CA_PASSPHRASE"
#: The CA's key falls back to ``SECCHAT_PASSPHRASE`` when ``SECCHAT_CA_PASSPHRASE`` is unset.
CA_ENVS = (CA_PASSPHRASE_ENV, PASSPHRASE_ENV)

HOME_OPTION = typer.Option(
    "--home",
    envvar="SECCHAT_HOME",
    help="Profile directory (env SECCHAT_HOME; default: the user data directory).",
)
PASSFILE_OPTION = typer.Option(
    "--passphrase-file", help="Read the profile's passphrase from the first line of this file."
)


def default_ca_dir() -> Path:
    return Path(platformdirs.user_data_dir("secchat")) / "ca"


def default_identity_dir() -> Path:
    return Path(platformdirs.user_data_dir("secchat")) / "identity"


def resolve_home(home: Path | None) -> Path:
    """The profile directory: ``--home`` / ``SECCHAT_HOME``, else the user data directory."""
    from .profile import default_home

    return home or default_home()


def home_hint(home: Path | None) -> str:
    """`` --home DIR`` as the user must type it in a next command ('' for the default profile)."""
    if home is None or os.environ.get("SECCHAT_HOME") == str(home):
        return ""
    return f" --home {shlex.quote(str(home))}"


def read_passphrase(
    file: Path | None, envs: tuple[str, ...], prompt: str, *, new: bool = False
) -> str:
    """A passphrase from a file (first line), the first set variable of ``envs``, or a prompt.

    ``new``: the passphrase is being chosen, so the prompt asks twice and one shorter than
    :data:`secchat.passphrase.MIN_PASSPHRASE_LENGTH` is refused before any work is done.
    """
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise fail(
                f"cannot read passphrase file {file}: {exc.strerror}", ExitCode.SETUP
            ) from None
        passphrase = text.splitlines()[0] if text else ""
    elif any(os.environ.get(env) for env in envs):
        passphrase = next(os.environ[env] for env in envs if os.environ.get(env))
    else:
        try:
            passphrase = typer.prompt(prompt, hide_input=True, confirmation_prompt=new)
        except (typer.Abort, EOFError):
            raise fail("no passphrase given", ExitCode.PASSPHRASE) from None
    if not passphrase:
        raise fail("the passphrase is empty", ExitCode.PASSPHRASE)
    if new:
        try:
            check_new_passphrase(passphrase)
        except WeakPassphrase as exc:
            raise fail(str(exc), ExitCode.PASSPHRASE) from None
    return passphrase


def _write_public(path: Path, data: bytes) -> None:
    pki.write_file_atomically(path, data, 0o644)


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return pki.cert_from_pem(path.read_bytes())
    except FileNotFoundError:
        raise fail(f"there is no certificate at {path}", ExitCode.SETUP) from None
    except pki.PkiError as exc:
        raise fail(f"{path}: {exc}", ExitCode.SETUP) from None


def _read_bundle(path: Path) -> list[x509.Certificate]:
    try:
        return pki.certs_from_pem(path.read_bytes())
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}", ExitCode.SETUP) from None
    except pki.PkiError as exc:
        raise fail(f"{path}: {exc}", ExitCode.SETUP) from None


def _load_ca(
    directory: Path, passphrase_file: Path | None
) -> tuple[Ed25519PrivateKey, x509.Certificate]:
    from .profile import ProfileError, read_ca

    if not (directory / pki.CA_CERT_FILE).exists():
        raise fail(
            f"there is no CA in {directory} (create one with `secchat ca init`)", ExitCode.SETUP
        )
    ca_pass = read_passphrase(passphrase_file, CA_ENVS, f"passphrase of the CA in {directory}")
    try:
        return read_ca(directory, ca_pass)
    except ProfileError as exc:
        raise fail_for(exc) from None


_DIR_HELP = "Directory of the CA's key and certificate (default: <user data dir>/ca)."
_PASS_HELP = "Read the passphrase from the first line of this file."
_CA_PASS_HELP = "Read the CA key's passphrase from this file."


# --------------------------------------------------------------------------- init


def _confirm_replace(home: Path, yes: bool) -> None:
    """``--replace`` is confirmed separately: by ``--yes``, or by typing the profile's name."""
    from .profile import ProfileError, load_settings

    if yes:
        return
    try:
        name = load_settings(home).name
    except ProfileError:
        name = home.name
    if not sys.stdin.isatty():
        raise fail(
            f"--replace sets aside {name}'s key and history in {home}; add --yes to confirm",
            ExitCode.EXISTS,
        )
    typer.echo(
        f"This sets aside the key and history of profile {name!r} in {home} (moved to a"
        " replaced-<time> folder, not deleted).  The directory keeps your name for the old key.",
        err=True,
    )
    answer = typer.prompt(
        f"Type the profile's name ({name}) to confirm", default="", show_default=False
    )
    if answer.strip() != name:
        raise fail("not confirmed: the profile is unchanged", ExitCode.EXISTS)


def init(
    name: Annotated[str, typer.Argument(help="Your name (the certificate's common name).")],
    ca_dir: Annotated[
        Path | None,
        typer.Option(
            "--ca-dir",
            help="One-machine shortcut: the CA in this directory signs your request at once"
            " (without it: a request for the CA, see `secchat ca sign`).",
        ),
    ] = None,
    directory: Annotated[
        str,
        typer.Option(
            "--directory", envvar="SECCHAT_DIRECTORY", help="Directory URL (env SECCHAT_DIRECTORY)."
        ),
    ] = "http://127.0.0.1:8700",
    directory_ca: Annotated[
        Path | None,
        typer.Option(
            "--directory-ca",
            help="PEM bundle an https:// directory's certificate must verify against"
            " (default: the system's trust store).",
        ),
    ] = None,
    home: Annotated[Path | None, HOME_OPTION] = None,
    passphrase_file: Annotated[Path | None, PASSFILE_OPTION] = None,
    ca_passphrase_file: Annotated[
        Path | None, typer.Option("--ca-passphrase-file", help=_CA_PASS_HELP)
    ] = None,
    listen_host: Annotated[
        str, typer.Option("--listen-host", help="Address peers connect to.")
    ] = "127.0.0.1",
    listen_port: Annotated[
        int, typer.Option("--listen-port", min=0, max=65535, help="0: any free port.")
    ] = 0,
    advertise_host: Annotated[
        str,
        typer.Option(
            "--advertise-host", help="Host published for peers (default: the listen host)."
        ),
    ] = "",
    relay: Annotated[
        str,
        typer.Option(
            "--relay",
            help="An untrusted NATS relay to reach peers through (nats://HOST:PORT;"
            " comma-separated for a cluster).",
        ),
    ] = "",
    relay_only: Annotated[
        bool, typer.Option("--relay-only", help="Reach peers only through the relay.")
    ] = False,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Replace an existing profile's key; its key and history are moved aside, not"
            " deleted (asks to confirm, or --yes).",
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm --replace without asking.")] = False,
) -> None:
    """Create your profile: your own key (encrypted), a certificate request for the CA, config."""
    from .profile import ProfileError, create_profile, init_profile, profile_exists

    given_home = home
    home = resolve_home(home)
    tls_ca = _directory_ca(directory, directory_ca)
    if profile_exists(home):
        if not replace:
            raise fail(
                f"a profile already exists in {home}; to replace its key use --replace"
                " (its key and history are moved aside)",
                ExitCode.EXISTS,
            )
        _confirm_replace(home, yes)
    passphrase = read_passphrase(
        passphrase_file,
        (PASSPHRASE_ENV,),
        f"new passphrase for {name}'s profile in {home}",
        new=True,
    )
    hint = home_hint(given_home)
    try:
        if ca_dir is not None:
            if not (ca_dir / pki.CA_CERT_FILE).exists():
                raise fail(
                    f"there is no CA in {ca_dir} (create one with `secchat ca init`)",
                    ExitCode.SETUP,
                )
            ca_pass = read_passphrase(
                ca_passphrase_file, CA_ENVS, f"passphrase of the CA in {ca_dir}"
            )
            fp = init_profile(
                home,
                name,
                passphrase,
                directory,
                ca_dir,
                ca_pass,
                listen_host=listen_host,
                listen_port=listen_port,
                advertise_host=advertise_host,
                directory_ca=tls_ca,
                relay=relay,
                relay_only=relay_only,
                replace=replace,
            )
        else:
            create_profile(
                home,
                name,
                passphrase,
                directory,
                listen_host=listen_host,
                listen_port=listen_port,
                advertise_host=advertise_host,
                directory_ca=tls_ca,
                relay=relay,
                relay_only=relay_only,
                replace=replace,
            )
    except ProfileError as exc:
        raise fail_for(exc) from None
    typer.echo(f"created profile {name!r} in {home}")
    if ca_dir is not None:
        typer.echo(f"fingerprint {fp}")
        typer.echo(f"directory {directory}; next: secchat register{hint}")
        return
    request = home / "identity" / pki.IDENTITY_REQUEST_FILE
    typer.echo(f"certificate request {request} (it holds no secret)")
    typer.echo(
        f"next: the CA operator runs"
        f" `secchat ca sign {shlex.quote(str(request))} --out {name}.pem`;"
    )
    typer.echo(f"then: secchat identity install {name}.pem{hint}; secchat register{hint}")


def _directory_ca(directory: str, bundle: Path | None) -> str:
    """``--directory-ca`` checked before anything is written: readable, and for https:// only."""
    if bundle is None:
        return ""
    if not directory.startswith("https://"):
        raise fail("--directory-ca is used only with an https:// directory URL", ExitCode.USAGE)
    from secchat.directory.client import DirectoryError, directory_tls

    try:
        directory_tls(bundle)
    except DirectoryError as exc:
        raise fail_for(exc) from None
    return str(bundle.resolve())


# --------------------------------------------------------------------------- ca


@ca_app.command("init")
def ca_init(
    directory: Annotated[Path | None, typer.Option("--dir", help=_DIR_HELP)] = None,
    name: Annotated[str, typer.Option("--name", help="The CA's common name.")] = "SecChat CA",
    valid_days: Annotated[int, typer.Option("--days", min=1, help="Validity in days.")] = 3650,
    passphrase_file: Annotated[
        Path | None, typer.Option("--passphrase-file", help=_PASS_HELP)
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace an existing CA (its files are moved aside, not deleted)."
        ),
    ] = False,
) -> None:
    """Create a self-signed CA (its key is stored encrypted, in a 0700 folder)."""
    from .profile import set_aside

    directory = directory or default_ca_dir()
    key_path, cert_path = directory / pki.CA_KEY_FILE, directory / pki.CA_CERT_FILE
    if not force and (key_path.exists() or cert_path.exists()):
        raise fail(
            f"a CA already exists in {directory} (use --force to replace it)", ExitCode.EXISTS
        )
    passphrase = read_passphrase(
        passphrase_file, CA_ENVS, f"new passphrase for the CA in {directory}", new=True
    )
    try:
        key, cert = pki.create_ca(name, valid_days=valid_days)
        aside = set_aside(directory, (pki.CA_KEY_FILE, pki.CA_CERT_FILE))
        if aside is not None:
            typer.echo(f"moved the old CA to {aside}", err=True)
        pki.save_private_key(key_path, key, passphrase)
    except pki.PkiError as exc:
        raise fail_for(exc) from None
    except ValueError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None
    _write_public(cert_path, pki.cert_to_pem(cert))
    typer.echo(f"created CA {name!r} in {directory}")
    typer.echo(f"fingerprint {pki.fingerprint(cert)}")


@ca_app.command("sign")
def ca_sign(
    request: Annotated[
        Path, typer.Argument(help="The request `secchat init` made (identity/request.pem).")
    ],
    directory: Annotated[Path | None, typer.Option("--dir", help=_DIR_HELP)] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Write the certificate and the CA's to this file (default: stdout)."
        ),
    ] = None,
    valid_days: Annotated[int, typer.Option("--days", min=1, help="Validity in days.")] = 365,
    ca_passphrase_file: Annotated[
        Path | None, typer.Option("--ca-passphrase-file", help=_CA_PASS_HELP)
    ] = None,
) -> None:
    """Sign a certificate request: the certificate for its name and key (the CA never sees the
    private key).  The output also carries the CA's certificate, for `secchat identity install`."""
    directory = directory or default_ca_dir()
    try:
        csr = pki.request_from_pem(request.read_bytes())
    except OSError as exc:
        raise fail(f"cannot read {request}: {exc.strerror}", ExitCode.SETUP) from None
    except pki.PkiError as exc:
        raise fail(f"{request}: {exc}", ExitCode.USAGE) from None
    ca_key, ca_cert = _load_ca(directory, ca_passphrase_file)
    try:
        cert = pki.sign_request(ca_key, ca_cert, csr, valid_days=valid_days)
    except pki.PkiError as exc:
        raise fail_for(exc, f"{request}: {exc}") from None
    bundle = pki.certs_to_pem([cert, ca_cert])
    if out is None:
        sys.stdout.buffer.write(bundle)
        sys.stdout.flush()
    else:
        _write_public(out, bundle)
    typer.echo(
        f"signed {pki.identity_of(cert)}, fingerprint {pki.fingerprint(cert)}"
        + (f", in {out}" if out is not None else ""),
        err=True,
    )


@ca_app.command("issue")
def ca_issue(
    name: Annotated[str, typer.Argument(help="The peer's name (certificate common name).")],
    directory: Annotated[Path | None, typer.Option("--dir", help=_DIR_HELP)] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Identity directory to write (default: ./NAME).")
    ] = None,
    valid_days: Annotated[int, typer.Option("--days", min=1, help="Validity in days.")] = 365,
    ca_passphrase_file: Annotated[
        Path | None, typer.Option("--ca-passphrase-file", help=_CA_PASS_HELP)
    ] = None,
    passphrase_file: Annotated[
        Path | None,
        typer.Option("--passphrase-file", help="Read the new key's passphrase from this file."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing identity.")] = False,
) -> None:
    """Make NAME a key and certificate here, in an identity directory (prefer init + ca sign)."""
    directory = directory or default_ca_dir()
    out = out or Path(name)
    if not force and (out / pki.IDENTITY_KEY_FILE).exists():
        raise fail(
            f"an identity already exists in {out} (use --force to replace it)", ExitCode.EXISTS
        )
    ca_key, ca_cert = _load_ca(directory, ca_passphrase_file)
    passphrase = read_passphrase(
        passphrase_file,
        (PASSPHRASE_ENV,),
        f"new passphrase for {name}'s identity in {out}",
        new=True,
    )
    try:
        key = pki.generate_key()
        cert = pki.issue_certificate(ca_key, ca_cert, name, key.public_key(), valid_days=valid_days)
        pki.save_private_key(out / pki.IDENTITY_KEY_FILE, key, passphrase)
    except pki.PkiError as exc:
        raise fail_for(exc) from None
    except ValueError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None
    _write_public(out / pki.IDENTITY_CERT_FILE, pki.cert_to_pem(cert))
    _write_public(out / pki.CA_CERT_FILE, pki.cert_to_pem(ca_cert))
    typer.echo(f"issued {pki.identity_of(cert)} in {out}")
    typer.echo(f"fingerprint {pki.fingerprint(cert)}")


# --------------------------------------------------------------------------- identity


@identity_app.command("install")
def identity_install(
    cert: Annotated[
        Path, typer.Argument(help="What `secchat ca sign` returned (certificate, then the CA's).")
    ],
    ca: Annotated[
        Path | None, typer.Option("--ca", help="The CA's certificate, if not in CERT.")
    ] = None,
    home: Annotated[Path | None, HOME_OPTION] = None,
) -> None:
    """Complete your profile with the certificate the CA signed for your request."""
    from .profile import ProfileError, install_certificate

    given_home = home
    home = resolve_home(home)
    certs = _read_bundle(cert)
    cas = _read_bundle(ca) if ca is not None else None
    try:
        installed = install_certificate(home, certs, cas)
    except ProfileError as exc:
        raise fail_for(exc) from None
    trusted = cas or certs[1:]
    typer.echo(f"installed {pki.identity_of(installed)} in {home}")
    typer.echo(f"fingerprint {pki.fingerprint(installed)}")
    for c in trusted:
        typer.echo(
            f"trusting CA {pki.identity_of(c).name!r} {pki.fingerprint(c)}"
            " (check it with the CA operator)"
        )
    typer.echo(f"next: secchat register{home_hint(given_home)}")


def _next_request(home: Path | None, passphrase_file: Path | None, rotate: bool) -> None:
    from .profile import (
        IDENTITY_DIR,
        ProfileError,
        load_settings,
        renewal_request,
        rotation_request,
    )

    given_home = home
    home = resolve_home(home)
    try:
        name = load_settings(home).name
    except ProfileError as exc:
        raise fail_for(exc) from None
    passphrase = read_passphrase(
        passphrase_file, (PASSPHRASE_ENV,), f"passphrase for {name}'s profile in {home}"
    )
    try:
        (rotation_request if rotate else renewal_request)(home, passphrase)
    except ProfileError as exc:
        raise fail_for(exc) from None
    request = home / IDENTITY_DIR / pki.IDENTITY_REQUEST_FILE
    hint = home_hint(given_home)
    if rotate:
        typer.echo(f"new key made; certificate request {request} for it")
        typer.echo("the rotation to it is signed by your current key, which stays in use until then")
    else:
        typer.echo(f"certificate request {request} for {name}'s current key")
    typer.echo(
        f"next: the CA operator runs `secchat ca sign {shlex.quote(str(request))} --out {name}.pem`;"
        f" then: secchat identity install {name}.pem{hint}; secchat register{hint}"
    )


@identity_app.command("renew")
def identity_renew(
    home: Annotated[Path | None, HOME_OPTION] = None,
    passphrase_file: Annotated[Path | None, PASSFILE_OPTION] = None,
) -> None:
    """Make a certificate request for your current key, to renew your certificate (peers pin
    your key: a renewal changes nothing for them)."""
    _next_request(home, passphrase_file, rotate=False)


identity_app.command("request", help="The same as `secchat identity renew`.")(identity_renew)


@identity_app.command("rotate")
def identity_rotate(
    home: Annotated[Path | None, HOME_OPTION] = None,
    passphrase_file: Annotated[Path | None, PASSFILE_OPTION] = None,
) -> None:
    """Replace your key: a new key and a request for it; your current key signs the rotation, so
    the directory takes the new certificate and peers see "NAME rotated her key (signed by her
    old one)".  The old key is set aside (not deleted) when the new certificate is installed."""
    _next_request(home, passphrase_file, rotate=True)


@identity_app.command("show")
def identity_show(
    home: Annotated[Path | None, HOME_OPTION] = None,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir", help="An identity directory instead of a profile's (e.g. from `ca issue`)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show name, issuer, fingerprint and validity of this peer's certificate, and its key store."""
    from .profile import IDENTITY_DIR

    directory = directory or resolve_home(home) / IDENTITY_DIR
    cert_path = directory / pki.IDENTITY_CERT_FILE
    if not cert_path.exists() and (directory / pki.IDENTITY_REQUEST_FILE).exists():
        raise fail(
            f"the certificate for {directory} is not installed yet"
            " (see `secchat identity install`)",
            ExitCode.SETUP,
        )
    cert = _read_cert(cert_path)
    try:
        identity = pki.identity_of(cert)
    except pki.PkiError as exc:
        raise fail_for(exc) from None
    ca_path = directory / pki.CA_CERT_FILE
    valid: bool | None = None
    status = "no ca.pem to check against"
    if ca_path.exists():
        try:
            pki.verify_certificate(
                cert, pki.certs_from_pem(ca_path.read_bytes()), now=datetime.now(UTC)
            )
            valid, status = True, "valid (checked against ca.pem)"
        except pki.PkiError as exc:
            valid, status = False, f"INVALID: {exc}"
    key_store = pki.key_store_kdf(directory / pki.IDENTITY_KEY_FILE)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "identity": str(identity),
                    "name": identity.name,
                    "issuer": identity.issuer,
                    "fingerprint": pki.fingerprint(cert),
                    "valid_from": cert.not_valid_before_utc.isoformat(),
                    "valid_until": cert.not_valid_after_utc.isoformat(),
                    "valid": valid,
                    "status": status,
                    "key_store": key_store,
                    "directory": str(directory),
                }
            )
        )
        return
    typer.echo(f"name        {identity.name}")
    typer.echo(f"issuer      {identity.issuer}")
    typer.echo(f"fingerprint {pki.fingerprint(cert)}")
    typer.echo(f"valid from  {cert.not_valid_before_utc.isoformat()}")
    typer.echo(f"valid until {cert.not_valid_after_utc.isoformat()}")
    typer.echo(f"status      {status}")
    typer.echo(f"key store   {key_store}")
