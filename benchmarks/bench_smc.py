"""Per-message CPU cost of secure multicast, sender and receiver, by message size and mode.

Every mode of :mod:`secchat.bench.modes` (SecChat signed and group through the whole member
stack, the thesis's legacy suite, and the peers of ``secchat[peers]`` when installed), one
core, medians over repeated batches, interleaved round by round.  Prints a table and CSV;
``secchat bench --figure 2`` draws the same as Figure 2.

    python benchmarks/bench_smc.py [--repeat 15] [--csv out.csv]
    python benchmarks/bench_smc.py --versus-megolm [--rounds 21] [--size 1024]

``--versus-megolm``: per message at one size, every SMC mode (``burst`` both isolated and in
bursts of 16 and 64) side by side with Megolm (vodozemac, if installed), in interleaved rounds (each
round runs every contender once, so load changes hit all alike); medians, ratios to Megolm, and
the machine's load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from secchat.bench.modes import measure, modes
from secchat.protocols.auth import MODES
from secchat.protocols.stack import Member, smc_tag
from secchat.sim.simulator import Simulation

SIZES = [0, 1024, 16 * 1024, 125_000]
TAG = smc_tag("sim")  # the simulator's group


def _members(auth: str, n: int = 3) -> tuple[Member, Member]:
    sim = Simulation(n, 1)
    for i in range(n):
        sim.start(i, lambda m, now: m.smc_init(TAG, now, auth=auth))
    sim.run(5.0)
    a, b = sim.nodes[0].member, sim.nodes[1].member
    assert a.smc(TAG).established and b.smc(TAG).established
    return a, b


def _batch(fn, count: int) -> float:
    t0 = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - t0) / count * 1e6

SIZES = [0, 1024, 16 * 1024, 125_000]


# --------------------------------------------------------------------------- modes against Megolm

#: the contenders are timed in CPU time of this process: on a shared machine, time spent waiting
#: for the core is nobody's cost, and it would hit whichever contender runs at that moment
_cpu = time.process_time

#: messages multicast in one turn for the ``burst`` contenders (64: the default burst_max)
BURSTS = (16, 64)


class _StackContender:
    """One SMC mode, sender and receiver stacks, ``per_turn`` messages multicast per turn."""

    def __init__(self, auth: str, per_turn: int, size: int) -> None:
        self.sender, self.receiver = _members(auth)
        self.per_turn = per_turn
        self.payload = os.urandom(size)

    def round(self, count: int) -> tuple[float, float]:
        sender, receiver, payload, per_turn = self.sender, self.receiver, self.payload, self.per_turn
        frames: list[bytes] = []
        turns = max(1, count // per_turn)
        t0 = _cpu()
        for _ in range(turns):
            for _ in range(per_turn):
                sender.multicast(TAG, payload, 1.0)
            frames += [o.data for o in sender.take_outgoing() if o.data[1:2] == b"\x1e"]
        send = _cpu() - t0
        sender.take_events()
        t0 = _cpu()
        for data in frames:
            receiver.receive(0, data, 1.0)
        recv = _cpu() - t0
        got = sum(type(e).__name__ == "Delivered" for e in receiver.take_events())
        receiver.take_outgoing()
        assert got == len(frames) == turns * per_turn, (got, len(frames))
        return send / len(frames) * 1e6, recv / len(frames) * 1e6


class _MegolmContender:
    """Megolm (vodozemac): encrypt to bytes; parse and decrypt (which verifies its Ed25519
    signature)."""

    def __init__(self, size: int) -> None:
        import vodozemac

        self._message = vodozemac.MegolmMessage
        self.outbound = vodozemac.GroupSession()
        self.inbound = vodozemac.InboundGroupSession(self.outbound.session_key)
        self.payload = os.urandom(size)

    def round(self, count: int) -> tuple[float, float]:
        outbound, payload, parse, decrypt = self.outbound, self.payload, self._message.from_bytes, self.inbound.decrypt
        t0 = _cpu()
        wire = [outbound.encrypt(payload).to_bytes() for _ in range(count)]
        send = _cpu() - t0
        t0 = _cpu()
        for data in wire:
            decrypt(parse(data))
        recv = _cpu() - t0
        return send / count * 1e6, recv / count * 1e6


class _VerifyContender:
    """One Ed25519 verification alone (receive column): the floor of a signed message's receive
    cost; libsodium (through :class:`secchat.crypto.Verifier`) and, if installed, vodozemac's
    ed25519-dalek alone (SecChat's Verifier uses it when installed, with libsodium's checks)."""

    def __init__(self, backend: str) -> None:
        from secchat.crypto import Signer, Verifier

        signer = Signer.generate()
        self.message = os.urandom(120)
        sig = signer.sign(self.message)
        if backend == "sodium":
            verifier = Verifier(signer.public_bytes, engine="sodium")
            self._verify = lambda: verifier.verify(self.message, sig)
        else:
            import base64

            import vodozemac

            key = vodozemac.Ed25519PublicKey.from_base64(base64.b64encode(signer.public_bytes).decode().rstrip("="))
            signature = vodozemac.Ed25519Signature.from_base64(base64.b64encode(sig).decode().rstrip("="))
            self._verify = lambda: key.verify_signature(self.message, signature)

    def round(self, count: int) -> tuple[float, float]:
        verify = self._verify
        t0 = _cpu()
        for _ in range(count):
            verify()
        return 0.0, (_cpu() - t0) / count * 1e6


def _load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "load: uptime unavailable"


def versus_megolm(size: int, rounds: int, count: int) -> list[str]:
    """Interleaved rounds of every contender; returns the CSV lines."""
    contenders: dict[str, Callable[[int], tuple[float, float]]] = {}
    for mode in MODES:
        contenders[f"{mode}" if mode != "burst" else "burst-1"] = _StackContender(mode, 1, size).round
    for per_turn in BURSTS:
        contenders[f"burst-{per_turn}"] = _StackContender("burst", per_turn, size).round
    contenders["ed25519-sodium"] = _VerifyContender("sodium").round
    try:
        contenders["megolm"] = _MegolmContender(size).round
        contenders["ed25519-dalek"] = _VerifyContender("dalek").round
    except ImportError:
        print("Megolm skipped: vodozemac is not installed (pip install vodozemac, or secchat[peers])")
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in contenders}
    print(f"before: {_load()}")
    for _ in range(rounds):
        for name, run in contenders.items():
            s, r = run(count)
            times[name][0].append(s)
            times[name][1].append(r)
    print(f"after:  {_load()}")
    med = {name: (statistics.median(s), statistics.median(r)) for name, (s, r) in times.items()}
    ref = med.get("megolm")
    print(f"{size} B per message, medians of {rounds} interleaved rounds of {count} messages")
    print(f"{'contender':14} {'send µs':>9} {'recv µs':>9} {'send ×megolm':>13} {'recv ×megolm':>13}")
    lines = ["contender,size_bytes,send_us,receive_us,send_vs_megolm,receive_vs_megolm"]
    for name, (s, r) in med.items():
        rs, rr = (s / ref[0], r / ref[1]) if ref else (float("nan"), float("nan"))
        print(f"{name:14} {s:9.1f} {r:9.1f} {rs:13.2f} {rr:13.2f}")
        lines.append(f"{name},{size},{s:.2f},{r:.2f},{rs:.3f},{rr:.3f}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--csv", help="also write the CSV to this file")
    parser.add_argument("--versus-megolm", action="store_true", help="every mode against Megolm, one size")
    parser.add_argument("--size", type=int, default=1024, help="message size for --versus-megolm")
    parser.add_argument("--rounds", type=int, default=21, help="interleaved rounds for --versus-megolm")
    parser.add_argument("--count", type=int, default=320, help="messages per contender per round")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if args.versus_megolm:
        lines = versus_megolm(args.size, args.rounds, args.count)
        if args.csv:
            with open(args.csv, "w") as fh:
                fh.write("\n".join(lines) + "\n")
        return 0
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
