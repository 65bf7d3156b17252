"""The ``secchat`` command line: one Typer app, each command group defined next to its subject."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="secchat",
    help="SecChat: secure multicast conferences that get their key as soon as a majority joins.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def sim_demo(
    n: int = typer.Option(5, "--n", min=2, max=101, help="Number of members."),
    seed: int = typer.Option(1, help="Seed of the simulated run."),
) -> None:
    """Tell a simulated conference's story (deterministic per seed, no sockets)."""
    from secchat.sim.demo import run_demo

    raise typer.Exit(run_demo(n=n, seed=seed))


def _register() -> None:
    from secchat.app.cli_chat import register_commands
    from secchat.app.cli_pki import ca_app, identity_app
    from secchat.directory.cli import directory_app
    from secchat.net.cluster import cluster
    from secchat.sim.cli import sim_app

    sim_app.command("demo")(sim_demo)
    app.add_typer(sim_app, name="sim")
    app.add_typer(ca_app, name="ca")
    app.add_typer(identity_app, name="identity")
    app.add_typer(directory_app, name="directory")
    app.command(name="cluster")(cluster)
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
    timeout: float = typer.Option(20.0, "--timeout", min=1.0, help="Longest wait for any step, in seconds."),
) -> None:
    """Run a real conference on this machine: local CA, directory, n member processes over TLS."""
    from secchat.app.demo import run_demo

    raise typer.Exit(run_demo(n=n, timeout=timeout))



def main() -> None:
    app()
