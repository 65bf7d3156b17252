"""CPU cost of one group key exchange against group size, in the deterministic simulator.

All n members start together; the figure is the CPU time spent inside the members' stacks (every
``receive``/``handle_timer``/API call, decoding and crypto included, the simulator's own
bookkeeping excluded), summed over all members, until every member holds the key; with the wall
time of the whole simulation and the peak memory of this process (the scale check of issue 11:
``--sizes 1001 --repeat 1``: every member of 1001 holds the key; wall and RSS printed).  Also
messages and simulated time to key.  Medians over seeds.  ``--all-pairs``: the GKE before issue
11 (every pair exchanges), for a before/after comparison.

    python benchmarks/bench_gke_sim.py [--sizes 3,7,11,21,51,101] [--repeat 5] [--all-pairs]
"""

from __future__ import annotations

import argparse
import os
import statistics

from secchat.bench.setup import sim_gke


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="3,7,11,21,51,101")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--all-pairs", action="store_true", help="the GKE before issue 11")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print("n,cpu_all_members_ms,cpu_per_member_ms,protocol_messages,bytes,sim_time_to_key_ms,wall_s,max_rss_mb,load1")
    for n in [int(x) for x in args.sizes.split(",")]:
        runs = [sim_gke(n, seed, all_pairs=args.all_pairs) for seed in range(args.repeat)]
        cpu = statistics.median(r.cpu for r in runs) * 1e3
        print(f"{n},{cpu:.1f},{cpu / n:.2f},{statistics.median(r.messages for r in runs):.0f},"
              f"{statistics.median(r.bytes for r in runs):.0f},{statistics.median(r.sim_time for r in runs) * 1e3:.1f},"
              f"{statistics.median(r.wall for r in runs):.1f},{max(r.max_rss_kb for r in runs) / 1024:.0f},"
              f"{os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
