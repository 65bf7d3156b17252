"""After a partition heals, delivery resumes at once: a test over real member processes.

Three member processes; m0 reaches m1 and m2 only through fault-injecting proxies of our own
(:mod:`.faultproxy`), and they know no address of m0, so every link of m0 runs through a proxy.
The key is established, then the proxies partition m0 off for 10 s -- every connection through
them a silent black hole, also after the heal -- while m1 and m0 each send messages.  After the
heal, m0 has to notice that its connections are dead (nothing acknowledged for
``stall_timeout``), connect again (an attempt every ``retry_max`` while the peer is unreachable)
and resend what was never acknowledged: every live member delivers every outstanding message
within 2 s of the heal.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from .faultproxy import FaultProxy
from .netproc import Member, world, write_config

LINKS = {"retry_max": 0.5, "connect_timeout": 2.0, "stall_timeout": 1.0}
PARTITION = 10.0
DEADLINE = 2.0


def test_every_outstanding_message_arrives_within_two_seconds_of_the_heal(tmp_path):
    _, _, ca_path, files = world(tmp_path, ["m0", "m1", "m2"])
    members = [files["m0"], files["m1"], files["m2"]]

    async def main() -> None:
        procs: dict[str, Member] = {}
        proxies: list[FaultProxy] = []
        try:

            def config(name: str, peers: dict) -> object:
                return write_config(
                    tmp_path / f"{name}.toml",
                    files[name],
                    ca_path,
                    members,
                    peers=peers,
                    links=LINKS,
                )

            procs["m2"] = await Member.start("m2", config("m2", {}), tmp_path / "m2.log")
            procs["m1"] = await Member.start(
                "m1", config("m1", {"m2": procs["m2"].address}), tmp_path / "m1.log"
            )
            proxies = [FaultProxy(procs["m1"].address), FaultProxy(procs["m2"].address)]
            via = [await p.start() for p in proxies]
            procs["m0"] = await Member.start(
                "m0", config("m0", {"m1": via[0], "m2": via[1]}), tmp_path / "m0.log"
            )
            for m in procs.values():
                await m.wait_for(lambda e: e["event"] == "established", 60)
            for m in procs.values():
                m.command(cmd="send", text=f"before from {m.name}")
            before = {f"before from {name}" for name in procs}  # each delivers its own too
            for m in procs.values():
                await m.wait_for(
                    lambda e, m=m: before <= {x["text"] for _, x in m.of("delivered")}, 30
                )

            for p in proxies:
                p.partition()
            t_cut = time.monotonic()
            for i in range(20):  # both sides of the partition talk meanwhile
                procs["m1"].command(cmd="send", text=f"during m1 {i}")
                procs["m0"].command(cmd="send", text=f"during m0 {i}")
                await asyncio.sleep(PARTITION / 40)
            await procs["m2"].wait_for(
                lambda e: e["event"] == "delivered" and e["text"] == "during m1 19", 10
            )
            assert not [
                e for _, e in procs["m1"].of("delivered") if e["text"].startswith("during m0")
            ]
            await asyncio.sleep(max(0.0, t_cut + PARTITION - time.monotonic()))
            for p in proxies:
                p.heal()
            t_heal = time.monotonic()

            expected = {
                "m0": {f"during m1 {i}" for i in range(20)},
                "m1": {f"during m0 {i}" for i in range(20)},
                "m2": {f"during m0 {i}" for i in range(20)} | {f"during m1 {i}" for i in range(20)},
            }
            last: dict[str, float] = {}
            for name, want in expected.items():
                m = procs[name]
                await m.wait_for(
                    lambda e, m=m, want=want: want <= {x["text"] for _, x in m.of("delivered")}, 30
                )
                last[name] = max(t for t, x in m.of("delivered") if x["text"] in want) - t_heal
            for name, m in procs.items():
                texts = [x["text"] for _, x in m.of("delivered") if x["text"].startswith("during")]
                assert len(texts) == len(set(texts)), f"{name} delivered a message twice"
            stats = {name: await m.stats() for name, m in procs.items()}
            print(
                f"partition {PARTITION:.0f}s, then: last outstanding message delivered "
                + ", ".join(f"{n} +{t:.3f}s" for n, t in sorted(last.items()))
                + f" after the heal (median {statistics.median(last.values()):.3f}s); m0 stalls "
                f"{stats['m0']['links']['stalls']}, resent {stats['m0']['links']['frames_resent']}, "
                f"proxy connections {[p.connections for p in proxies]}"
            )
            assert max(last.values()) <= DEADLINE
            assert stats["m0"]["links"]["stalls"] >= 1  # the dead connections were noticed
        finally:
            for m in procs.values():
                await m.stop(tmp_path / f"{m.name}.events")
            for p in proxies:
                await p.aclose()

    asyncio.run(asyncio.wait_for(main(), 120))
