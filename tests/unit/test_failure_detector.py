from __future__ import annotations

import pytest

from secchat.protocols.events import Broadcast, PeerRestored, PeerSuspected, Send, SetTimer
from secchat.protocols.failure_detector import DetectorConfig, FailureDetector


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
