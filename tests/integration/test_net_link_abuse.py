"""Fairness under abuse, over real member processes: one party must not starve the others.

The victim m0 and the honest m1 are member processes of conference {m0, m1, m2} (m0 and m1 are
a majority); the test process plays the abusers: m2 (a genuine member: it holds m2's real
certificate) and, in the handshake flood, a client with no certificate at all, while m2's real
certificate probes whether a genuine member still gets in.  Meanwhile the test has m1 multicast a timestamped message every
50 ms and reads m0's deliveries: the victim's delivery latency to the honest member must stay
under 100 ms median, neither may suspect the other, and m0's memory must stay within
``RSS_GROWTH_MAX`` (no forced collection anywhere: the member process never calls the
collector).

* **Hello storm**: m0 bulk-multicasts 7.5 MB while m2 reads but never acknowledges and
  reconnects ~4 times a second, each time as a new link session.
* **Half-open handshake flood**: 200 TCP connections from another source address that never
  finish a TLS handshake, re-opened as m0 drops them; a genuine member (m2) connects 40 times.
* **Frame flood**: m2 writes ~100k valid-envelope frames a second of junk payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time

from secchat.net.framing import Data, FrameDecoder, decode_message, encode_data, encode_hello
from secchat.net.links import new_session
from secchat.net.provision import credentials
from secchat.net.tls import client_context

from .netproc import Member, world, write_config

ATTACK = 6.0
RSS_GROWTH_MAX = 64 << 10  # KiB: the documented bound for these floods (docs/protocols.md)


async def _pings(m1: Member, seconds: float) -> None:
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        m1.command(cmd="send", text=f"ping {i} {time.time():.6f}")
        i += 1
        await asyncio.sleep(0.05)


def _latencies(m0: Member, since: float) -> list[float]:
    out = []
    for t, e in m0.of("delivered"):
        if e["sender"] == "m1" and e["text"].startswith("ping "):
            sent = float(e["text"].split()[2])
            if sent >= since:
                out.append(t - time.monotonic() + time.time() - sent)
    return out


async def _scene(tmp_path, attack, label: str, links: dict | None = None) -> dict:
    _ca, ids, ca_path, files = world(tmp_path, ["m0", "m1", "m2"])
    ca = _ca
    members = [files[n] for n in ("m0", "m1", "m2")]
    m0 = m1 = None
    try:
        m1 = await Member.start(
            "m1",
            write_config(tmp_path / "m1.toml", files["m1"], ca_path, members),
            tmp_path / "m1.log",
        )
        m0 = await Member.start(
            "m0",
            write_config(
                tmp_path / "m0.toml",
                files["m0"],
                ca_path,
                members,
                peers={"m1": m1.address},
                links=links,
            ),
            tmp_path / "m0.log",
        )
        for m in (m0, m1):
            await m.wait_for(lambda e: e["event"] == "established", 60)
        before = (await m0.stats())["rss_kb"]
        t0 = time.time()
        await _pings(m1, 1.5)
        baseline = _latencies(m0, t0)
        creds = {i.name: credentials(i, ca) for i in ids}
        t1 = time.time()
        attack_from = time.monotonic()  # suspicions before (m0 starting after m1) are not the attack's
        extra = await asyncio.gather(_pings(m1, ATTACK), attack(m0, creds))
        await asyncio.sleep(0.5)
        under = _latencies(m0, t1)
        stats = await m0.stats()
        suspected = [
            (m.name, e["peer"])
            for m in (m0, m1)
            for when, e in m.of("suspected")
            if e["peer"] in ("m0", "m1") and when >= attack_from
        ]
        growth = stats["rss_kb"] - before
        figures = {
            "baseline_ms": statistics.median(baseline) * 1e3,
            "median_ms": statistics.median(under) * 1e3,
            "p90_ms": sorted(under)[int(0.9 * len(under))] * 1e3,
            "delivered": len(under),
            "rss_kb_before": before,
            "rss_growth_kb": growth,
            "suspected": suspected,
            "links": stats["links"],
            "attack": extra[1],
        }
        print(
            f"{label}: m1 -> m0 latency median {figures['median_ms']:.1f} ms (p90 "
            f"{figures['p90_ms']:.1f} ms, {len(under)} messages; {figures['baseline_ms']:.1f} ms "
            f"before the attack); suspicions {suspected}; m0 RSS {before} KiB, +{growth} KiB; "
            f"attack {extra[1]}; m0 links: "
            + ", ".join(
                f"{k} {stats['links'][k]}"
                for k in (
                    "frames_resent",
                    "connections_rate_limited",
                    "connections_refused",
                    "stalls",
                    "frames_received",
                )
            )
        )
        assert len(under) >= ATTACK / 0.05 * 0.8  # nearly every ping arrived during the attack
        assert figures["median_ms"] < 100
        assert not suspected
        assert growth < RSS_GROWTH_MAX
        return figures
    finally:
        for m in (m0, m1):
            if m is not None:
                await m.stop()


def test_hello_storm(tmp_path):
    async def storm(m0: Member, creds) -> dict:
        m0.command(cmd="send", count=1500, size=5000)  # 7.5 MB that m2 will never acknowledge
        ctx = client_context(creds["m2"])
        end = time.monotonic() + ATTACK
        sessions = refused = 0
        while (start := time.monotonic()) < end:
            try:
                reader, writer = await asyncio.open_connection(
                    *m0.address, ssl=ctx, server_hostname=None
                )
            except OSError:
                refused += 1
                await asyncio.sleep(0.25)
                continue
            writer.write(encode_hello(0, new_session(), 0, 0, 0))  # a new run of m2, acking nothing
            sessions += 1
            stop = time.monotonic() + 0.25
            with contextlib.suppress(OSError, TimeoutError):
                while (left := stop - time.monotonic()) > 0:
                    if not await asyncio.wait_for(reader.read(1 << 16), left):
                        break  # m0 closed it (rate limit or stall)
            writer.transport.abort()
            await asyncio.sleep(max(0.0, start + 0.25 - time.monotonic()))  # ~4 a second
        return {"sessions": sessions, "refused": refused}

    f = asyncio.run(asyncio.wait_for(_scene(tmp_path, storm, "hello storm"), 150))
    assert f["attack"]["sessions"] >= 15  # ~4 a second
    assert f["links"]["connections_rate_limited"] > 0


def test_half_open_handshake_flood(tmp_path):
    async def flood(m0: Member, creds) -> dict:
        held: list[asyncio.StreamWriter] = []
        opened = 0

        async def hold(count: int) -> None:
            nonlocal opened
            for _ in range(count):
                with contextlib.suppress(OSError):
                    _, w = await asyncio.open_connection(*m0.address, local_addr=("127.0.0.3", 0))
                    w.write(b"\x16\x03\x01\x00")  # the start of a ClientHello, never finished
                    held.append(w)
                    opened += 1

        await hold(200)
        ctx = client_context(creds["m2"])
        admitted = 0
        end = time.monotonic() + ATTACK
        for _ in range(40):  # a genuine member connecting, 40 times during the flood
            with contextlib.suppress(OSError, TimeoutError):
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(*m0.address, ssl=ctx, server_hostname=None), 5
                )
                writer.write(encode_hello(0, new_session(), 0, 0, 0))
                body = await asyncio.wait_for(reader.readexactly(5), 5)  # m0's hello: it got in
                admitted += bool(body)
                writer.transport.abort()
            alive = [w for w in held if not w.transport.is_closing()]
            held[:] = alive
            await hold(200 - len(alive))  # keep 200 half-open
            await asyncio.sleep(max(0.0, (end - time.monotonic()) / 40))
        for w in held:
            w.transport.abort()
        return {"half_open_opened": opened, "genuine_admitted": f"{admitted}/40"}

    # the genuine member reconnects faster than m0's per-peer limit (the hello storm's business)
    links = {"session_burst": 50, "session_rate": 20.0}
    f = asyncio.run(asyncio.wait_for(_scene(tmp_path, flood, "half-open flood", links), 150))
    assert f["attack"]["genuine_admitted"] == "40/40"
    assert f["attack"]["half_open_opened"] >= 200
    log = (tmp_path / "m0.log").read_text()
    refusals = log.count("refused inbound connection")
    print(f"refusal log lines: {refusals} for {f['links']['connections_refused']} refusals")
    assert refusals <= 10  # one line per source and kind per interval, with a count


def test_frame_flood_by_a_genuine_member(tmp_path):
    async def flood(m0: Member, creds) -> dict:
        reader, writer = await asyncio.open_connection(
            *m0.address, ssl=client_context(creds["m2"]), server_hostname=None
        )
        writer.write(encode_hello(0, new_session(), 0, 0, 0))
        peer = _Acking()
        drain_task = asyncio.get_running_loop().create_task(peer.read(reader))
        seq = 0
        t_start = time.monotonic()
        end = t_start + ATTACK
        junk = b"\x00junk-not-a-protocol-message"
        try:
            while (now := time.monotonic()) < end:
                due = int((now - t_start) * 100_000)  # 100k frames a second
                if seq < due:
                    batch = min(due - seq, 5000)
                    ack = peer.rx_next  # a genuine member: it acknowledges what m0 sends it
                    writer.write(
                        b"".join(encode_data("room", junk, s, ack) for s in range(seq, seq + batch))
                    )
                    seq += batch
                    await writer.drain()
                await asyncio.sleep(0.005)
        except OSError as exc:
            return {"frames_written": seq, "error": str(exc)}
        finally:
            writer.transport.abort()
            drain_task.cancel()
        return {"frames_written": seq, "rate_per_s": round(seq / ATTACK)}

    f = asyncio.run(asyncio.wait_for(_scene(tmp_path, flood, "frame flood"), 150))
    assert f["attack"]["rate_per_s"] >= 50_000  # the flood was real (TCP back-pressure may slow it)


class _Acking:
    """Reads m0's frames and keeps the sequence number to acknowledge."""

    def __init__(self) -> None:
        self.rx_next = 0

    async def read(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder()
        with contextlib.suppress(OSError):
            while data := await reader.read(1 << 16):
                for body in decoder.feed(data):
                    message = decode_message(body)
                    if isinstance(message, Data):
                        self.rx_next = max(self.rx_next, message.seq + 1)
