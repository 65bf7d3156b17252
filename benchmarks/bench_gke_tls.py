"""GKE running time against group size over real TLS between member processes (thesis §3.1).

Every run starts n member processes on loopback (``secchat.net.cluster``), waits until all are
listening, then tells the joining members to start the GKE at the same moment.  Each member
reports the time from its start command to its group key.  Per run we take the mean over the
members that joined (the thesis's "average time it took a server") and the slowest member; the
table gives the median of those over the repetitions.

Two scenarios: ``all`` (every member starts, as the thesis measured) and ``majority`` (only a
bare majority ⌈(n+1)/2⌉ starts, the case the thesis could not run).

    python benchmarks/bench_gke_tls.py [--sizes 3,5,...,21] [--reps 3] > gke_tls.csv

CSV on stdout, progress on stderr; ``load1`` is the 1-minute load average when the runs started
(the numbers mean little on a busy machine: an overloaded host delays heartbeats into false
suspicions, which cost consensus rounds).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from secchat.bench.setup import tls_time_to_key as measure
from secchat.net.cluster import majority


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=",".join(str(n) for n in range(3, 22, 2)))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--scenarios", default="all,majority")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    scenarios = args.scenarios.split(",")
    out = csv.writer(sys.stdout)
    out.writerow(["scenario", "n", "joined", "reps", "median_mean_s", "median_slowest_s", "min_mean_s", "max_mean_s",
                  "load1"])
    for scenario in scenarios:
        for n in sizes:
            joined = n if scenario == "all" else majority(n)
            means, slowest, loads = [], [], []
            started = time.monotonic()
            for rep in range(args.reps):
                loads.append(os.getloadavg()[0])  # the machine is shared: say how busy it was
                mean, worst = measure(n, joined, seed=1000 * n + rep)
                means.append(mean)
                slowest.append(worst)
            out.writerow([scenario, n, joined, args.reps, f"{statistics.median(means):.4f}",
                          f"{statistics.median(slowest):.4f}", f"{min(means):.4f}", f"{max(means):.4f}",
                          f"{statistics.fmean(loads):.1f}"])
            sys.stdout.flush()
            print(f"{scenario} n={n}: {statistics.median(means):.3f}s ({time.monotonic() - started:.0f}s wall)",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
