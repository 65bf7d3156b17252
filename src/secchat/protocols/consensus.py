"""Chandra–Toueg consensus with ◇S (rotating coordinator), one instance per tag, no I/O.

Why this shape: round r has coordinator ``r mod n``.  Phase 1, a participant sends its (estimate,
ts) to the coordinator; phase 2, the coordinator takes ``t = ⌈(n+1)/2⌉`` estimates, picks one with
the largest ts and proposes it to all; phase 3, a participant either gets the proposal (adopts it,
ts := r + 1, acks) or suspects the coordinator (nacks), and moves on; phase 4, the coordinator takes
t replies and, if all are acks, broadcasts ``Decision``.  Whoever receives the first ``Decision``
decides, and relays it to all others once -- lazily: only when it suspects the member it got the
decision from (see ``_decide``).  Agreement and validity never depend on the failure
detector; only termination does.

Two additions keep it live and bounded on a real network:

* a participant that receives a ``Proposal`` of a later round jumps to it (adopts, acks): safe,
  since acking a proposal is exactly what phase 3 does, and it pulls lagging members along.  It
  first nacks the round it leaves and sends each skipped round's coordinator an estimate and a
  nack (``_leave_for``): a coordinator never waits for a reply that will not come;
* estimates and replies for rounds this member will coordinate later are kept only within a
  window of rounds; a decided instance answers any later message from j with the decision, once
  per j, so a member that starts late, or lost its buffered messages, still decides.

Before the local ``propose`` the instance only buffers (bounded): a ``Decision`` among the
buffered messages is output as soon as the member proposes.
"""

from __future__ import annotations

from collections import Counter
from enum import Enum
from typing import Any, Protocol

from ..codec import Tag
from .events import Broadcast, Decided, Event, Send
from .messages import MAX_VALUE, Abstain, Ack, Decision, Estimate, Message, Nack, Proposal

__all__ = ["Consensus", "Detector", "State", "majority"]


def majority(n: int) -> int:
    """``⌈(n+1)/2⌉``: the number of members that must take part."""
    return n // 2 + 1


class Detector(Protocol):
    def suspects(self, peer: int) -> bool: ...


class State(Enum):
    IDLE = "idle"  # not proposed yet: buffering only
    RUNNING = "running"
    ABSTAINING = "abstaining"  # restarted: never votes, waits for the decision
    DECIDED = "decided"


class _Round:
    """What the coordinator of one round has collected."""

    __slots__ = ("estimates", "replies")

    def __init__(self) -> None:
        self.estimates: dict[int, tuple[int, bytes]] = {}
        self.replies: dict[int, bool] = {}


class Consensus:
    """One consensus instance of member ``me`` among ``n`` members."""

    #: A coordinator keeps every estimate and reply for its next ``WINDOW_TURNS`` turns; beyond
    #: that only the latest estimate and reply of each sender (enough for a member that raced
    #: ahead to be answered when we get there).
    WINDOW_TURNS = 8

    def __init__(self, tag: Tag, me: int, n: int, detector: Detector, stats: Counter) -> None:
        self.tag = tag
        self.me = me
        self.n = n
        self.t = majority(n)
        self._detector = detector
        self._stats = stats
        self.state = State.IDLE
        self.round = 0
        self.estimate: bytes = b""
        self.ts = 0
        self.decision: bytes | None = None
        self._boxes: dict[int, _Round] = {}
        self._window = self.WINDOW_TURNS * n
        self._far_estimates: dict[int, Estimate] = {}
        self._far_replies: dict[int, Ack | Nack] = {}
        self._replied = False  # participant part of the current round is done
        self._proposed = False  # coordinator part: proposal sent in the current round
        self._pending_decision: tuple[bytes, int] | None = None
        self._relay_source: int | None = None
        self._pending_proposal: Proposal | None = None
        self._abstained: set[int] = set()  # members that said they will never vote
        # what we sent the coordinators of our current and previous round: sent again when one
        # of them restarted (its run that got them is gone, and with it their effect)
        self._to_coordinators: dict[int, list[Message]] = {}
        self.parent: Any = None  # the GKE instance that consumes our events (set by the stack)
        self._entering = False  # inside _enter_round's loop
        self._next: int | None = None  # the round that loop enters next

    def coordinator(self, round_: int) -> int:
        return round_ % self.n

    def _suspects(self, peer: int) -> bool:
        return peer in self._abstained or self._detector.suspects(peer)

    # ----------------------------------------------------------------- API

    def restore(self, decision: bytes) -> list[Event]:
        """Local input: this member decided ``decision`` in an earlier run (saved state)."""
        if self.state is not State.IDLE:
            raise RuntimeError(f"consensus {self.tag!r}: already proposed")
        self.state = State.RUNNING
        return self._decide(decision, -1)

    def abstain(self) -> list[Event]:
        """Local input: take part without ever voting, only to learn the decision.

        For a member that restarted without its consensus state: it may have voted before, and
        its forgotten ack could be the one that locked the decided value, so voting again could
        break agreement.  It tells the others to treat it as permanently suspected (they stop
        waiting for it, exactly as for a crashed member) and waits for the ``Decision``.
        Termination then needs t voters, as if it had crashed.
        """
        if self.state is not State.IDLE:
            raise RuntimeError(f"consensus {self.tag!r}: already proposed")
        self.state = State.ABSTAINING
        if self._pending_decision is not None:
            return self._decide(*self._pending_decision)
        return [Broadcast(Abstain(self.tag))]

    def propose(self, value: bytes) -> list[Event]:
        """Local input: propose ``value`` (once)."""
        if self.state is not State.IDLE:
            raise RuntimeError(f"consensus {self.tag!r}: already proposed")
        if len(value) > MAX_VALUE:
            raise ValueError("consensus value too large")
        self.estimate, self.ts = value, 0
        self.state = State.RUNNING
        if self._pending_decision is not None:
            return self._decide(*self._pending_decision)
        out = self._enter_round(0)
        pending, self._pending_proposal = self._pending_proposal, None
        if pending is not None and self.state is State.RUNNING:
            out += self._on_proposal(self.coordinator(pending.round), pending)
        return out

    def receive(self, sender: int, msg: Message, now: float = 0.0) -> list[Event]:
        """A consensus message from member ``sender`` (consensus keeps no timers: ``now`` unused)."""
        if isinstance(msg, Decision):
            return self._on_decision(sender, msg)
        if self.state is State.DECIDED:
            assert self.decision is not None
            # one answer per message (no amplification): a late or restarted member learns it
            return [Send(sender, Decision(self.tag, self.decision))]
        if isinstance(msg, Abstain):
            self._abstained.add(sender)
            return self.suspicion_changed()
        if self.state is State.ABSTAINING:
            return self._drop("abstaining")
        if isinstance(msg, Proposal):
            if sender != self.coordinator(msg.round):
                return self._drop("proposal_not_from_coordinator")
            if self.state is State.IDLE:
                if self._pending_proposal is None or msg.round > self._pending_proposal.round:
                    self._pending_proposal = msg
                return []
            return self._on_proposal(sender, msg)
        if isinstance(msg, Estimate | Ack | Nack):
            if self.coordinator(msg.round) != self.me:
                return self._drop("not_coordinator")
            if msg.round < self.round:
                return self._drop("stale_round")
            box = self._box(msg.round)
            if box is None:
                if isinstance(msg, Estimate):
                    if sender not in self._far_estimates or self._far_estimates[sender].round < msg.round:
                        self._far_estimates[sender] = msg
                elif sender not in self._far_replies or self._far_replies[sender].round < msg.round:
                    self._far_replies[sender] = msg
                return self._drop("round_beyond_window")
            if isinstance(msg, Estimate):
                box.estimates.setdefault(sender, (msg.ts, msg.value))
            else:
                box.replies.setdefault(sender, isinstance(msg, Ack))
            return self._progress() if msg.round == self.round and self.state is State.RUNNING else []
        return self._drop("unexpected_message")

    def suspicion_changed(self) -> list[Event]:
        """The detector's suspect list changed: phase 3 may end with a nack, or a relay is due."""
        if self.state is State.DECIDED:
            return self._maybe_relay()
        if self.state is not State.RUNNING or self._replied:
            return []
        coord = self.coordinator(self.round)
        if coord != self.me and self._suspects(coord):
            self._replied = True
            return [self._to_coord(self.round, Nack(self.tag, self.round)), *self._advance_if_done()]
        return []

    # ----------------------------------------------------------------- rounds

    def _box(self, round_: int) -> _Round | None:
        box = self._boxes.get(round_)
        if box is None:
            if round_ >= self.round + self._window:
                return None
            box = self._boxes[round_] = _Round()
        return box

    def _enter_round(self, round_: int) -> list[Event]:
        """Enter ``round_`` and every round after it that ends at once (its coordinator is
        suspected, or we coordinate it and already hold t replies with a nack).  A loop, not a
        recursion: with half of 1001 members suspected, one message skips 500 rounds."""
        if self._entering:  # a round being entered ended at once: the loop below goes on
            self._next = round_
            return []
        self._entering = True
        out: list[Event] = []
        try:
            next_round: int | None = round_
            while next_round is not None:
                self._next = None
                out += self._enter_one(next_round)
                next_round = self._next
        finally:
            self._entering = False
        return out

    def _enter_one(self, round_: int) -> list[Event]:
        for old in [r for r in self._boxes if r < round_]:
            del self._boxes[old]
        self.round = round_
        self._replied = False
        self._proposed = False
        coord = self.coordinator(round_)
        if coord == self.me:
            box = self._box(round_)
            assert box is not None  # the current round is always inside the window
            for sender, est in list(self._far_estimates.items()):
                if est.round == round_:
                    box.estimates.setdefault(sender, (est.ts, est.value))
                    del self._far_estimates[sender]
            for sender, rep in list(self._far_replies.items()):
                if rep.round == round_:
                    box.replies.setdefault(sender, isinstance(rep, Ack))
                    del self._far_replies[sender]
            box.estimates[self.me] = (self.ts, self.estimate)
            return self._progress()
        out: list[Event] = [self._to_coord(round_, Estimate(self.tag, round_, self.ts, self.estimate))]
        if self._suspects(coord):
            self._replied = True
            out.append(self._to_coord(round_, Nack(self.tag, round_)))
            out += self._advance_if_done()
        return out

    def _progress(self) -> list[Event]:
        """Coordinator phases 2 and 4 of the current round."""
        box = self._boxes[self.round]
        out: list[Event] = []
        if not self._proposed and len(box.estimates) >= self.t:
            # phase 2: the estimate with the largest timestamp (lowest sender on ties)
            value = max(box.estimates.items(), key=lambda kv: (kv[1][0], -kv[0]))[1][1]
            self._proposed = True
            out.append(Broadcast(Proposal(self.tag, self.round, value)))
            # our own phase 3: adopt and ack
            self.estimate, self.ts = value, self.round + 1
            self._replied = True
            box.replies[self.me] = True
        if self._proposed and len(box.replies) >= self.t:
            if all(box.replies.values()):
                return out + self._decide(self.estimate, None)
            out += self._next_round()
        return out

    def _on_proposal(self, sender: int, msg: Proposal) -> list[Event]:
        if msg.round < self.round or (msg.round == self.round and self._replied):
            return self._drop("stale_proposal")
        out: list[Event] = []
        if msg.round > self.round:
            self._stats["consensus.jumped_rounds"] += 1
            out += self._leave_for(msg.round)
            self.round = msg.round
            self._proposed = False
            for old in [r for r in self._boxes if r < msg.round]:
                del self._boxes[old]
        self.estimate, self.ts = msg.value, msg.round + 1
        self._replied = True
        out.append(self._to_coord(msg.round, Ack(self.tag, msg.round)))
        return out + self._advance_if_done()

    def _leave_for(self, target: int) -> list[Event]:
        """Before jumping from the current round to ``target``: send the coordinators of the rounds
        we leave what they would have had from us, had we gone through those rounds suspecting
        them -- a nack for the current round (unless we replied already), an estimate and a nack
        for each skipped round.

        Without this a jump starves them: a coordinator that is up and unsuspected waits for t
        replies (t estimates in a skipped round) and, with only t members correct, ours is one
        of them; it never moves on, and neither does anybody who needs it in a later round (a
        decision broadcast that died with its crashed coordinator then never comes again).
        Safe: a nack never locks anything, and the estimates carry what we held before adopting
        ``target``'s proposal, exactly what entering those rounds would have sent.  At most
        ``WINDOW_TURNS * n`` skipped rounds are answered (a coordinator keeps no more ahead)."""
        out: list[Event] = []
        if not self._replied and self.coordinator(self.round) != self.me:
            out.append(self._to_coord(self.round, Nack(self.tag, self.round)))
        for q in range(self.round + 1, min(target, self.round + 1 + self._window)):
            if self.coordinator(q) != self.me:
                out.append(self._to_coord(q, Estimate(self.tag, q, self.ts, self.estimate)))
                out.append(self._to_coord(q, Nack(self.tag, q)))
        return out

    def _to_coord(self, round_: int, msg: Estimate | Ack | Nack) -> Send:
        """Send ``msg`` to the coordinator of ``round_``, and remember it for :meth:`peer_back`."""
        self._to_coordinators.setdefault(round_, []).append(msg)
        for old in [r for r in self._to_coordinators if r < round_ - 1]:
            del self._to_coordinators[old]
        return Send(self.coordinator(round_), msg)

    def peer_back(self, peer: int) -> list[Event]:
        """``peer`` restarted or came back from a partition: what we sent its earlier run is
        lost with it (crash-recovery, not crash-stop).  Send again what it needs to move on: the
        decision, that we abstain, or our messages to it as coordinator of our current or previous round (a
        coordinator stuck waiting for estimates it lost would wait forever), and our proposal
        if we coordinate the current round.  Repeats are harmless: every box keeps one entry
        per sender and round."""
        if self.decision is not None:
            return [Send(peer, Decision(self.tag, self.decision))]
        if self.state is State.ABSTAINING:  # it must not wait for us as a coordinator
            return [Send(peer, Abstain(self.tag))]
        if self.state is not State.RUNNING:
            return []
        out: list[Event] = [
            Send(peer, msg)
            for round_, sent in sorted(self._to_coordinators.items())
            if self.coordinator(round_) == peer
            for msg in sent
        ]
        if self.coordinator(self.round) == self.me and self._proposed:
            out.append(Send(peer, Proposal(self.tag, self.round, self.estimate)))
        return out

    def _advance_if_done(self) -> list[Event]:
        if self.coordinator(self.round) == self.me:
            return []  # the coordinator moves on from phase 4 (see _progress)
        return self._next_round()

    def _next_round(self) -> list[Event]:
        return self._enter_round(self.round + 1)

    # ----------------------------------------------------------------- decision

    def _on_decision(self, sender: int, msg: Decision) -> list[Event]:
        if self.state is State.DECIDED:
            return []
        if self.state is State.IDLE:
            self._pending_decision = (msg.value, sender)
            return []
        return self._decide(msg.value, sender)

    def _decide(self, value: bytes, source: int | None) -> list[Event]:
        """Decide ``value``, learnt from ``source`` (None: we coordinated the deciding round).

        The coordinator sends the decision to all.  A member that learnt it from someone else
        relays it to all only once that someone is suspected: while the source is up, its own
        broadcast reaches everybody; if it crashed halfway, the relays make up for it.  This keeps
        the common case at n messages instead of n² decision relays of t·40 bytes each.
        """
        self.state = State.DECIDED
        self.decision = value
        self._boxes.clear()
        self._far_estimates.clear()
        self._far_replies.clear()
        self._to_coordinators.clear()
        self._pending_proposal = None
        self._relay_source = source
        out: list[Event] = [Decided(self.tag, value)]
        return self._maybe_relay() + out

    def _maybe_relay(self) -> list[Event]:
        source = self._relay_source
        if self.decision is None:  # nothing decided yet, nothing to relay
            return []
        if source is not None and source != -1 and not self._detector.suspects(source):
            return []
        self._relay_source = -1  # relayed (or broadcast as the coordinator): never again
        if source == -1:
            return []
        return [Broadcast(Decision(self.tag, self.decision))]

    def _drop(self, reason: str) -> list[Event]:
        self._stats[f"consensus.dropped.{reason}"] += 1
        return []
