"""Scale over real processes: n member processes (201 by default) on this machine, one key.

Starts n ``secchat`` member processes over mutually authenticated TLS on loopback (the cluster
launcher), all joining at once, and prints the time from start to key (median, slowest), the
peak RSS per member process, and what the failure detector and the decision relay cost at that
size: heartbeats (``Alive``) and ``Decision`` frames sent, in all and per member per second of
the run, next to n² for scale.  Run it alone, once: n processes on two cores.

    python benchmarks/bench_scale_tls.py [--sizes 51,201]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from secchat.net.cluster import ClusterSpec, run_cluster

#: n members on one 2-core machine are a crowd no deployment has (one member per machine): every
#: process waits seconds for a turn on a core, so the deadlines meant for a network (a 3 s TLS
#: handshake, 2 s without acknowledgement, a 1 s failure-detector timeout before scaling) are
#: stretched for this benchmark, and every peer shares one source address (127.0.0.1), which the
#: handshake budget per source counts as one.  Safety never depends on any of them.
CROWDED_LINKS = {
    "handshake_timeout": 30.0,
    "connect_timeout": 30.0,
    "hello_timeout": 30.0,
    "stall_timeout": 30.0,
    "retry_max": 5.0,
    "busy_retry_max": 30.0,
    "max_handshakes_per_source": 64,
    "max_pending_handshakes": 128,
    "reserved_handshakes": 8,
}
CROWDED_STACK = {"detector": {"initial_timeout": 3.0}}


def one(n: int, seed: int, crowded: bool) -> None:
    load_before = os.getloadavg()[0]
    extra = {"links": CROWDED_LINKS, "stack": CROWDED_STACK} if crowded else {}
    spec = ClusterSpec(n=n, join=n, seed=seed, timeout=1800, log_level="WARNING", **extra)
    result = asyncio.run(run_cluster(spec, out=lambda line: print(f"  {line}", file=sys.stderr)))
    # members that had to be SIGKILLed at the very end (n processes closing ~2n connections each
    # at once) are reported, not taken for a failed run: the key is what is measured
    late_exits = [p for p in result.problems if p.endswith("exited with -9")]
    if [p for p in result.problems if p not in late_exits]:
        raise SystemExit(f"n={n}: {result.problems[:3]}")
    if late_exits:
        print(f"  note: {len(late_exits)} members killed after the grace period at the end: {late_exits[:3]}")
    times = [m.elapsed for m in result.members if m.elapsed is not None]
    rss = [m.stats["rss_kb"] / 1024 for m in result.members if m.stats]
    sent = [m.stats.get("stack", {}) for m in result.members if m.stats]

    def total(key: str) -> int:
        return sum(int(s.get(key, 0)) for s in sent)

    alive, decision = total("member.sent.Alive"), total("member.sent.Decision")
    hello, messages = total("member.sent.RecordHello"), total("member.sent")
    fps = {m.fingerprint for m in result.members}
    print(f"n={n}: one key at {len(times)}/{n} members ({len(fps)} fingerprint); time to key median "
          f"{statistics.median(times):.2f} s, slowest {max(times):.2f} s; run {result.duration:.0f} s")
    print(f"  RSS per member: median {statistics.median(rss):.1f} MiB, max {max(rss):.1f} MiB")
    print(f"  frames sent: {messages} in all ({messages / n**2:.2f} n²); heartbeats {alive} "
          f"({alive / n / result.duration:.1f} per member per s, {alive / n**2:.2f} n²), record hellos {hello} "
          f"({hello / n**2:.2f} n²), decisions {decision} ({decision / n:.2f} n)")
    print(f"  load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="201")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--crowded", action=argparse.BooleanOptionalAction, default=None,
        help="stretch the network deadlines for n processes on one machine (default: n > 101)",
    )
    args = parser.parse_args()
    for n in [int(x) for x in args.sizes.split(",")]:
        crowded = n > 101 if args.crowded is None else args.crowded
        if crowded:
            print(f"n={n}: crowded-machine deadlines: links {CROWDED_LINKS}, stack {CROWDED_STACK}")
        one(n, args.seed, crowded)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
