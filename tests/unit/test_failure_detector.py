from __future__ import annotations

import pytest

from secchat.protocols.events import Broadcast, PeerRestored, PeerSuspected, Send, SetTimer
from secchat.protocols.failure_detector import DetectorConfig, FailureDetector
from secchat.protocols.messages import Alive


def test_config_states_its_constraints() -> None:
    with pytest.raises(ValueError):
        DetectorConfig(period=1.0, initial_timeout=0.5)


def test_silent_peer_is_suspected_then_restored_with_a_longer_timeout() -> None:
    fd = FailureDetector(0, 3, DetectorConfig(period=0.2, initial_timeout=1.0, backoff=1.5), 0.0)
    out = fd.start(0.0)
    assert isinstance(out[0], Broadcast)
    timer = [ev for ev in out if isinstance(ev, SetTimer)][-1]
    assert timer.deadline == pytest.approx(0.2)
    fd.heard_from(1, 0.9)
    out = fd.handle_timer(1.0)
    assert PeerSuspected(2) in out and not fd.suspects(1)
    assert fd.heard_from(2, 1.1) == [PeerRestored(2)]
    assert fd.timeout_of(2) == pytest.approx(1.5)
    assert fd.heard_from(2, 1.2) == []


def test_any_traffic_replaces_the_heartbeat() -> None:
    fd = FailureDetector(0, 3, DetectorConfig(), 0.0)
    fd.start(0.0)
    fd.sent_to(1, 0.15)
    out = fd.handle_timer(0.2)
    assert [ev for ev in out if isinstance(ev, Send | Broadcast)] == [Send(2, out[0].message)]


def test_timeout_growth_is_capped() -> None:
    fd = FailureDetector(0, 2, DetectorConfig(initial_timeout=1.0, backoff=10.0, max_timeout=3.0), 0.0)
    fd.start(0.0)
    for k in range(5):
        fd.handle_timer(100.0 * (k + 1))
        fd.heard_from(1, 100.0 * (k + 1))
    assert fd.timeout_of(1) == 3.0


def test_large_groups_stretch_the_period_to_keep_the_heartbeat_rate() -> None:
    base = DetectorConfig()
    assert base.scaled(7) is base
    big = base.scaled(100)
    assert big.period == pytest.approx(1.0) and big.initial_timeout == pytest.approx(5.0)
    assert big.period * 20 == pytest.approx(base.period * 100)  # n/period per member is the same


def _beats(out: list) -> list:
    return [ev for ev in out if isinstance(ev, Send | Broadcast)]


def test_a_calm_member_beats_slowly_and_says_so_once_to_each_peer() -> None:
    config = DetectorConfig(period=0.2, calm_period=2.0)
    fd = FailureDetector(0, 3, config, 0.0)
    fd.start(0.0)
    assert fd.set_calm(True, 0.1) == []  # told with the next beat
    out = fd.handle_timer(0.2)
    assert _beats(out) == [Broadcast(Alive(calm=True))]
    fd.sent_to(None, 0.3)  # traffic stands for the beat from now on: the pace was told
    assert _beats(fd.handle_timer(2.2)) == []
    timer = [ev for ev in fd.handle_timer(2.21) if isinstance(ev, SetTimer)][-1]
    assert timer.deadline == pytest.approx(4.2)  # next beat a calm period later (before expiries)
    assert _beats(fd.handle_timer(4.2)) == [Broadcast(Alive(calm=True))]


def test_becoming_urgent_beats_at_once_and_tells_every_peer() -> None:
    fd = FailureDetector(0, 3, DetectorConfig(), 0.0)
    fd.start(0.0)
    fd.set_calm(True, 0.0)
    fd.handle_timer(0.2)
    fd.sent_to(1, 0.5)  # recent traffic does not tell the change of pace
    out = fd.set_calm(False, 0.6)
    assert _beats(out) == [Broadcast(Alive(calm=False))]
    assert fd.set_calm(False, 0.7) == []


def test_a_calm_peer_is_judged_by_its_slow_pace_an_urgent_one_by_the_fast() -> None:
    config = DetectorConfig(period=0.2, initial_timeout=1.0, calm_period=2.0)
    fd = FailureDetector(0, 3, config, 0.0)
    fd.start(0.0)
    fd.heard_from(1, 0.5)
    fd.paced(1, True)
    fd.heard_from(2, 0.5)
    out = fd.handle_timer(1.6)
    assert PeerSuspected(2) in out and not fd.suspects(1)
    assert not fd.suspects(1) and fd.handle_timer(5.09) and not fd.suspects(1)
    out = fd.handle_timer(5.11)  # 0.5 + Δ 1.0 + 2·(2.0 − 0.2)
    assert PeerSuspected(1) in out


def test_a_peer_that_starts_is_told_at_once_that_we_are_calm() -> None:
    fd = FailureDetector(0, 3, DetectorConfig(), 0.0)
    fd.start(0.0)
    assert fd.greeted(1, 0.0) == []  # urgent: what it assumes anyway
    fd.paced(1, True)
    fd.set_calm(True, 0.1)
    fd.handle_timer(0.2)
    assert fd.greeted(1, 5.0) == [Send(1, Alive(calm=True))]
    fd.heard_from(1, 5.0)
    out = fd.handle_timer(5.0 + 1.0 + 0.01)  # it restarted urgent: judged by the fast pace
    assert PeerSuspected(1) in out


def test_a_restored_peer_is_told_our_pace_again() -> None:
    fd = FailureDetector(0, 2, DetectorConfig(), 0.0)
    fd.start(0.0)
    fd.set_calm(True, 0.0)
    fd.handle_timer(0.2)
    fd.sent_to(1, 1.0)
    assert PeerSuspected(1) in fd.handle_timer(1.1)
    fd.heard_from(1, 1.5)
    fd.sent_to(1, 1.6)
    assert _beats(fd.handle_timer(2.2)) == [Broadcast(Alive(calm=True))]


def test_calm_period_scales_with_the_group_and_is_not_shorter_than_the_period() -> None:
    with pytest.raises(ValueError):
        DetectorConfig(period=0.5, calm_period=0.2)
    assert DetectorConfig().scaled(200).calm_period == pytest.approx(20.0)


def test_a_group_with_its_key_heartbeats_at_the_calm_pace_and_still_notices_a_crash() -> None:
    from secchat.protocols.stack import smc_tag
    from secchat.sim.simulator import Simulation

    n, tag = 5, smc_tag("sim")
    sim = Simulation(n, 3)
    for i in range(n):
        sim.start(i, lambda m, now: m.smc_init(tag, now))
    sim.run(5.0)
    members = [node.member for node in sim.nodes]
    assert all(m.smc(tag).established and m.detector.calm for m in members)
    before = sim.messages_sent
    sim.run(25.0)
    idle = sim.messages_sent - before
    # 20 s of a calm group: n(n−1) frames per 2 s calm period, SMC status included (heartbeats
    # at the fast pace would be ten times as many)
    assert 0.8 * n * (n - 1) * 10 <= idle <= 1.2 * n * (n - 1) * 10
    assert not any(m.detector.suspected for m in members)
    sim.crash(4)
    sim.run(25.0 + 1.0 + 2 * 2.0 + 0.1)  # Δ plus two calm periods after the last beat at most
    assert all(m.detector.suspects(4) for m in members[:4])
