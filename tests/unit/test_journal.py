"""The write-ahead rule (net/journal.py): what a start does with what it finds on disk."""

from __future__ import annotations

import random

import pytest

from secchat.net.journal import UNREADABLE, KeyExchangeState, StateDir, StateError, plan_join

RECORD = b"r" * 32


def _saved(epoch: int, decision: bytes = b"", record: bytes = RECORD) -> KeyExchangeState:
    return KeyExchangeState(epoch, (7).to_bytes(32, "big"), b"s" * 32, None, record, decision)


def test_a_first_start_saves_before_it_votes():
    plan = plan_join(None, RECORD, None, random.Random(1))
    assert plan.epoch == 0 and not plan.restored and not plan.abstains
    assert plan.save_first is not None and plan.save_first.epoch == 0 and plan.save_first.record == RECORD
    assert plan.restore["resume"] is False
    assert plan.restore["contribution"] == int.from_bytes(plan.save_first.contribution, "big")


def test_a_restart_restores_and_never_votes_again():
    plan = plan_join(_saved(3, b"decided"), RECORD, None, random.Random(1))
    assert plan.epoch == 3 and plan.restored and plan.save_first is None
    assert plan.restore == {"resume": True, "contribution": 7, "session_seed": b"s" * 32, "decision": b"decided"}


@pytest.mark.parametrize("saved", [UNREADABLE, _saved(5)])
def test_an_unreadable_or_later_state_abstains(saved):
    plan = plan_join(saved, RECORD, 2, random.Random(1))
    assert plan.abstains and plan.restore["resume"] is True and not plan.restored
    if saved is not UNREADABLE:
        assert plan.save_first is None  # the later epoch's state is kept


def test_another_records_state_is_never_used():
    plan = plan_join(_saved(0, b"x", record=b"o" * 32), RECORD, None, random.Random(1))
    assert not plan.restored and plan.save_first is not None and plan.save_first.record == RECORD


def test_state_dir_round_trip_and_refuses_what_it_cannot_read(tmp_path):
    store = StateDir(tmp_path / "state", b"k" * 32)
    assert store.load_state("ab") is None
    store.save_state("ab", _saved(1))
    assert store.load_state("ab") == _saved(1)
    assert oct((tmp_path / "state").stat().st_mode & 0o777) == "0o700"
    with pytest.raises(StateError):  # another member's key
        StateDir(tmp_path / "state", b"o" * 32).load_state("ab")
    [path] = (tmp_path / "state").glob("*.state")
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    with pytest.raises(StateError):  # tampered
        store.load_state("ab")
