"""The ``secchat`` command line: one Typer app, each command group defined next to its subject.

Conventions every command follows: ``-h``/``--help``; ``--version``; ``-v``/``-q``/``--log-file``
(before the command: ``secchat -v join room``) configure logging for the whole process; errors
are one sentence on stderr and an exit code per class of error (:mod:`secchat.app.exit_codes`,
listed by ``secchat --help``); shell completion (``--install-completion``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from .exit_codes import epilog

#: Inherited by every sub-command and group.
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="secchat",
    help="SecChat: secure multicast conferences that get their key as soon as a majority joins.",
    epilog=epilog(),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings=CONTEXT_SETTINGS,
)


def package_version() -> str:
    """The installed distribution's version (the package's own when run from a source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("secchat")
    except PackageNotFoundError:
        from secchat import __version__

        return __version__


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"secchat {package_version()}")
        raise typer.Exit()


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (as logging's last resort does)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


#: The handlers :func:`configure_logging` added, so that a second call replaces only those.
_installed: list[logging.Handler] = []


def configure_logging(
    verbose: int, quiet: bool, log_file: Path | None, *, to_stderr: bool = True
) -> None:
    """Warnings on stderr by default; ``-v`` adds progress (INFO), ``-vv`` debug, ``-q`` only
    errors.  ``--log-file`` receives the same records, with times, and at least INFO.
    ``to_stderr=False`` (the chat UI owns the terminal): the file only."""
    levels = {0: logging.WARNING, 1: logging.INFO}
    level = logging.ERROR if quiet else levels.get(verbose, logging.DEBUG)
    root = logging.getLogger()
    while _installed:  # ours from an earlier call (tests run many commands in one process)
        old = _installed.pop()
        root.removeHandler(old)
        old.close()
    handlers: list[logging.Handler] = []
    if to_stderr:
        stderr = _Stderr()
        stderr.setLevel(level)
        stderr.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handlers.append(stderr)
    else:
        handlers.append(logging.NullHandler())
    file_level = level
    if log_file is not None:
        file_level = min(level, logging.INFO)
        try:
            to_file = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            from .exit_codes import ExitCode, fail

            raise fail(f"cannot open log file {log_file}: {exc.strerror}", ExitCode.USAGE) from None
        to_file.setLevel(file_level)
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(to_file)
    for handler in handlers:
        root.addHandler(handler)
    _installed.extend(handlers)
    root.setLevel(min(level, file_level))


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose", "-v", count=True,
            help="More log output on stderr: -v progress (e.g. 'cannot reach bob ...;"
            " retrying'), -vv debug.",
        ),
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log errors only.")] = False,
    log_file: Annotated[
        Path | None, typer.Option("--log-file", metavar="FILE", help="Also append the log to FILE.")
    ] = None,
) -> None:
    """SecChat: secure multicast conferences that get their key as soon as a majority joins."""
    configure_logging(verbose, quiet, log_file, to_stderr=ctx.invoked_subcommand != "chat")


def sim_demo(
    n: int = typer.Option(5, "--n", min=2, max=101, help="Number of members."),
    seed: int = typer.Option(1, help="Seed of the simulated run."),
) -> None:
    """Tell a simulated conference's story (deterministic per seed, no sockets)."""
    from secchat.sim.demo import run_demo

    raise typer.Exit(run_demo(n=n, seed=seed))


def _register() -> None:
    from secchat.app.cli_chat import register_commands
    from secchat.app.cli_pki import ca_app, identity_app, init
    from secchat.bench.figures import bench
    from secchat.directory.cli import directory_app
    from secchat.net.cluster import cluster
    from secchat.sim.cli import sim_app

    sim_app.command("demo")(sim_demo)
    app.add_typer(sim_app, name="sim")
    app.add_typer(ca_app, name="ca")
    app.add_typer(identity_app, name="identity")
    app.add_typer(directory_app, name="directory")
    app.command(name="cluster")(cluster)
    app.command(name="bench")(bench)
    app.command("init")(init)
    register_commands(app)

    def chat(
        home: str | None = typer.Option(
            None, "--home", envvar="SECCHAT_HOME", metavar="DIR", help="Profile directory (env SECCHAT_HOME; default: the user data directory)."
        ),
        passphrase_file: str | None = typer.Option(
            None, "--passphrase-file", metavar="FILE", help="Read the profile's passphrase from the first line of this file."
        ),
    ) -> None:
        """Open the terminal chat UI: your conferences, certificates to accept, several live chats."""
        from pathlib import Path

        from secchat.app.tui import run_chat

        raise typer.Exit(run_chat(Path(home) if home else None, Path(passphrase_file) if passphrase_file else None))

    app.command(name="chat")(chat)


_register()


@app.command()
def demo(
    n: int = typer.Option(5, "--n", min=2, max=11, help="Number of participants (each its own process)."),
    timeout: float = typer.Option(60.0, "--timeout", min=1.0, help="Longest wait for any step, in seconds."),
    relay: bool = typer.Option(
        False, "--relay", help="No addresses published: everything through a NATS relay (started here)."
    ),
    relay_url: str | None = typer.Option(
        None, "--relay-url", help="With --relay: use this running NATS server (nats://HOST:PORT)."
    ),
) -> None:
    """Run a real conference on this machine: local CA, directory, n member processes over TLS."""
    from secchat.app.demo import run_demo

    raise typer.Exit(run_demo(n=n, timeout=timeout, relay=relay or relay_url is not None, relay_url=relay_url))



def main() -> None:
    app()
