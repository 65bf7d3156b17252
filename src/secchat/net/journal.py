"""What a member remembers across restarts so that it never votes twice: the write-ahead state.

Why: Cachin–Strobl's key exchange is safe because consensus decides one contribution list per
session -- and Chandra–Toueg is safe only if no member votes twice in one instance.  A process
restarted without memory *is* a member voting twice: in a partition it can help decide a second
key for the same epoch (issue 14: two keys for one conference).  So every driver (the chat app,
``secchat join``, the member process, ``secchat cluster``) follows one rule, implemented once in
:meth:`secchat.net.node.Node.join`:

The rule is :func:`plan_join` (pure: the node and the simulator's restart checks both use it):

1. before anything of an epoch's key exchange is sent, the member's contribution and session
   seed for that epoch are *durable* (:class:`KeyExchangeState`, written and synced);
2. a start that finds such a state for the same record and epoch restores it and does not vote
   again (it abstains; with the saved decision it has the same key at once);
3. a state that exists but cannot be read, or is of a later epoch than the one joined, means
   "I may have voted here": the member abstains;
4. without a store there is no key exchange (the node refuses to start one).

The state is stored per conference record (its digest), never per conference id alone, so a
record that replaced another under the same id never inherits its state.  Two stores exist: the
chat app's encrypted history file (:class:`secchat.app.history.HistoryStore`) and, for member
processes, :class:`StateDir`: one file per record, AES-GCM under a key derived from the member's
own private key (no passphrase KDF per start), replaced atomically.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec
from cryptography.hazmat.primitives import serialization

from ..codec import canonical
from ..crypto import Aead, CryptoError, Rng, hkdf
from ..pki import write_file_atomically

__all__ = [
    "UNREADABLE",
    "JoinPlan",
    "KeyExchangeState",
    "MemoryStateStore",
    "StateDir",
    "StateError",
    "StateStore",
    "established_state",
    "plan_join",
]


class StateError(Exception):
    """A saved state exists but cannot be used (unreadable, corrupt, or of another key)."""


class KeyExchangeState(msgspec.Struct, frozen=True):
    """What a member needs to rejoin an epoch of a conference without voting again."""

    epoch: int
    contribution: bytes  # 32 bytes, big-endian (msgpack has no 256-bit integers)
    session_seed: bytes
    fingerprint: str | None = None
    #: SHA-256 of the conference record: a state is only restored into the same record
    record: bytes = b""
    #: the key exchange's decided value, once known: a rejoin gets the same key from it alone
    decision: bytes = b""


@dataclass(frozen=True)
class JoinPlan:
    """How to join one epoch, decided from what was saved (:func:`plan_join`).

    ``save_first``: persist this *before* anything of the epoch is sent (None: keep what is
    saved).  ``restore``: keyword arguments for :meth:`secchat.protocols.stack.Member.smc_init`.
    ``restored``: rejoining with the saved contribution (no second vote, the same key);
    ``abstains``: no usable state although we may have voted (never vote)."""

    epoch: int
    save_first: KeyExchangeState | None
    restore: dict[str, Any]
    restored: bool
    abstains: bool


#: what :func:`plan_join` is told when a state exists but cannot be read
UNREADABLE = object()


def plan_join(saved: Any, record: bytes, epoch: int | None, rng: Rng, *, resume: bool = False) -> JoinPlan:
    """The write-ahead rule, once for every driver (the node, the simulator's restarts).

    ``saved`` is the store's state for ``record`` (None, or :data:`UNREADABLE`); ``epoch`` None
    joins the saved epoch, else 0; ``resume``: we may have run this epoch before without
    keeping state."""
    unreadable = saved is UNREADABLE
    if unreadable or (saved is not None and saved.record not in (b"", record)):
        saved = None
    if epoch is None:
        epoch = saved.epoch if saved is not None else 0
    if saved is not None and saved.epoch == epoch:
        restore: dict[str, Any] = {
            "resume": True,
            "contribution": int.from_bytes(saved.contribution, "big"),
            "session_seed": saved.session_seed,
        }
        if saved.decision:
            restore["decision"] = saved.decision
        return JoinPlan(epoch, None, restore, True, False)
    # a later epoch's state, or one we cannot read: we may have voted in this epoch
    abstains = resume or unreadable or (saved is not None and saved.epoch > epoch)
    contribution, seed = rng.randbytes(32), rng.randbytes(32)
    first = None if saved is not None and saved.epoch > epoch else KeyExchangeState(epoch, contribution, seed, None, record)
    restore = {"resume": abstains, "contribution": int.from_bytes(contribution, "big"), "session_seed": seed}
    return JoinPlan(epoch, first, restore, False, abstains)


def established_state(epoch: int, record: bytes, smc: Any) -> KeyExchangeState:
    """What to save once ``smc`` (a :class:`~secchat.protocols.smc.SecureMulticast`) has its
    key: the decision too, so that a rejoin has the same key at once."""
    gke = smc.gke
    return KeyExchangeState(
        epoch, gke.contribution.to_bytes(32, "big"), gke.session_seed, smc.fingerprint, record,
        gke.consensus.decision or b"",
    )


class StateStore(Protocol):
    """Durable per-record key-exchange state (``key`` is the record digest in hex)."""

    def load_state(self, key: str) -> KeyExchangeState | None:
        """The saved state, None if there is none; :class:`StateError` if it is unusable."""
        ...

    def save_state(self, key: str, state: KeyExchangeState) -> None:
        """Durable when this returns (or raises)."""
        ...


class MemoryStateStore:
    """A store that does not survive the process: only for nodes that never restart (tests,
    benchmarks in one process).  Every driver that runs as a restartable process uses a
    durable store."""

    def __init__(self) -> None:
        self._states: dict[str, KeyExchangeState] = {}

    def load_state(self, key: str) -> KeyExchangeState | None:
        return self._states.get(key)

    def save_state(self, key: str, state: KeyExchangeState) -> None:
        self._states[key] = state


_MAX_STATE_FILE = 64 * 1024


class StateDir:
    """One encrypted file per conference record in ``directory`` (created 0700)."""

    def __init__(self, directory: Path, secret: bytes) -> None:
        self.directory = Path(directory)
        self._aead = Aead(hkdf(secret, salt=b"secchat/state-dir/v1", info=b"aead", length=32))
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.directory, 0o700)
        except OSError as exc:
            raise StateError(f"cannot use the state directory {self.directory}: {exc.strerror}") from None

    @classmethod
    def for_key(cls, directory: Path, private_key: object) -> StateDir:
        """A state directory sealed under a key derived from the member's long-term private key."""
        raw = private_key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return cls(directory, raw)

    def _path(self, key: str) -> Path:
        return self.directory / (hashlib.sha256(key.encode("utf-8")).hexdigest()[:32] + ".state")

    def load_state(self, key: str) -> KeyExchangeState | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc.strerror}") from None
        if not 12 < len(data) <= _MAX_STATE_FILE:
            raise StateError(f"{path} is not a state file")
        try:
            plain = self._aead.open(data[:12], data[12:], canonical("secchat/state", key))
            return msgspec.msgpack.decode(plain, type=KeyExchangeState)
        except (CryptoError, msgspec.DecodeError, msgspec.ValidationError):
            raise StateError(f"{path} cannot be read with this member's key") from None

    def save_state(self, key: str, state: KeyExchangeState) -> None:
        nonce = os.urandom(12)
        data = nonce + self._aead.seal(nonce, msgspec.msgpack.encode(state), canonical("secchat/state", key))
        path = self._path(key)
        try:
            write_file_atomically(path, data)  # synced, renamed, the rename synced
        except OSError as exc:
            raise StateError(f"cannot write {path}: {exc.strerror}") from None
