"""Local history and saved key-exchange state: encrypted at rest, bound to their conference."""

from __future__ import annotations

import sqlite3

import pytest

from secchat.app.history import HistoryError, HistoryStore, SavedState, StoredMessage


def test_messages_and_state_round_trip_and_are_encrypted(tmp_path):
    path = tmp_path / "history.sqlite3"
    store = HistoryStore(path, "pass one")
    store.add_message("room", StoredMessage("bob", 1700000000.5, "secret words", "delivered", 0))
    store.add_message("other", StoredMessage("cy", 1700000001.0, "elsewhere", "delivered", 2))
    state = SavedState(3, (2**255 + 7).to_bytes(32, "big"), b"s" * 32, "ab" * 8)
    store.save_state("room", state)
    store.close()

    again = HistoryStore(path, "pass one")
    assert [m.text for m in again.messages("room")] == ["secret words"]
    assert again.messages("room")[0].sent_at == 1700000000.5
    assert [m.epoch for m in again.messages("other")] == [2]
    assert again.load_state("room") == state
    assert again.load_state("other") is None
    again.forget_state("room")
    assert again.load_state("room") is None
    again.close()
    raw = path.read_bytes()
    assert b"secret words" not in raw and b"room" not in raw and b"bob" not in raw


def test_wrong_passphrase_is_refused(tmp_path):
    HistoryStore(tmp_path / "h.sqlite3", "right").close()
    with pytest.raises(HistoryError) as err:
        HistoryStore(tmp_path / "h.sqlite3", "wrong")
    assert err.value.code == "wrong_passphrase" and "wrong passphrase" in str(err.value)


def test_a_row_moved_to_another_conference_does_not_decrypt(tmp_path):
    path = tmp_path / "h.sqlite3"
    store = HistoryStore(path, "pw")
    store.add_message("a", StoredMessage("x", 1.0, "for a", "delivered", 0))
    store.add_message("b", StoredMessage("x", 1.0, "for b", "delivered", 0))
    conf_b = store._conf("b")
    store.close()
    with sqlite3.connect(path) as db:  # an attacker relabels a's row as b's
        db.execute("UPDATE messages SET conf = ? WHERE id = 1", (conf_b,))
    store = HistoryStore(path, "pw")
    assert [m.text for m in store.messages("b")] == ["for b"]
    store.close()


def test_incarnations_grow_even_when_the_clock_goes_back(tmp_path) -> None:
    from secchat.app.history import HistoryStore

    store = HistoryStore(tmp_path / "h.sqlite3", "passphrase")
    first = store.next_incarnation(1_000_000)
    assert store.next_incarnation(500_000) == first + 1  # clock stepped back: still larger
    assert store.next_incarnation(2_000_000) == 2_000_000


def test_new_files_use_the_key_store_kdf_and_old_files_still_open(tmp_path, monkeypatch):
    from secchat.app import history
    from secchat.passphrase import PASSPHRASE_KDF

    store = HistoryStore(tmp_path / "new.sqlite3", "a passphrase")
    assert store.kdf == PASSPHRASE_KDF  # the history is no cheaper to attack than the key store
    store.close()
    old = tmp_path / "old.sqlite3"
    monkeypatch.setattr(history, "PASSPHRASE_KDF", history.LEGACY_KDF)
    store = HistoryStore(old, "a passphrase")
    store.add_message("room", StoredMessage("bob", 1.0, "kept", "delivered", 0))
    store.close()
    monkeypatch.undo()
    db = sqlite3.connect(old)
    db.execute("DELETE FROM meta WHERE k = 'kdf'")  # as files written before it was stored
    db.commit()
    db.close()
    again = HistoryStore(old, "a passphrase")
    assert again.kdf == history.LEGACY_KDF
    assert [m.text for m in again.messages("room")] == ["kept"]
    again.close()
    with pytest.raises(HistoryError):
        HistoryStore(old, "another passphrase")
