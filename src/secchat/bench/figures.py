"""``secchat bench``: the thesis's Figures 1 and 2, measured here, as PNG and CSV.

Figure 1 (thesis §3.1): time from start to key against group size over real member processes
and TLS on loopback -- all members starting, and (what the thesis could not run) only a bare
majority -- and, beside it, the compute of all members until all hold the key (simulator), with
the GKE before issue 11 (all pairs) and MLS (mls-rs) when installed.  Figure 2 (§3.2): sender
and receiver overhead per message against size, 0 to 125,000 bytes (the thesis's 1000 kbit),
and the throughput it implies, for every mode of :mod:`secchat.bench.modes`.  Peers and modes
are measured interleaved with ours, round by round, so that the machine's load hits all alike.
Medians; the 1-minute load average goes into every CSV row.
"""

from __future__ import annotations

import csv
import os
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from .modes import MessageMode, measure, modes

__all__ = ["Plan", "bench", "plan"]

INSTALL_BENCH = "pip install 'secchat[bench]'"
DEFAULT_OUT = Path("bench-out")


@dataclass(frozen=True)
class Plan:
    tls_sizes: list[int]
    tls_reps: Callable[[int], int]
    cpu_sizes: list[int]
    cpu_reps: Callable[[int], int]
    all_pairs_max: int
    mls_max: int
    msg_sizes: list[int]
    msg_reps: int
    msg_count: Callable[[int], int]


def plan(quick: bool) -> Plan:
    if quick:
        return Plan([3, 5, 7], lambda n: 1, [3, 7, 21, 51, 101], lambda n: 1, 101, 51,
                    [0, 1024, 16384, 125_000], 3, lambda size: 40 if size <= 16384 else 10)
    return Plan([*range(3, 22, 2), 31, 51, 101], lambda n: 2 if n <= 9 else 1,
                [3, 5, 7, 11, 21, 51, 101, 201, 501, 1001], lambda n: 3 if n <= 51 else 1, 201, 201,
                [0, 1024, 4096, 16384, 32768, 65536, 125_000], 7, lambda size: 200 if size <= 16384 else 40)


def _load() -> float:
    return os.getloadavg()[0]


def _load_range(rows: Iterable[dict]) -> str:
    """The 1-minute load averages the drawn points were measured at (their CSV rows'), not the
    load when the figure is drawn: ``load 0.8–48``."""
    loads = [float(r["load1"]) for r in rows if r.get("load1") not in (None, "")]
    if not loads:
        return f"load {_load():.1f}"
    lo, hi = min(loads), max(loads)
    return f"load {lo:.1f}" if f"{lo:.1f}" == f"{hi:.1f}" else f"load {lo:.1f}–{hi:.1f}"


def _write_csv(path: Path, header: list[str], rows: Iterable[list]) -> None:
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(header)
        out.writerows(rows)


# --------------------------------------------------------------------------- Figure 1


TLS_COLUMNS = ["scenario", "n", "joined", "reps", "median_mean_s", "median_slowest_s", "load1"]
CPU_COLUMNS = ["system", "n", "reps", "cpu_all_members_ms", "per_member_ms", "messages", "bytes", "wall_s",
               "max_rss_mb", "load1"]


def figure1(p: Plan, out: Path, advance: Callable[[str], None], tls: bool, compute: bool) -> None:
    """Measure, writing each CSV row as soon as it is known (so a long run keeps what it did;
    the TLS and compute parts can run as separate commands into one folder)."""
    from . import peers
    from .setup import sim_gke, tls_time_to_key

    if tls:
        rows: list[dict] = []
        for n in p.tls_sizes:
            for scenario in ("all", "majority"):
                joined = n if scenario == "all" else n // 2 + 1
                means, worst, loads = [], [], []
                for rep in range(p.tls_reps(n)):
                    loads.append(_load())
                    advance(f"Figure 1: TLS n={n} {scenario}")
                    mean, slowest = tls_time_to_key(n, joined, seed=1000 * n + rep)
                    means.append(mean)
                    worst.append(slowest)
                rows.append({"scenario": scenario, "n": n, "joined": joined, "reps": len(means),
                             "median_mean_s": statistics.median(means),
                             "median_slowest_s": statistics.median(worst), "load1": statistics.fmean(loads)})
                _write_csv(out / "fig1_tls.csv", TLS_COLUMNS, [[r[c] for c in TLS_COLUMNS] for r in rows])
    if not compute:
        return
    mls = peers.available("mls")
    cpu_rows: list[dict] = []
    for n in p.cpu_sizes:
        systems = ["secchat"] + (["secchat-all-pairs"] if n <= p.all_pairs_max else []) + (
            ["mls-rs"] if mls and n <= p.mls_max else [])
        runs: dict[str, list] = {s: [] for s in systems}
        loads = []
        for rep in range(p.cpu_reps(n)):
            loads.append(_load())
            for system in systems:  # interleaved: one round of each, then the next round
                advance(f"Figure 1: compute n={n} {system}")
                if system == "mls-rs":
                    runs[system].append((peers.mls_setup_cpu(n), None))
                else:
                    runs[system].append((None, sim_gke(n, rep, all_pairs=system == "secchat-all-pairs")))
        for system, rs in runs.items():
            sims = [s for _, s in rs if s is not None]
            cpu = statistics.median(s.cpu if s else c for c, s in rs)
            row = {"system": system, "n": n, "reps": len(rs), "cpu_all_members_ms": cpu * 1e3,
                   "per_member_ms": cpu * 1e3 / n, "load1": statistics.fmean(loads)}
            if sims:
                row |= {"messages": statistics.median(s.messages for s in sims),
                        "bytes": statistics.median(s.bytes for s in sims),
                        "wall_s": statistics.median(s.wall for s in sims),
                        "max_rss_mb": max(s.max_rss_kb for s in sims) / 1024}
            cpu_rows.append(row)
        _write_csv(out / "fig1_cpu.csv", CPU_COLUMNS, [[r.get(c, "") for c in CPU_COLUMNS] for r in cpu_rows])


def _read_csv(path: Path, text: tuple[str, ...]) -> list[dict]:
    """A CSV this module wrote: columns in ``text`` as strings, the others as floats, empty
    cells dropped; no file, no rows."""
    if not path.exists():
        return []
    with path.open() as fh:
        return [{k: (v if k in text else float(v)) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


def read_figure1(out: Path) -> dict[str, list[dict]]:
    """What Figure 1's CSVs in ``out`` hold."""
    return {"tls": _read_csv(out / "fig1_tls.csv", ("scenario",)), "cpu": _read_csv(out / "fig1_cpu.csv", ("system",))}


def read_figure2(out: Path) -> list[dict]:
    """What Figure 2's CSV in ``out`` holds."""
    return _read_csv(out / "fig2_messages.csv", ("mode", "label", "family"))


def plot_figure1(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for scenario, label, style in (("all", "all members start", "o-"), ("majority", "only a bare majority starts", "s--")):
        rows = [r for r in results["tls"] if r["scenario"] == scenario]
        if rows:
            left.plot([r["n"] for r in rows], [r["median_mean_s"] for r in rows], style, label=label)
    left.set(xlabel="group size n", ylabel="mean time from start to key (s)", xscale="log",
             title="GKE over TLS, member processes on loopback")
    sizes = sorted({int(r["n"]) for r in results["tls"]})
    if sizes:  # the thesis's 3..21 and the sizes beyond, each readable
        crowded = len(sizes) > 8  # then every other of 3..21 (3, 5, 9, 13, 17, 21) and all beyond
        left.set_xticks(sizes, [str(n) if not crowded or n == 3 or n % 4 == 1 or n > 21 else "" for n in sizes])
        left.minorticks_off()
    left.grid(alpha=0.3)
    if results["tls"]:
        left.legend()
    labels = {"secchat": "SecChat GKE (ring, t contributions)", "secchat-all-pairs": "SecChat GKE, all pairs (before)",
              "mls-rs": "MLS (mls-rs): commit + Welcomes"}
    for system, label in labels.items():
        rows = [r for r in results["cpu"] if r["system"] == system]
        if rows:
            right.plot([r["n"] for r in rows], [r["cpu_all_members_ms"] / 1e3 for r in rows], "o-", label=label)
    right.set(xscale="log", yscale="log", xlabel="group size n", ylabel="compute of all members until all hold the key (s)",
              title="Group set-up compute (one core)")
    right.grid(alpha=0.3, which="both")
    right.legend()
    fig.suptitle(f"Figure 1: setting up a multicast channel ({_load_range([*results['tls'], *results['cpu']])})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- Figure 2


def figure2(p: Plan, out: Path, advance: Callable[[str], None], chosen: list[MessageMode]) -> list[dict]:
    samples: dict[tuple[str, int], list[tuple[float, float]]] = {}
    loads = []
    for _ in range(p.msg_reps):  # interleaved: every mode and size once per round
        loads.append(_load())
        for size in p.msg_sizes:
            for mode in chosen:
                advance(f"Figure 2: {mode.name} {size} B")
                samples.setdefault((mode.name, size), []).append(measure(mode, size, 1, p.msg_count(size)))
    rows = []
    for mode in chosen:
        for size in p.msg_sizes:
            got = samples[(mode.name, size)]
            send = statistics.median(s for s, _ in got)
            recv = statistics.median(r for _, r in got)
            rows.append({"mode": mode.name, "label": mode.label, "family": mode.family, "size_bytes": size,
                         "reps": len(got), "send_us": send, "receive_us": recv,
                         "send_mbit_s": size * 8 / send if size else 0.0,
                         "receive_mbit_s": size * 8 / recv if size else 0.0, "load1": statistics.fmean(loads)})
    _write_csv(out / "fig2_messages.csv", list(rows[0]), [list(r.values()) for r in rows])
    return rows


def plot_figure2(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    names = list(dict.fromkeys(r["mode"] for r in rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, name in enumerate(names):
        mine = [r for r in rows if r["mode"] == name]
        colour = colours[k % len(colours)]
        kbit = [r["size_bytes"] * 8 / 1000 for r in mine]
        label = mine[0]["label"]
        left.plot(kbit, [r["send_us"] / 1e3 for r in mine], "o-", color=colour, label=label)
        left.plot(kbit, [r["receive_us"] / 1e3 for r in mine], "x--", color=colour)
        sized = [r for r in mine if r["size_bytes"]]
        right.plot([r["size_bytes"] * 8 / 1000 for r in sized],
                   [min(r["send_mbit_s"], r["receive_mbit_s"]) for r in sized], "o-", color=colour, label=label)
    left.set(xlabel="message size (kbit)", ylabel="overhead per message (ms)", yscale="log",
             title="Sender (solid) and receiver (dashed) overhead")
    right.set(xlabel="message size (kbit)", ylabel="implied throughput (Mbit/s, slower side)", yscale="log",
              title="Maximal throughput")
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
    fig.legend(*left.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    fig.suptitle(f"Figure 2: continuous overhead of secure multicast (one core, {_load_range(rows)})")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- the command


def _steps(p: Plan, tls: bool, compute: bool, fig1: bool, fig2: bool, chosen: list[MessageMode], mls: bool) -> int:
    total = 0
    if fig1 and tls:
        total += sum(2 * p.tls_reps(n) for n in p.tls_sizes)
    if fig1 and compute:
        total += sum(p.cpu_reps(n) * (1 + (n <= p.all_pairs_max) + (mls and n <= p.mls_max)) for n in p.cpu_sizes)
    if fig2:
        total += p.msg_reps * len(p.msg_sizes) * len(chosen)
    return total


def _ratios(console, results1: dict[str, list[dict]] | None, rows2: list[dict] | None) -> None:
    """The side-by-side tables: our figures over the peers', measured in this run."""
    from rich.table import Table

    if results1:
        by = {(r["system"], r["n"]): r["cpu_all_members_ms"] for r in results1["cpu"]}
        table = Table(title="Group set-up, compute of all members (ms, medians)")
        for col in ("n", "SecChat", "all pairs (before)", "mls-rs", "SecChat / before", "SecChat / mls-rs"):
            table.add_column(col, justify="right")
        for n in sorted({n for _, n in by}):
            ours, before, mls = by.get(("secchat", n)), by.get(("secchat-all-pairs", n)), by.get(("mls-rs", n))
            table.add_row(str(int(n)), *(f"{v:.1f}" if v else "-" for v in (ours, before, mls)),
                          f"×{ours / before:.2f}" if ours and before else "-", f"×{ours / mls:.2f}" if ours and mls else "-")
        console.print(table)
    if rows2:
        got = {(r["mode"], r["size_bytes"]): r for r in rows2}
        table = Table(title="Per message (µs, medians), and the ratio to Megolm measured in this run")
        for col in ("mode", "size", "send", "receive", "send / Megolm", "receive / Megolm"):
            table.add_column(col, justify="right")
        for r in rows2:
            meg = got.get(("megolm", r["size_bytes"]))
            ratios = [f"×{r[k] / meg[k]:.2f}" if meg and r["mode"] != "megolm" else "-" for k in ("send_us", "receive_us")]
            table.add_row(r["mode"], f"{r['size_bytes']:.0f}", f"{r['send_us']:.1f}", f"{r['receive_us']:.1f}", *ratios)
        console.print(table)


def bench(
    out: Annotated[Path, typer.Option("--out", help="Folder for the PNG and CSV files (created).")] = DEFAULT_OUT,
    quick: bool = typer.Option(False, "--quick", help="Fewer sizes and rounds: a few minutes."),
    figure: str = typer.Option("all", "--figure", help="1, 2 or all."),
    tls: bool = typer.Option(True, "--tls/--no-tls", help="Figure 1's runs over real member processes."),
    compute: bool = typer.Option(True, "--compute/--no-compute", help="Figure 1's compute curves (simulator, MLS)."),
    redraw: bool = typer.Option(False, "--redraw", help="Measure nothing: draw the figures (and print the ratios) "
                                "from the CSVs already in --out."),
) -> None:
    """Reproduce the thesis's Figures 1 and 2 (§3) here: PNG and CSV under --out."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..app.exit_codes import ExitCode, fail
    from . import peers

    if figure not in ("1", "2", "all"):
        raise typer.BadParameter("choose 1, 2 or all", param_hint="--figure")
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        raise fail(f"secchat bench draws with matplotlib, which is not installed: {INSTALL_BENCH}", ExitCode.SETUP) from None
    console = Console(stderr=True)
    fig1, fig2 = figure in ("1", "all"), figure in ("2", "all")
    results1: dict[str, list[dict]] | None = None
    rows2: list[dict] | None = None
    if redraw:
        results1 = read_figure1(out) if fig1 else None
        rows2 = read_figure2(out) if fig2 else None
        if not ((results1 and (results1["tls"] or results1["cpu"])) or rows2):
            raise fail(f"no figure CSV in {out} to draw from (run secchat bench --out {out} first)", ExitCode.USAGE)
        _draw(out, results1, rows2)
        return
    out.mkdir(parents=True, exist_ok=True)
    p = plan(quick)
    chosen = []
    for mode in modes():
        why = mode.missing()
        if why is None:
            chosen.append(mode)
        else:
            console.print(f"skipped {why}")
    if not peers.available("mls"):
        console.print(f"skipped MLS in Figure 1: agentvault-mls-rs-uniffi is not installed ({peers.INSTALL} adds it)")
    if hasattr(os, "sched_setaffinity") and not (fig1 and tls):  # one core, as the thesis's figures
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    with Progress(TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=not console.is_terminal) as bar:
        task = bar.add_task("secchat bench", total=_steps(p, tls, compute, fig1, fig2, chosen, peers.available("mls")))
        state = {"started": False}

        def advance(what: str) -> None:
            if state["started"]:
                bar.advance(task)
            state["started"] = True
            bar.update(task, description=what)

        if fig1:
            figure1(p, out, advance, tls, compute)
            results1 = read_figure1(out)
        if fig2:
            rows2 = figure2(p, out, advance, chosen)
        bar.advance(task)
    _draw(out, results1, rows2)


def _draw(out: Path, results1: dict[str, list[dict]] | None, rows2: list[dict] | None) -> None:
    """The PNGs of what was measured (or read back), the ratio tables, and what was written."""
    from rich.console import Console

    if results1 and (results1["tls"] or results1["cpu"]):
        plot_figure1(results1, out / "fig1_gke.png")
    if rows2:
        plot_figure2(rows2, out / "fig2_messages.png")
    _ratios(Console(), results1, rows2)
    Console(stderr=True).print(
        f"wrote {', '.join(sorted(f.name for f in out.iterdir() if f.suffix in ('.png', '.csv')))} in {out}"
        f" (load {_load():.1f})")
