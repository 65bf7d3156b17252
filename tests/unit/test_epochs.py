"""The stack and the epochs it does not run: what it keeps, releases and reports.

Frames for another epoch of our group arrive before we join it (the others re-keyed), or after
we closed it (a member behind us).  The stack keeps the first (bounded) and says so once per
(epoch, sender) with ``InstanceSeen``; it drops the second and says so with
``ClosedEpochFrame``; what it kept for an epoch that was skipped or closed is released.
"""

from __future__ import annotations

import random

from secchat.crypto import Signer
from secchat.protocols.demux import MAX_PENDING_PER_SENDER
from secchat.protocols.events import ClosedEpochFrame, InstanceSeen
from secchat.protocols.messages import Decision, PublicKey, SmcStatus, encode_message
from secchat.protocols.stack import GroupId, Member, StackConfig, consensus_tag, gke_tag, smc_tag

N = 4
SIGNERS = [Signer(bytes([i + 1]) * 32) for i in range(N)]
VERIFIERS = [s.verifier() for s in SIGNERS]
GID = GroupId.unbound("g")


def _member(config: StackConfig | None = None) -> Member:
    m = Member(GID, 0, N, SIGNERS[0], VERIFIERS, random.Random(1), 0.0, config)
    m.smc_init(smc_tag(GID, 0), 0.0)
    m.take_events()
    return m


def _frames(epoch: int) -> list[bytes]:
    """One frame for each of the three instances of ``epoch``."""
    smc = smc_tag(GID, epoch)
    return [
        encode_message(SmcStatus(smc, 0, 3, b"c" * 32, "f")),
        encode_message(PublicKey(gke_tag(smc), bytes(32))),
        encode_message(Decision(consensus_tag(gke_tag(smc)), b"v")),
    ]


def _of(m: Member, kind: type) -> list[tuple[int, int]]:
    return [(ev.epoch, ev.sender) for ev in m.take_events() if isinstance(ev, kind)]


def test_a_newer_epoch_is_reported_once_per_sender_and_kept_for_when_we_join_it() -> None:
    m = _member()
    for sender in (1, 2, 1):
        for data in _frames(1) * 2:
            m.receive(sender, data, 1.0)
    events = m.take_events()
    assert events == [InstanceSeen(GID.prefix, 1, 1), InstanceSeen(GID.prefix, 1, 2)]
    assert m.demux.pending_count == 18
    m.smc_init(smc_tag(GID, 1), 1.0)  # we follow: what was kept is replayed, nothing more reported
    assert m.demux.pending_count == 0
    for data in _frames(1):
        m.receive(3, data, 1.0)
    assert _of(m, InstanceSeen) == []


def test_epochs_too_far_ahead_are_dropped_counted_and_reported_once_a_second() -> None:
    m = _member(StackConfig(epoch_lookahead=4))
    for epoch in range(1, 2000):  # a member flooding re-keys
        for data in _frames(epoch):
            m.receive(1, data, 1.0)
    # the lookahead's epochs, then the first one beyond: further ones wait a second
    assert _of(m, InstanceSeen) == [(e, 1) for e in range(1, 6)]
    assert m.stats["member.dropped.epoch_beyond_lookahead"] == 3 * (2000 - 5)
    assert m.demux.pending_count <= MAX_PENDING_PER_SENDER


def test_a_frame_for_a_closed_epoch_is_dropped_and_reported_once_per_epoch_and_sender() -> None:
    m = _member()
    m.smc_init(smc_tag(GID, 1), 1.0)
    m.close_instance(smc_tag(GID, 0))
    m.take_events()
    for sender in (1, 1, 2):
        for data in _frames(0):
            m.receive(sender, data, 2.0)
    assert _of(m, ClosedEpochFrame) == [(0, 1), (0, 2)]
    assert m.stats["demux.dropped.closed_instance"] == 9


def test_frames_kept_for_skipped_epochs_are_released_and_the_next_epoch_is_kept_again() -> None:
    """Issue 9: frames of epochs that were skipped stayed in the pending area, filled their
    sender's quota, and that sender's frames for the next epoch were then dropped."""
    m = _member()
    for epoch in (1, 2):  # we will never run these: the others went on to epoch 3
        for data in _frames(epoch):
            m.receive(1, data, 1.0)
    kept = m.stats["demux.kept_for_later"]
    for data in _frames(3):
        m.receive(1, data, 1.0)
    assert m.stats["demux.kept_for_later"] == kept  # the quota is full: epoch 3 is refused
    assert m.stats["demux.dropped.sender_pending_quota"] == 2 + 3  # the rest of epoch 2, and epoch 3
    released = m.release_epochs_below(3)
    assert released == MAX_PENDING_PER_SENDER and m.demux.pending_count == 0
    for data in _frames(3):
        m.receive(1, data, 1.0)
    assert m.stats["demux.kept_for_later"] == kept + 3  # now kept
    m.take_events()
    for data in _frames(2):  # a skipped epoch counts as closed from now on
        m.receive(2, data, 1.0)
    assert _of(m, ClosedEpochFrame) == [(2, 2)] and m.demux.pending_count == 3
    assert m.smc(smc_tag(GID, 0)) is not None  # running instances are left alone


def test_closing_a_skipped_epoch_releases_what_was_kept_for_it() -> None:
    m = _member()
    for data in _frames(1):
        m.receive(1, data, 1.0)
    assert m.demux.pending_count == 3
    m.close_instance(smc_tag(GID, 1))
    assert m.demux.pending_count == 0


def test_bad_epochs_are_refused_and_change_nothing() -> None:
    import pytest

    m = _member()
    for bad in (-1, 1.5, "2"):
        with pytest.raises(ValueError):
            m.release_epochs_below(bad)  # type: ignore[arg-type]
    assert m._epoch_floor == 0
    with pytest.raises(ValueError):
        m.close_instance(smc_tag(GroupId.unbound("other"), 0))


def test_a_member_far_behind_hears_where_the_others_are() -> None:
    """Frames beyond the lookahead are not kept, but the farthest epoch each sender shows is
    reported (a new high, at most once a second per sender): a member away across many
    re-keys can follow."""
    m = _member(StackConfig(epoch_lookahead=4))
    for epoch, now in ((40, 1.0), (40, 1.1), (30, 2.5), (41, 1.5), (41, 2.6), (42, 2.7)):
        for data in _frames(epoch):
            m.receive(1, data, now)
    assert _of(m, InstanceSeen) == [(40, 1), (41, 1)]
    assert m.demux.pending_count == 0  # nothing kept for them
