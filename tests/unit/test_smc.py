from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# ---------------------------------------------------------------------------- streams: gaps, restarts


def _keyed(config: StackConfig | None = None, seed: int = 1):
    """Three members of one SMC instance with their key, over a manual network."""
    from .wire import ManualNet

    net = ManualNet(3, seed=seed, group="sim", config=config)
    for i in range(3):
        net.start(i, lambda m, now: m.smc_init(TAG, now))
    net.deliver()
    assert all(m.smc(TAG).established for m in net.members)
    net.events = {i: [] for i in range(3)}
    return net


def _multicast(net, sender: int, count: int, to: int) -> list[tuple[int, bytes]]:
    """``sender`` multicasts ``count`` messages; returns (seq, frame) of those addressed to
    ``to``, taken off the network (the test delivers them, or not); other frames stay queued."""
    for _ in range(count):
        net.members[sender].multicast(TAG, b"m%d" % net.members[sender].smc(TAG)._seq, net.now)
    net._flush(sender)
    mine = [f for f in net.frames if f[0] == sender and f[1] == to and decode_message(f[2]).__class__ is SmcData]
    taken = set(map(id, mine))
    net.frames = [f for f in net.frames if id(f) not in taken]
    return [(decode_message(data).seq, data) for _, _, data in mine]


def _feed(net, to: int, sender: int, frames: list[tuple[int, bytes]]) -> None:
    for _, data in frames:
        net.members[to].receive(sender, data, net.now)
        net._flush(to)


def _got(net, i: int, sender: int) -> list[int]:
    return [ev.seq for ev in net.events[i] if isinstance(ev, Delivered) and ev.sender == sender]


def _lost(net, i: int, sender: int) -> list[tuple[int, int]]:
    return [(ev.first, ev.end) for ev in net.events[i] if isinstance(ev, Lost) and ev.sender == sender]


def test_a_reader_that_missed_more_than_the_reorder_window_receives_every_later_frame() -> None:
    """Member 1 gets frames 0..99, misses 100..2099 (its link queue tail-dropped them while it
    was paused) and gets 2100..4999; nobody answers its resend requests.  Once 1024 frames are
    held behind the gap it is given up and said, and every later frame is delivered in order:
    the sender is not silenced (it was: every frame 1024 beyond the gap was dropped)."""
    net = _keyed(StackConfig(smc=SmcLimits(reorder_window=1024)))
    frames = _multicast(net, 0, 5000, to=1)
    net.frames.clear()  # resend requests and answers are lost: the worst case
    _feed(net, 1, 0, frames[:100] + frames[2100:])
    assert _got(net, 1, 0) == [*range(100), *range(2100, 5000)]
    assert _lost(net, 1, 0) == [(100, 2100)]
    stream = net.members[1].smc(TAG)._streams[0]
    assert not stream.waiting and stream.waiting_bytes == 0
    assert net.members[1].smc(TAG).high_water()[0] == (0, 4999)


def test_a_gap_under_the_window_waits_for_the_resend_and_loses_nothing() -> None:
    """The same gap of 2000 frames, now with the sender answering from its store (4096
    frames): it all comes back, nothing is lost."""
    net = _keyed()
    frames = _multicast(net, 0, 3000, to=1)
    _feed(net, 1, 0, frames[:100] + frames[2100:2200])
    net.tick(0.1, rounds=3)  # past resend_after: the request, and the answer from the store
    assert _got(net, 1, 0) == list(range(2200)) and _lost(net, 1, 0) == []
    _feed(net, 1, 0, frames[2200:])
    assert _got(net, 1, 0) == list(range(3000))


def test_a_late_joiner_of_a_busy_stream_gets_what_the_store_has_and_every_later_frame() -> None:
    limits = SmcLimits(store_frames=500, reorder_window=1024)
    net = _keyed(StackConfig(smc=limits))
    early = _multicast(net, 0, 3000, to=1)  # member 1's copies are lost: it "joins late"
    assert len(early) == 3000
    later = _multicast(net, 0, 1500, to=1)
    _feed(net, 1, 0, later)
    net.deliver()
    got, lost = _got(net, 1, 0), _lost(net, 1, 0)
    assert got[-1500:] == list(range(3000, 4500)), "every frame after the gap"
    assert sorted(set(got)) == got and len(got) + sum(b - a for a, b in lost) == 4500
    assert not any(a <= s < b for s in got for a, b in lost)


def test_memory_behind_a_gap_is_bounded_by_the_window_frames_and_bytes() -> None:
    limits = SmcLimits(reorder_window=50, reorder_bytes=600 * 1024, max_payload=512 * 1024)
    net = _keyed(StackConfig(smc=limits))
    smc = net.members[1].smc(TAG)
    frames = _multicast(net, 0, 400, to=1)
    net.frames.clear()
    most = 0
    for seq, data in frames[1:]:  # frame 0 never comes
        _feed(net, 1, 0, [(seq, data)])
        most = max(most, len(smc._streams[0].waiting))
    assert most == 50 and _got(net, 1, 0) == list(range(1, 400)) and _lost(net, 1, 0) == [(0, 1)]


def _restart(net, i: int, incarnation: int, *, settle: bool = True, **kwargs) -> None:
    """Member ``i`` restarts with its saved GKE state and decision (the same key), resuming: a
    new stack.  ``settle``: let the network run (the key comes back, statuses arrive)."""
    saved = net.members[i].smc(TAG).gke.saved_state()
    net.crash(i)
    net.start(i, lambda m, now: m.smc_init(TAG, now, resume=True, **saved, **kwargs), incarnation=incarnation)
    if settle:
        net.deliver()
        assert net.members[i].smc(TAG).established


def _replays_after_a_restart(*, marks: bool):
    """Member 2 sends 5 frames in its first run (incarnation 0) and 3 in its second (1); member 0
    sends 10.  Member 1 delivers all, restarts with (or without) its high-water marks, and the
    adversary replays every old frame into it.  Then the live streams go on."""
    net = _keyed()
    old2 = _multicast(net, 2, 5, to=1)
    _feed(net, 1, 2, old2)
    _restart(net, 2, incarnation=1)
    new2 = _multicast(net, 2, 3, to=1)
    _feed(net, 1, 2, new2)
    old0 = _multicast(net, 0, 10, to=1)
    _feed(net, 1, 0, old0)
    net.deliver()
    high_water = net.members[1].smc(TAG).high_water()
    assert high_water == {0: (0, 9), 1: (0, -1), 2: (1, 2)}
    _restart(net, 1, incarnation=1, settle=False, **({"high_water": high_water} if marks else {}))
    # at once, before any status could tell it where the streams are, the adversary replays:
    _feed(net, 1, 2, old2 + new2)  # member 2's older incarnation, and its current one
    _feed(net, 1, 0, old0[3:] + old0[:3])
    net.deliver()
    _feed(net, 1, 0, _multicast(net, 0, 2, to=1))  # live again: seq 10, 11
    return net


def test_a_member_restarted_with_its_high_water_marks_delivers_no_replay() -> None:
    net = _replays_after_a_restart(marks=True)
    assert [(ev.sender, ev.incarnation, ev.seq) for ev in net.events[1] if isinstance(ev, Delivered) and ev.sender != 1] == [
        (0, 0, 10), (0, 0, 11)
    ]
    stats = net.members[1].stats
    assert stats["smc.dropped.old_incarnation"] == 5 and stats["smc.dropped.replay"] == 13


def test_without_its_marks_a_restarted_member_delivers_replays_again() -> None:
    """What the marks prevent (the check above can fail): replayed frames start the streams."""
    net = _replays_after_a_restart(marks=False)
    got = [(ev.sender, ev.incarnation, ev.seq) for ev in net.events[1] if isinstance(ev, Delivered) and ev.sender != 1]
    assert (2, 0, 0) in got and (0, 0, 3) in got


def test_what_was_sent_while_a_member_was_down_is_asked_for_after_its_mark() -> None:
    net = _keyed()
    _feed(net, 1, 0, _multicast(net, 0, 4, to=1))
    high_water = net.members[1].smc(TAG).high_water()
    saved = net.members[1].smc(TAG).gke.saved_state()
    net.crash(1)
    _multicast(net, 0, 6, to=1)  # seq 4..9: member 1 is down, they are lost with its links
    net.start(1, lambda m, now: m.smc_init(TAG, now, resume=True, high_water=high_water, **saved), incarnation=1)
    net.deliver()
    net.tick(0.5, rounds=12)  # member 0's periodic status shows its position: 4..9 are asked for
    assert _got(net, 1, 0) == list(range(4, 10)) and _lost(net, 1, 0) == []


def test_a_high_water_mark_of_our_own_incarnation_is_refused_and_nothing_is_registered() -> None:
    sim = _group()
    member = sim.nodes[0].member
    marks = member.smc(TAG).high_water()
    assert marks[0] == (0, -1)
    member.close_instance(TAG)
    other = smc_tag("sim", 1)
    for bad in ({0: (0, 0)}, {5: (0, 1)}, {1: (0, -2)}, {1: (-1, 0)}, {1: (0,)}):
        with pytest.raises(ValueError):
            member.smc_init(other, sim.now, high_water=bad)
        assert member.smc(other) is None and member.demux.get("gke", (*other, "gke")) is None
    assert member.smc_init(other, sim.now, high_water={0: (0, -1)}) is member.smc(other)  # nothing sent: fine


def test_a_resumed_stream_without_marks_starts_at_its_first_authenticated_frame() -> None:
    """Issue 9: a replayed old frame used to start the stream, and the sender's live frames,
    1024 and more beyond it, were then dropped (only what its store still had came back).
    Now every live frame is delivered, the gap is reported, and a forged frame (bad AEAD)
    never moves the stream."""
    net = _keyed(StackConfig(smc=SmcLimits(store_frames=100, reorder_window=1024)))
    frames = _multicast(net, 0, 2000, to=1)
    _restart(net, 1, incarnation=1, settle=False)
    forged = SmcData(TAG, 0, 0, 1400, b"\0" * 12, b"\0" * 40)
    net.members[1].receive(0, encode_message(forged), net.now)
    _feed(net, 1, 0, frames[3:4] + frames[1500:])  # all held until the key is back
    net.deliver()
    assert _got(net, 1, 0) == [3, *range(1500, 2000)]
    assert _lost(net, 1, 0) == [(4, 1500)]
    assert net.members[1].stats["smc.dropped.decrypt_failed"] == 1


def test_frames_from_a_store_are_accepted_only_when_authentic_and_credit_nobody() -> None:
    """The relay's store (net/store.py) is no member: Member.receive_stored takes only SMC
    frames of our record, checked like any other, and none of them counts as a heartbeat."""
    sim = _group()
    sim.keep_wire_log = True
    sim.nodes[0].member.store_out = []
    data = _frame(sim, 0, b"kept for you")
    assert sim.nodes[0].member.take_stored() == [data]  # only the broadcast SMC frame
    assert sim.nodes[0].member.take_stored() == []
    m1 = sim.nodes[1].member
    received = m1.stats["member.received"]
    msg = decode_message(data)
    flipped = bytearray(data)
    flipped[-3] ^= 1
    other_record = Member("other", 1, 3, None, [None] * 3, random.Random(1), 0.0)  # type: ignore[arg-type]
    junk = [
        bytes(flipped),
        encode_message(SmcData(msg.tag, 2, msg.incarnation, msg.seq, msg.nonce, msg.ciphertext)),
        encode_message(SmcData(msg.tag, 1, msg.incarnation, msg.seq, msg.nonce, msg.ciphertext)),
        encode_message(SmcData(smc_tag("elsewhere"), 0, msg.incarnation, 0, msg.nonce, msg.ciphertext)),
        encode_message(other_record._record_hello(reply=False)),
        b"\x00junk",
    ]
    for frame in [data, data, *junk]:  # the authentic one twice: the second is a replay
        sim.call(1, lambda m, now, f=frame: m.receive_stored(f, now))
    sim.call(2, lambda m, now: m.receive_stored(data, now))
    assert [ev.payload for ev in _delivered(sim, 2)] == [b"kept for you"]
    assert [ev.payload for ev in _delivered(sim, 1)] == [b"kept for you"]
    stats = m1.stats
    assert stats["member.received"] == received  # nothing from the store is a heartbeat
    assert stats["member.stored.received"] == 4  # the frame, its replay, flipped, re-attributed
    assert stats["smc.dropped.replay"] == 2 and stats["smc.dropped.decrypt_failed"] == 1
    assert stats["member.stored.dropped.sender"] == 1  # "our own" frame
    assert stats["member.stored.dropped.not_ours"] == 2  # another record's tag; a hello
    assert sum(v for k, v in stats.items() if k.startswith("member.stored.dropped.")) == 4


def test_what_is_asked_for_again_is_reported_undelivered_once() -> None:
    """A receiver whose SmcGone is slow to arrive asks again (resend_retry): the sender answers
    again, but tells its user once."""
    from secchat.protocols.messages import SmcResend

    net = _keyed(StackConfig(smc=SmcLimits(store_frames=10)))
    _multicast(net, 0, 50, to=1)
    sender = net.members[0].smc(TAG)
    ask = SmcResend(TAG, 0, 5, 45)
    out = sender.receive(1, ask, net.now) + sender.receive(1, ask, net.now + 1.0)
    gone = [ev.message for ev in out if hasattr(ev, "message") and ev.message.__class__.__name__ == "SmcGone"]
    assert [(g.first, g.end) for g in gone] == [(5, 40), (5, 40)]
    assert [(ev.first, ev.end) for ev in out if isinstance(ev, Undelivered)] == [(5, 40)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    schedule=st.lists(
        st.one_of(
            st.tuples(st.just("frame"), st.integers(0, 29)),
            st.tuples(st.just("tick"), st.sampled_from([0.05, 0.3, 1.2, 31.0])),
        ),
        max_size=60,
    )
)
def test_the_in_order_shortcut_has_the_general_paths_outcome(schedule: list[tuple[str, float]]) -> None:
    """Frames of one sender in any order, repeated or missing, with time passing (resend
    requests, answers from the store, gaps given up): a receiver delivering in-order frames
    by the shortcut emits, sends, counts, arms and keeps exactly what one without it does."""
    nets = [_keyed(), _keyed()]
    nets[1].members[1].smc(TAG)._in_order_shortcut = False
    frames = [_multicast(net, 0, 30, to=1) for net in nets]
    assert frames[0] == frames[1]  # same seeds: the same frames
    for op, arg in schedule:
        for net in nets:
            if op == "frame":
                _feed(net, 1, 0, [frames[0][int(arg)]])
            else:
                net.tick(arg)
    fast, general = (net.members[1] for net in nets)
    assert nets[0].events[1] == nets[1].events[1]
    assert nets[0].frames == nets[1].frames
    assert fast.stats == general.stats and fast._timers == general._timers
    a, b = fast.smc(TAG)._streams.get(0), general.smc(TAG)._streams.get(0)
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        assert [getattr(a, f) for f in a.__slots__] == [getattr(b, f) for f in b.__slots__]


@settings(max_examples=300, deadline=None)
@given(sender=st.integers(0, (1 << 16) - 1), incarnation=st.integers(0, (1 << 63) - 1),
       seqs=st.lists(st.integers(0, (1 << 63) - 1), min_size=1, max_size=4))
def test_a_frames_associated_data_is_the_canonical_tuple_whatever_the_numbers(sender, incarnation, seqs) -> None:
    """The per-stream prefix plus seq's encoding is byte for byte the canonical tuple's."""
    from secchat.codec import canonical_tuple

    smc = _STREAM_GROUP.nodes[0].member.smc(TAG)
    for seq in seqs:
        assert smc._aad(sender, incarnation, seq) == canonical_tuple(("smc", smc.tag, sender, incarnation, seq))
    assert len(smc._aad_prefix) <= 4 * smc.n  # bounded


_STREAM_GROUP = _group(3)


def test_a_multicast_bytearray_changed_afterwards_changes_nothing_delivered() -> None:
    sim = _group(3, signed=False)
    payload = bytearray(b"before")
    sim.call(0, lambda m, now: m.multicast(TAG, payload, now))
    payload[:] = b"AFTER!"
    sim.run(sim.now + 1.0)
    mine = [ev for _, ev in sim.nodes[0].outputs if isinstance(ev, Delivered) and ev.sender == 0]
    assert [ev.payload for ev in mine] == [b"before"] and type(mine[0].payload) is bytes
    assert [ev.payload for ev in _delivered(sim, 1)] == [b"before"]
