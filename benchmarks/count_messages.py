"""Messages and asynchronous rounds of consensus and GKE, counted by the simulator.

Every frame takes exactly one time unit, so the simulated time at which a member first decides
(or first holds the key) is the number of asynchronous rounds.  Prints the markdown tables used in
docs/protocols.md next to the thesis's claims (consensus 3Rn + n² messages in 4R rounds; GKE 2n
messages per member plus one consensus on t·k bits).

    python benchmarks/count_messages.py
"""

from __future__ import annotations

from secchat.protocols.consensus import majority
from secchat.protocols.events import Decided, SessionKey
from secchat.protocols.stack import consensus_tag, gke_tag, group_id, smc_tag
from secchat.sim.simulator import NetworkModel, Simulation

UNIT = NetworkModel(min_delay=0.01, max_delay=0.01)


def consensus(n: int, crash_first: bool) -> tuple[int, float, int]:
    sim = Simulation(n, 1, network=UNIT)
    tag = consensus_tag(group_id("sim").prefix)
    members = range(1, n) if crash_first else range(n)
    for i in members:
        sim.start(i, lambda m, now: m.propose(tag, b"v%d" % m.me, now))
    sim.run(60.0, stop=lambda: all(any(isinstance(e, Decided) for _, e in sim.nodes[i].outputs) for i in members))
    first = min(t for i in members for t, e in sim.nodes[i].outputs if isinstance(e, Decided))
    bytes_ = sim.bytes_sent
    return sim.protocol_messages, first / 0.01, bytes_


def gke(n: int, only_majority: bool) -> tuple[int, float, int, int]:
    sim = Simulation(n, 1, network=UNIT)
    tag = gke_tag(smc_tag("sim"))
    members = range(majority(n)) if only_majority else range(n)
    for i in members:
        sim.start(i, lambda m, now: m.gke_init(tag, now))
    sim.run(60.0, stop=lambda: all(any(isinstance(e, SessionKey) for _, e in sim.nodes[i].outputs) for i in members))
    first = min(t for i in members for t, e in sim.nodes[i].outputs if isinstance(e, SessionKey))
    cons = sum(v for node in sim.nodes if node.member for k, v in node.member.stats.items()
               if k.startswith("member.sent.") and k.split(".")[-1] in {"Estimate", "Proposal", "Ack", "Nack", "Decision"})
    return sim.protocol_messages, first / 0.01, cons, sim.bytes_sent


def main() -> None:
    print("| n | crash of coordinator 0 | messages | thesis 3Rn + n² | rounds to first decision | thesis 4R |")
    print("|---|---|---|---|---|---|")
    for n in (3, 7, 21, 51, 101):
        for crash in (False, True):
            msgs, rounds, _ = consensus(n, crash)
            r = 2 if crash else 1
            print(f"| {n} | {'yes (R = 2)' if crash else 'no (R = 1)'} | {msgs} | {3 * r * n + n * n} | {rounds:.0f} | {4 * r} |")
    print()
    print("| n | members taking part | messages | of which consensus | per member | thesis 2n per member + consensus | bytes | rounds to first key |")
    print("|---|---|---|---|---|---|---|---|")
    for n in (3, 7, 21, 51, 101):
        for only in (False, True):
            msgs, rounds, cons, bytes_ = gke(n, only)
            k = majority(n) if only else n
            print(f"| {n} | {k} | {msgs} | {cons} | {msgs / k:.1f} | {2 * n} + consensus | {bytes_} | {rounds:.0f} |")


if __name__ == "__main__":
    main()
