"""``secchat sim``: the property checker on the command line."""

from __future__ import annotations

import sys

import typer

sim_app = typer.Typer(help="Deterministic simulation of the protocol stack.", no_args_is_help=True)


@sim_app.command()
def check(
    protocol: str = typer.Option(
        ..., help="consensus, gke, smc, records (two records of one conference id, n + 1 identities), "
        "restarts (crashes and restarts from the write-ahead state, replays into rejoined members), "
        "or conference (the application's conference core on the whole stack)."
    ),
    n: int = typer.Option(7, "--n", min=1, max=1000, help="Group size."),
    runs: int = typer.Option(100, min=1, help="Number of random schedules."),
    seed: int = typer.Option(1, help="Run i uses seed SEED + i."),
    crash: int = typer.Option(0, min=0, help="Members that crash in every run (at most n - majority)."),
    jobs: int = typer.Option(0, help="Worker processes (0: one per core)."),
    group_mode: bool = typer.Option(False, "--group-mode", help="SMC without signatures (= --auth group)."),
    auth: str = typer.Option("signed", "--auth", help="SMC mode: signed, burst, pairwise or group."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    broken: str = typer.Option("", help="Check a deliberately broken variant (restarts: forget_state, "
                               "forget_marks; conference: drop_outbox_on_rekey): violations are expected."),
) -> None:
    """Run RUNS random hostile schedules and check the protocol's properties from the god view."""
    from rich.progress import Progress

    from ..protocols.auth import MODES
    from .checker import BROKEN, PROTOCOLS, run_campaign

    if auth not in MODES:
        raise typer.BadParameter(f"choose one of {', '.join(MODES)}", param_hint="--auth")
    if group_mode:
        auth = "group"
    if protocol not in PROTOCOLS:
        raise typer.BadParameter(f"choose one of {', '.join(PROTOCOLS)}", param_hint="--protocol")
    if crash > n - (n // 2 + 1):
        raise typer.BadParameter(f"at most {n - (n // 2 + 1)} of {n} members may crash", param_hint="--crash")
    if broken and broken not in BROKEN.get(protocol, ()):
        raise typer.BadParameter(f"{protocol} has the broken variants {', '.join(BROKEN.get(protocol, ())) or 'none'}",
                                 param_hint="--broken")
    with Progress(transient=True, disable=quiet or not sys.stderr.isatty()) as bar:
        task = bar.add_task(f"{protocol} n={n}", total=runs)
        result = run_campaign(
            protocol, n, runs, seed, crash, jobs=jobs or None, auth=auth,
            progress=lambda k: bar.advance(task, k), broken=broken or None,
        )
    for failed in result.failures[:20]:
        typer.echo(f"VIOLATION seed {failed.seed}: " + "; ".join(failed.violations[:5]))
        mode = (f" --auth {auth}" if auth != "signed" else "") + (f" --broken {broken}" if broken else "")
        typer.echo(
            f"  replay: secchat sim check --protocol {protocol} --n {n} --runs 1 "
            f"--seed {failed.seed} --crash {crash}{mode}"
        )
    if len(result.failures) > 20:
        typer.echo(f"... and {len(result.failures) - 20} more failing runs")
    typer.echo(result.summary())
    raise typer.Exit(1 if result.failures else 0)
