from __future__ import annotations

import random

import pytest

from secchat.protocols.events import Delivered, KeyEstablished, Lost, Undelivered
from secchat.protocols.messages import SmcData, decode_message, encode_message
from secchat.protocols.smc import SendQueueFull, SmcLimits
from secchat.protocols.stack import Member, StackConfig, smc_tag
from secchat.sim.checker import impersonate
from secchat.sim.simulator import Simulation

TAG = smc_tag("sim")


def _group(n: int = 3, signed: bool = True, config: StackConfig | None = None) -> Simulation:
    sim = Simulation(n, 4, config=config)
    for i in range(n):
        sim.start(i, lambda m, now: m.smc_init(TAG, now, signed=signed))
    sim.run(5.0)
    assert all(node.member.smc(TAG).established for node in sim.nodes)
    return sim


def _delivered(sim: Simulation, i: int) -> list[Delivered]:
    return [ev for _, ev in sim.nodes[i].outputs if isinstance(ev, Delivered) and ev.sender != i]


def _frame(sim: Simulation, sender: int, payload: bytes) -> bytes:
    sim.call(sender, lambda m, now: m.multicast(TAG, payload, now))
    frames = [d for _, s, d in sim.wire_log if s == sender and d[1:2] == b"\x1e"]
    return frames[-1]


@pytest.mark.parametrize("signed", [True, False])
def test_replays_tampering_and_forgeries_are_never_delivered(signed: bool) -> None:
    sim = _group(signed=signed)
    sim.keep_wire_log = True
    data = _frame(sim, 0, b"hello")
    sim.run(sim.now + 1.0)
    assert [ev.payload for ev in _delivered(sim, 1)] == [b"hello"]
    stats = sim.nodes[1].member.stats
    sim.inject(2, 1, data)  # replay, even over another link
    flipped = bytearray(data)
    flipped[-3] ^= 1
    sim.inject(0, 1, bytes(flipped))
    msg = decode_message(data)
    for forged in (
        SmcData(msg.tag, 2, msg.incarnation, msg.seq + 1, msg.nonce, msg.ciphertext),  # re-attributed
        SmcData(msg.tag, msg.sender, msg.incarnation, msg.seq + 1, msg.nonce, msg.ciphertext),  # renumbered
        SmcData(msg.tag, msg.sender, msg.incarnation + 1, 0, msg.nonce, msg.ciphertext),
    ):
        sim.inject(0, 1, encode_message(forged))
    sim.run(sim.now + 1.0)
    assert [ev.payload for ev in _delivered(sim, 1)] == [b"hello"]
    assert stats["smc.dropped.replay"] == 2  # the copy, and the bit-flipped copy (same header)
    assert stats["smc.dropped.decrypt_failed"] == 3


def test_a_member_cannot_sign_for_another_in_signed_mode() -> None:
    sim = _group()
    member1 = sim.nodes[1].member
    smc = member1.smc(TAG)
    # member 1 builds a frame claiming to be member 0, valid AEAD, but signed with its own key
    frame = impersonate(smc, sim.signers[1], 0, 0, 0, b"i am alice")
    sim.inject(1, 2, encode_message(frame))
    sim.run(sim.now + 1.0)
    assert _delivered(sim, 2) == []
    assert sim.nodes[2].member.stats["smc.dropped.bad_signature"] == 1


def test_messages_wait_for_the_key_in_bounded_queues() -> None:
    config = StackConfig(smc=SmcLimits(max_queued_sends=2))
    sim = Simulation(3, 1, config=config)
    m = sim.start(0, lambda m, now: m.smc_init(TAG, now))
    m.multicast(TAG, b"a", 0.0)
    m.multicast(TAG, b"b", 0.0)
    with pytest.raises(SendQueueFull):
        m.multicast(TAG, b"c", 0.0)
    for i in (1, 2):
        sim.start(i, lambda m, now: m.smc_init(TAG, now))
    sim.run(5.0)
    assert [ev.payload for ev in _delivered(sim, 1)] == [b"a", b"b"]


def test_old_incarnation_is_refused_after_a_rejoin() -> None:
    sim = _group()
    sim.keep_wire_log = True
    old = _frame(sim, 0, b"first life")
    sim.run(sim.now + 1.0)
    # member 0 rejoins as a new incarnation with its restored GKE state: same key
    gke = sim.nodes[0].member.smc(TAG).gke
    restore = {"contribution": gke.contribution, "session_seed": gke.session_seed}
    sim.nodes[0].member = Member("sim", 0, 3, sim.signers[0], sim.verifiers, random.Random(5), sim.now, incarnation=7)
    sim.nodes[0].member.start(sim.now)
    sim.call(0, lambda m, now: m.smc_init(TAG, now, **restore))
    sim.run(sim.now + 3.0)
    keys = [ev.fingerprint for node in sim.nodes for _, ev in node.outputs if isinstance(ev, KeyEstablished)]
    assert len(set(keys)) == 1 and len(keys) == 4
    sim.call(0, lambda m, now: m.multicast(TAG, b"second life", now))
    sim.run(sim.now + 1.0)
    sim.inject(0, 1, old)
    sim.run(sim.now + 1.0)
    assert [ev.payload for ev in _delivered(sim, 1)] == [b"first life", b"second life"]
    assert sim.nodes[1].member.stats["smc.dropped.old_incarnation"] == 1


def test_closing_an_instance_erases_keys_and_refuses_its_frames() -> None:
    sim = _group()
    sim.keep_wire_log = True
    data = _frame(sim, 0, b"x")
    member = sim.nodes[1].member
    member.close_instance(TAG)
    sim.run(sim.now + 1.0)
    assert member.smc(TAG) is None
    assert _delivered(sim, 1) == [] or all(ev.payload == b"x" for ev in _delivered(sim, 1))
    assert data


def _lose_two_frames(limits):
    """Member 1 is slow to get the key; 6 of member 0's frames reach it before, 2 are dropped
    (hold_full); then 4 more follow.  Returns the net after ticking past the resend delay."""
    from .wire import ManualNet

    net = ManualNet(3, group="sim", config=StackConfig(smc=limits))
    for i in range(3):
        net.start(i, lambda m, now: m.smc_init(TAG, now))
    kind = lambda data: type(decode_message(data)).__name__  # noqa: E731
    net.deliver(lambda frm, to, data: to != 1 or kind(data) not in ("Contribution", "Decision", "Proposal"))
    for k in range(6):
        net.members[0].multicast(TAG, b"m%d" % k, net.now)
        net._flush(0)
    net.deliver(lambda frm, to, data: kind(data) == "SmcData")
    net.deliver()
    for k in range(6, 10):
        net.members[0].multicast(TAG, b"m%d" % k, net.now)
        net._flush(0)
    net.tick(0.5, rounds=2)  # 1 s: past resend_after, far below gap_timeout
    return net


def test_a_frame_lost_in_a_queue_is_sent_again_from_the_store() -> None:
    from secchat.protocols.smc import SmcLimits

    net = _lose_two_frames(SmcLimits(max_held=4, gap_timeout=30.0))
    got = [ev.payload for ev in net.events[1] if isinstance(ev, Delivered) and ev.sender == 0]
    assert net.members[1].stats["smc.dropped.hold_full"] == 2
    assert got == [b"m%d" % k for k in range(10)]
    assert net.members[1].stats["smc.resend_requested"] >= 1 and net.members[0].stats["smc.resent"] >= 2
    assert not [ev for ev in net.events[1] if isinstance(ev, Lost)]


def test_what_the_store_no_longer_has_is_reported_lost_on_both_sides() -> None:
    """No retransmission store: the gap is skipped at once (no gap_timeout wait), and said."""
    from secchat.protocols.smc import SmcLimits

    net = _lose_two_frames(SmcLimits(max_held=4, gap_timeout=30.0, store_frames=0))
    got = [ev.payload for ev in net.events[1] if isinstance(ev, Delivered) and ev.sender == 0]
    assert got == [b"m0", b"m1", b"m2", b"m3", b"m6", b"m7", b"m8", b"m9"]
    assert [(ev.sender, ev.first, ev.end) for ev in net.events[1] if isinstance(ev, Lost)] == [(0, 4, 6)]
    assert [(ev.peer, ev.first, ev.end) for ev in net.events[0] if isinstance(ev, Undelivered)] == [(1, 4, 6)]


def test_a_gap_nobody_answers_for_is_given_up_after_gap_timeout_and_said() -> None:
    from secchat.protocols.smc import SmcLimits

    net = _lose_two_frames(SmcLimits(max_held=4, gap_timeout=2.0))
    net.members[0] = None  # the sender is gone before it could answer
    net.tick(0.5, rounds=10)
    got = [ev.payload for ev in net.events[1] if isinstance(ev, Delivered) and ev.sender == 0]
    assert got[:4] == [b"m0", b"m1", b"m2", b"m3"] and b"m9" in got
