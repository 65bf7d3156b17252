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


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@directory_app.command("serve")
def serve(
    ca: Annotated[Path, typer.Option("--ca", help="PEM bundle of the CAs whose certificates are admitted.")],
    db: Annotated[
        str | None,
        typer.Option("--db", help="SQLite file or URL (sqlite:///..., postgresql://...) (default: <user data dir>/directory.sqlite3)."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8700,
    fd: Annotated[int | None, typer.Option("--fd", hidden=True, help="Serve on this inherited listening socket.")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "warning",
) -> None:
    """Serve the directory API (JSON under /v1, description at /v1/openapi.json)."""
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from secchat import pki

    from .server import create_app
    from .storage import default_database_path, make_engine

    try:
        trusted = pki.certs_from_pem(ca.read_bytes())
    except FileNotFoundError:
        raise _fail(f"there is no CA bundle at {ca}") from None
    except pki.PkiError as exc:
        raise _fail(f"{ca}: {exc}") from None
    try:
        engine = make_engine(db)
        app = create_app(engine, trusted)
    except (ValueError, SQLAlchemyError, OSError) as exc:
        raise _fail(f"cannot open the database: {str(exc).splitlines()[0]}") from None
    where = db or str(default_database_path())
    logging.basicConfig(level=logging.WARNING)
    typer.echo(f"directory on {engine.url.render_as_string(hide_password=True) if db else where}", err=True)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False)
    # An inherited socket is wrapped here, not by uvicorn's ``fd=``: that one assumes AF_UNIX, so
    # asyncio would not set TCP_NODELAY and every response would wait for a delayed ACK (~40 ms).
    sockets = [socket.socket(fileno=fd)] if fd is not None else None
    uvicorn.Server(config).run(sockets=sockets)
