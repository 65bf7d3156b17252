"""A tiny in-memory network for unit tests of single protocol layers: it delivers in the worst
order we can think of (newest first), so no test passes by the luck of FIFO delivery."""

from __future__ import annotations

from collections import Counter

from secchat.protocols.consensus import Consensus
from secchat.protocols.driving import pump
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


class ManualNet:
    """Real members, frames delivered only when and as the test says (crafted schedules)."""

    def __init__(self, n: int, seed: int = 1, group: str = "g", config=None) -> None:
        import random

        from secchat.crypto import Signer

        self.n, self.group, self.seed, self.config = n, group, seed, config
        keys = random.Random(f"k{seed}")
        self.signers = [Signer(keys.randbytes(32)) for _ in range(n)]
        self.verifiers = [s.verifier() for s in self.signers]
        self.members: list = [None] * n
        self.frames: list[tuple[int, int, bytes]] = []
        self.events: dict[int, list] = {i: [] for i in range(n)}
        self.now = 0.0
        self._runs = [0] * n

    def start(self, i: int, action, **kwargs) -> None:
        import random

        from secchat.protocols.stack import Member

        self._runs[i] += 1
        rng = random.Random(f"m{self.seed}/{i}/{self._runs[i]}")
        self.members[i] = Member(
            self.group, i, self.n, self.signers[i], self.verifiers, rng, self.now, self.config, **kwargs
        )
        action(self.members[i], self.now)
        self._flush(i)

    def crash(self, i: int) -> None:
        """i stops; what it had not sent yet dies with its link queues."""
        self.members[i] = None
        self.events[i].clear()
        self.frames = [f for f in self.frames if f[0] != i]

    def _flush(self, i: int) -> None:
        pump(self.members[i], i, self.n, lambda to, data: self.frames.extend((i, t, data) for t in to),
             self.events[i].append)

    def deliver(self, pred=lambda frm, to, data: True) -> None:
        while True:
            pick = next((f for f in self.frames if self.members[f[1]] is not None and pred(*f)), None)
            if pick is None:
                return
            self.frames.remove(pick)
            frm, to, data = pick
            self.members[to].receive(frm, data, self.now)
            self._flush(to)

    def tick(self, dt: float, rounds: int = 1) -> None:
        for _ in range(rounds):
            self.now += dt
            for i, m in enumerate(self.members):
                if m is not None:
                    m.handle_timer(self.now)
                    self._flush(i)
            self.deliver()
