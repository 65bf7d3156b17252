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


def _register() -> None:
    from secchat.app.cli_chat import register_commands
    from secchat.app.cli_pki import ca_app, identity_app
    from secchat.directory.cli import directory_app
    from secchat.net.cluster import cluster
    from secchat.sim.cli import sim_app

    app.add_typer(sim_app, name="sim")
    app.add_typer(ca_app, name="ca")
    app.add_typer(identity_app, name="identity")
    app.add_typer(directory_app, name="directory")
    app.command(name="cluster")(cluster)
    register_commands(app)


_register()


@app.command()
def demo(
    n: int = typer.Option(5, "--n", min=2, max=101, help="Number of members."),
    seed: int = typer.Option(1, help="Seed of the simulated run."),
) -> None:
    """Run a conference end to end and tell its story."""
    from secchat.sim.demo import run_demo

    raise typer.Exit(run_demo(n=n, seed=seed))


def main() -> None:
    app()
