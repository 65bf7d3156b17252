"""Members that restart: they must never vote twice in one consensus instance."""

from __future__ import annotations

from collections import Counter

from secchat.protocols.consensus import Consensus, State
from secchat.protocols.events import KeyEstablished, SessionKey
from secchat.protocols.stack import gke_tag, smc_tag

from .wire import ConsensusWire, ManualNet

TAG = ("t", "consensus")


def _restart_schedule(restarted_votes: bool) -> ConsensusWire:
    """Round 0: coordinator 0 hears 1 and 2, proposes v0, both ack (lock v0), 0 decides and
    crashes with its decision unsent.  1 crashes too and restarts without state.  Everybody
    suspects 0; in round 1 (coordinator 1) the estimates of 3 and 4 arrive before 2's."""
    w = ConsensusWire(5)
    for i in range(5):
        w.propose(i, b"v%d" % i)

    def deliver(pred) -> None:
        while pick := next((m for m in w.queue if pred(*m)), None):
            w.queue.remove(pick)
            frm, to, msg = pick
            w.apply(to, w.nodes[to].receive(frm, msg))

    kind = lambda m: type(m).__name__  # noqa: E731
    deliver(lambda f, t, m: t == 0 and f in (1, 2) and kind(m) == "Estimate")
    deliver(lambda f, t, m: f == 0 and t in (1, 2) and kind(m) == "Proposal")
    deliver(lambda f, t, m: t == 0 and kind(m) == "Ack")
    assert w.decided == {0: b"v0"}
    w.queue = [m for m in w.queue if 0 not in m[:2] and 1 not in m[:2]]
    w.crashed.add(0)
    w.nodes[1] = Consensus(TAG, 1, 5, w.detectors[1], Counter())
    w.apply(1, w.nodes[1].propose(b"fresh-1") if restarted_votes else w.nodes[1].abstain())
    for i in (1, 2, 3, 4):
        w.suspect(i, 0)
    deliver(lambda f, t, m: t == 1 and f in (3, 4) and kind(m) == "Estimate" and m.round == 1)
    deliver(lambda f, t, m: f == 1 and t in (3, 4))
    deliver(lambda f, t, m: t == 1 and f in (3, 4))
    deliver(lambda f, t, m: True)
    return w


def test_a_restarted_member_that_votes_again_breaks_agreement() -> None:
    """Why restarts must abstain: the schedule below decides two values if they vote."""
    assert set(_restart_schedule(restarted_votes=True).decided.values()) == {b"v0", b"fresh-1"}


def test_an_abstaining_restarted_member_cannot_unlock_a_decided_value() -> None:
    w = _restart_schedule(restarted_votes=False)
    assert set(w.decided.values()) == {b"v0"}, w.decided
    assert set(w.decided) == {0, 1, 2, 3, 4}
    assert w.nodes[1].state is State.DECIDED


def test_gke_restart_without_state_keeps_one_key() -> None:
    tag = gke_tag(smc_tag("g"))
    net = ManualNet(5)
    for i in (0, 1, 2):
        net.start(i, lambda m, now: m.gke_init(tag, now))
    net.tick(0.2, rounds=10)  # 3 and 4 not started: their ring neighbours ask past them once suspected
    first = {ev.secret for i in (0, 1, 2) for ev in net.events[i] if isinstance(ev, SessionKey)}
    assert len(first) == 1
    net.crash(0)
    net.crash(1)
    net.start(1, lambda m, now: m.gke_init(tag, now, voter=False))  # restarted, state lost
    for i in (3, 4):
        net.start(i, lambda m, now: m.gke_init(tag, now))
    net.tick(0.2, rounds=40)
    keys = {i: ev.secret for i in range(1, 5) for ev in net.events[i] if isinstance(ev, SessionKey)}
    assert set(keys) == {1, 2, 3, 4} and set(keys.values()) == first


def test_rejoin_with_saved_state_gets_the_same_key_even_when_the_deciders_are_gone() -> None:
    tag = smc_tag("g", 0)
    net = ManualNet(5)
    for i in (0, 1, 2):
        net.start(i, lambda m, now: m.smc_init(tag, now))
    net.tick(0.2, rounds=10)  # 3 and 4 not started: their ring neighbours ask past them once suspected
    first = {ev.fingerprint for i in (0, 1, 2) for ev in net.events[i] if isinstance(ev, KeyEstablished)}
    assert len(first) == 1
    saved = net.members[0].smc(tag).gke.saved_state()
    assert set(saved) == {"contribution", "session_seed", "decision"}
    for i in (0, 1, 2):
        net.crash(i)
    net.start(0, lambda m, now: m.smc_init(tag, now, resume=True, **saved))
    for i in (3, 4):
        net.start(i, lambda m, now: m.smc_init(tag, now))
    net.tick(0.2, rounds=20)
    keys = {i: ev.fingerprint for i in (0, 3, 4) for ev in net.events[i] if isinstance(ev, KeyEstablished)}
    assert set(keys) == {0, 3, 4} and set(keys.values()) == first
