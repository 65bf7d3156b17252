from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secchat.protocols.consensus import Consensus
from secchat.protocols.events import Send
from secchat.protocols.gke import (
    MODULUS,
    GroupKeyExchange,
    decode_proposal,
    encode_proposal,
    key_formula,
    neighbours,
)
from secchat.protocols.messages import Contribution, PublicKey

from .wire import FakeDetector

TAG = ("c", "smc", 0, "gke")


@given(
    st.lists(st.integers(min_value=0, max_value=MODULUS - 1), min_size=1, max_size=60),
    st.integers(min_value=0),
)
def test_thesis_key_formula_equals_the_sum_of_contributions(ys: list[int], pick: int) -> None:
    t = len(ys)
    diffs = [(ys[k] - ys[(k + 1) % t]) % MODULUS for k in range(t)]
    m = pick % t
    assert key_formula(diffs, m, ys[m]) == sum(ys) % MODULUS


def _gke(me: int, n: int, seed: int, detector: FakeDetector | None = None) -> GroupKeyExchange:
    stats: Counter = Counter()
    detector = detector or FakeDetector()
    cons = Consensus((*TAG, "consensus"), me, n, detector, stats)
    return GroupKeyExchange(TAG, me, n, random.Random(seed), stats, cons, detector=detector)


def _exchange(a: GroupKeyExchange, b: GroupKeyExchange) -> Contribution:
    (reply,) = [ev for ev in b.receive(a.me, PublicKey(TAG, a.public_key), 0.0) if isinstance(ev, Send)]
    assert reply.to == a.me
    return reply.message


def test_contribution_is_sealed_to_the_requester_only() -> None:
    a, b, c = _gke(0, 3, 1), _gke(1, 3, 2), _gke(2, 3, 3)
    contribution = _exchange(a, b)
    a.receive(1, contribution, 0.0)
    assert a.known_contributions()[1] == b.contribution
    # c cannot open what b sealed for a, and a tampered copy is refused
    c.receive(1, contribution, 0.0)
    assert 1 not in c.known_contributions()
    assert c._stats["gke.dropped.bad_contribution"] == 1
    bad = Contribution(TAG, contribution.key, contribution.nonce, bytes(len(contribution.sealed)))
    d = _gke(0, 3, 1)
    d.receive(1, bad, 0.0)
    assert 1 not in d.known_contributions()


def test_every_public_key_is_answered_so_restarted_members_catch_up() -> None:
    a, b = _gke(0, 3, 1), _gke(1, 3, 2)
    assert b.receive(0, PublicKey(TAG, a.public_key), 0.0)
    assert b.receive(0, PublicKey(TAG, a.public_key), 0.0)  # restarted with its saved state
    a2 = _gke(0, 3, 9)  # restarted with a fresh session key
    a2.receive(1, _exchange(a2, b), 0.0)
    assert a2.known_contributions()[1] == b.contribution


def test_low_order_public_key_is_refused() -> None:
    b = _gke(1, 3, 2)
    assert b.receive(0, PublicKey(TAG, bytes(32)), 0.0) == []
    assert b._stats["gke.dropped.bad_public_key"] == 1


@pytest.mark.parametrize(
    "value",
    [b"", b"\x90", encode_proposal([(0, b"k" * 8, 1)]), encode_proposal([(0, b"k" * 8, 1), (0, b"k" * 8, 2)]),
     encode_proposal([(0, b"k" * 8, 1), (9, b"k" * 8, 2)])],
)
def test_malformed_decisions_are_refused(value: bytes) -> None:
    with pytest.raises(ValueError):
        decode_proposal(value, 3, 2)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 21, 100, 101, 1001])
def test_ring_neighbours_are_symmetric_and_enough_for_t(n: int) -> None:
    t = n // 2 + 1
    ring = {i: {*neighbours(i, n)[0], *neighbours(i, n)[1]} for i in range(n)}
    for i, near in ring.items():
        assert i not in near and len(near) >= t - 1
        assert all(i in ring[j] for j in near)  # j expects i's contribution when i expects j's
    if n >= 21:  # about half of all pairs
        assert sum(map(len, ring.values())) <= 0.55 * n * (n - 1)


def _sent_keys(events) -> list[int]:
    return sorted(ev.to for ev in events if isinstance(ev, Send) and isinstance(ev.message, PublicKey))


def test_keys_go_to_the_ring_successors_and_further_only_when_an_expected_peer_is_suspected() -> None:
    n, detector = 9, FakeDetector()  # t = 5, k = 2: neighbours 1, 2 (after) and 8, 7 (before)
    a = _gke(0, n, 1, detector)
    assert _sent_keys(a.init(0.0)) == [1, 2]
    assert a.suspicion_changed() == []
    detector.suspected = {7}  # 4 expected, one suspected: 1 + 3 < t, ask the nearest other
    assert _sent_keys(a.suspicion_changed()) == [3]
    assert a.suspicion_changed() == []  # asked already: nothing more
    detector.suspected = {7, 8, 1}  # expected 2, 3 (and asked 3): ask two more
    assert _sent_keys(a.suspicion_changed()) == [4, 6]
    detector.suspected = set()  # wrongly suspected members still count when they answer
    for peer in (1, 2, 3, 7):
        b = _gke(peer, n, 10 + peer)
        a.receive(peer, _exchange(a, b), 0.0)
    assert len(a.known_contributions()) == 5 and a.state.value == "proposed"


def test_a_rejoining_member_sends_its_key_to_all_its_neighbours() -> None:
    stats: Counter = Counter()
    detector = FakeDetector()
    cons = Consensus((*TAG, "consensus"), 0, 9, detector, stats)
    a = GroupKeyExchange(TAG, 0, 9, random.Random(1), stats, cons, detector=detector, contribution=5, session_seed=bytes(32))
    assert _sent_keys(a.init(0.0)) == [1, 2, 7, 8]


def test_a_peer_back_from_a_restart_is_sent_our_key_again_while_we_wait_for_it() -> None:
    """A restarted member lost the session key we sent its earlier run; it is alive, so the
    detector never makes us ask anyone else in its place: we send it again (and only while we
    still wait for that member's contribution)."""
    n = 5  # t = 3: we ask 1 (after); 4 (before) asks us
    a = _gke(0, n, 1)
    assert _sent_keys(a.init(0.0)) == [1]
    assert _sent_keys(a.peer_back(1)) == [1]
    assert a.peer_back(2) == []  # not a member we wait for
    b = _gke(1, n, 11)
    a.receive(1, _exchange(a, b), 0.0)
    assert a.peer_back(1) == []  # its contribution came: nothing to ask
    assert a._stats["gke.asked_again"] == 1
