"""The property checker: random hostile schedules, judged from the simulator's god view.

For run i of a campaign the seed is ``seed + i``, so a failing run replays alone with
``--runs 1 --seed <seed + i>``.  Each run draws, from its seed only: when the network stabilises
and how bad it is before (delays beyond the detectors' timeout make them suspect live members),
which ``crash`` members crash and when (never starting, at a random moment mid-protocol, or right
after finishing) and how much of what they had sent dies with them (a broadcast cut halfway), which members start late, and -- for SMC -- an adversary that replays captured
frames (a crashed member's included), flips bits in them and forges frames from scratch.

Properties:

* consensus -- agreement, validity, and termination of every correct proposer; and, on the wire
  log, the locking invariant that makes agreement hold (a value acked by t members is the only
  one proposed afterwards);
* gke -- every finisher holds the same key, the key is the sum of the decided members'
  contributions, and every correct member (late starters too) finishes;
* smc -- one key; every message a member that stays up multicasts after establishing is delivered
  exactly once, in per-sender order, to every member that stays up; nothing delivered that its
  alleged sender did not multicast (forged, tampered and replayed frames never are).  In every
  mode but ``group`` an *insider* (a member holding the group key) races each fresh frame with
  the same trailer on another payload and with a frame claiming the sender's next seq, made with
  the insider's own secrets: per-sender authenticity, not just group authenticity.
* records -- a malicious directory served two records of one conference id: another creator's,
  with one member swapped for an accomplice at the same index, or the same members in another
  order (a split view).  Over n + 1 identities, each member starts the record it was served.
  No two members holding different records ever share a key or deliver each other's messages;
  every pair that lists each other but holds different records reports it (both sides); every
  record with a correct majority of holders still gets its key.
* conference -- the whole stack with the application's conference core on top
  (:mod:`secchat.sim.conference`): crashes, restarts, concurrent and flooded re-keys, paused
  readers; one key per epoch, one common epoch at the end, every accepted line delivered exactly
  once in order to every member that stayed, no replay, bounded memory.
* restarts -- ``crash`` members crash and come back, once or twice, with every volatile state
  lost but what the write-ahead rule (:func:`secchat.net.journal.plan_join`) put on their
  disk, and the SMC high-water marks saved with every delivery; often in the schedule of issue
  14: a majority establishes, one of it crashes, a partition puts the others of that majority
  on one side and the restarted member with the late starters on the other.  Every run
  multicasts, and an adversary replays old frames (of older incarnations too) into the
  members, mostly into restarted ones, what they delivered before their restart above all.
  One key among every incarnation of every member, ever; every member ends with it; what a
  member delivers from each sender, over all its runs, is strictly increasing in (incarnation,
  seq) -- no replay, no duplicate across a restart --, authentic, and every message of a
  sender's last run is delivered to, or reported lost by, every other member.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..codec import CodecError, canonical
from ..crypto import Signer, digest
from ..protocols.auth import Authenticator, GroupOnly, authenticator_class
from ..protocols.consensus import majority
from ..protocols.events import (
    Decided,
    Delivered,
    KeyEstablished,
    Lost,
    PeerSuspected,
    RecordMismatch,
    SessionKey,
)
from ..protocols.gke import MODULUS
from ..protocols.messages import Ack, Estimate, Proposal, SmcData, decode_message, encode_message
from ..protocols.smc import SecureMulticast
from ..protocols.stack import GroupId, Member, consensus_tag, gke_tag, group_id, smc_tag
from .simulator import NetworkModel, Simulation

__all__ = ["PROTOCOLS", "CampaignResult", "RunResult", "run_campaign", "run_one"]

PROTOCOLS = ("consensus", "gke", "smc", "records", "restarts", "conference")
#: deliberately broken variants, per protocol: the checker must catch each
BROKEN = {"restarts": ("forget_state", "forget_marks"), "conference": ("drop_outbox_on_rekey",)}
TIME_LIMIT = 600.0  # simulated seconds; a correct run finishes long before


@dataclass
class RunResult:
    seed: int
    violations: list[str] = field(default_factory=list)
    messages: int = 0
    time_to_finish: float = 0.0
    cpu: float = 0.0
    #: suspicions of members that were up and correct: the detectors were wrong this often
    false_suspicions: int = 0


@dataclass
class Scenario:
    n: int
    network: NetworkModel
    start_at: dict[int, float]  # members that start, and when
    crash_at: dict[int, float]  # members that crash mid-protocol, and when
    crash_after_finish: dict[int, float]  # members that crash this long after finishing
    never_start: set[int]

    @property
    def crashed(self) -> set[int]:
        return set(self.crash_at) | set(self.crash_after_finish) | self.never_start

    @property
    def correct(self) -> list[int]:
        return [i for i in range(self.n) if i not in self.crashed]


def draw_scenario(n: int, crash: int, rng: random.Random) -> Scenario:
    if not 0 <= crash <= n - majority(n):
        raise ValueError(f"at most {n - majority(n)} of {n} members may crash")
    unstable = rng.random() < 0.6
    max_delay = rng.choice((0.002, 0.01, 0.03))
    network = NetworkModel(
        min_delay=0.0005,
        max_delay=max_delay,
        unstable_max_delay=rng.uniform(0.5, 4.0) if unstable else max_delay,
        stabilisation=rng.uniform(0.5, 6.0) if unstable else 0.0,
        # slow members (often the first coordinator), and some or all other frames slow too
        slow=frozenset(rng.sample(range(n), rng.randint(0, max(1, n // 3))) + [0] * (rng.random() < 0.5))
        if unstable
        else frozenset(),
        slow_fraction=rng.choice((0.0, 0.3, 1.0)) if unstable else 0.0,
    )
    crashed = rng.sample(range(n), crash)
    never, crash_at, after = set(), {}, {}
    for i in crashed:
        mode = rng.randrange(3)
        if mode == 0:
            never.add(i)
        elif mode == 1:
            crash_at[i] = rng.uniform(0.0, 1.5)
        else:
            after[i] = rng.uniform(0.0, 0.05)
    start_at = {}
    for i in range(n):
        if i in never:
            continue
        start_at[i] = rng.uniform(2.0, 8.0) if rng.random() < 0.2 else rng.uniform(0.0, 0.05)
    return Scenario(n, network, start_at, crash_at, after, never)


# --------------------------------------------------------------------------- one run


class _Run:
    """Shared machinery of one run: the scenario wired into a simulation."""

    def __init__(self, protocol: str, n: int, crash: int, seed: int, factory: Callable[..., Member], measure_cpu: bool) -> None:
        self.protocol = protocol
        self.rng = random.Random(f"scenario/{seed}")
        nodes = n + 1 if protocol == "records" else n  # records: one more identity, the accomplice
        self.scenario = draw_scenario(nodes, crash, self.rng)
        self.sim = Simulation(nodes, seed, network=self.scenario.network, member_factory=factory, measure_cpu=measure_cpu)
        # a crash loses none, part or all of what the member had not delivered yet
        self.sim.crash_loss = self.rng.choice((0.0, 0.5, 1.0))
        self.result = RunResult(seed)
        self.done: set[int] = set()
        self.finished_at = 0.0

    def finish(self, i: int) -> None:
        if i in self.done:
            return
        self.done.add(i)
        self.finished_at = max(self.finished_at, self.sim.now)
        delay = self.scenario.crash_after_finish.get(i)
        if delay is not None:
            self.sim.at(self.sim.now + delay, lambda: self.sim.crash(i))

    def schedule(self, action: Callable[[Member, float], Any]) -> None:
        for i, when in self.scenario.start_at.items():
            self.sim.at(when, functools.partial(self.sim.start, i, action))
        for i, when in self.scenario.crash_at.items():
            self.sim.at(when, functools.partial(self.sim.crash, i))

    def violation(self, text: str) -> None:
        self.result.violations.append(text)

    def close(self) -> RunResult:
        self.result.messages = self.sim.protocol_messages
        self.result.time_to_finish = self.finished_at
        self.result.cpu = sum(node.cpu for node in self.sim.nodes)
        correct, start_at = set(self.scenario.correct), self.scenario.start_at
        self.result.false_suspicions = sum(
            1
            for node in self.sim.nodes
            for when, ev in node.outputs
            if isinstance(ev, PeerSuspected) and ev.peer in correct and start_at[ev.peer] < when - 1.0
        )
        return self.result


def _check_consensus(run: _Run) -> None:
    sim, sc = run.sim, run.scenario
    tag = consensus_tag(group_id("sim").prefix)
    proposals = {i: f"value-{i}-{run.result.seed}".encode() for i in range(sc.n)}
    decided: dict[int, bytes] = {}

    def on_output(i: int, now: float, ev: Any) -> None:
        if isinstance(ev, Decided):
            if i in decided:
                run.violation(f"member {i} decided twice")
            decided[i] = ev.value
            run.finish(i)

    for node in sim.nodes:
        node.on_output = functools.partial(on_output, node.index)
    sim.keep_wire_log = True
    run.schedule(lambda m, now: m.propose(tag, proposals[m.me], now))
    correct = sc.correct
    sim.run(TIME_LIMIT, stop=lambda: all(i in decided for i in correct))
    _check_locking(run)
    values = set(decided.values())
    if len(values) > 1:
        run.violation(f"agreement: members decided {len(values)} different values: {sorted(decided.items())}")
    for i, v in decided.items():
        if v not in proposals.values():
            run.violation(f"validity: member {i} decided {v!r}, which nobody proposed")
    missing = [i for i in correct if i not in decided]
    if missing:
        run.violation(f"termination: correct members {missing} never decided")


def _check_locking(run: _Run) -> None:
    """Chandra–Toueg's invariant, on what went over the wire: once t members acked round r's
    proposal v (the coordinator's own ack is implicit), every proposal of a later round carries v,
    and every later estimate of an acker carries v with ts > r.  Catches unsafe coordinators in
    runs where the end-to-end agreement check happens to pass."""
    n, t = run.scenario.n, majority(run.scenario.n)
    proposals: dict[int, bytes] = {}
    acks: dict[int, set[int]] = {}
    last_ack: dict[int, int] = {}
    for _, sender, data in run.sim.wire_log:
        msg = decode_message(data)
        if isinstance(msg, Proposal):
            proposals[msg.round] = msg.value
        elif isinstance(msg, Ack):
            acks.setdefault(msg.round, {msg.round % n}).add(sender)
            last_ack[sender] = max(last_ack.get(sender, -1), msg.round)
        elif isinstance(msg, Estimate) and msg.round > last_ack.get(sender, msg.round):
            r = last_ack[sender]
            if msg.ts < r + 1 or msg.value != proposals.get(r, msg.value):
                run.violation(f"locking: member {sender} acked round {r}, then estimated ts={msg.ts}")
                return
    for r, v in sorted(proposals.items()):
        if len(acks.get(r, ())) >= t:
            later = [q for q, w in proposals.items() if q > r and w != v]
            if later:
                run.violation(f"locking: round {r} locked a value, rounds {later} proposed another")
                return


def _check_gke(run: _Run) -> None:
    sim, sc = run.sim, run.scenario
    tag = gke_tag(smc_tag("sim"))
    keys: dict[int, SessionKey] = {}

    def on_output(i: int, now: float, ev: Any) -> None:
        if isinstance(ev, SessionKey):
            keys[i] = ev
            run.finish(i)

    for node in sim.nodes:
        node.on_output = functools.partial(on_output, node.index)
    run.schedule(lambda m, now: m.gke_init(tag, now))
    correct = sc.correct
    sim.run(TIME_LIMIT, stop=lambda: all(i in keys for i in correct))
    secrets = {ev.secret for ev in keys.values()}
    if len(secrets) > 1:
        run.violation(f"agreement: {len(secrets)} different keys among {sorted(keys)}")
    contributions = {
        node.index: node.member.demux.get("gke", tag).contribution for node in sim.nodes if node.member is not None
    }
    for i, ev in keys.items():
        expected = sum(contributions[u] for u in ev.members) % MODULUS
        if ev.secret != expected:
            run.violation(f"member {i}'s key is not the sum of the decided contributions of {ev.members}")
    memberships = {ev.members for ev in keys.values()}
    if len(memberships) > 1:
        run.violation(f"members decided different contributor lists: {sorted(memberships)}")
    missing = [i for i in correct if i not in keys]
    if missing:
        run.violation(f"termination: correct members {missing} never computed the key")


def _check_smc(run: _Run, messages: int = 3, auth: str | type[Authenticator] = "signed") -> None:
    sim, sc, rng = run.sim, run.scenario, run.rng
    insiders = authenticator_class(auth) is not GroupOnly  # group mode: any member may forge
    tag = smc_tag("sim")
    sim.keep_wire_log = True
    fingerprints: dict[int, str] = {}
    sent: dict[tuple[int, int, int], bytes] = {}  # (sender, incarnation, seq) -> payload
    sent_by: dict[int, list[tuple[int, int, int]]] = {i: [] for i in range(sc.n)}
    delivered: dict[int, list[tuple[int, int, int]]] = {i: [] for i in range(sc.n)}
    pending_sends = {i: messages for i in sc.correct}
    correct = sc.correct
    state = {"complete": 0, "adversary_done": False}
    expected_total = len(correct) * len(correct) * messages

    def multicast(i: int, k: int) -> None:
        sim.call(i, lambda m, now: m.multicast(tag, f"msg {k} from {i} in run {run.result.seed}".encode(), now))

    def multicast_all(i: int) -> None:
        def burst(m: Member, now: float) -> None:
            for k in range(messages):
                m.multicast(tag, f"msg {k} from {i} in run {run.result.seed}".encode(), now)

        sim.call(i, burst)

    def on_output(i: int, now: float, ev: Any) -> None:
        if isinstance(ev, KeyEstablished):
            fingerprints[i] = ev.fingerprint
            if rng.random() < 0.5:  # all in one turn: one burst in burst mode
                sim.at(now + rng.uniform(0.0, 1.0), functools.partial(multicast_all, i))
            else:
                for k in range(messages):
                    sim.at(now + rng.uniform(0.0, 1.0), functools.partial(multicast, i, k))
            run.finish(i)
        elif isinstance(ev, Delivered):
            key = (ev.sender, ev.incarnation, ev.seq)
            if ev.sender == i:
                sent[key] = ev.payload
                sent_by[i].append(key)
                if insiders:  # the frame has just left: an insider races it with forgeries
                    sim.at(now, functools.partial(insider, i, ev.incarnation, ev.seq, ev.payload))
                if i in pending_sends:
                    pending_sends[i] -= 1
            elif sent.get(key) != ev.payload:
                run.violation(f"member {i} delivered a message {key} that member {ev.sender} never multicast")
            if key in delivered[i]:
                run.violation(f"member {i} delivered {key} twice")
            delivered[i].append(key)
            if i in correct and ev.sender in correct:
                state["complete"] += 1

    for node in sim.nodes:
        node.on_output = functools.partial(on_output, node.index)
    run.schedule(lambda m, now: m.smc_init(tag, now, auth=auth))

    def insider(s: int, incarnation: int, seq: int, payload: bytes) -> None:
        """A member with the group key forges for ``s``: ``s``'s fresh frame with another
        payload and the same trailer, and a frame of its own claiming to be ``s``'s next."""
        holders = [
            x for x in range(sc.n) if x != s and sim.nodes[x].up and (m := sim.nodes[x].member) is not None
            and (smc := m.smc(tag)) is not None and smc.established
        ]
        victim = sim.nodes[s].member
        if not holders or victim is None or (own := victim.smc(tag)) is None:
            return
        x = rng.choice(holders)
        others = [r for r in range(sc.n) if r not in (s, x)]
        if not others:
            return
        ins = sim.nodes[x].member.smc(tag)  # type: ignore[union-attr]
        assert ins is not None
        frame = next((f for f in reversed(own._store) if f.seq == seq), None)
        if frame is not None:
            forged = retarget(ins, frame, b"retargeted " + payload, payload)
            sim.inject(x, rng.choice(others), encode_message(forged))
        fake = impersonate(ins, sim.signers[x], s, incarnation, seq + 1 + rng.randrange(3), b"impersonated " + payload)
        sim.inject(x, rng.choice(others), encode_message(fake))

    def attack(count: int) -> None:
        frames = [(t, s, d) for t, s, d in sim.wire_log if d[1:2] == b"\x1e"]  # SmcData type tag 30
        if frames:
            _t, victim, data = rng.choice(frames)
            to = rng.randrange(sc.n)
            kind = rng.randrange(4)
            if kind == 0:  # replay as is (a stolen frame, possibly of a crashed member)
                sim.inject(rng.randrange(sc.n), to, data)
            elif kind == 1:  # flip one bit anywhere
                pos = rng.randrange(len(data))
                sim.inject(victim, to, data[:pos] + bytes([data[pos] ^ (1 << rng.randrange(8))]) + data[pos + 1 :])
            else:  # forge: re-address, renumber or replace the ciphertext of a real frame
                try:
                    msg = decode_message(data)
                except CodecError:
                    msg = None
                if isinstance(msg, SmcData):
                    forged = SmcData(
                        msg.tag,
                        rng.randrange(sc.n) if kind == 2 else msg.sender,
                        msg.incarnation,
                        msg.seq + rng.randrange(0, 3),
                        rng.randbytes(12) if kind == 3 else msg.nonce,
                        msg.ciphertext if kind == 2 else rng.randbytes(len(msg.ciphertext)),
                    )
                    sim.inject(victim, to, encode_message(forged))
        if count > 1:
            sim.at(sim.now + rng.uniform(0.05, 0.5), functools.partial(attack, count - 1))
        else:
            state["adversary_done"] = True

    sim.at(rng.uniform(0.1, 1.0), functools.partial(attack, 25))

    def complete() -> bool:
        return (
            bool(state["adversary_done"])
            and all(i in fingerprints for i in correct)
            and all(pending_sends[i] == 0 for i in correct)
            and state["complete"] >= expected_total
        )

    if sim.run(TIME_LIMIT, stop=complete):
        run.finished_at = sim.now
    sim.run(sim.now + 2.0)  # let stray replays land: nothing more may be delivered
    if len(set(fingerprints.values())) > 1:
        run.violation(f"members established different keys: {fingerprints}")
    missing_key = [i for i in correct if i not in fingerprints]
    if missing_key:
        run.violation(f"termination: correct members {missing_key} never established")
    for r in correct:
        if r not in fingerprints:
            continue
        got = delivered[r]
        for s in correct:
            expected = sent_by[s]
            from_s = [k for k in got if k[0] == s]
            if from_s != expected:
                run.violation(
                    f"member {r} delivered {len(from_s)} of member {s}'s {len(expected)} messages"
                    + (" out of order" if sorted(from_s) != from_s else "")
                )
    unfinished = [i for i in correct if pending_sends[i] != 0]
    if unfinished:
        run.violation(f"members {unfinished} could not multicast all their messages")


# --------------------------------------------------------------------------- an insider's forgeries


def impersonate(smc: SecureMulticast, signer: Signer, sender: int, incarnation: int, seq: int, payload: bytes) -> SmcData:
    """What a member holding ``smc``'s group key and ``signer`` (its own identity key) can build
    claiming to be ``sender``: the mode's trailer made with the insider's secrets only."""
    trailer = smc.make_authenticator(sender, signer).seal(incarnation, seq, [payload])[0]
    return _seal(smc, sender, incarnation, seq, payload + trailer)


def retarget(smc: SecureMulticast, frame: SmcData, payload: bytes, original: bytes) -> SmcData:
    """``frame`` (whose payload was ``original``) with ``payload`` instead and the same trailer:
    a signature, root and path, or MACs that an insider tries on another message."""
    aead = smc._aead  # god view: the insider's group key
    assert aead is not None
    plain = aead.open(frame.nonce, frame.ciphertext, smc._aad(frame.sender, frame.incarnation, frame.seq))
    return _seal(smc, frame.sender, frame.incarnation, frame.seq, payload + plain[len(original) :])


def _seal(smc: SecureMulticast, sender: int, incarnation: int, seq: int, plain: bytes) -> SmcData:
    aead = smc._aead
    assert aead is not None
    nonce = digest(canonical("insider-nonce", sender, incarnation, seq, plain))[:12]
    return SmcData(smc.tag, sender, incarnation, seq, nonce, aead.seal(nonce, plain, smc._aad(sender, incarnation, seq)))


def _draw_records(n: int, rng: random.Random) -> tuple[str, list[tuple[int, ...]]]:
    """Two rosters of one conference id over nodes 0..n (node n is the accomplice)."""
    honest = tuple(range(n))
    kind = rng.choice(("accomplice", "order"))
    if kind == "accomplice":  # the accomplice takes one member's place, at that member's index
        k = rng.randrange(n)
        other = (*honest[:k], n, *honest[k + 1 :])
    else:  # the same members, two of them swapped
        a, b = rng.sample(range(n), 2)
        swapped = list(honest)
        swapped[a], swapped[b] = swapped[b], swapped[a]
        other = tuple(swapped)
    return kind, [honest, other]


def _check_records(run: _Run, messages: int = 2) -> None:
    sim, sc, rng = run.sim, run.scenario, run.rng
    n = sc.n - 1
    t = majority(n)
    kind, rosters = _draw_records(n, rng)
    groups = [GroupId("sim", digest(canonical("sim-record", r, roster)), f"creator-{r}") for r, roster in enumerate(rosters)]
    holds: dict[int, int] = {}  # node -> the record it was served
    for p in range(sc.n):
        listed = [r for r, roster in enumerate(rosters) if p in roster]
        if listed:
            holds[p] = rng.choice(listed)
            sim.place(p, groups[holds[p]], rosters[holds[p]])
    correct = [p for p in sc.correct if p in holds]
    fingerprints: dict[int, str] = {}
    reported: set[tuple[int, int]] = set()  # (node, node it reported)
    sent: set[bytes] = set()

    def multicast(p: int, k: int) -> None:
        payload = f"{p} {holds[p]} {k}".encode()
        sent.add(payload)
        sim.call(p, lambda m, now: m.multicast(smc_tag(m.gid), payload, now))

    def on_output(p: int, now: float, ev: Any) -> None:
        roster = rosters[holds[p]]
        if isinstance(ev, KeyEstablished):
            fingerprints[p] = ev.fingerprint
            for k in range(messages):
                sim.at(now + rng.uniform(0.0, 0.5), functools.partial(multicast, p, k))
            run.finish(p)
        elif isinstance(ev, RecordMismatch):
            reported.add((p, roster[ev.peer]))
        elif isinstance(ev, Delivered) and roster[ev.sender] != p:
            origin, record, _k = ev.payload.decode().split()
            if int(record) != holds[p] or int(origin) != roster[ev.sender] or ev.payload not in sent:
                run.violation(f"cross-record: node {p} (record {holds[p]}) delivered {ev.payload!r} from member {ev.sender}")

    for p in holds:
        sim.nodes[p].on_output = functools.partial(on_output, p)
    for p, when in sc.start_at.items():
        if p in holds:
            sim.at(when, functools.partial(sim.start, p, _start_own_record))
    for p, when in sc.crash_at.items():
        sim.at(when, functools.partial(sim.crash, p))
    # who must report whom: correct pairs that list each other but hold different records
    must_report = {
        (p, q) for p in correct for q in correct
        if holds[p] != holds[q] and q in rosters[holds[p]] and p in rosters[holds[q]]
    }
    quorate = {r for r in range(2) if sum(holds[p] == r for p in correct) >= t}
    must_key = [p for p in correct if holds[p] in quorate]
    sim.run(TIME_LIMIT, stop=lambda: must_report <= reported and all(p in fingerprints for p in must_key))
    sim.run(sim.now + 2.0)
    by_key: dict[str, set[int]] = {}
    for p, fp in fingerprints.items():
        by_key.setdefault(fp, set()).add(holds[p])
    for fp, records in by_key.items():
        if len(records) > 1:
            run.violation(f"{kind}: members holding records {sorted(records)} share key {fp}")
    for r in range(2):
        keys = {fp for p, fp in fingerprints.items() if holds[p] == r}
        if len(keys) > 1:
            run.violation(f"agreement: holders of record {r} established {len(keys)} keys")
    missing = sorted(must_report - reported)
    if missing:
        run.violation(f"{kind}: other records never reported (node, peer): {missing}")
    silent = [p for p in must_key if p not in fingerprints]
    if silent:
        run.violation(f"termination: correct holders {silent} of a record held by a majority got no key")


def _check_restarts(run: _Run, forget_state: bool = False, forget_marks: bool = False, messages: int = 3) -> None:
    from ..net.journal import established_state, plan_join

    sim, sc, rng = run.sim, run.scenario, run.rng
    if rng.random() < 0.5:
        messages = 0  # half the runs are key exchanges alone: issue 14's schedules as they were
    sim.restarts = True
    sim.keep_wire_log = True
    n, t = sc.n, majority(sc.n)
    gid = group_id("sim")
    tag = smc_tag(gid)
    key = gid.record.hex()
    disks: dict[int, dict[str, Any]] = {i: {} for i in range(n)}  # survives restarts
    runs = dict.fromkeys(range(n), 0)
    restarted_at: dict[int, float] = {}
    keys: dict[tuple[int, int], str] = {}  # (member, incarnation) -> fingerprint
    sent: dict[tuple[int, int, int], bytes] = {}  # (sender, incarnation, seq) -> payload
    # per receiver and sender, over all the receiver's runs: what it delivered, what it lost
    delivered: dict[tuple[int, int], list[tuple[int, int]]] = {}
    lost: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    state = {"adversary_done": False, "replays": 0}

    def join(i: int, m: Member, now: float) -> None:
        disk = {} if forget_state else disks[i]
        plan = plan_join(disk.get(key), gid.record, None, random.Random(f"draw/{run.result.seed}/{i}/{runs[i]}"))
        if plan.save_first is not None:
            disks[i][key] = plan.save_first  # durable before the first message
        # none saved yet: nothing was delivered (exact, not unknown); the broken driver: unknown
        marks = None if forget_marks else disk.get("marks", {})
        m.smc_init(tag, now, high_water=marks, **plan.restore)

    def multicast(i: int, incarnation: int, k: int) -> None:
        if runs[i] == incarnation:  # (not a later run of the member)
            sim.call(i, lambda m, now: m.multicast(tag, f"{i} {incarnation} {k} {run.result.seed}".encode(), now))

    def on_output(i: int, now: float, ev: Any) -> None:
        if isinstance(ev, KeyEstablished):
            keys[(i, runs[i])] = ev.fingerprint
            member = sim.nodes[i].member
            assert member is not None
            disks[i][key] = established_state(0, gid.record, member.smc(tag))
            run.finished_at = max(run.finished_at, now)  # (not run.finish: its crashes are not ours)
            for k in range(messages):
                sim.at(now + rng.uniform(0.0, 1.0), functools.partial(multicast, i, runs[i], k))
        elif isinstance(ev, Delivered | Lost):
            if ev.sender == i:
                assert isinstance(ev, Delivered)
                sent[(i, ev.incarnation, ev.seq)] = ev.payload
            elif isinstance(ev, Delivered):
                if sent.get((ev.sender, ev.incarnation, ev.seq)) != ev.payload:
                    run.violation(f"member {i} delivered {(ev.sender, ev.incarnation, ev.seq)}, never multicast")
                got = delivered.setdefault((i, ev.sender), [])
                if got and (ev.incarnation, ev.seq) <= got[-1]:
                    again = " again" if (ev.incarnation, ev.seq) in got else " out of order"
                    run.violation(
                        f"member {i} (run {runs[i]}) delivered {(ev.sender, ev.incarnation, ev.seq)}{again} "
                        f"after {got[-1]}"
                    )
                got.append((ev.incarnation, ev.seq))
            else:
                lost.setdefault((i, ev.sender), []).append((ev.incarnation, ev.first, ev.end))
            member = sim.nodes[i].member
            smc = member.smc(tag) if member is not None else None
            assert smc is not None
            disks[i]["marks"] = smc.high_water()  # saved with what was delivered

    def first_start(i: int) -> None:
        if sim.nodes[i].member is None and sim.nodes[i].crashed_at is None:  # not restarted already
            sim.start(i, functools.partial(join, i))

    def restart(i: int) -> None:
        runs[i] += 1
        restarted_at[i] = sim.now
        sim.restart(i, functools.partial(join, i), incarnation=runs[i])

    def replay() -> None:
        """An old frame into a member: mostly a restarted one, and then mostly a frame from
        before its restart (it may have delivered it in its earlier run)."""
        frames = [(when, data) for when, _s, data in sim.wire_log if data[1:2] == b"\x1e"]  # SmcData
        if frames:
            victims = list(restarted_at)
            to = rng.choice(victims) if victims and rng.random() < 0.7 else rng.randrange(n)
            before = [data for when, data in frames if when < restarted_at.get(to, -1.0)]
            data = rng.choice(before) if before and rng.random() < 0.7 else rng.choice(frames)[1]
            sim.inject(rng.choice([j for j in range(n) if j != to]), to, data)
            state["replays"] += 1
        if sim.now < quiet_after + 1.0:
            sim.at(sim.now + rng.uniform(0.02, 0.3), replay)
        else:
            state["adversary_done"] = True

    quiet_after = 4.0  # the last start; then the last restart or heal, below

    early = sorted(rng.sample(range(n), t))
    late = [i for i in range(n) if i not in early]
    victims = rng.sample(range(n), sc.n - len(sc.correct)) if len(sc.correct) < n else []
    if victims and late and rng.random() < 0.7 and victims[0] not in early:
        victims[0] = rng.choice([i for i in early if i not in victims])  # one of the first majority
    for i in range(n):
        sim.nodes[i].on_output = functools.partial(on_output, i)
        when = rng.uniform(0.0, 0.05) if i in early else rng.uniform(0.2, 4.0)
        sim.at(when, functools.partial(first_start, i))


    for k, v in enumerate(victims):
        down = rng.uniform(0.02, 2.0)
        sim.at(down, functools.partial(sim.crash, v))
        up = down + rng.uniform(0.01, 1.0)
        sim.at(up, functools.partial(restart, v))
        quiet_after = max(quiet_after, up)
        if k == 0 and late and rng.random() < 0.7:
            # issue 14's schedule: the late members are cut off while the first majority runs;
            # then the partition puts the rest of that majority on one side, the crashed member
            # (restarted) with the late ones on the other
            heal = up + rng.uniform(1.0, 8.0)
            sim.partition(set(late), 0.0, down)
            sim.partition(set(early) - {v}, down, heal)
            quiet_after = max(quiet_after, heal)
        if rng.random() < 0.3:
            again = up + rng.uniform(0.05, 2.0)
            back = again + rng.uniform(0.01, 0.5)
            sim.at(again, functools.partial(sim.crash, v))
            sim.at(back, functools.partial(restart, v))
            quiet_after = max(quiet_after, back)
    sim.at(rng.uniform(0.05, 0.5), replay)

    def everyone_keyed() -> bool:
        return all(sim.nodes[i].up and (i, runs[i]) in keys for i in range(n))

    def last_run_accounted() -> bool:
        """Every message of each sender's last run delivered to, or reported lost by, each
        other member (the last runs are all up: restarted members come back)."""
        for s in range(n):
            mine = sorted(seq for (p, inc, seq) in sent if p == s and inc == runs[s])
            if len(mine) < messages:
                return False
            for r in range(n):
                if r == s:
                    continue
                got = {seq for inc, seq in delivered.get((r, s), ()) if inc == runs[s]}
                gone = [(a, b) for inc, a, b in lost.get((r, s), ()) if inc == runs[s]]
                if any(seq not in got and not any(a <= seq < b for a, b in gone) for seq in mine):
                    return False
        return True

    def done() -> bool:
        return sim.now > quiet_after and bool(state["adversary_done"]) and everyone_keyed() and last_run_accounted()

    sim.run(TIME_LIMIT, stop=done)
    sim.run(sim.now + 2.0)  # let stray replays land: nothing more may be delivered
    fingerprints = set(keys.values())
    if len(fingerprints) > 1:
        holders = {fp: sorted(k for k, f in keys.items() if f == fp) for fp in fingerprints}
        run.violation(f"agreement: {len(fingerprints)} keys for one epoch: {holders}")
    missing = [i for i in range(n) if (i, runs[i]) not in keys]
    if missing:
        run.violation(f"termination: members {missing} never got the key (in their last run)")
    elif not last_run_accounted():
        run.violation("delivery: messages of a sender's last run neither delivered nor reported lost")


def run_one(
    protocol: str,
    n: int,
    crash: int,
    seed: int,
    *,
    factory: Callable[..., Member] = Member,
    measure_cpu: bool = False,
    signed: bool = True,
    auth: str | type[Authenticator] | None = None,
    forget_state: bool = False,
    broken: str | None = None,
    forget_marks: bool = False,
) -> RunResult:
    """One schedule of ``protocol``; returns its violations and costs."""
    run = _Run(protocol, n, crash, seed, factory, measure_cpu)
    try:
        if protocol == "consensus":
            _check_consensus(run)
        elif protocol == "gke":
            _check_gke(run)
        elif protocol == "smc":
            _check_smc(run, auth=auth if auth is not None else ("signed" if signed else "group"))
        elif protocol == "records":
            _check_records(run)
        elif protocol == "restarts":
            _check_restarts(run, forget_state=forget_state or broken == "forget_state",
                            forget_marks=forget_marks or broken == "forget_marks")
        elif protocol == "conference":
            from .conference import check_conference

            check_conference(run, broken=broken)
        else:
            raise ValueError(f"unknown protocol {protocol!r}")
    except Exception as exc:  # a crash of the protocol code under test is a violation too
        run.violation(f"exception: {type(exc).__name__}: {exc}")
    return run.close()


# --------------------------------------------------------------------------- campaigns


@dataclass
class CampaignResult:
    protocol: str
    n: int
    crash: int
    results: list[RunResult]

    @property
    def failures(self) -> list[RunResult]:
        return [r for r in self.results if r.violations]

    def summary(self) -> str:
        msgs = sorted(r.messages for r in self.results)
        times = sorted(r.time_to_finish for r in self.results)
        return (
            f"{self.protocol} n={self.n} crash={self.crash}: {len(self.results)} runs, "
            f"{len(self.failures)} violations; messages median {statistics.median(msgs):.0f} "
            f"p95 {_p95(msgs):.0f}; time to finish median {statistics.median(times):.3f} s "
            f"p95 {_p95(times):.3f} s"
        )


def _p95(values: Sequence[float]) -> float:
    return values[min(len(values) - 1, int(0.95 * len(values)))]



def _start_own_record(member: Member, now: float) -> None:
    member.smc_init(smc_tag(member.gid), now)

def _worker(args: tuple) -> RunResult:
    protocol, n, crash, seed, factory, signed, auth, forget_state, forget_marks, broken = args
    return run_one(protocol, n, crash, seed, factory=factory, signed=signed, auth=auth, forget_state=forget_state,
                   forget_marks=forget_marks, broken=broken)


def run_campaign(
    protocol: str,
    n: int,
    runs: int,
    seed: int,
    crash: int,
    *,
    jobs: int | None = None,
    factory: Callable[..., Member] = Member,
    signed: bool = True,
    auth: str | type[Authenticator] | None = None,
    progress: Callable[[int], None] | None = None,
    forget_state: bool = False,
    forget_marks: bool = False,
    broken: str | None = None,
) -> CampaignResult:
    """``runs`` schedules with seeds ``seed .. seed + runs - 1`` over ``jobs`` processes.
    ``forget_state``: restarted members lose their disk too; ``forget_marks``: they keep it but
    do not restore their SMC high-water marks (broken drivers, for ``restarts``); ``broken``
    names any of :data:`BROKEN`.  ``auth``: the SMC mode (a name of
    :data:`~secchat.protocols.auth.MODES`, or a class: a broken variant); without it ``signed``
    chooses ``signed`` or ``group``."""
    work = [(protocol, n, crash, seed + i, factory, signed, auth, forget_state, forget_marks, broken)
            for i in range(runs)]
    jobs = jobs or os.cpu_count() or 1
    results: list[RunResult] = []
    if jobs == 1 or runs < 4:
        for item in work:
            results.append(_worker(item))
            if progress:
                progress(1)
    else:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(jobs) as pool:
            for res in pool.imap(_worker, work, chunksize=max(1, min(16, runs // (jobs * 8) or 1))):
                results.append(res)
                if progress:
                    progress(1)
    return CampaignResult(protocol, n, crash, results)
