"""Per-message CPU cost of secure multicast, sender and receiver, by message size and mode.

Measures the whole member stack (``Member.multicast`` -> frame bytes, ``Member.receive`` frame
bytes -> ``Delivered``), one core, medians over repeated batches; plus the primitives alone and the
thesis's legacy suite (RSA + AES-128-CBC + HMAC-MD5) for comparison.  Prints a table and CSV.

    python benchmarks/bench_smc.py [--repeat 15] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from secchat.protocols.stack import smc_tag
from secchat.sim.simulator import Simulation

SIZES = [0, 1024, 16 * 1024, 125_000]
TAG = smc_tag("bench")


def _members(signed: bool):
    sim = Simulation(3, 1)
    for i in range(3):
        sim.start(i, lambda m, now: m.smc_init(TAG, now, signed=signed))
    sim.run(5.0)
    a, b = sim.nodes[0].member, sim.nodes[1].member
    assert a.smc(TAG).established and b.smc(TAG).established
    return a, b


def _batch(fn, count: int) -> float:
    t0 = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - t0) / count * 1e6


def bench_stack(signed: bool, size: int, repeat: int) -> tuple[float, float]:
    sender, receiver = _members(signed)
    payload = os.urandom(size)
    count = 400 if size <= 16 * 1024 else 100
    send_times, recv_times = [], []
    for _ in range(repeat):
        frames = []

        def send(frames=frames):
            sender.multicast(TAG, payload, 1.0)
            frames.append(sender.take_outgoing()[-1].data)
            sender.take_events()

        send_times.append(_batch(send, count))
        it = iter(frames)

        def recv(it=it):
            receiver.receive(0, next(it), 1.0)

        recv_times.append(_batch(recv, count))
        got = receiver.take_events()
        assert sum(type(e).__name__ == "Delivered" for e in got) == count, "not all delivered"
        receiver.take_outgoing()
    return statistics.median(send_times), statistics.median(recv_times)


def bench_legacy(size: int, repeat: int) -> tuple[float, float, float, float]:
    from secchat.crypto_legacy import LegacySuite

    suite = LegacySuite()
    payload = os.urandom(size)
    count = 100 if size <= 16 * 1024 else 30
    sig = suite.sign(payload)
    ct = suite.encrypt(payload + sig)
    mac_ct = suite.encrypt(payload)
    tag = suite.mac(mac_ct)
    rows = {"ss": [], "sr": [], "gs": [], "gr": []}
    for _ in range(repeat):
        rows["ss"].append(_batch(lambda: suite.encrypt(payload + suite.sign(payload)), count))
        rows["sr"].append(_batch(lambda: suite.verify(suite.decrypt(ct)[:-len(sig)], sig), count))
        rows["gs"].append(_batch(lambda: suite.mac(suite.encrypt(payload)), count))
        rows["gr"].append(_batch(lambda: (suite.check_mac(mac_ct, tag), suite.decrypt(mac_ct)), count))
    return tuple(statistics.median(rows[k]) for k in ("ss", "sr", "gs", "gr"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--csv", help="also write the CSV to this file")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    lines = ["suite,mode,size_bytes,send_us,receive_us,throughput_send_mbit_s"]
    print(f"{'suite':8} {'mode':6} {'size':>8} {'send µs':>9} {'recv µs':>9} {'Mbit/s (send)':>14}")
    for signed in (True, False):
        mode = "signed" if signed else "group"
        for size in SIZES:
            s, r = bench_stack(signed, size, args.repeat)
            tput = size * 8 / s if size and s else 0.0
            print(f"{'secchat':8} {mode:6} {size:8d} {s:9.1f} {r:9.1f} {tput:14.0f}")
            lines.append(f"secchat,{mode},{size},{s:.2f},{r:.2f},{tput:.1f}")
    for size in SIZES:
        ss, sr, gs, gr = bench_legacy(size, max(5, args.repeat // 3))
        for mode, s, r in (("signed", ss, sr), ("group", gs, gr)):
            tput = size * 8 / s if size and s else 0.0
            print(f"{'thesis':8} {mode:6} {size:8d} {s:9.1f} {r:9.1f} {tput:14.0f}")
            lines.append(f"thesis-legacy,{mode},{size},{s:.2f},{r:.2f},{tput:.1f}")
    csv = "\n".join(lines) + "\n"
    print()
    sys.stdout.write(csv)
    if args.csv:
        with open(args.csv, "w") as fh:
            fh.write(csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
