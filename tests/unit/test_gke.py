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


def _gke(me: int, n: int, seed: int) -> GroupKeyExchange:
    stats: Counter = Counter()
    cons = Consensus((*TAG, "consensus"), me, n, FakeDetector(), stats)
    return GroupKeyExchange(TAG, me, n, random.Random(seed), stats, cons, detector=FakeDetector())


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
