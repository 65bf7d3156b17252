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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ..codec import CodecError, Tag, canonical, check_tag
from ..crypto import Rng, Signer, Verifier, digest
from .auth import Authenticator
from .consensus import Consensus
from .demux import Demux, protocol_of
from .events import (
    Broadcast,
    CancelTimer,
    ClosedEpochFrame,
    Event,
    InstanceSeen,
    Output,
    PeerRestored,
    PeerSuspected,
    RecordMismatch,
    Send,
    SetTimer,
)
from .failure_detector import DetectorConfig, FailureDetector
from .gke import GkeState, GroupKeyExchange
from .messages import Alive, Message, RecordHello, SmcData, decode_message, encode_message
from .smc import SecureMulticast, SmcLimits

__all__ = [
    "MAX_GROUP",
    "GroupId",
    "Member",
    "Outgoing",
    "StackConfig",
    "consensus_tag",
    "epoch_of",
    "gke_tag",
    "group_id",
    "smc_tag",
]


@dataclass(frozen=True, slots=True)
class GroupId:
    """A conference as the protocols know it: its id *and* the record that defines it.

    ``record`` is the SHA-256 digest of the creator-signed conference record (id, creator,
    version, time frame, members, certificates).  It is the second part of every protocol tag,
    so it enters the GKE sealing, every consensus message, the SMC associated data and the HKDF
    context of the working keys: two members holding different records of one id can never
    share a key, whatever a directory served them.  ``creator`` is only for telling a user who
    made the record a peer holds (:class:`~secchat.protocols.events.RecordMismatch`).
    """

    name: str
    record: bytes
    creator: str = ""

    def __post_init__(self) -> None:
        if len(self.record) != 32:
            raise ValueError("a record digest is 32 bytes")
        check_tag((self.name,))

    @classmethod
    def unbound(cls, name: str) -> GroupId:
        """A group defined by its name alone: for the simulator and unit tests, where there is
        no signed record (real drivers always pass the record's digest)."""
        return cls(name, digest(canonical("secchat/unbound-group/v1", name)))

    @property
    def prefix(self) -> Tag:
        return (self.name, self.record.hex())


def group_id(group: GroupId | str) -> GroupId:
    return group if isinstance(group, GroupId) else GroupId.unbound(group)


def smc_tag(group: GroupId | str, epoch: int = 0) -> Tag:
    """The SMC instance of ``epoch``: ``(id, record digest, "smc", epoch)``."""
    return (*group_id(group).prefix, "smc", epoch)


def epoch_of(tag: Tag) -> int | None:
    """The epoch of an SMC or GKE tag of any group, or None if ``tag`` is not one."""
    if len(tag) >= 4 and tag[2] == "smc" and type(tag[3]) is int:
        return tag[3]
    return None


def gke_tag(smc: Tag) -> Tag:
    return (*smc, "gke")


def consensus_tag(parent: Tag) -> Tag:
    return (*parent, "consensus")


#: the stats key counting frames sent of each message type
_SENT_KEY: dict[type, str] = {}

#: Largest group: its GKE proposal (t entries of 44 bytes) must fit a consensus value (64 KiB).
MAX_GROUP = 1024
#: An epoch beyond the lookahead is reported at most this often per sender (seconds).
FAR_REPORT_PERIOD = 1.0
#: (epoch, sender) pairs remembered as told (ClosedEpochFrame), oldest forgotten first.
MAX_CLOSED_TOLD = 1024


@dataclass(frozen=True)
class StackConfig:
    """Everything tunable about a member's stack (runtime state lives elsewhere)."""

    detector: DetectorConfig = field(default_factory=DetectorConfig)
    smc: SmcLimits = field(default_factory=SmcLimits)
    max_pending_instances: int = 16
    max_pending_per_instance: int = 4096
    #: frames for an epoch of ours that we do not run are kept (and reported, InstanceSeen) up
    #: to this many epochs above the newest we ran; further ahead they are dropped and counted
    epoch_lookahead: int = 4

    def __post_init__(self) -> None:
        if self.epoch_lookahead < 1:
            raise ValueError("epoch_lookahead >= 1 (the next epoch must be seen)")


class Outgoing(msgspec.Struct, frozen=True, gc=False):
    """A frame for the network: to member ``to``, or to every other member when ``to`` is None.
    (A frozen struct, one per frame sent: made in a tenth of a frozen dataclass's time, and
    left out of the cycle collector, as it holds an int and bytes.)"""

    to: int | None
    data: bytes


class Member:
    """The sans-I/O stack of member ``me`` in group ``group`` of ``n`` members."""

    def __init__(
        self,
        group: GroupId | str,
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
        self.gid = group_id(group)
        self.group = self.gid.name
        self.prefix = self.gid.prefix
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
            self.prefix,
            self.stats,
            max_pending_instances=self.config.max_pending_instances,
            max_pending_per_instance=self.config.max_pending_per_instance,
        )
        self._timers: dict[tuple[Tag, str], float] = {}
        self._timers_changed = False  # since next_deadline() was last asked (see has_output)
        self._outgoing: list[Outgoing] = []
        self._events: list[Output] = []
        self._now = now  # time of the call being handled (for heartbeat suppression)
        # the record each peer says it holds: None = ours; peers we told about ours unasked
        self._peer_records: dict[int, str | None] = {}
        self._hinted: set[int] = set()
        # epochs: the newest we ran (registered, closed or released below), the floor below
        # which every epoch we do not run counts as closed, and who was reported where
        self._epoch_high = -1
        self._epoch_floor = 0
        self._seen_told: dict[int, set[int]] = {}  # epoch (above _epoch_high) -> senders
        self._closed_told: dict[tuple[int, int], None] = {}
        self._far_told: dict[int, tuple[int, float]] = {}  # sender -> (farthest epoch said, when)
        #: our own SMC frames as broadcast, for a store of ciphertexts (a relay's JetStream) when
        #: the driver sets a list here; it takes them with :meth:`take_stored`
        self.store_out: list[bytes] | None = None
        # burst-mode instances with messages to seal, in the order they got them (deterministic)
        self._bursting: dict[SecureMulticast, None] = {}
        #: the start hello of our record, as sent and as decoded (see :meth:`receive`)
        self._hello_frame = encode_message(self._record_hello(reply=False))
        self._hello_msg = decode_message(self._hello_frame)

    # ----------------------------------------------------------------- driver interface

    def take_outgoing(self) -> list[Outgoing]:
        if self._bursting:
            self._flush()
        out, self._outgoing = self._outgoing, []
        return out

    def take_stored(self) -> list[bytes]:
        """Our SMC frames broadcast since the last call (for the store; see ``store_out``)."""
        out = self.store_out or []
        if self.store_out is not None:
            self.store_out = []
        return out

    def receive_stored(self, data: bytes, now: float) -> None:
        """An SMC frame from a store of ciphertexts: another member's, sent while we were away.

        The store is not a member and proves nothing about who sent it: only ``SmcData`` of
        our record is accepted (it is authenticated by its own AEAD and signature, bound to its
        sender, incarnation and sequence number), nothing counts as a heartbeat, and anything
        else is dropped and counted.
        """
        self._now = now
        try:
            msg = decode_message(data)
        except CodecError as exc:
            self.stats[f"member.stored.dropped.{exc.code}"] += 1
            return
        if not isinstance(msg, SmcData) or msg.tag[:2] != self.prefix:
            self.stats["member.stored.dropped.not_ours"] += 1
            return
        if msg.sender == self.me or not 0 <= msg.sender < self.n:
            self.stats["member.stored.dropped.sender"] += 1  # our own frames come back too
            return
        smc = self.demux.get("smc", tuple(msg.tag))
        if smc is None:
            self.stats["member.stored.dropped.no_instance"] += 1
            return
        self.stats["member.stored.received"] += 1
        self._deliver(smc, msg.sender, msg, now)

    def take_events(self) -> list[Output]:
        if self._bursting:
            self._flush()
        out, self._events = self._events, []
        return out

    def _flush(self) -> None:
        """The end of a turn: SMC instances in burst mode seal what was multicast during it (so
        a burst is what one turn multicast, and an isolated message leaves at once)."""
        while self._bursting:
            smc = next(iter(self._bursting))
            del self._bursting[smc]
            self._dispatch(smc, smc.flush(), self._now)

    def next_deadline(self) -> float | None:
        self._timers_changed = False
        return min(self._timers.values(), default=None)

    def has_output(self) -> bool:
        """Whether :func:`~secchat.protocols.driving.pump` would find anything new: frames,
        events, messages to seal, or a deadline changed since :meth:`next_deadline` was asked.
        A driver may skip the pump after an input when not (most frames a member receives
        change nothing it must act on: a record hello, a contribution it waited for)."""
        return bool(self._outgoing or self._events or self._bursting or self._timers_changed)

    def handle_timer(self, now: float) -> None:
        self._now = now
        due = [key for key, deadline in self._timers.items() if deadline <= now]
        self._timers_changed = True
        for key in due:
            del self._timers[key]
            tag, name = key
            if tag == ():
                detector = self.detector
                self._apply_detector(detector.set_calm(self._calm(), now) or detector.handle_timer(now), now)
            elif (smc := self.demux.get("smc", tag)) is not None:
                self._dispatch(smc, smc.handle_timer(name, now), now)

    def receive(self, sender: int, data: bytes | Message, now: float) -> None:
        """A frame from member ``sender``.  Junk is dropped and counted, never raised."""
        self._now = now
        if not 0 <= sender < self.n or sender == self.me:
            self.stats["member.dropped.bad_sender"] += 1
            return
        stats, detector = self.stats, self.detector
        if type(data) is bytes and data == self._hello_frame:
            # the start hello of a member holding our record: the frame every such member sends,
            # n(n-1) of them in a group; equal bytes decode to an equal message
            msg, size = self._hello_msg, len(data)
        elif type(data) is bytes or isinstance(data, bytearray | memoryview):
            size = len(data)
            try:
                msg = decode_message(data)
            except CodecError as exc:
                stats[f"member.dropped.{exc.code}"] += 1
                return
        else:
            msg, size = data, 0  # type: ignore[assignment]  # a Message: no isinstance on the hot path
        stats["member.received"] += 1
        if detector.started and (restored := detector.heard_from(sender, now)):
            self._apply_detector(restored, now)
        if isinstance(msg, Alive):
            detector.paced(sender, msg.calm)
            return
        if isinstance(msg, RecordHello):
            self._on_record_hello(sender, msg, now)
            return
        if msg.tag[:2] != self.prefix:
            self._other_record(sender, msg)
            return
        protocol = protocol_of(msg)
        if protocol is None:
            self.stats["demux.dropped.no_instance_kind"] += 1
            return
        inst = self.demux.get(protocol, msg.tag)
        if inst is not None:
            self._deliver(inst, sender, msg, now)
        else:
            self._not_running(sender, protocol, msg, size)

    # ----------------------------------------------------------------- application interface

    def start(self, now: float) -> None:
        """Start the failure detector (heartbeats) and tell every member which record we hold."""
        self._now = now
        if not self.detector.started:
            self._send(None, self._record_hello(reply=False))
            self._apply_detector(self.detector.start(now), now)

    def propose(self, tag: Tag, value: bytes, now: float) -> None:
        """Run a bare consensus instance ``tag`` (the simulator checks consensus on its own)."""
        self.start(now)
        cons = self._new_consensus(self._own_tag(tag))
        pending = self._register("consensus", tag, cons)
        self._dispatch(cons, cons.propose(value), now)
        self._replay(cons, pending, now)

    def gke_init(self, tag: Tag, now: float, **restore: Any) -> GroupKeyExchange:
        """Run a bare GKE session ``tag`` (its ``SessionKey`` output reaches ``take_events``)."""
        self.start(now)
        gke = self._new_gke(self._own_tag(tag), restore)
        pending = self._register_gke(gke)
        self._dispatch(gke, gke.init(now), now)
        for inst, msgs in pending:
            self._replay(inst, msgs, now)
        return gke

    def smc_init(
        self,
        tag: Tag,
        now: float,
        *,
        auth: str | type[Authenticator] | None = None,
        signed: bool = True,
        resume: bool = False,
        high_water: Mapping[int, tuple[int, int]] | None = None,
        **restore: Any,
    ) -> SecureMulticast:
        """Join SMC instance ``tag``: starts its GKE session (and that session's consensus).

        ``auth`` names the authentication mode (:data:`secchat.protocols.auth.MODES`: ``signed``,
        ``burst``, ``pairwise``, ``group``); without it ``signed`` chooses ``signed`` or ``group``.

        ``restore`` (``contribution``, ``session_seed``, ``decision``) rejoins with a saved GKE
        state.  ``resume`` marks a rejoin of an instance this member may have run before: the
        member does not vote again in the key exchange's consensus (it may have voted before;
        see ``Consensus.abstain``).  ``high_water`` is what
        :meth:`SecureMulticast.high_water` returned for this instance in an earlier run (saved
        with what was delivered): nothing at or below a mark, nor of an older incarnation of
        its sender, is delivered again, and what was sent after a mark is asked for.  Without
        it, a resumed member takes each sender's stream up from the first authenticated frame.
        ``ValueError`` if a mark is malformed or our own is not below our incarnation.
        """
        self.start(now)
        self._own_tag(tag)
        gke = self._new_gke(gke_tag(tag), {**restore, "voter": not resume})
        smc = SecureMulticast(
            tag,
            self.me,
            self.n,
            self._signer,
            self._verifiers,
            self._rng,
            self.stats,
            gke,
            auth=auth if auth is not None else ("signed" if signed else "group"),
            incarnation=self.incarnation,
            limits=self.config.smc,
            resume=resume,
            high_water=high_water,
        )
        gke.parent = smc
        pending = [*self._register_gke(gke), (smc, self._register("smc", tag, smc))]
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
        if smc.pending:
            self._bursting[smc] = None

    def smc(self, tag: Tag) -> SecureMulticast | None:
        return self.demux.get("smc", tag)

    def close_instance(self, tag: Tag) -> None:
        """Forget SMC instance ``tag`` and its sub-instances (re-key: old keys leave memory),
        and release what was kept for them if they never ran here (a skipped epoch).  Later
        frames for them are dropped and reported once per (epoch, sender) as
        :class:`~secchat.protocols.events.ClosedEpochFrame`."""
        self._own_tag(tag)
        smc = self.demux.get("smc", tag)
        self.demux.unregister("smc", tag)
        self.demux.unregister("gke", gke_tag(tag))
        self.demux.unregister("consensus", consensus_tag(gke_tag(tag)))
        if smc is not None:
            self._bursting.pop(smc, None)
            smc.close()
        epoch = epoch_of(tag)
        if epoch is not None:
            self._ran_epoch(epoch)

    def release_epochs_below(self, epoch: int) -> int:
        """Every epoch of this group below ``epoch`` that is not running here is closed for
        good: what was kept for those epochs (skipped ones too) is released, and later frames
        for them are dropped and reported (``ClosedEpochFrame``).  Instances still running are
        left alone (close them with :meth:`close_instance`).  Returns the frames released."""
        if type(epoch) is not int or epoch < 0:
            raise ValueError("an epoch is an integer >= 0")
        self._epoch_floor = max(self._epoch_floor, epoch)
        self._ran_epoch(epoch - 1)
        floor = self._epoch_floor
        return self.demux.release(lambda _protocol, tag: (e := epoch_of(tag)) is not None and e < floor)

    # ----------------------------------------------------------------- the record we hold

    def _own_tag(self, tag: Tag) -> Tag:
        """Instances of this group have tags that start with its prefix (our misuse otherwise)."""
        check_tag(tag)
        if tag[:2] != self.prefix:
            raise ValueError(f"tag {tag!r} is not of group {self.group!r} (its tags start {self.prefix!r})")
        return tag

    def _record_hello(self, *, reply: bool) -> RecordHello:
        return RecordHello(self.prefix, self.gid.creator[:64], self.n, reply)

    def _on_record_hello(self, sender: int, msg: RecordHello, now: float) -> None:
        """Compare records.  The hello each member broadcasts at start takes the place of its
        first heartbeat, so members holding one record pay nothing for the check; a hello is
        answered only when it shows another record (so that side learns of ours too) or when
        it is not the sender's first (it restarted and missed our hello).  A peer holding
        another record is reported once and excluded: it counts as crashed, so consensus does
        not wait for it as a coordinator."""
        same = msg.tag == self.prefix
        restarted = not msg.reply and sender in self._peer_records
        if not msg.reply and (not same or restarted):
            self._send(sender, self._record_hello(reply=True))
        if same:
            if not msg.reply:  # it (re)started and takes us for urgent
                self._apply_detector(self.detector.greeted(sender, now), now)
            if self._peer_records.get(sender) is not None:  # it came back with our record
                self._apply_detector(self.detector.readmit(sender, now), now)
            self._peer_records[sender] = None
            if restarted:  # it lost what it knew of our streams: tell it where they are
                self._peer_back(sender, now)
            return
        if len(msg.tag) != 2 or msg.tag[0] != self.group or not isinstance(msg.tag[1], str):
            self.stats["member.dropped.foreign_group"] += 1
            return
        if self._peer_records.get(sender) == msg.tag[1]:
            return  # reported already
        self._peer_records[sender] = msg.tag[1]
        self.stats["member.other_record"] += 1
        self._events.append(RecordMismatch(sender, msg.tag[1], msg.creator, msg.members))
        self._apply_detector(self.detector.exclude(sender), now)

    def _other_record(self, sender: int, msg: Message) -> None:
        """A frame of another group or record: dropped.  If it is of our conference id, the
        sender holds another record and may not know ours yet: tell it, once."""
        tag = msg.tag  # type: ignore[union-attr]
        if tag[0] != self.group:
            self.stats["member.dropped.foreign_group"] += 1
            return
        self.stats["member.dropped.other_record"] += 1
        if sender not in self._hinted and self._peer_records.get(sender) is None:
            self._hinted.add(sender)
            self._send(sender, self._record_hello(reply=False))

    # ----------------------------------------------------------------- epochs not running here

    def _ran_epoch(self, epoch: int) -> None:
        """``epoch`` is ours now (run, closed or released): what was reported newer is not."""
        if epoch > self._epoch_high:
            self._epoch_high = epoch
            for old in [e for e in self._seen_told if e <= epoch]:
                del self._seen_told[old]

    def _not_running(self, sender: int, protocol: str, msg: Message, size: int) -> None:
        """A frame of our group for an instance not running here: kept for later if it may
        start (reported when its epoch is newer than ours), dropped if it was closed or is too
        far ahead.  Every outcome is bounded: per sender, one report per epoch."""
        tag = msg.tag  # type: ignore[union-attr]  # routed messages all have one
        epoch = epoch_of(tag)
        if epoch is None:  # a bare instance (the simulator's consensus and GKE checks)
            self.demux.keep(sender, protocol, msg, size)
            return
        if epoch < self._epoch_floor or self.demux.is_closed(protocol, tag):
            self.stats["demux.dropped.closed_instance"] += 1
            told = (epoch, sender)
            if told not in self._closed_told:
                self._closed_told[told] = None
                if len(self._closed_told) > MAX_CLOSED_TOLD:
                    del self._closed_told[next(iter(self._closed_told))]
                self._events.append(ClosedEpochFrame(self.prefix, epoch, sender))
            return
        if epoch > max(self._epoch_high, 0) + self.config.epoch_lookahead:
            self.stats["member.dropped.epoch_beyond_lookahead"] += 1
            # not kept; but said when it is the farthest this sender showed so far, at most once
            # a second per sender: a member far behind learns where the others are
            far, at = self._far_told.get(sender, (-1, -1e18))
            if epoch > far and self._now >= at + FAR_REPORT_PERIOD:
                self._far_told[sender] = (epoch, self._now)
                self._events.append(InstanceSeen(self.prefix, epoch, sender))
            return
        if epoch > self._epoch_high:
            senders = self._seen_told.setdefault(epoch, set())
            if sender not in senders:
                senders.add(sender)
                self._events.append(InstanceSeen(self.prefix, epoch, sender))
        self.demux.keep(sender, protocol, msg, size)

    # ----------------------------------------------------------------- wiring

    def _register(self, protocol: str, tag: Tag, inst: Any) -> list[tuple[int, Message]]:
        kept = self.demux.register(protocol, tag, inst)
        epoch = epoch_of(tag)
        if epoch is not None:
            self._ran_epoch(epoch)
        if protocol != "smc" and self.detector.calm:  # it may wait on the detector: hurry
            self._apply_detector(self.detector.set_calm(False, self._now), self._now)
        return kept

    def _calm(self) -> bool:
        """Whether nothing of ours waits on the detector: every consensus instance decided,
        every key exchange holds its key (see :mod:`.failure_detector`)."""
        return all(c.decision is not None for c in self.demux.instances("consensus")) and all(
            g.state is GkeState.FINISHED for g in self.demux.instances("gke")
        )

    def _new_consensus(self, tag: Tag) -> Consensus:
        return self._consensus_cls(tag, self.me, self.n, self.detector, self.stats)

    def _new_gke(self, tag: Tag, restore: dict) -> GroupKeyExchange:
        cons = self._new_consensus(consensus_tag(tag))
        gke = self._gke_cls(tag, self.me, self.n, self._rng, self.stats, cons, detector=self.detector, **restore)
        cons.parent = gke
        return gke

    def _register_gke(self, gke: GroupKeyExchange) -> list[tuple[Any, list[tuple[int, Message]]]]:
        """Register a GKE session and its consensus (once both exist: nothing half-made is
        registered); returns each with the messages kept for it."""
        cons = gke.consensus
        return [
            (cons, self._register("consensus", cons.tag, cons)),
            (gke, self._register("gke", gke.tag, gke)),
        ]

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
        self._act(events)

    def _apply(self, ev: Event) -> None:
        self._act((ev,))

    def _act(self, events: Sequence[Event]) -> None:
        """Frames to the network, timers to the table, outputs to the application."""
        for ev in events:
            # exact types (events are final structs): isinstance against a struct class that
            # does not match costs four times a type comparison, and most events are outputs
            if type(ev) is Broadcast:
                self._send(None, ev.message)
            elif type(ev) is Send:
                self._send(ev.to, ev.message)
            elif type(ev) is SetTimer:
                self._timers[(ev.tag, ev.name)] = ev.deadline
                self._timers_changed = True
            elif type(ev) is CancelTimer:
                self._timers.pop((ev.tag, ev.name), None)
                self._timers_changed = True
            else:
                self._events.append(ev)  # type: ignore[arg-type]  # every other event is an output (no cast() call)

    def _send(self, to: int | None, msg: Message) -> None:
        data = encode_message(msg)
        self._outgoing.append(Outgoing(to, data))
        kind = _SENT_KEY.get(type(msg)) or _SENT_KEY.setdefault(type(msg), f"member.sent.{type(msg).__name__}")
        stats = self.stats
        if to is None:
            if self.store_out is not None and type(msg) is SmcData:
                self.store_out.append(data)
            count = self.n - 1
        else:
            count = 1
        stats["member.sent"] += count
        stats[kind] += count
        self.detector.sent_to(to, self._now)

    def _apply_detector(self, events: list[Event], now: float) -> None:
        changed = False
        for ev in events:
            changed = changed or isinstance(ev, PeerSuspected | PeerRestored)
            self._apply(ev)
            if isinstance(ev, PeerRestored):
                self._peer_back(ev.peer, now)
        if changed:
            for cons in self.demux.instances("consensus"):
                self._dispatch(cons, cons.suspicion_changed(), now)
            for gke in self.demux.instances("gke"):
                self._dispatch(gke, gke.suspicion_changed(), now)

    def _peer_back(self, peer: int, now: float) -> None:
        """``peer`` is back (a partition healed, it restarted): consensus and GKE instances send
        again what its earlier run may have taken with it, SMC instances tell it their position
        and confirm their key, so it asks for what it missed and forks show."""
        for cons in self.demux.instances("consensus"):
            self._dispatch(cons, cons.peer_back(peer), now)
        for gke in self.demux.instances("gke"):
            self._dispatch(gke, gke.peer_back(peer), now)
        for smc in self.demux.instances("smc"):
            self._dispatch(smc, smc.peer_restored(peer), now)
