"""A simulated conference, told as a story: the protocol stack end to end on the simulator.

A bare majority joins, the key is established without waiting for the others, messages flow,
the late members join and catch up on the same key and on every message.  Deterministic per seed.
"""

from __future__ import annotations

import functools

from rich.console import Console

from ..codec import Tag
from ..protocols.consensus import majority
from ..protocols.events import Delivered, KeyEstablished, PeerRestored, PeerSuspected
from ..protocols.stack import Member, smc_tag
from .simulator import NetworkModel, Simulation

__all__ = ["run_demo"]

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory"]



def _multicast(tag: Tag, payload: bytes, member: Member, now: float) -> None:
    member.multicast(tag, payload, now)

def _name(i: int) -> str:
    return NAMES[i] if i < len(NAMES) else f"member{i}"


def run_demo(n: int = 5, seed: int = 1, console: Console | None = None) -> int:
    """Run and narrate; returns the exit status (0 when every member ends on the same key)."""
    console = console or Console(highlight=False)
    t = majority(n)
    tag = smc_tag("demo-conference")
    sim = Simulation(n, seed, network=NetworkModel(min_delay=0.002, max_delay=0.02))
    fingerprints: dict[int, str] = {}
    delivered: dict[int, int] = {i: 0 for i in range(n)}

    def narrate(i: int, now: float, ev) -> None:
        who = _name(i)
        if isinstance(ev, KeyEstablished):
            fingerprints[i] = ev.fingerprint
            by = ", ".join(_name(u) for u in ev.members)
            console.print(
                f"[dim]{now:7.3f}s[/] [bold green]{who}[/] has the conference key "
                f"[bold]{ev.fingerprint}[/] (contributions of {by})"
            )
        elif isinstance(ev, Delivered):
            delivered[i] += 1
            if ev.sender != i:
                console.print(
                    f"[dim]{now:7.3f}s[/] {who} received from [cyan]{_name(ev.sender)}[/]: "
                    f"{ev.payload.decode()!r}"
                )
        elif isinstance(ev, PeerSuspected) and now > 0.5:
            console.print(f"[dim]{now:7.3f}s[/] [yellow]{who} suspects {_name(ev.peer)} is not up[/]")
        elif isinstance(ev, PeerRestored):
            console.print(f"[dim]{now:7.3f}s[/] {who} sees {_name(ev.peer)} up again")

    for node in sim.nodes:
        node.on_output = lambda now, ev, i=node.index: narrate(i, now, ev)

    console.rule(f"[bold]SecChat demo[/]: a conference of {n}, simulated (seed {seed})")
    console.print(
        f"The key needs a majority: {t} of {n}. Only {', '.join(_name(i) for i in range(t))} join now."
    )
    for i in range(t):
        sim.start(i, lambda m, now: m.smc_init(tag, now))
    sim.run(2.0, stop=lambda: len(fingerprints) == t)
    if len(fingerprints) < t:
        console.print("[red]the majority did not establish a key[/]")
        return 1
    key_time = sim.now
    console.print(f"Key established by the majority after {key_time * 1000:.1f} ms of simulated time.")
    for i in range(t):
        sim.call(i, functools.partial(_multicast, tag, f"hello from {_name(i)}".encode()))
    sim.run(sim.now + 0.5)
    late = list(range(t, n))
    if late:
        console.print(f"Now the late members join: {', '.join(_name(i) for i in late)}.")
        start = sim.now
        for i in late:
            sim.start(i, lambda m, now: m.smc_init(tag, now))
        sim.run(start + 5.0, stop=lambda: len(fingerprints) == n)
        for i in late:
            sim.call(i, functools.partial(_multicast, tag, f"{_name(i)} made it".encode()))
        sim.run(sim.now + 1.0)
    same = len(set(fingerprints.values())) == 1 and len(fingerprints) == n
    expected = n * t + len(late) * n
    total = sum(delivered.values())
    console.rule("summary")
    console.print(
        f"members {n}, majority {t}; key after {key_time * 1000:.1f} ms; "
        f"fingerprints {'all equal' if same else 'DIFFER'} ({next(iter(fingerprints.values()))}); "
        f"messages delivered {total}/{expected}; protocol messages sent {sim.protocol_messages}"
    )
    return 0 if same and total == expected else 1
