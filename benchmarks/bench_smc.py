"""Per-message CPU cost of secure multicast, sender and receiver, by message size and mode.

Every mode of :mod:`secchat.bench.modes` (SecChat signed and group through the whole member
stack, the thesis's legacy suite, and the peers of ``secchat[peers]`` when installed), one
core, medians over repeated batches, interleaved round by round.  Prints a table and CSV;
``secchat bench --figure 2`` draws the same as Figure 2.

    python benchmarks/bench_smc.py [--repeat 15] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from secchat.bench.modes import measure, modes

SIZES = [0, 1024, 16 * 1024, 125_000]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--csv", help="also write the CSV to this file")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    chosen = []
    for mode in modes():
        why = mode.missing()
        if why:
            print(f"skipped {why}", file=sys.stderr)
        else:
            chosen.append(mode)
    samples: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(args.repeat):
        for size in SIZES:
            for mode in chosen:
                count = 200 if size <= 16 * 1024 else 40
                samples.setdefault((mode.name, size), []).append(measure(mode, size, 1, count))
    lines = ["mode,size_bytes,send_us,receive_us,throughput_send_mbit_s"]
    print(f"{'mode':14} {'size':>8} {'send µs':>9} {'recv µs':>9} {'Mbit/s (send)':>14}")
    for mode in chosen:
        for size in SIZES:
            s = statistics.median(x for x, _ in samples[(mode.name, size)])
            r = statistics.median(y for _, y in samples[(mode.name, size)])
            tput = size * 8 / s if size and s else 0.0
            print(f"{mode.name:14} {size:8d} {s:9.1f} {r:9.1f} {tput:14.0f}")
            lines.append(f"{mode.name},{size},{s:.2f},{r:.2f},{tput:.1f}")
    csv = "\n".join(lines) + "\n"
    print()
    sys.stdout.write(csv)
    if args.csv:
        with open(args.csv, "w") as fh:
            fh.write(csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
