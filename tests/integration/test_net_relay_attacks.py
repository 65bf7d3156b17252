"""A malicious relay (tests/malicious_relay.py, in front of a real nats-server) can delay, never forge.

Three members of one conference and two of another (another CA) talk through the same malicious
relay, which in turn drops, duplicates, reorders, replays (messages of the other conference, of
other pairs and of an earlier run of a member), flips bits and injects.  After each attack it
behaves again; then every frame each member sent has arrived exactly once and in order, and
nothing else arrived: 0 accepted forgeries.
"""

from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives import serialization

from secchat.net.links import LinkConfig, LinkManager
from secchat.net.provision import credentials, make_identities, pins
from secchat.net.relay import RelayConfig
from tests.malicious_relay import MODES, MaliciousRelay
from tests.nats_support import NatsServer

from .test_net_links import Inbox, until

FAST = LinkConfig(
    retry_initial=0.02,
    retry_factor=2.0,
    retry_max=0.2,
    connect_timeout=1.0,
    hello_timeout=1.0,
    handshake_timeout=1.0,
    stall_timeout=0.5,
)


@pytest.fixture
def nats_server():
    server = NatsServer().start()
    yield server
    server.stop()


class Run:
    """One member's link manager and what it delivered (per sender, in order)."""

    def __init__(self, world, name: str, relay: RelayConfig) -> None:
        ca, ids = world
        me = next(m for m in ids if m.name == name)
        self.name = name
        self.inbox = Inbox()
        self.links = LinkManager(
            name, credentials(me, ca), pins(ids), self.inbox, config=FAST, relay=relay
        )


def test_a_malicious_relay_delays_but_never_forges(nats_server):
    conf1 = make_identities(["a", "b", "c"])
    conf2 = make_identities(["x", "y"])

    async def main():
        evil = await MaliciousRelay(nats_server.port, seed=1, rate=0.15).start()
        relay = RelayConfig(servers=(evil.url,))
        runs = {n: Run(conf1, n, relay) for n in "abc"} | {n: Run(conf2, n, relay) for n in "xy"}
        groups = {"a": "abc", "b": "abc", "c": "abc", "x": "xy", "y": "xy"}
        sent: dict[tuple[str, str], list[bytes]] = {}
        got: dict[tuple[str, str], list[bytes]] = {}  # (receiver, sender): over all its runs
        retired: list[Run] = []
        for r in runs.values():
            await r.links.start_relay()

        def collect(r: Run) -> None:
            for sender, _, payload in r.inbox.items:
                got.setdefault((r.name, sender), []).append(payload)

        async def settle(timeout: float = 60.0) -> None:
            def done() -> bool:
                for (src, dst), frames in sent.items():
                    r = runs[dst]
                    have = sum(1 for s, _, _ in r.inbox.items if s == src)
                    have += len(
                        [
                            1
                            for old in retired
                            if old.name == dst
                            for s, _, _ in old.inbox.items
                            if s == src
                        ]
                    )
                    if have < len(frames):
                        return False
                return True

            await until(done, timeout)

        try:
            counter = 0
            for mode in MODES[1:]:
                evil.mode = mode
                for _ in range(60):
                    for src, r in runs.items():
                        for dst in groups[src]:
                            if dst != src:
                                payload = b"%s>%s:%d" % (src.encode(), dst.encode(), counter)
                                r.links.send(dst, "g", payload)
                                sent.setdefault((src, dst), []).append(payload)
                    counter += 1
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.5)
                evil.mode = "honest"
                await settle()
                if mode == "replay":  # an earlier run of a: its messages stay replayable
                    await until(
                        lambda: (
                            not any(runs[n].links._peers["a"].channel.has_pending() for n in "bc")
                        ),
                        20,
                    )
                    old = runs["a"]
                    await old.links.aclose()
                    retired.append(old)
                    runs["a"] = Run(conf1, "a", relay)
                    await runs["a"].links.start_relay()
            await asyncio.sleep(0.3)  # a late duplicate or forgery would show by now
            for r in [*retired, *runs.values()]:
                collect(r)
            forgeries = 0
            for (dst, src), frames in got.items():
                forgeries += sum(1 for p in frames if p not in set(sent.get((src, dst), [])))
            assert forgeries == 0
            for (src, dst), frames in sent.items():
                assert got.get((dst, src)) == frames, (src, dst)
            # the attacks happened, and the members noticed them
            print("malicious relay:", evil.stats)
            for key in ("dropped", "duplicated", "reordered", "replayed", "flipped", "injected"):
                assert evil.stats[key] > 0, key
            stats = [r.links.stats for r in runs.values()]
            assert sum(s["connections_closed"] for s in stats) > 0
            assert sum(s["relay_unknown_pipe"] + s["relay_bad_messages"] for s in stats) > 0
        finally:
            for r in runs.values():
                await r.links.aclose()
            await evil.aclose()

    asyncio.run(asyncio.wait_for(main(), 240))


def test_a_flood_of_forged_pipe_opens_stays_bounded_and_honest_traffic_flows(nats_server):
    """Anyone on the relay can write to a member's subject under a peer's token (tokens are
    hashes of public certificates): 3000 forged opens cost at most ``max_pipes`` pipes."""
    conf = make_identities(["a", "b"])

    async def main():
        import nats

        from secchat.net.relay import OPEN, member_token

        relay = RelayConfig(servers=(nats_server.url,), max_pipes=16)
        a, b = Run(conf, "a", relay), Run(conf, "b", relay)
        await a.links.start_relay()
        await b.links.start_relay()
        flood = await nats.connect(nats_server.url)
        try:
            _, ids = conf
            der = {m.name: m.cert.public_bytes(serialization.Encoding.DER) for m in ids}
            subject = f"secchat.{member_token(der['a'])}.{member_token(der['b'])}"
            peak = 0
            for i in range(3000):
                await flood.publish(subject, i.to_bytes(8, "big") + bytes((OPEN,)) + b"\x16junk")
                if i % 100 == 0:
                    await flood.flush()
                    peak = max(peak, len(a.links.relay._pipes))
            await flood.flush()
            await until(lambda: a.links.stats["relay_pipes_refused"] > 0, 20)
            assert peak <= 16
            for i in range(50):
                b.links.send("a", "g", b"%d" % i)
            await a.inbox.wait(50, 60)
            assert [p for _, _, p in a.inbox.items] == [b"%d" % i for i in range(50)]
            assert len(a.links.relay._pipes) <= 16
        finally:
            await flood.close()
            await a.links.aclose()
            await b.links.aclose()

    asyncio.run(asyncio.wait_for(main(), 120))
