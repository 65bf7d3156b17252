"""A tiny in-memory network for unit tests of single protocol layers: it delivers in the worst
order we can think of (newest first), so no test passes by the luck of FIFO delivery."""

from __future__ import annotations

from collections import Counter

from secchat.protocols.consensus import Consensus
from secchat.protocols.events import Broadcast, Decided, Send


class FakeDetector:
    def __init__(self) -> None:
        self.suspected: set[int] = set()

    def suspects(self, peer: int) -> bool:
        return peer in self.suspected


class ConsensusWire:
    """n consensus instances wired together; ``crashed`` members neither send nor receive."""

    def __init__(self, n: int, tag=("t", "consensus")) -> None:
        self.n = n
        self.detectors = [FakeDetector() for _ in range(n)]
        self.stats = [Counter() for _ in range(n)]
        self.nodes = [Consensus(tag, i, n, self.detectors[i], self.stats[i]) for i in range(n)]
        self.queue: list[tuple[int, int, object]] = []
        self.decided: dict[int, bytes] = {}
        self.crashed: set[int] = set()
        self.sent = 0

    def apply(self, i: int, events) -> None:
        for ev in events:
            if isinstance(ev, Send):
                self.queue.append((i, ev.to, ev.message))
                self.sent += 1
            elif isinstance(ev, Broadcast):
                for j in range(self.n):
                    if j != i:
                        self.queue.append((i, j, ev.message))
                        self.sent += 1
            elif isinstance(ev, Decided):
                assert i not in self.decided, "decided twice"
                self.decided[i] = ev.value

    def propose(self, i: int, value: bytes) -> None:
        self.apply(i, self.nodes[i].propose(value))

    def suspect(self, i: int, peer: int) -> None:
        self.detectors[i].suspected.add(peer)
        self.apply(i, self.nodes[i].suspicion_changed())

    def run(self, limit: int = 100_000) -> None:
        steps = 0
        while self.queue and steps < limit:
            frm, to, msg = self.queue.pop()  # newest first
            steps += 1
            if frm in self.crashed or to in self.crashed:
                continue
            self.apply(to, self.nodes[to].receive(frm, msg))
