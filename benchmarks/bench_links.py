"""End-to-end throughput over real links: member processes, TLS 1.3 on loopback.

For n = 3 and 7 members, 1 KiB and 125 KB messages, signed and group mode: n member processes
(each a :class:`~secchat.net.node.Node` over :class:`~secchat.net.links.LinkManager`, the
member process of :mod:`secchat.net.member_process` with deliveries counted instead of printed)
establish the key; then m0 multicasts M messages, paced by the links' back-pressure, and the
clock stops when every other member delivered all of them.  Next to each row:

* the **CPU bound** from ``bench_smc.py`` (the stack's CPU cost per message -- its wall-clock
  medians scaled by the share of the time it had a core -- one core each): the
  sender can do at most 1/send_us, each receiver 1/recv_us, and all n processes share the
  machine's cores: ``min(1/send, 1/recv, cores / (send + (n-1)·recv))`` messages/s;
* the **CPU time** all n processes spent per message, next to the stack's own cost
  (send + (n-1)·receive): "% time" is how much of the CPU went into the stack, which does not
  depend on what else runs on the machine (the rates do: they are only meaningful when the
  machine is otherwise idle -- the load average is printed);
* **raw loopback TLS**: one process writing the same messages into a TLS 1.3 connection to
  another that reads them (no framing, no protocol): MB/s of one stream.

Targets (issue 10): small signed messages at >= 70 % of the CPU bound; bulk (125 KB) at >= 50 %
of raw loopback TLS, counting the bytes the sender puts on all its links.

    python benchmarks/bench_links.py [--quick] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
PASSPHRASE = "bench pass phrase"  # the key store refuses passphrases under 8 characters


# ---------------------------------------------------------------------- the member child


def member_main(config_path: str, expected: int) -> int:
    """A member process that counts deliveries and says when it has ``expected`` of them."""
    import logging

    from secchat.net.config import load_config
    from secchat.net.member_process import MemberProcess, emit
    from secchat.protocols.events import Delivered

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    class Counting(MemberProcess):
        delivered = 0

        def _on_event(self, group: str, event: Any) -> None:
            if isinstance(event, Delivered):
                self.delivered += 1
                if self.delivered == expected:
                    emit({"event": "done", "name": self.name})
                return
            super()._on_event(group, event)

    return asyncio.run(Counting(load_config(config_path)).run())


def sink_main(cert: str, key: str) -> int:
    """Raw TLS: accept one connection on an ephemeral port, read until EOF, report bytes."""

    async def main() -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(cert, key)
        done = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            total = 0
            while data := await reader.read(1 << 16):
                total += len(data)
            print(json.dumps({"bytes": total}), flush=True)
            writer.close()
            done.set()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
        print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
        await done.wait()
        server.close()

    asyncio.run(main())
    return 0


# ---------------------------------------------------------------------- the parent


def _spawn(args: list[str], **kw: Any) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(SRC), BENCH_PASSPHRASE=PASSPHRASE)
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        **kw,
    )


def _lines(proc: subprocess.Popen[bytes], until: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"member exited (code {proc.wait()})")
        event = json.loads(line)
        if event.get("event") == "error":
            raise RuntimeError(event["message"])
        if event.get("event") == until:
            return event
    raise TimeoutError(until)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_members(
    n: int, size: int, count: int, signed: bool, tmp: Path, relay: str | None = None
) -> tuple[float, float]:
    """Seconds from m0's send command until every other member delivered ``count`` messages, and
    the CPU seconds all n member processes spent meanwhile.  With ``relay`` (a NATS URL) the
    members know no address of each other and go through the relay only."""
    import tomli_w

    from secchat.net.provision import make_identities, write_identities

    names = [f"m{i}" for i in range(n)]
    ca, ids = make_identities(names)
    ca_path, files = write_identities(tmp / f"pki{n}", ca, ids, PASSPHRASE)
    procs: list[subprocess.Popen[bytes]] = []
    addresses: dict[str, str] = {}
    try:
        for f in files:  # each knows the addresses of those started before it
            config = {
                "identity": {
                    "name": f.name,
                    "key": str(f.key_path),
                    "cert": str(f.cert_path),
                    "ca": str(ca_path),
                    "passphrase_env": "BENCH_PASSPHRASE",
                },
                "listen": {"address": "127.0.0.1:0"},
                "peers": {} if relay else dict(addresses),
                "conference": [
                    {
                        "id": "bench",
                        "mode": "signed" if signed else "group",
                        "join": "start",
                        "members": [{"name": g.name, "cert": str(g.cert_path)} for g in files],
                    }
                ],
            }
            if relay:
                config["relay"] = {"url": relay, "only": True}
            path = tmp / f"{f.name}.toml"
            path.write_text(tomli_w.dumps(config))
            proc = _spawn(["--member", str(path), str(count)], stderr=subprocess.DEVNULL)
            procs.append(proc)
            ready = _lines(proc, "ready", 60)
            addresses[f.name] = f"{ready['address'][0]}:{ready['address'][1]}"
        for proc in procs:
            _lines(proc, "established", 60)
        assert procs[0].stdin is not None
        time.sleep(0.5)  # let the links settle (connections, first heartbeats)
        cpu0 = sum(_cpu_seconds(p.pid) for p in procs)
        t0 = time.monotonic()
        procs[0].stdin.write(
            json.dumps({"cmd": "send", "count": count, "size": size}).encode() + b"\n"
        )
        procs[0].stdin.flush()
        for proc in procs[1:]:
            _lines(proc, "done", 600)
        elapsed = time.monotonic() - t0
        return elapsed, sum(_cpu_seconds(p.pid) for p in procs) - cpu0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def raw_tls(size: int, count: int, tmp: Path) -> float:
    """Seconds to push ``count`` writes of ``size`` bytes through one loopback TLS 1.3 stream."""
    from cryptography.hazmat.primitives import serialization

    from secchat.net.provision import make_identities

    _ca, [ident] = make_identities(["sink"])
    cert, key = tmp / "sink.pem", tmp / "sink.key"
    cert.write_bytes(ident.cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        ident.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    sink = _spawn(["--sink", str(cert), str(key)])
    try:
        assert sink.stdout is not None
        port = json.loads(sink.stdout.readline())["port"]

        async def push() -> float:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            payload = os.urandom(size)
            t0 = time.monotonic()
            for _ in range(count):
                writer.write(payload)
                await writer.drain()
            writer.close()
            await writer.wait_closed()
            return t0

        t0 = asyncio.run(push())
        got = json.loads(sink.stdout.readline())["bytes"]
        elapsed = time.monotonic() - t0
        assert got == size * count
        return elapsed
    finally:
        sink.wait(30)


def cpu_bound(n: int, size: int, signed: bool, repeat: int) -> tuple[float, float]:
    """(messages/s the stack's CPU cost allows on this machine's cores, CPU µs per message)."""
    sys.path.insert(0, str(HERE))
    from bench_smc import bench_stack  # type: ignore[import-not-found]

    wall, cpu = time.perf_counter(), time.process_time()
    send_us, recv_us = bench_stack(signed, size, repeat)
    # bench_smc times with the wall clock; on a loaded machine part of that is waiting for a
    # core: count only the share of it we ran
    share = min(1.0, (time.process_time() - cpu) / (time.perf_counter() - wall))
    send_us, recv_us = send_us * share, recv_us * share
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    per_message = send_us + (n - 1) * recv_us
    return min(1e6 / send_us, 1e6 / recv_us, cores * 1e6 / per_message), per_message


def link_latency(relay: str | None, rounds: int = 200) -> float:
    """Median round trip (ms) of a 64-byte frame between two link managers in this process:
    direct TLS over loopback, or (``relay``) through the relay only."""
    from secchat.net.links import LinkManager
    from secchat.net.provision import credentials, make_identities, pins
    from secchat.net.relay import RelayConfig

    ca, ids = make_identities(["a", "b"])
    config = RelayConfig(servers=(relay,), only=True) if relay else None

    async def main() -> float:
        got: asyncio.Queue[bytes] = asyncio.Queue()
        a = LinkManager("a", credentials(ids[0], ca), pins(ids),
                        lambda _p, _g, data: a.send("b", "g", data), relay=config)
        addr = await a.start()
        b = LinkManager("b", credentials(ids[1], ca), pins(ids), lambda _p, _g, d: got.put_nowait(d),
                        addresses=None if relay else {"a": addr}, relay=config)
        await b.start()
        try:
            rtts = []
            for i in range(rounds + 20):  # the first 20 warm the path up
                t0 = time.perf_counter()
                b.send("a", "g", b"%064d" % i)
                await asyncio.wait_for(got.get(), 30)
                if i >= 20:
                    rtts.append((time.perf_counter() - t0) * 1000)
            return statistics.median(rtts)
        finally:
            await b.aclose()
            await a.aclose()

    return asyncio.run(main())


def relay_rows(relay: str, counts: dict[int, int], repeat: int) -> None:
    """n = 3, signed: direct TLS links against the same members through the relay only."""
    for path in ("direct", "relay"):
        rtt = link_latency(relay if path == "relay" else None)
        print(f"link round trip, 64 B, {path}: {rtt:.2f} ms median (one process, two link managers)")
    print(f"{'n':>3} {'path':6} {'size':>7} {'msg/s':>8} {'MB/s/rcv':>9} {'ms/msg':>7}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for size, count in counts.items():
            for path in ("direct", "relay"):
                url = relay if path == "relay" else None
                runs = sorted(run_members(3, size, count, True, tmp, url) for _ in range(repeat))
                elapsed, _cpu = runs[len(runs) // 2]
                rate = count / elapsed
                # ms/msg: the whole stream's time per message (a throughput figure, not latency)
                print(
                    f"{3:3d} {path:6} {size:7d} {rate:8.0f} {rate * size / 1e6:9.2f} "
                    f"{1000 / rate:7.2f}",
                    flush=True,
                )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--member":
        return member_main(sys.argv[2], int(sys.argv[3]))
    if len(sys.argv) > 1 and sys.argv[1] == "--sink":
        return sink_main(sys.argv[2], sys.argv[3])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages and repeats")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (median)")
    parser.add_argument("--csv", help="also write the CSV to this file")
    parser.add_argument(
        "--relay",
        metavar="URL",
        help="also measure n=3 through this NATS relay (e.g. nats://127.0.0.1:4222)",
    )
    parser.add_argument("--relay-only", action="store_true", help="only the relay comparison")
    args = parser.parse_args()
    repeat = 1 if args.quick else args.repeat
    counts = {1024: 1000 if args.quick else 4000, 125_000: 60 if args.quick else 240}
    print(
        f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}"
    )
    header = (
        f"{'n':>3} {'mode':6} {'size':>7} {'msg/s':>8} {'MB/s/rcv':>9} {'MB/s out':>9} "
        f"{'cpu msg/s':>10} {'% cpu':>6} {'cpu µs/msg':>11} {'stack µs':>9} {'% time':>7} "
        f"{'raw TLS MB/s':>13} {'% raw':>6}"
    )
    lines = [
        "n,mode,size,msgs_per_s,mb_s_per_receiver,mb_s_out,cpu_bound_msgs_s,pct_cpu,"
        "cpu_us_per_msg,stack_us_per_msg,pct_cpu_time,raw_tls_mb_s,pct_raw"
    ]
    rows = []
    if args.relay:
        relay_rows(args.relay, counts, repeat)
        if args.relay_only:
            return 0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        raw = {
            size: statistics.median(
                size * counts[size] * 4 / raw_tls(size, counts[size] * 4, tmp) / 1e6
                for _ in range(repeat)
            )
            for size in counts
        }
        for n in (3, 7):
            for signed in (True, False):
                mode = "signed" if signed else "group"
                for size, count in counts.items():
                    runs = sorted(run_members(n, size, count, signed, tmp) for _ in range(repeat))
                    elapsed, cpu = runs[len(runs) // 2]  # the median run
                    bound, stack_us = cpu_bound(n, size, signed, 5)
                    rate = count / elapsed
                    per_rcv = rate * size / 1e6
                    out = per_rcv * (n - 1)
                    cpu_us = cpu / count * 1e6
                    row = (
                        n,
                        mode,
                        size,
                        rate,
                        per_rcv,
                        out,
                        bound,
                        100 * rate / bound,
                        cpu_us,
                        stack_us,
                        100 * stack_us / cpu_us,
                        raw[size],
                        100 * out / raw[size],
                    )
                    rows.append(row)
                    if len(rows) == 1:
                        print(header)
                    print(
                        f"{n:3d} {mode:6} {size:7d} {rate:8.0f} {per_rcv:9.2f} {out:9.2f} {bound:10.0f} "
                        f"{row[7]:5.0f}% {cpu_us:11.0f} {stack_us:9.0f} {row[10]:6.0f}% "
                        f"{raw[size]:13.1f} {row[12]:5.0f}%",
                        flush=True,
                    )
                    lines.append(
                        ",".join(str(round(v, 2)) if isinstance(v, float) else str(v) for v in row)
                    )
    print(
        f"load average after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}"
    )
    print(
        "targets: 1 KiB signed >= 70 % of the CPU bound; 125 KB >= 50 % of raw loopback TLS (bytes out)"
    )
    csv = "\n".join(lines) + "\n"
    print()
    sys.stdout.write(csv)
    if args.csv:
        Path(args.csv).write_text(csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
