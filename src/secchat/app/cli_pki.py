"""``secchat ca ...`` and ``secchat identity ...``: a conference CA and the peer identities it issues.

A CA directory holds ``ca.key`` (encrypted) and ``ca.pem``.  ``secchat ca issue NAME --out D``
writes an identity directory: ``identity.key`` (encrypted), ``identity.pem`` and ``ca.pem``
(the CA this peer trusts).  Passphrases come from ``--passphrase-file``, the environment
(``SECCHAT_PASSPHRASE``; ``SECCHAT_CA_PASSPHRASE`` for the CA's key) or a hidden prompt, and are
never echoed or logged.  Errors are one sentence on stderr and exit code 1.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import platformdirs
import typer

from secchat import pki
from secchat.passphrase import WeakPassphrase, check_new_passphrase

ca_app = typer.Typer(help="Run a conference certificate authority.", no_args_is_help=True)
identity_app = typer.Typer(help="Inspect this peer's identity.", no_args_is_help=True)


@ca_app.callback()
def _ca() -> None:
    """Run a conference certificate authority."""


@identity_app.callback()
def _identity() -> None:
    """Inspect this peer's identity."""

PASSPHRASE_ENV = "SECCHAT_PASSPHRASE"
CA_PASSPHRASE_ENV = "SECCHAT_CA_PASSPHRASE"
#: The CA's key falls back to ``SECCHAT_PASSPHRASE`` when ``SECCHAT_CA_PASSPHRASE`` is unset.
CA_ENVS = (CA_PASSPHRASE_ENV, PASSPHRASE_ENV)


def default_ca_dir() -> Path:
    return Path(platformdirs.user_data_dir("secchat")) / "ca"


def default_identity_dir() -> Path:
    return Path(platformdirs.user_data_dir("secchat")) / "identity"


def fail(message: str) -> typer.Exit:
    """Print one sentence on stderr and return the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


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
            raise fail(f"cannot read passphrase file {file}: {exc.strerror}") from None
        passphrase = text.splitlines()[0] if text else ""
    elif any(os.environ.get(env) for env in envs):
        passphrase = next(os.environ[env] for env in envs if os.environ.get(env))
    else:
        try:
            passphrase = typer.prompt(prompt, hide_input=True, confirmation_prompt=new)
        except (typer.Abort, EOFError):
            raise fail("no passphrase given") from None
    if not passphrase:
        raise fail("the passphrase is empty")
    if new:
        try:
            check_new_passphrase(passphrase)
        except WeakPassphrase as exc:
            raise fail(str(exc)) from None
    return passphrase


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_cert(path: Path) -> pki.x509.Certificate:
    try:
        return pki.cert_from_pem(path.read_bytes())
    except FileNotFoundError:
        raise fail(f"there is no certificate at {path}") from None
    except pki.PkiError as exc:
        raise fail(f"{path}: {exc}") from None


_DIR_HELP = "Directory of the CA's key and certificate (default: <user data dir>/ca)."
_PASS_HELP = "Read the passphrase from the first line of this file."


@ca_app.command("init")
def ca_init(
    directory: Annotated[Path | None, typer.Option("--dir", help=_DIR_HELP)] = None,
    name: Annotated[str, typer.Option("--name", help="The CA's common name.")] = "SecChat CA",
    valid_days: Annotated[int, typer.Option("--days", min=1, help="Validity in days.")] = 3650,
    passphrase_file: Annotated[
        Path | None, typer.Option("--passphrase-file", help=_PASS_HELP)
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing CA.")] = False,
) -> None:
    """Create a self-signed CA (its key is stored encrypted)."""
    directory = directory or default_ca_dir()
    key_path, cert_path = directory / pki.CA_KEY_FILE, directory / pki.CA_CERT_FILE
    if not force and (key_path.exists() or cert_path.exists()):
        raise fail(f"a CA already exists in {directory} (use --force to replace it)")
    passphrase = read_passphrase(passphrase_file, CA_ENVS, "CA passphrase", new=True)
    try:
        key, cert = pki.create_ca(name, valid_days=valid_days)
        pki.save_private_key(key_path, key, passphrase)
    except (pki.PkiError, ValueError) as exc:
        raise fail(str(exc)) from None
    _write_public(cert_path, pki.cert_to_pem(cert))
    typer.echo(f"created CA {name!r} in {directory}")
    typer.echo(f"fingerprint {pki.fingerprint(cert)}")


@ca_app.command("issue")
def ca_issue(
    name: Annotated[str, typer.Argument(help="The peer's name (certificate common name).")],
    directory: Annotated[Path | None, typer.Option("--dir", help=_DIR_HELP)] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Identity directory to write (default: ./NAME).")
    ] = None,
    valid_days: Annotated[int, typer.Option("--days", min=1, help="Validity in days.")] = 365,
    ca_passphrase_file: Annotated[
        Path | None,
        typer.Option("--ca-passphrase-file", help="Read the CA key's passphrase from this file."),
    ] = None,
    passphrase_file: Annotated[
        Path | None,
        typer.Option("--passphrase-file", help="Read the new key's passphrase from this file."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing identity.")] = False,
) -> None:
    """Issue NAME a key and certificate, written to an identity directory."""
    directory = directory or default_ca_dir()
    out = out or Path(name)
    ca_cert = _read_cert(directory / pki.CA_CERT_FILE)
    if not force and (out / pki.IDENTITY_KEY_FILE).exists():
        raise fail(f"an identity already exists in {out} (use --force to replace it)")
    ca_pass = read_passphrase(ca_passphrase_file, CA_ENVS, "CA passphrase")
    try:
        ca_key = pki.load_private_key(directory / pki.CA_KEY_FILE, ca_pass)
    except pki.PkiError as exc:
        raise fail(str(exc)) from None
    passphrase = read_passphrase(
        passphrase_file, (PASSPHRASE_ENV,), f"passphrase for {name}", new=True
    )
    try:
        key = pki.generate_key()
        cert = pki.issue_certificate(ca_key, ca_cert, name, key.public_key(), valid_days=valid_days)
        pki.save_private_key(out / pki.IDENTITY_KEY_FILE, key, passphrase)
    except (pki.PkiError, ValueError) as exc:
        raise fail(str(exc)) from None
    _write_public(out / pki.IDENTITY_CERT_FILE, pki.cert_to_pem(cert))
    _write_public(out / pki.CA_CERT_FILE, pki.cert_to_pem(ca_cert))
    typer.echo(f"issued {pki.identity_of(cert)} in {out}")
    typer.echo(f"fingerprint {pki.fingerprint(cert)}")


@identity_app.command("show")
def identity_show(
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Identity directory (default: <user data dir>/identity)."),
    ] = None,
) -> None:
    """Show name, issuer, fingerprint and validity of this peer's certificate."""
    directory = directory or default_identity_dir()
    cert = _read_cert(directory / pki.IDENTITY_CERT_FILE)
    try:
        identity = pki.identity_of(cert)
    except pki.PkiError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"name        {identity.name}")
    typer.echo(f"issuer      {identity.issuer}")
    typer.echo(f"fingerprint {pki.fingerprint(cert)}")
    typer.echo(f"valid from  {cert.not_valid_before_utc.isoformat()}")
    typer.echo(f"valid until {cert.not_valid_after_utc.isoformat()}")
    ca_path = directory / pki.CA_CERT_FILE
    if ca_path.exists():
        try:
            pki.verify_certificate(cert, pki.certs_from_pem(ca_path.read_bytes()), now=datetime.now(UTC))
            status = "valid (checked against ca.pem)"
        except pki.PkiError as exc:
            status = f"INVALID: {exc}"
        typer.echo(f"status      {status}")
