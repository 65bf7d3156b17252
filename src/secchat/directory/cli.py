"""``secchat directory serve``: run a directory server under uvicorn."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Annotated

import typer

directory_app = typer.Typer(help="Run or use a SecChat directory service.", no_args_is_help=True)


@directory_app.callback()
def _directory() -> None:
    """Run or use a SecChat directory service."""


def _fail(message: str, code: int = 1) -> typer.Exit:
    from secchat.app.exit_codes import ExitCode, fail

    return fail(message, ExitCode(code))


@directory_app.command("serve")
def serve(
    ca: Annotated[Path, typer.Option("--ca", help="PEM bundle of the CAs whose certificates are admitted.")],
    db: Annotated[
        str | None,
        typer.Option(
            "--db", envvar="SECCHAT_DIRECTORY_DB",
            help="SQLite file or URL (sqlite:///..., postgresql://...), or env SECCHAT_DIRECTORY_DB "
            "(keeps a password off the command line) (default: <user data dir>/directory.sqlite3).",
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8700,
    fd: Annotated[int | None, typer.Option("--fd", hidden=True, help="Serve on this inherited listening socket.")] = None,
    name: Annotated[
        list[str] | None,
        typer.Option(
            "--name",
            help="A name this directory answers to: its URL as clients use it (http://host:port), "
            "or a directory name configured in the clients; repeat for several. Signed requests made "
            "for another directory are refused. Default: http://HOST:PORT of the listening socket.",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert",
            help="Serve HTTPS with this PEM certificate chain (the server's certificate first); "
            "clients verify it (`directory_ca` in their config, default the system's trust).",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="The PEM private key of --tls-cert (unencrypted).")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "warning",
) -> None:
    """Serve the directory API (JSON under /v1, description at /v1/openapi.json; liveness at
    /v1/health, readiness -- the database answers -- at /v1/ready)."""
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from secchat import pki
    from secchat.app.exit_codes import ExitCode

    from .auth import authority_of
    from .server import create_app
    from .storage import default_database_path, make_engine

    try:
        trusted = pki.certs_from_pem(ca.read_bytes())
    except FileNotFoundError:
        raise _fail(f"there is no CA bundle at {ca}") from None
    except pki.PkiError as exc:
        raise _fail(f"{ca}: {exc}") from None
    if (tls_cert is None) != (tls_key is None):
        raise _fail("give both --tls-cert and --tls-key (or neither)", ExitCode.USAGE)
    scheme = "https" if tls_cert is not None else "http"
    if tls_cert is not None and tls_key is not None:
        _check_tls(tls_cert, tls_key)
    sockets = [socket.socket(fileno=fd)] if fd is not None else None
    if name:
        try:
            names = [authority_of(n) for n in name]
        except ValueError as exc:
            raise _fail(f"--name: {exc}") from None
    else:
        bound_host, bound_port = sockets[0].getsockname()[:2] if sockets else (host, port)
        if bound_host in ("0.0.0.0", "::", "") or bound_port == 0:
            raise _fail("listening on every interface or on port 0: say with --name which URL clients use")
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        names = [f"{scheme}://{shown}:{bound_port}"]
    try:
        engine = make_engine(db)
        app = create_app(engine, trusted, names=names)
    except (ValueError, SQLAlchemyError, OSError) as exc:
        raise _fail(f"cannot open the database: {str(exc).splitlines()[0]}") from None
    where = db or str(default_database_path())
    logging.basicConfig(level=logging.WARNING)
    database = engine.url.render_as_string(hide_password=True) if db else where
    listening = f"{scheme} on an inherited socket" if fd is not None else f"{scheme}://{host}:{port}"
    typer.echo(f"directory on {database}, serving {listening} as {', '.join(names)}", err=True)
    # Bounded: beyond 512 open requests uvicorn answers 503 instead of queueing without limit.
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False, limit_concurrency=512,
        ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None,
    )
    # An inherited socket is wrapped (above), not handed to uvicorn's ``fd=``: that one assumes
    # AF_UNIX, so asyncio would not set TCP_NODELAY and every response would wait for a delayed
    # ACK (~40 ms).
    uvicorn.Server(config).run(sockets=sockets)


def _check_tls(cert: Path, key: Path) -> None:
    """Load the certificate and key as uvicorn will, so a bad pair is one sentence, not a trace."""
    import ssl

    from secchat.app.exit_codes import ExitCode

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise _fail(f"there is no file {exc.filename}", ExitCode.SETUP) from None
    except (OSError, ssl.SSLError) as exc:
        raise _fail(f"cannot use --tls-cert {cert} with --tls-key {key}: {exc}", ExitCode.SETUP) from None


# --------------------------------------------------------------------------- client commands

_URL = typer.Option("--url", envvar="SECCHAT_DIRECTORY", help="Directory base URL (env SECCHAT_DIRECTORY).")
_DIR = typer.Option("--dir", help="Identity directory (default: <user data dir>/identity).")
_PASSFILE = typer.Option("--passphrase-file", help="Read the key's passphrase from this file.")
_TRUST = typer.Option("--trust-file", help="Accepted certificates (default: <user data dir>/accepted-certificates.json).")
_TLS_CA = typer.Option(
    "--directory-ca", help="PEM bundle an https:// directory must verify against (default: system trust)."
)
_JSON = typer.Option("--json", help="Print one JSON document.")
_DEADLINE = typer.Option(
    "--directory-timeout", min=0.1, max=600.0,
    help="Seconds each directory operation may take in all (default 5).",
)


def _client(
    url: str,
    directory: Path | None,
    passphrase_file: Path | None,
    trust_file: Path | None,
    deadline: float | None = None,
    tls_ca: Path | None = None,
):
    from secchat import pki
    from secchat.app.cli_pki import PASSPHRASE_ENV, default_identity_dir, read_passphrase
    from secchat.app.exit_codes import fail_for

    from .client import DirectoryClient
    from .trust import TrustStore, TrustStoreError, default_trust_path

    directory = directory or default_identity_dir()
    try:
        pki.check_identity_files(directory)  # say so before asking for a passphrase
    except pki.PkiError as exc:
        raise fail_for(exc) from None
    passphrase = read_passphrase(passphrase_file, (PASSPHRASE_ENV,), f"passphrase for the identity in {directory}")
    try:
        local = pki.load_identity(directory, passphrase)
        store = TrustStore(trust_file or default_trust_path())
    except (pki.PkiError, TrustStoreError) as exc:
        raise fail_for(exc) from None
    from .client import DEFAULT_DEADLINE, DirectoryError

    try:
        return DirectoryClient.for_identity(
            url, local, store, deadline=deadline or DEFAULT_DEADLINE, tls_ca=tls_ca
        )
    except DirectoryError as exc:
        raise fail_for(exc) from None
    except ValueError as exc:
        raise _fail(str(exc)) from None


def _run(fn):
    from secchat.app.exit_codes import fail_for

    from .client import DirectoryError

    try:
        return fn()
    except DirectoryError as exc:
        raise fail_for(exc, f"{exc} ({exc.code})") from None


@directory_app.command("register")
def register(
    url: Annotated[str, _URL],
    directory: Annotated[Path | None, _DIR] = None,
    passphrase_file: Annotated[Path | None, _PASSFILE] = None,
    trust_file: Annotated[Path | None, _TRUST] = None,
    deadline: Annotated[float | None, _DEADLINE] = None,
    tls_ca: Annotated[Path | None, _TLS_CA] = None,
) -> None:
    """Register this identity's certificate with a directory (the thesis's Add Participant)."""
    from secchat.app.cli_pki import default_identity_dir
    from secchat.app.exit_codes import fail_for
    from secchat.text import safe

    from .identities import IdentityError, proof_for

    with _client(url, directory, passphrase_file, trust_file, deadline, tls_ca) as client:
        try:
            proof = proof_for(directory or default_identity_dir(), client.cert)
        except IdentityError as exc:
            raise fail_for(exc) from None
        me = _run(lambda: client.register(proof))
    rotated = " (key rotation, signed by your old key)" if proof is not None else ""
    typer.echo(f"registered {safe(me.identity)} ({me.fingerprint}){rotated}")


def unregister(
    url: str,
    directory: Path | None,
    passphrase_file: Path | None,
    trust_file: Path | None,
    deadline: float | None,
    tls_ca: Path | None = None,
) -> None:
    """Remove this identity's entry from the directory (a request signed by its key)."""
    from secchat.text import safe

    with _client(url, directory, passphrase_file, trust_file, deadline, tls_ca) as client:
        _run(client.unregister)
        me = client.identity
    typer.echo(f"unregistered {safe(me)}: the directory no longer lists you, and the name is free")


@directory_app.command("participants")
def participants(
    url: Annotated[str, _URL],
    directory: Annotated[Path | None, _DIR] = None,
    passphrase_file: Annotated[Path | None, _PASSFILE] = None,
    trust_file: Annotated[Path | None, _TRUST] = None,
    deadline: Annotated[float | None, _DEADLINE] = None,
    tls_ca: Annotated[Path | None, _TLS_CA] = None,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """List the participants whose certificates verify, and whether you accepted them."""
    import json

    from secchat.text import safe

    with _client(url, directory, passphrase_file, trust_file, deadline, tls_ca) as client:
        found = _run(client.list_participants)
    if as_json:  # names and addresses quote the directory: json.dumps escapes control characters
        typer.echo(json.dumps([
            {
                "identity": str(p.identity),
                "name": p.identity.name,
                "issuer": p.identity.issuer,
                "acceptance": p.acceptance.value,
                "fingerprint": p.fingerprint,
                "contact": {"host": p.contact.host, "port": p.contact.port} if p.contact else None,
                "rotations": len(p.earlier_keys),
            }
            for p in found
        ]))
        return
    for p in found:
        contact = safe(f"{p.contact.host}:{p.contact.port}") if p.contact else "-"
        typer.echo(f"{safe(p.identity):40} {p.acceptance.value:9} {p.fingerprint[:16]}  {contact}")


trust_app = typer.Typer(help="The certificates you accepted.", no_args_is_help=True)
directory_app.add_typer(trust_app, name="trust")


@trust_app.callback()
def _trust() -> None:
    """The certificates you accepted."""


def _store(trust_file: Path | None):
    from .trust import TrustStore, TrustStoreError, default_trust_path

    try:
        return TrustStore(trust_file or default_trust_path())
    except TrustStoreError as exc:
        raise _fail(str(exc)) from None


@trust_app.command("list")
def trust_list(
    trust_file: Annotated[Path | None, _TRUST] = None, as_json: Annotated[bool, _JSON] = False
) -> None:
    """Show accepted identities, their keys and certificate fingerprints."""
    import json

    from secchat.text import safe

    entries = _store(trust_file).list()
    if as_json:
        typer.echo(json.dumps([
            {"identity": e.identity, "fingerprint": e.fingerprint, "key": e.key, "accepted_at": e.accepted_at}
            for e in entries
        ]))
        return
    for entry in entries:
        typer.echo(f"{safe(entry.identity):40} {safe(entry.fingerprint)}")


@trust_app.command("revoke")
def trust_revoke(
    identity: Annotated[str, typer.Argument(help="name@issuer, or a name")],
    trust_file: Annotated[Path | None, _TRUST] = None,
) -> None:
    """Forget an accepted certificate (you will be asked again next time)."""
    from secchat.text import safe

    store = _store(trust_file)
    resolved = store.resolve(identity)  # name@issuer, or a name accepted under one issuer
    if resolved is None or not store.revoke(resolved):
        from secchat.app.exit_codes import ExitCode, fail

        raise fail(f"{identity} is not among the accepted certificates", ExitCode.REFUSED)
    typer.echo(f"revoked {safe(resolved)}")
