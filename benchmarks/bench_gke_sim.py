"""CPU cost of one group key exchange against group size, in the deterministic simulator.

All n members start together; the figure is the CPU time spent inside the members' stacks (every
``receive``/``handle_timer``/API call, decoding and crypto included, the simulator's own
bookkeeping excluded), summed over all members, until every member holds the key.  Also prints
protocol messages and simulated time to key.  Medians over seeds.

    python benchmarks/bench_gke_sim.py [--sizes 3,7,11,21,51,101] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics

from secchat.protocols.events import SessionKey
from secchat.protocols.stack import gke_tag, smc_tag
from secchat.sim.simulator import NetworkModel, Simulation

TAG = gke_tag(smc_tag("sim"))


def one(n: int, seed: int) -> tuple[float, int, float, int]:
    sim = Simulation(n, seed, network=NetworkModel(min_delay=0.0005, max_delay=0.002), measure_cpu=True)
    done: set[int] = set()
    for node in sim.nodes:
        node.on_output = lambda now, ev, i=node.index: done.add(i) if isinstance(ev, SessionKey) else None
    for i in range(n):
        sim.start(i, lambda m, now: m.gke_init(TAG, now))
    assert sim.run(60.0, stop=lambda: len(done) == n), "GKE did not finish"
    keys = {ev.secret for node in sim.nodes for _, ev in node.outputs if isinstance(ev, SessionKey)}
    assert len(keys) == 1
    return sum(node.cpu for node in sim.nodes), sim.protocol_messages, sim.now, sim.bytes_sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="3,7,11,21,51,101")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print("n,cpu_all_members_ms,cpu_per_member_ms,protocol_messages,bytes,sim_time_to_key_ms")
    for n in [int(x) for x in args.sizes.split(",")]:
        runs = [one(n, seed) for seed in range(args.repeat)]
        cpu = statistics.median(r[0] for r in runs) * 1e3
        msgs = statistics.median(r[1] for r in runs)
        t = statistics.median(r[2] for r in runs) * 1e3
        size = statistics.median(r[3] for r in runs)
        print(f"{n},{cpu:.1f},{cpu / n:.2f},{msgs:.0f},{size:.0f},{t:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
