"""Malformed input to every decoder and state machine: a typed error, or dropped and counted.

Never an exception out of a member, never unbounded memory."""

from __future__ import annotations

import random
import tracemalloc

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secchat.codec import MAX_FRAME, CodecError
from secchat.crypto import Signer
from secchat.protocols.events import InstanceSeen
from secchat.protocols.messages import (
    Ack,
    Alive,
    Contribution,
    Decision,
    Estimate,
    Nack,
    Proposal,
    PublicKey,
    SmcData,
    decode_message,
    encode_message,
)
from secchat.protocols.stack import GroupId, Member, smc_tag

N = 4
SIGNERS = [Signer(bytes([i]) * 32) for i in range(N)]
VERIFIERS = [s.verifier() for s in SIGNERS]
TAG = smc_tag("g")
OTHER_TAGS = [TAG, (*TAG, "gke"), (*TAG, "gke", "consensus"), smc_tag("g", 1), ("other", "smc", 0), ("g",), smc_tag(GroupId("g", bytes(32)))]


def _member() -> Member:
    m = Member("g", 0, N, SIGNERS[0], VERIFIERS, random.Random(1), 0.0)
    m.smc_init(TAG, 0.0)
    return m


tags = st.one_of(
    st.sampled_from(OTHER_TAGS),
    st.tuples(st.text(max_size=10), st.integers(min_value=0, max_value=3)),
)
counters = st.integers(min_value=0, max_value=(1 << 63) - 1)
small = st.integers(min_value=0, max_value=70)
blobs = st.binary(max_size=300)
messages = st.one_of(
    st.just(Alive()),
    st.builds(Estimate, tags, st.one_of(small, counters), small, blobs),
    st.builds(Proposal, tags, st.one_of(small, counters), blobs),
    st.builds(Ack, tags, st.one_of(small, counters)),
    st.builds(Nack, tags, st.one_of(small, counters)),
    st.builds(Decision, tags, blobs),
    st.builds(PublicKey, tags, st.binary(min_size=32, max_size=32)),
    st.builds(Contribution, tags, st.binary(min_size=32, max_size=32), st.binary(min_size=12, max_size=12), blobs),
    st.builds(
        SmcData,
        tags,
        st.integers(min_value=0, max_value=(1 << 16) - 1),
        counters,
        counters,
        st.binary(min_size=12, max_size=12),
        blobs,
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_are_refused_with_a_typed_error(data: bytes) -> None:
    try:
        decode_message(data)
    except CodecError as exc:
        assert exc.code in {"malformed", "invalid", "oversized"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(min_value=-2, max_value=N + 2), st.binary(max_size=200)), max_size=30))
def test_members_survive_random_frames(frames: list[tuple[int, bytes]]) -> None:
    m = _member()
    for sender, data in frames:
        m.receive(sender, data, 1.0)
    assert sum(v for k, v in m.stats.items() if k.startswith("member.dropped")) >= 0


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=N - 1), messages), max_size=40))
def test_members_survive_well_formed_but_wrong_messages(items) -> None:
    """Wrong tags, wrong rounds, non-members, replays and junk crypto: never an exception."""
    m = _member()
    now = 0.0
    for sender, msg in items:
        now += 0.01
        m.receive(sender, encode_message(msg), now)
        m.handle_timer(now)
    m.take_outgoing()
    m.take_events()


def test_oversized_and_absurd_frames() -> None:
    m = _member()
    m.receive(1, b"\x00" * (MAX_FRAME + 1), 0.0)
    assert m.stats["member.dropped.oversized"] == 1
    huge_round = msgspec.msgpack.encode([10, ["g", "smc", 0, "gke", "consensus"], (1 << 64) - 1, 0, b""])
    m.receive(1, huge_round, 0.0)
    too_long_tag = msgspec.msgpack.encode([14, ["g"] * 50, b"v"])
    m.receive(1, too_long_tag, 0.0)
    bad_key = msgspec.msgpack.encode([20, ["g", "smc", 0, "gke"], b"short"])
    m.receive(1, bad_key, 0.0)
    assert m.stats["member.dropped.invalid"] == 3
    m.receive(9, encode_message(Alive()), 0.0)  # not a member
    m.receive(0, encode_message(Alive()), 0.0)  # ourselves
    assert m.stats["member.dropped.bad_sender"] == 2


def test_flood_of_unknown_instances_stays_bounded() -> None:
    m = _member()
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    for k in range(20_000):
        msg = Decision((*smc_tag("g", k % 5000 + 1), "gke", "consensus"), b"v" * 200)
        flooder = 1 + k // 5000 % 2  # members 1 and 2 flood made-up instances
        m.receive(flooder, encode_message(msg), 1.0)
        key = PublicKey((*smc_tag("g", k % 5000 + 1), "gke"), bytes(32))
        m.receive(flooder, encode_message(key), 1.0)
        m.receive(1, encode_message(Decision(("x", k), b"v")), 1.0)  # another group's tag
        other = (*smc_tag(GroupId("g", k.to_bytes(32, "big")), 0), "gke", "consensus")
        m.receive(2, encode_message(Decision(other, b"v")), 1.0)  # another record of "g"
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(base, "filename"))
    tracemalloc.stop()
    assert m.demux.pending_count <= m.config.max_pending_instances * m.config.max_pending_per_instance
    assert m.stats["demux.dropped.sender_pending_quota"] > 0  # epochs 1..4: kept, up to a quota
    # epochs 5 and up are more than epoch_lookahead above the one we run: not even kept
    assert m.stats["member.dropped.epoch_beyond_lookahead"] == 2 * sum(k % 5000 + 1 > 4 for k in range(20_000))
    seen = [(ev.epoch, ev.sender) for ev in m.take_events() if isinstance(ev, InstanceSeen)]
    # once per (epoch, sender) within the lookahead; beyond it, one report of a sender's farthest
    # epoch per second (all these frames come at one instant: the first one beyond, epoch 5)
    assert sorted(seen) == [(e, s) for e in range(1, 6) for s in (1, 2)]
    assert m.stats["member.dropped.foreign_group"] == 20_000
    assert m.stats["member.dropped.other_record"] == 20_000
    hints = [o for o in m.take_outgoing() if o.data[1:2] == b"\x02"]  # RecordHello
    assert [o.to for o in hints] == [None, 2]  # our hello at start, one hint to member 2
    assert grown < 8 << 20, grown
    # the flooders used their own quotas only: member 3's frame for a real next epoch is kept
    kept = m.stats["demux.kept_for_later"]
    m.receive(3, encode_message(PublicKey((*smc_tag("g", 1), "gke"), bytes(range(32)))), 1.0)
    assert m.stats["demux.kept_for_later"] == kept + 1


def test_flood_of_held_smc_frames_is_bounded() -> None:
    from secchat.protocols.smc import SmcLimits
    from secchat.protocols.stack import StackConfig

    m = Member("g", 0, N, SIGNERS[0], VERIFIERS, random.Random(1), 0.0, StackConfig(smc=SmcLimits(max_held=100)))
    m.smc_init(TAG, 0.0)
    for seq in range(1000):
        m.receive(1, encode_message(SmcData(TAG, 1, 0, seq, b"n" * 12, b"c" * 100)), 1.0)
    assert len(m.smc(TAG)._held) == 100
    assert m.stats["smc.dropped.hold_full"] == 900


@pytest.mark.parametrize("payload", [b"", b"x" * 1000])
def test_encoding_is_canonical(payload: bytes) -> None:
    msg = SmcData(TAG, 1, 2, 3, b"n" * 12, payload)
    assert encode_message(decode_message(encode_message(msg))) == encode_message(msg)
