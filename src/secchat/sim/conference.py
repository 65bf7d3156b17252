"""The whole stack with the conference core on top, under the simulator's hostile schedules.

Why: :class:`secchat.app.conference.ConferenceCore` decides whether a typed line reaches every
member and whether one member can stall the others; like the protocols below it, it is judged
from the simulator's god view over many seeded schedules, not by a few examples.

:class:`ConferenceMember` is the simulator's driver of one member: a protocol
:class:`~secchat.protocols.stack.Member` and a core, wired as the chat app wires them (the
write-ahead rule of :func:`secchat.net.journal.plan_join` on a "disk" that survives restarts).
:func:`check_conference` runs one schedule: crashes and restarts from the disk, leaves and
rejoins, users typing before and after the key, concurrent re-keys from several members, one
member flooding re-keys and oversized receipts, a reader whose link drops frames for a while
(paused, its queue tail-dropping) while another member bulk-sends.  Properties:

* one key per epoch among every member (and incarnation) that holds one;
* once the faults stop, every member is on one common epoch, with its key;
* every line a user had accepted (``send_text`` returned) is delivered exactly once, in the
  sender's order, to every member that stayed up; to the others at most once and in order
  (no replay is ever delivered, across restarts too); nothing delivered that was not sent;
* bounded memory: each core's entries and each stack's pending frames stay under fixed bounds.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ..app.conference import (
    ChatMessage,
    CloseEpoch,
    ConferenceCore,
    ConferenceState,
    CoreConfig,
    CoreError,
    JoinEpoch,
    Multicast,
    Outgoing,
    Persist,
    Seen,
    Show,
    Store,
)
from ..net.journal import established_state, plan_join
from ..protocols.consensus import majority
from ..protocols.events import (
    ClosedEpochFrame,
    Delivered,
    InstanceSeen,
    KeyEstablished,
    PeerRestored,
    PeerSuspected,
)
from ..protocols.stack import GroupId, Member, epoch_of, group_id, smc_tag

__all__ = ["ConferenceMember", "Disk", "check_conference"]

#: bounds the checker holds every member to (entries of a core; frames a stack keeps pending)
MAX_CORE_ENTRIES = 4000
MAX_PENDING_FRAMES = 20000



@dataclass
class Disk:
    """What one member keeps across restarts."""

    exchange: Any = None  # the KeyExchangeState of the write-ahead rule
    state: ConferenceState | None = None
    outbox: dict[int, Outgoing] = field(default_factory=dict)


class ConferenceMember:
    """A stack member with a conference core on top: the simulator's :class:`Member`."""

    def __init__(self, member: Member, names: tuple[str, ...], disk: Disk, rng: random.Random, now: float,
                 config: CoreConfig, *, broken: str | None = None) -> None:
        self.member = member
        self.gid = member.gid
        self.disk = disk
        self.rng = rng
        self.broken = broken
        self.names = names
        state = None
        if disk.state is not None:  # a copy: the core changes its state in place, the disk must not
            state = msgspec.structs.replace(disk.state, delivered=dict(disk.state.delivered),
                                            acked=dict(disk.state.acked))
        self.core = ConferenceCore("sim", names, names[member.me], now, state=state,
                                   outbox=list(disk.outbox.values()), config=config)
        self.shown: list[Any] = []
        self.stored: list[ChatMessage] = []
        self.keys: list[tuple[int, str]] = []
        self._now = now

    # ----------------------------------------------------------------- what the simulator calls

    def take_outgoing(self) -> list[Any]:
        return self.member.take_outgoing()

    def take_events(self) -> list[Any]:
        return []

    def next_deadline(self) -> float | None:
        times = [t for t in (self.member.next_deadline(), self.core.next_deadline()) if t is not None]
        return min(times, default=None)

    def start(self, now: float) -> None:
        self._now = now
        self.member.start(now)
        self.core.start()
        self._settle(now)

    def receive(self, sender: int, data: bytes, now: float) -> None:
        self._now = now
        self.member.receive(sender, data, now)
        self._settle(now)

    def handle_timer(self, now: float) -> None:
        self._now = now
        deadline = self.member.next_deadline()
        if deadline is not None and deadline <= now:
            self.member.handle_timer(now)
        self.core.handle_timer(now)
        self._settle(now)

    # ----------------------------------------------------------------- what users do

    def send_text(self, text: str, now: float) -> ChatMessage | None:
        self._now = now
        try:
            msg = self.core.send_text(text, now)
        except CoreError:
            return None
        self._settle(now)
        return msg

    def rekey(self, now: float) -> bool:
        self._now = now
        try:
            self.core.rekey(now)
        except CoreError:
            return False
        self._settle(now)
        return True

    def raw_multicast(self, payload: bytes, now: float) -> None:
        """A misbehaving member's own payload, past its core (in its current epoch)."""
        tag = smc_tag(self.gid, self.core.epoch)
        if self.member.smc(tag) is not None:
            self.member.multicast(tag, payload, now)
            self._settle(now)

    # ----------------------------------------------------------------- wiring

    def _settle(self, now: float) -> None:
        for _ in range(10000):
            events = self.member.take_events()
            for ev in events:
                self._on_stack_event(ev, now)
            actions = self.core.take_actions()
            for action in actions:
                self._apply(action, now)
            if not events and not actions:
                return
        raise RuntimeError("the member and its core did not settle")

    def _on_stack_event(self, ev: Any, now: float) -> None:
        core = self.core
        if isinstance(ev, KeyEstablished):
            epoch = epoch_of(ev.tag)
            assert epoch is not None
            self.keys.append((epoch, ev.fingerprint))
            smc = self.member.smc(ev.tag)
            if smc is not None:
                saved = self.disk.exchange
                if saved is None or saved.epoch <= epoch:
                    self.disk.exchange = established_state(epoch, self.gid.record, smc)
            core.on_key(epoch, ev.fingerprint, ev.members, now)
        elif isinstance(ev, Delivered):
            epoch = epoch_of(ev.tag)
            if epoch is not None and ev.sender != self.member.me:
                core.on_delivered(epoch, ev.sender, ev.payload, now)
        elif isinstance(ev, PeerSuspected):
            core.on_peer(self.names[ev.peer], False, now)
        elif isinstance(ev, PeerRestored):
            core.on_peer(self.names[ev.peer], True, now)
        elif isinstance(ev, InstanceSeen):
            core.on_instance_seen(ev.epoch, ev.sender, now)
        elif isinstance(ev, ClosedEpochFrame):
            core.on_closed_epoch_frame(ev.epoch, ev.sender, now)

    def _apply(self, action: Any, now: float) -> None:
        core, member = self.core, self.member
        if isinstance(action, JoinEpoch):
            tag = smc_tag(self.gid, action.epoch)
            if member.smc(tag) is not None:
                return
            plan = plan_join(self.disk.exchange, self.gid.record, action.epoch, self.rng)
            if plan.save_first is not None:
                self.disk.exchange = plan.save_first  # durable before the first message
            member.smc_init(tag, now, **plan.restore)
            member.release_epochs_below(min(core.open_epochs, default=action.epoch))  # skipped ones
            core.on_joined(action.epoch, abstains=plan.abstains or plan.restored, now=now)
        elif isinstance(action, CloseEpoch):
            member.close_instance(smc_tag(self.gid, action.epoch))
        elif isinstance(action, Multicast):
            tag = smc_tag(self.gid, action.epoch)
            if member.smc(tag) is None:
                core.multicast_failed(action.epoch, action.mids, "epoch closed")
                return
            try:
                member.multicast(tag, action.payload, now)
            except Exception as exc:  # the stack's bounds
                core.multicast_failed(action.epoch, action.mids, str(exc))
        elif isinstance(action, Persist):
            self.disk.state = action.state
            for out in action.outbox_add:
                self.disk.outbox[out.mid] = out
            if action.outbox_drop:
                for mid in [m for m in self.disk.outbox if m <= action.outbox_drop]:
                    del self.disk.outbox[mid]
            if self.broken == "drop_outbox_on_rekey" and action.state.epoch > 0:
                self.disk.outbox.clear()
                core._outbox.clear()
        elif isinstance(action, Store):
            self.stored.append(action.message)
        elif isinstance(action, Show):
            pass


def check_conference(run: Any, broken: str | None = None) -> None:
    """One schedule (see the module docstring); ``run`` is the checker's ``_Run``."""
    sim, sc, rng = run.sim, run.scenario, run.rng
    sim.restarts = True
    n, t = sc.n, majority(sc.n)
    names = tuple(f"m{i}" for i in range(n))
    gid: GroupId = group_id("sim")
    config = CoreConfig(move_interval=rng.choice((0.5, 2.0)), abstain_grace=rng.choice((1.0, 3.0)))
    disks = [Disk() for _ in range(n)]
    runs = [0] * n
    members: list[ConferenceMember | None] = [None] * n
    all_runs: list[tuple[int, ConferenceMember]] = []
    accepted: dict[int, list[tuple[int, str]]] = defaultdict(list)  # sender -> (mid, text)

    def factory(group: Any, me: int, size: int, signer: Any, verifiers: Any, mrng: Any, now: float,
                cfg: Any, **kwargs: Any) -> ConferenceMember:
        member = Member(gid, me, size, signer, verifiers, mrng, now, cfg, **kwargs)
        cm = ConferenceMember(member, names, disks[me], random.Random(f"draw/{run.result.seed}/{me}/{runs[me]}"),
                              now, config, broken=broken)
        members[me] = cm
        all_runs.append((me, cm))
        return cm

    sim.member_factory = factory

    def up(i: int) -> ConferenceMember | None:
        node = sim.nodes[i]
        return members[i] if node.up else None

    def say(i: int, k: int) -> None:
        cm = up(i)
        if cm is not None:
            text = f"{i}/{runs[i]}/{k}"
            msg = cm.send_text(text, sim.now)
            sim._flush(sim.nodes[i])
            if msg is not None:
                assert msg.mid is not None
                accepted[i].append((msg.mid, text))

    def rekey(i: int) -> None:
        cm = up(i)
        if cm is not None:
            cm.rekey(sim.now)
            sim._flush(sim.nodes[i])

    def flood(i: int, count: int) -> None:
        cm = up(i)
        if cm is None:
            return
        for _ in range(count):
            cm.rekey(sim.now)
        # and an oversized receipt: more entries than members, then one claiming the future
        cm.raw_multicast(msgspec.msgpack.encode(Seen([(j % n, 1 << 40) for j in range(min(1024, 4 * n))])), sim.now)
        cm.raw_multicast(msgspec.msgpack.encode(Seen([(j, 1 << 40) for j in range(n)])), sim.now)
        sim._flush(sim.nodes[i])

    def restart(i: int) -> None:
        runs[i] += 1
        sim.restart(i, incarnation=runs[i])

    # ------------------------------------------------------------------ the schedule
    start_at = {i: (rng.uniform(0.0, 0.05) if rng.random() < 0.8 else rng.uniform(0.5, 3.0)) for i in range(n)}
    for i, when in start_at.items():
        sim.at(when, functools.partial(sim.start, i))
    quiet_after = max(start_at.values())
    # users type: before the key, during re-keys, after
    for i in range(n):
        for k in range(rng.randint(1, 4)):
            sim.at(rng.uniform(0.0, 6.0), functools.partial(say, i, k))
    # re-keys, some concurrent (the same moment at two members)
    for _ in range(rng.randint(0, 3)):
        when = rng.uniform(0.2, 6.0)
        for i in rng.sample(range(n), rng.choice((1, 1, 2))):
            sim.at(when + rng.uniform(0.0, 0.01), functools.partial(rekey, i))
    # one member floods re-keys and receipts (claiming to have everything: what it then misses
    # is its own doing, so it is not among the members whose deliveries are checked)
    flooder = None
    if rng.random() < 0.3:
        flooder = rng.randrange(n)
        sim.at(rng.uniform(0.5, 5.0), functools.partial(flood, flooder, rng.choice((10, 200))))
    # a bulk sender while one reader's link drops frames for a while (paused, tail-dropping)
    if rng.random() < 0.3:
        sender, reader = rng.sample(range(n), 2)
        when = rng.uniform(0.5, 4.0)
        for k in range(rng.choice((20, 100))):
            sim.at(when + k * 0.001, functools.partial(say, sender, 100 + k))
        sim.lossy(reader, when, when + rng.uniform(0.05, 1.0))
        quiet_after = max(quiet_after, when + 1.0)
    # crashes (and restarts from the disk), leaves and rejoins: at most n - t at a time
    victims = rng.sample(range(n), min(n - t, rng.randint(0, n - t)))
    stayed = set(range(n)) - set(victims) - {flooder}
    for v in victims:
        down = rng.uniform(0.05, 5.0)
        sim.at(down, functools.partial(sim.crash, v))
        back = down + rng.uniform(0.05, 3.0)
        sim.at(back, functools.partial(restart, v))
        quiet_after = max(quiet_after, back)
        if rng.random() < 0.3:
            again = back + rng.uniform(0.05, 2.0)
            sim.at(again, functools.partial(sim.crash, v))
            sim.at(again + rng.uniform(0.05, 1.0), functools.partial(restart, v))
            quiet_after = max(quiet_after, again + 1.0)
    quiet_after = max(quiet_after, 6.0, sc.network.stabilisation)

    def settled() -> bool:
        live = [members[i] for i in range(n)]
        if any(cm is None or not sim.nodes[i].up for i, cm in enumerate(live)):
            return False
        epochs = {cm.core.epoch for cm in live if cm is not None}
        if len(epochs) != 1 or not all(cm is not None and cm.core.established for cm in live):
            return False
        return all(_has_all(members[r], accepted, r) for r in stayed)

    sim.run(600.0, stop=lambda: sim.now > quiet_after + 1.0 and settled())
    run.finished_at = sim.now

    # ------------------------------------------------------------------ the properties
    keys: dict[int, set[str]] = defaultdict(set)
    for _, cm in all_runs:
        for epoch, fp in cm.keys:
            keys[epoch].add(fp)
    for epoch, fps in sorted(keys.items()):
        if len(fps) > 1:
            run.violation(f"agreement: {len(fps)} keys for epoch {epoch}")
    final = [members[i] for i in range(n)]
    epochs = {cm.core.epoch for cm in final if cm is not None}
    if len(epochs) != 1 or not all(cm is not None and cm.core.established for cm in final):
        run.violation(f"convergence: members end on epochs {sorted(epochs)}, established "
                      f"{[cm.core.established if cm else None for cm in final]}")
    sent_texts = {(s, mid): text for s, items in accepted.items() for mid, text in items}
    for r in range(n):
        got: dict[int, list[int]] = defaultdict(list)
        for me, cm in all_runs:
            if me != r:
                continue
            for msg in cm.stored:
                if msg.sender == names[r] or msg.mid is None:
                    continue
                s = names.index(msg.sender)
                if sent_texts.get((s, msg.mid)) != msg.text:
                    run.violation(f"forgery: member {r} delivered {msg.text!r} as {msg.sender}'s {msg.mid}")
                got[s].append(msg.mid)
        for s, mids in got.items():
            if any(b <= a for a, b in itertools.pairwise(mids)):
                run.violation(f"order/replay: member {r} delivered {s}'s messages as {mids[:20]}")
        if r in stayed:
            for s, items in accepted.items():
                if s == r:
                    continue
                missing = sorted(set(mid for mid, _ in items) - set(got.get(s, ())))
                if missing:
                    run.violation(f"lost: member {r} never delivered {s}'s messages {missing[:10]}")
    for i, cm in all_runs:
        if cm.core.memory() > MAX_CORE_ENTRIES or cm.member.demux.pending_count > MAX_PENDING_FRAMES:
            run.violation(f"memory: member {i} holds {cm.core.memory()} entries, "
                          f"{cm.member.demux.pending_count} pending frames")


def _has_all(cm: ConferenceMember | None, accepted: dict[int, list[tuple[int, str]]], r: int) -> bool:
    if cm is None:
        return False
    delivered = cm.core.state.delivered
    for s, items in accepted.items():
        if s != r and items and delivered.get(cm.names[s], 0) < max(mid for mid, _ in items):
            return False
    return True


