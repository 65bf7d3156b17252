"""One member's protocol stack for one group: the object both drivers (simulator, asyncio) run.

Why: drivers should know nothing about protocols.  They feed frames in (``receive``), fire timers
(``handle_timer`` at ``next_deadline()``), call the API (``start``, ``smc_init``, ``multicast``)
and pull ``take_outgoing()`` / ``take_events()``.  Inside, the failure detector, the demultiplexer
and the protocol instances (SMC owns its GKE session, which owns its consensus) exchange events:
an instance's output goes to its parent's ``absorb``, and what reaches the top is the
application's.  Peer junk never raises out of here: it is dropped and counted in ``stats``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..codec import CodecError, Tag, check_tag
from ..crypto import Rng, Signer, Verifier
from .consensus import Consensus
from .demux import Demux
from .events import (
    Broadcast,
    CancelTimer,
    Event,
    Output,
    PeerRestored,
    PeerSuspected,
    Send,
    SetTimer,
)
from .failure_detector import DetectorConfig, FailureDetector
from .gke import GroupKeyExchange
from .messages import Alive, Message, decode_message, encode_message
from .smc import SecureMulticast, SmcLimits

__all__ = ["MAX_GROUP", "Member", "Outgoing", "StackConfig", "consensus_tag", "gke_tag", "smc_tag"]


def smc_tag(conference: str, epoch: int = 0) -> Tag:
    return (conference, "smc", epoch)


def gke_tag(smc: Tag) -> Tag:
    return (*smc, "gke")


def consensus_tag(parent: Tag) -> Tag:
    return (*parent, "consensus")


#: Largest group: its GKE proposal (t entries of 44 bytes) must fit a consensus value (64 KiB).
MAX_GROUP = 1024


@dataclass(frozen=True)
class StackConfig:
    """Everything tunable about a member's stack (runtime state lives elsewhere)."""

    detector: DetectorConfig = field(default_factory=DetectorConfig)
    smc: SmcLimits = field(default_factory=SmcLimits)
    max_pending_instances: int = 16
    max_pending_per_instance: int = 4096


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A frame for the network: to member ``to``, or to every other member when ``to`` is None."""

    to: int | None
    data: bytes


class Member:
    """The sans-I/O stack of member ``me`` in group ``group`` of ``n`` members."""

    def __init__(
        self,
        group: str,
        me: int,
        n: int,
        signer: Signer,
        verifiers: Sequence[Verifier],
        rng: Rng,
        now: float,
        config: StackConfig | None = None,
        *,
        incarnation: int = 0,
        consensus_cls: type[Consensus] = Consensus,
        gke_cls: type[GroupKeyExchange] = GroupKeyExchange,
    ) -> None:
        if not 1 <= n <= MAX_GROUP:
            raise ValueError(f"a group has 1 to {MAX_GROUP} members")
        if not 0 <= me < n:
            raise ValueError("member index out of range")
        if len(verifiers) != n:
            raise ValueError("one verifier per member")
        self.group = group
        self.me = me
        self.n = n
        self.config = config or StackConfig()
        self.incarnation = incarnation
        self.stats: Counter = Counter()
        self._signer = signer
        self._verifiers = list(verifiers)
        self._rng = rng
        self._consensus_cls = consensus_cls
        self._gke_cls = gke_cls
        self.detector = FailureDetector(me, n, self.config.detector.scaled(n), now)
        self.demux = Demux(
            group,
            self.stats,
            max_pending_instances=self.config.max_pending_instances,
            max_pending_per_instance=self.config.max_pending_per_instance,
        )
        self._timers: dict[tuple[Tag, str], float] = {}
        self._outgoing: list[Outgoing] = []
        self._events: list[Output] = []
        self._now = now  # time of the call being handled (for heartbeat suppression)

    # ----------------------------------------------------------------- driver interface

    def take_outgoing(self) -> list[Outgoing]:
        out, self._outgoing = self._outgoing, []
        return out

    def take_events(self) -> list[Output]:
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float | None:
        return min(self._timers.values(), default=None)

    def handle_timer(self, now: float) -> None:
        self._now = now
        due = [key for key, deadline in self._timers.items() if deadline <= now]
        for key in due:
            del self._timers[key]
            tag, name = key
            if tag == ():
                self._apply_detector(self.detector.handle_timer(now), now)
            elif (smc := self.demux.get("smc", tag)) is not None:
                self._dispatch(smc, smc.handle_timer(name, now), now)

    def receive(self, sender: int, data: bytes | Message, now: float) -> None:
        """A frame from member ``sender``.  Junk is dropped and counted, never raised."""
        self._now = now
        if not 0 <= sender < self.n or sender == self.me:
            self.stats["member.dropped.bad_sender"] += 1
            return
        if type(data) is bytes or isinstance(data, bytearray | memoryview):
            size = len(data)
            try:
                msg = decode_message(data)
            except CodecError as exc:
                self.stats[f"member.dropped.{exc.code}"] += 1
                return
        else:
            msg, size = data, 0  # type: ignore[assignment]  # a Message: no isinstance on the hot path
        self.stats["member.received"] += 1
        detector = self.detector
        if detector.started:
            restored = detector.heard_from(sender, now)
            if restored:
                self._apply_detector(restored, now)
        if isinstance(msg, Alive):
            return
        inst = self.demux.route(sender, msg, size)
        if inst is not None:
            self._deliver(inst, sender, msg, now)

    # ----------------------------------------------------------------- application interface

    def start(self, now: float) -> None:
        """Start the failure detector (heartbeats)."""
        self._now = now
        if not self.detector.started:
            self._apply_detector(self.detector.start(now), now)

    def propose(self, tag: Tag, value: bytes, now: float) -> None:
        """Run a bare consensus instance ``tag`` (the simulator checks consensus on its own)."""
        self.start(now)
        cons = self._new_consensus(check_tag(tag))
        pending = self.demux.register("consensus", tag, cons)
        self._dispatch(cons, cons.propose(value), now)
        self._replay(cons, pending, now)

    def gke_init(self, tag: Tag, now: float, **restore: Any) -> GroupKeyExchange:
        """Run a bare GKE session ``tag`` (its ``SessionKey`` output reaches ``take_events``)."""
        self.start(now)
        gke, pending = self._new_gke(check_tag(tag), restore)
        self._dispatch(gke, gke.init(now), now)
        for inst, msgs in pending:
            self._replay(inst, msgs, now)
        return gke

    def smc_init(
        self, tag: Tag, now: float, *, signed: bool = True, resume: bool = False, **restore: Any
    ) -> SecureMulticast:
        """Join SMC instance ``tag``: starts its GKE session (and that session's consensus).

        ``restore`` (``contribution``, ``session_seed``) rejoins with a saved GKE state.  ``resume``
        marks a rejoin of an instance this member may have run before: each sender's messages are
        taken from the first one received, and the member does not vote again in the key
        exchange's consensus (it may have voted before; see ``Consensus.propose``).
        """
        self.start(now)
        check_tag(tag)
        gke, pending = self._new_gke(gke_tag(tag), {**restore, "voter": not resume})
        smc = SecureMulticast(
            tag,
            self.me,
            self.n,
            self._signer,
            self._verifiers,
            self._rng,
            self.stats,
            gke,
            signed=signed,
            incarnation=self.incarnation,
            limits=self.config.smc,
            resume=resume,
        )
        gke.parent = smc
        pending.append((smc, self.demux.register("smc", tag, smc)))
        self._dispatch(smc, smc.init(now), now)
        for inst, msgs in pending:
            self._replay(inst, msgs, now)
        return smc

    def multicast(self, tag: Tag, payload: bytes, now: float) -> None:
        """Multicast ``payload`` over SMC instance ``tag`` (queued until the key exists)."""
        self._now = now
        smc = self.demux.get("smc", tag)
        if smc is None:
            raise KeyError(f"no SMC instance {tag!r}: call smc_init first")
        self._dispatch(smc, smc.multicast(payload, now), now)

    def smc(self, tag: Tag) -> SecureMulticast | None:
        return self.demux.get("smc", tag)

    def close_instance(self, tag: Tag) -> None:
        """Forget SMC instance ``tag`` and its sub-instances (re-key: old keys leave memory)."""
        smc = self.demux.get("smc", tag)
        self.demux.unregister("smc", tag)
        self.demux.unregister("gke", gke_tag(tag))
        self.demux.unregister("consensus", consensus_tag(gke_tag(tag)))
        if smc is not None:
            smc.close()

    # ----------------------------------------------------------------- wiring

    def _new_consensus(self, tag: Tag) -> Consensus:
        return self._consensus_cls(tag, self.me, self.n, self.detector, self.stats)

    def _new_gke(self, tag: Tag, restore: dict) -> tuple[GroupKeyExchange, list]:
        cons = self._new_consensus(consensus_tag(tag))
        gke = self._gke_cls(tag, self.me, self.n, self._rng, self.stats, cons, **restore)
        cons.parent = gke
        pending: list[tuple[Any, list[tuple[int, Message]]]] = [
            (cons, self.demux.register("consensus", cons.tag, cons))
        ]
        pending.append((gke, self.demux.register("gke", tag, gke)))
        return gke, pending

    def _replay(self, inst: Any, msgs: list[tuple[int, Message]], now: float) -> None:
        for sender, msg in msgs:
            self._deliver(inst, sender, msg, now)

    def _deliver(self, inst: Any, sender: int, msg: Message, now: float) -> None:
        self._dispatch(inst, inst.receive(sender, msg, now), now)

    def _dispatch(self, inst: Any, events: list[Event], now: float) -> None:
        """Hand an instance's events up through its parents, then act on what remains."""
        parent = getattr(inst, "parent", None)
        while parent is not None and events:
            events = parent.absorb(events, now)
            parent = getattr(parent, "parent", None)
        for ev in events:
            self._apply(ev)

    def _apply(self, ev: Event) -> None:
        if isinstance(ev, Send):
            self._send(ev.to, ev.message)
        elif isinstance(ev, Broadcast):
            self._send(None, ev.message)
        elif isinstance(ev, SetTimer):
            self._timers[(ev.tag, ev.name)] = ev.deadline
        elif isinstance(ev, CancelTimer):
            self._timers.pop((ev.tag, ev.name), None)
        else:
            self._events.append(ev)

    def _send(self, to: int | None, msg: Message) -> None:
        data = encode_message(msg)
        self._outgoing.append(Outgoing(to, data))
        kind = type(msg).__name__
        if to is None:
            self.stats["member.sent"] += self.n - 1
            self.stats[f"member.sent.{kind}"] += self.n - 1
            self.detector.sent_to(None, self._now)
        else:
            self.stats["member.sent"] += 1
            self.stats[f"member.sent.{kind}"] += 1
            self.detector.sent_to(to, self._now)

    def _apply_detector(self, events: list[Event], now: float) -> None:
        changed = False
        for ev in events:
            changed = changed or isinstance(ev, PeerSuspected | PeerRestored)
            self._apply(ev)
        if changed:
            for cons in self.demux.instances("consensus"):
                self._dispatch(cons, cons.suspicion_changed(), now)
