from __future__ import annotations

from collections import Counter

from secchat.protocols.consensus import Consensus, State, majority
from secchat.protocols.events import Send
from secchat.protocols.messages import Abstain, Ack, Decision, Estimate, Nack, Proposal

from .wire import ConsensusWire, FakeDetector

TAG = ("t", "consensus")


def test_majority() -> None:
    assert [majority(n) for n in (1, 2, 3, 4, 5, 7, 21)] == [1, 2, 2, 3, 3, 4, 11]


def test_all_propose_all_decide_the_same_value_with_thesis_message_count() -> None:
    n = 7
    w = ConsensusWire(n)
    for i in range(n):
        w.propose(i, b"v%d" % i)
    w.run()
    assert len(w.decided) == n and len(set(w.decided.values())) == 1
    assert set(w.decided.values()) <= {b"v%d" % i for i in range(n)}
    # one round (R = 1): (n-1) estimates + (n-1) proposals + (n-1) acks + decision relays
    assert w.sent <= 3 * n + n * n


def test_crashed_coordinator_is_suspected_and_the_next_round_decides() -> None:
    w = ConsensusWire(5)
    w.crashed.add(0)
    for i in range(1, 5):
        w.propose(i, b"v%d" % i)
    w.run()
    assert not w.decided  # everybody waits for coordinator 0: no timeout decides anything
    for i in range(1, 5):
        w.suspect(i, 0)
    w.run()
    assert set(w.decided) == {1, 2, 3, 4} and len(set(w.decided.values())) == 1


def test_minority_of_proposers_never_decides_but_majority_does() -> None:
    w = ConsensusWire(5)
    w.propose(0, b"a")
    w.propose(1, b"b")
    w.run()
    assert not w.decided
    w.propose(2, b"c")
    w.run()
    assert set(w.decided) == {0, 1, 2}


def test_decision_received_before_proposing_is_output_on_propose() -> None:
    w = ConsensusWire(3)
    node = w.nodes[2]
    assert node.receive(0, Decision(TAG, b"x")) == []
    assert node.state is State.IDLE
    w.apply(2, node.propose(b"mine"))
    assert w.decided == {2: b"x"}


def test_decided_member_answers_a_late_member() -> None:
    w = ConsensusWire(5)
    w.crashed.add(4)
    for i in range(4):
        w.propose(i, b"v%d" % i)
    w.run()
    value = w.decided[0]
    node = w.nodes[0]
    out = node.receive(4, Estimate(TAG, 0, 0, b"late"))  # member 4 comes up late
    assert [getattr(ev, "message", None) for ev in out] == [Decision(TAG, value)]
    assert node.receive(4, Decision(TAG, value)) == []  # a relay of the decision needs no answer


def test_messages_that_do_not_fit_are_dropped_and_counted() -> None:
    w = ConsensusWire(3)
    w.propose(1, b"v")
    node, stats = w.nodes[1], w.stats[1]
    assert node.receive(2, Proposal(TAG, 0, b"forged")) == []  # round 0's coordinator is 0
    assert node.receive(2, Estimate(TAG, 0, 0, b"x")) == []  # member 1 does not coordinate round 0
    assert node.receive(2, Ack(TAG, 3)) == []
    assert stats["consensus.dropped.proposal_not_from_coordinator"] == 1
    assert stats["consensus.dropped.not_coordinator"] == 2
    assert node.estimate == b"v" and node.round == 0


def test_far_future_rounds_are_bounded() -> None:
    n = 3
    w = ConsensusWire(n)
    node = w.nodes[1]
    w.propose(1, b"v")
    for r in range(1, 100_000, n):  # rounds coordinated by member 1, far ahead
        node.receive(2, Estimate(TAG, r, 0, b"x" * 100))
        node.receive(2, Nack(TAG, r))
    assert len(node._boxes) <= node.WINDOW_TURNS * n
    assert len(node._far_estimates) <= n and len(node._far_replies) <= n


def test_jump_to_a_later_proposal_adopts_and_acks() -> None:
    w = ConsensusWire(4)
    w.propose(3, b"mine")
    out = w.nodes[3].receive(2, Proposal(TAG, 6, b"theirs"))  # 6 mod 4 == 2
    assert w.nodes[3].estimate == b"theirs" and w.nodes[3].ts == 7
    assert any(getattr(ev, "message", None) == Ack(TAG, 6) for ev in out)
    assert w.nodes[3].round == 7


def test_a_jump_answers_the_coordinators_of_the_rounds_it_leaves() -> None:
    """Jumping from round 1 to round 7 (n = 5): coordinator 1 of the round left gets a nack, each
    coordinator of a skipped round but ours an estimate (what we held before) and a nack -- as if
    we had gone through those rounds suspecting them.  Otherwise a coordinator that is up waits
    for our reply for ever, and with only t members correct, so does everybody after it."""
    n = 5
    detector = FakeDetector()
    node = Consensus(TAG, 3, n, detector, Counter())
    node.propose(b"mine")
    detector.suspected.add(0)
    node.suspicion_changed()  # nack round 0, enter round 1: estimate sent, waiting for 1's proposal
    assert node.round == 1 and not node._replied
    out = node.receive(2, Proposal(TAG, 7, b"theirs"))  # 7 mod 5 == 2
    sent = [(ev.to, type(ev.message).__name__, ev.message.round) for ev in out if isinstance(ev, Send)]
    skipped = [(q % n, kind, q) for q in (2, 4, 5, 6) for kind in ("Estimate", "Nack")]  # 3 is ours
    assert sent == [(1, "Nack", 1), *skipped, (2, "Ack", 7)]
    estimates = [ev.message for ev in out if isinstance(ev, Send) and isinstance(ev.message, Estimate)]
    assert all((e.value, e.ts) == (b"mine", 0) for e in estimates)
    assert node.round == 8 and node.estimate == b"theirs"


def test_a_coordinator_that_jumps_from_its_own_round_sends_itself_nothing() -> None:
    """Coordinator 3 proposed round 3 and waits for replies; a proposal of round 5 moves it on:
    the skipped round 4 gets its estimate (the value it proposed, ts 4) and a nack, round 3 none."""
    n = 5
    node = Consensus(TAG, 3, n, FakeDetector(), Counter())
    node.propose(b"mine")
    node.receive(0, Proposal(TAG, 0, b"v"))  # ack round 0 and go on to round 1
    node.receive(1, Proposal(TAG, 1, b"v"))
    node.receive(2, Proposal(TAG, 2, b"v"))  # now in round 3, which we coordinate
    for peer in (0, 1):
        node.receive(peer, Estimate(TAG, 3, 3, b"v"))
    assert node.round == 3 and node._proposed
    out = node.receive(0, Proposal(TAG, 5, b"v"))
    sent = [(ev.to, ev.message) for ev in out if isinstance(ev, Send)]
    skipped = [(4, Estimate(TAG, 4, 4, b"v")), (4, Nack(TAG, 4))]
    assert sent == [*skipped, (0, Ack(TAG, 5)), (1, Estimate(TAG, 6, 6, b"v"))]


def test_skipping_hundreds_of_suspected_coordinators_on_peer_input_is_a_loop_not_a_recursion() -> None:
    """n = 1001, members 0..499 abstain (peer input): the Abstain of coordinator 0, arriving
    last, makes member 1000 skip 500 rounds at once.  By recursion that raised RecursionError
    (three frames per round, limit 1000); as a loop it ends in round 500, whose coordinator is
    up, having sent each skipped coordinator its estimate and a nack."""
    n = 1001
    node = Consensus(TAG, 1000, n, FakeDetector(), Counter())
    node.propose(b"v")
    for peer in range(1, 500):
        assert node.receive(peer, Abstain(TAG)) == []  # coordinator 0 is still up: round 0 waits
    assert node.round == 0
    out = node.receive(0, Abstain(TAG))
    assert node.round == 500 and node.state is State.RUNNING
    sent = [(ev.to, type(ev.message).__name__, ev.message.round) for ev in out if isinstance(ev, Send)]
    skipped = [(r, kind, r) for r in range(500) for kind in ("Estimate", "Nack")]
    assert sent == [*skipped[1:], (500, "Estimate", 500)]  # round 0's estimate went at propose


def test_a_coordinator_that_skips_rounds_by_nacks_also_loops() -> None:
    """The other path of round skipping: the coordinator of round r collects t nacks, moves on, and
    finds every later coordinator suspected (here by its detector)."""
    n = 1001
    detector = FakeDetector()
    node = Consensus(TAG, 0, n, detector, Counter())
    node.propose(b"v")
    detector.suspected.update(range(1, 700))
    for peer in range(700, 700 + majority(n) - 1):
        node.receive(peer, Estimate(TAG, 0, 0, b"w"))
    for peer in range(700, 700 + majority(n) - 1):
        node.receive(peer, Nack(TAG, 0))
    assert node.round == 700 and node.state is State.RUNNING
