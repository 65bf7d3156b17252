"""Local history and saved key-exchange state, encrypted at rest under the user's passphrase.

Why: the chat UI shows a conference's delivered messages again after a restart, and a member
that leaves and rejoins must restore its GKE contribution and session seed to get the same key.
Both live in one SQLite file under the profile.  Nothing in it is readable without the
passphrase: a random salt (stored in the file) and scrypt turn the passphrase into a master key
(with the same cost as the identity key store, :mod:`secchat.passphrase`, so neither file is the
cheaper one to attack; the parameters are stored in the file, and files from before they were
stored use the old N = 2^14: their rows are bound to conference ids the file does not hold, so
they cannot be re-encrypted in place);
HKDF splits it into an AES-256-GCM key for the rows and an HMAC key that names conferences
(so the file does not even list the conference ids).  Each row's associated data binds it to its
kind and conference, so rows cannot be moved between conferences unnoticed.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import msgspec

from ..codec import canonical
from ..crypto import Aead, CryptoError, hkdf, hmac_sha256
from ..net.journal import KeyExchangeState
from ..passphrase import PASSPHRASE_KDF, PassphraseKdf
from .conference import ConferenceState, Outgoing

__all__ = ["HistoryError", "HistoryStore", "SavedState", "StoredMessage"]

#: The KDF of history files written before the parameters were stored in them.
LEGACY_KDF = PassphraseKdf(n=1 << 14, r=8, p=1)
_CHECK = b"secchat history v1"


class HistoryError(Exception):
    """The history file cannot be used; ``code`` is ``wrong_passphrase`` or ``corrupt``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class StoredMessage(msgspec.Struct, frozen=True):
    sender: str
    sent_at: float
    text: str
    state: str
    epoch: int
    mid: int = 0  # the sender's message number (0: rows of before message numbers)


#: the one saved key-exchange state type (the write-ahead rule is :mod:`secchat.net.journal`'s)
SavedState = KeyExchangeState


def _encode_kdf(kdf: PassphraseKdf) -> bytes:
    return msgspec.msgpack.encode((kdf.n, kdf.r, kdf.p))


@dataclass(frozen=True)
class _Keys:
    aead: Aead
    index: bytes


def _derive(passphrase: str, salt: bytes, kdf: PassphraseKdf) -> _Keys:
    master = kdf.derive(passphrase, salt)
    return _Keys(
        Aead(hkdf(master, salt=b"secchat/history", info=b"aead", length=32)),
        hkdf(master, salt=b"secchat/history", info=b"index", length=32),
    )


class HistoryStore:
    """``history.sqlite3``: delivered messages per conference and saved GKE states."""

    def __init__(self, path: Path, passphrase: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL)")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, conf BLOB NOT NULL,"
                " nonce BLOB NOT NULL, ct BLOB NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS messages_conf ON messages (conf, id)")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS state (conf BLOB PRIMARY KEY, nonce BLOB NOT NULL, ct BLOB NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (conf BLOB NOT NULL, mid INTEGER NOT NULL,"
                " nonce BLOB NOT NULL, ct BLOB NOT NULL, PRIMARY KEY (conf, mid))"
            )
            os.chmod(self.path, 0o600)
            row = self._db.execute("SELECT v FROM meta WHERE k = 'salt'").fetchone()
            if row is None:
                salt = os.urandom(16)
                self._keys = _derive(passphrase, salt, PASSPHRASE_KDF)
                nonce = os.urandom(12)
                check = nonce + self._keys.aead.seal(nonce, _CHECK, b"check")
                params = _encode_kdf(PASSPHRASE_KDF)
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('salt', ?), ('check', ?), ('kdf', ?)",
                    (salt, check, params),
                )
                self._db.execute("COMMIT")
                row = self._db.execute("SELECT v FROM meta WHERE k = 'salt'").fetchone()
                if row[0] != salt:  # another process created it first
                    self._keys = _derive(passphrase, row[0], self._stored_kdf())
            else:
                self._keys = _derive(passphrase, row[0], self._stored_kdf())
            check = self._db.execute("SELECT v FROM meta WHERE k = 'check'").fetchone()
        except sqlite3.Error as exc:
            raise HistoryError("corrupt", f"the history file {self.path} is unusable: {exc}") from None
        try:
            if check is None or self._keys.aead.open(check[0][:12], check[0][12:], b"check") != _CHECK:
                raise CryptoError("bad check")
        except CryptoError:
            self._db.close()
            raise HistoryError("wrong_passphrase", "wrong passphrase for this profile's history") from None

    # ------------------------------------------------------------------ helpers

    def _stored_kdf(self) -> PassphraseKdf:
        row = self._db.execute("SELECT v FROM meta WHERE k = 'kdf'").fetchone()
        if row is None:
            return LEGACY_KDF
        try:
            n, r, p = msgspec.msgpack.decode(row[0], type=tuple[int, int, int])
            return PassphraseKdf(n, r, p)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            raise HistoryError(
                "corrupt", f"the history file {self.path} has unusable KDF parameters"
            ) from None

    @property
    def kdf(self) -> PassphraseKdf:
        """The passphrase KDF this file's keys come from."""
        return self._stored_kdf()

    def _conf(self, conference: str) -> bytes:
        return hmac_sha256(self._keys.index, conference.encode("utf-8"))

    def _seal(self, kind: str, conference: str, data: bytes) -> tuple[bytes, bytes]:
        nonce = os.urandom(12)
        return nonce, self._keys.aead.seal(nonce, data, canonical("history", kind, conference))

    def _open(self, kind: str, conference: str, nonce: bytes, ct: bytes) -> bytes:
        return self._keys.aead.open(nonce, ct, canonical("history", kind, conference))

    # ------------------------------------------------------------------ messages

    def add_message(self, conference: str, message: StoredMessage) -> None:
        nonce, ct = self._seal("message", conference, msgspec.msgpack.encode(message))
        self._db.execute("INSERT INTO messages (conf, nonce, ct) VALUES (?, ?, ?)", (self._conf(conference), nonce, ct))

    def messages(self, conference: str, limit: int = 10_000) -> list[StoredMessage]:
        """The conference's messages, oldest first (rows that fail to decrypt are skipped)."""
        rows = self._db.execute(
            "SELECT nonce, ct FROM (SELECT id, nonce, ct FROM messages WHERE conf = ? ORDER BY id DESC LIMIT ?)"
            " ORDER BY id",
            (self._conf(conference), limit),
        ).fetchall()
        out = []
        for nonce, ct in rows:
            try:
                out.append(msgspec.msgpack.decode(self._open("message", conference, nonce, ct), type=StoredMessage))
            except (CryptoError, msgspec.DecodeError, msgspec.ValidationError):
                continue
        return out

    # ------------------------------------------------------------------ key-exchange state

    def next_incarnation(self, now_us: int) -> int:
        """A number larger than every earlier run's of this profile: the wall clock in
        microseconds, or one more than the last when the clock went back (peers refuse frames of
        an incarnation older than one they have seen)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute("SELECT v FROM meta WHERE k = 'incarnation'").fetchone()
            last = int.from_bytes(row[0], "big") if row is not None else 0
            value = max(now_us, last + 1)
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('incarnation', ?)", (value.to_bytes(8, "big"),)
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return value

    def save_state(self, conference: str, state: SavedState) -> None:
        nonce, ct = self._seal("state", conference, msgspec.msgpack.encode(state))
        self._db.execute("INSERT OR REPLACE INTO state VALUES (?, ?, ?)", (self._conf(conference), nonce, ct))

    def load_state(self, conference: str) -> SavedState | None:
        row = self._db.execute("SELECT nonce, ct FROM state WHERE conf = ?", (self._conf(conference),)).fetchone()
        if row is None:
            return None
        try:
            return msgspec.msgpack.decode(self._open("state", conference, *row), type=SavedState)
        except (CryptoError, msgspec.DecodeError, msgspec.ValidationError):
            return None

    def forget_state(self, conference: str) -> None:
        self._db.execute("DELETE FROM state WHERE conf = ?", (self._conf(conference),))

    # ------------------------------------------------------------------ the conference core's state

    def load_conference(self, record: str) -> tuple[ConferenceState | None, list[Outgoing]]:
        """The conference core's saved state and outbox for the record digest ``record`` (hex)."""
        name = f"core/{record}"
        conf = self._conf(name)
        state = None
        row = self._db.execute("SELECT nonce, ct FROM state WHERE conf = ?", (conf,)).fetchone()
        if row is not None:
            try:
                state = msgspec.msgpack.decode(self._open("core", name, *row), type=ConferenceState)
            except (CryptoError, msgspec.DecodeError, msgspec.ValidationError):
                state = None
        outbox = []
        for mid, nonce, ct in self._db.execute("SELECT mid, nonce, ct FROM outbox WHERE conf = ? ORDER BY mid", (conf,)):
            try:
                out = msgspec.msgpack.decode(self._open("outbox", f"{name}/{mid}", nonce, ct), type=Outgoing)
            except (CryptoError, msgspec.DecodeError, msgspec.ValidationError):
                continue
            if out.mid == mid:
                outbox.append(out)
        return state, outbox

    def save_conference(
        self,
        conference: str,
        record: str,
        messages: list[StoredMessage],
        state: ConferenceState | None,
        outbox_add: tuple[Outgoing, ...] | list[Outgoing] = (),
        outbox_drop: int = 0,
    ) -> None:
        """One transaction: delivered/sent ``messages`` into the history, and the core's state
        and outbox changes -- a message and the mark that it was delivered are durable together
        (a crash never makes a delivered message arrive again, nor a kept one vanish)."""
        name = f"core/{record}"
        conf = self._conf(name)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for message in messages:
                nonce, ct = self._seal("message", conference, msgspec.msgpack.encode(message))
                self._db.execute("INSERT INTO messages (conf, nonce, ct) VALUES (?, ?, ?)",
                                 (self._conf(conference), nonce, ct))
            if state is not None:
                nonce, ct = self._seal("core", name, msgspec.msgpack.encode(state))
                self._db.execute("INSERT OR REPLACE INTO state VALUES (?, ?, ?)", (conf, nonce, ct))
            for out in outbox_add:
                nonce, ct = self._seal("outbox", f"{name}/{out.mid}", msgspec.msgpack.encode(out))
                self._db.execute("INSERT OR REPLACE INTO outbox VALUES (?, ?, ?, ?)", (conf, out.mid, nonce, ct))
            if outbox_drop:
                self._db.execute("DELETE FROM outbox WHERE conf = ? AND mid <= ?", (conf, outbox_drop))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()
