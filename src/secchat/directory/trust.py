"""The user's accepted identities: ``name@issuer`` -> public key (the thesis's key store).

Why: the directory is untrusted, and even a CA-valid certificate is only used for a conference
once the user accepted it (§4.2: "the user will be asked if he trusts these certificates").
What is pinned is the identity's *key* (and the fingerprint of the certificate accepted), not the
whole certificate: a renewal (a new certificate for the same key) is silent; a key rotation
signed by the accepted key (:mod:`.identities`) is :attr:`Acceptance.ROTATED`, shown as such and
followed; any other key for an accepted identity is refused (:attr:`Acceptance.CHANGED`) until
the user accepts it again -- that is what a directory (or a CA) swapping a member's key would
look like.  Entries of before key pins (a fingerprint only) match by fingerprint until the key
is known.  The store is a small JSON file, written atomically; ``TrustStore(None)`` keeps it in
memory.
"""

from __future__ import annotations

import enum
import json
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import platformdirs

from secchat import pki

__all__ = [
    "Acceptance",
    "JsonStateFile",
    "TrustEntry",
    "TrustStore",
    "TrustStoreError",
    "default_trust_path",
    "split_identity",
]


def default_trust_path() -> Path:
    """Where a user's accepted certificates live: ``<user data dir>/accepted-certificates.json``."""
    return Path(platformdirs.user_data_dir("secchat")) / "accepted-certificates.json"


class TrustStoreError(Exception):
    """The trust store file is unreadable or corrupt."""


E = TypeVar("E")


class JsonStateFile(Generic[E]):
    """A small JSON state file of ours, ``{"version": N, FIELD: {key: entry}}``: read whole when
    opened, rewritten atomically (owner-only) on each change, in memory only when ``path`` is
    None.  Subclasses say how an entry is decoded and encoded."""

    VERSION = 1
    FIELD = "entries"
    WHAT = "state file"
    error: type[Exception] = ValueError

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, E] = {}
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if not isinstance(data, dict) or data.get("version") != self.VERSION:
                    raise ValueError("unknown version")
                self._entries = {k: self._decode(k, v) for k, v in data[self.FIELD].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise self.error(f"the {self.WHAT} {self.path} is unreadable: {exc}") from None

    def _decode(self, key: str, value: Any) -> E:
        raise NotImplementedError

    def _encode(self, entry: E) -> Any:
        raise NotImplementedError

    def _replace(self, entries: dict[str, E]) -> None:
        """Make ``entries`` the contents, on disk too: one write; a failed one changes nothing."""
        previous, self._entries = self._entries, entries
        if self.path is None:
            return
        data = {"version": self.VERSION, self.FIELD: {k: self._encode(e) for k, e in sorted(entries.items())}}
        try:
            pki.write_file_atomically(self.path, json.dumps(data, indent=1).encode("utf-8"), 0o600)
        except BaseException:
            self._entries = previous
            raise

    def __len__(self) -> int:
        return len(self._entries)


class Acceptance(enum.Enum):
    ACCEPTED = "accepted"  # this key (or, for an old entry, this certificate) was accepted
    ROTATED = "rotated"  # the accepted key signed the rotation to this one: followed
    NEW = "new"  # nothing of this identity was accepted yet
    CHANGED = "changed"  # another key of this identity was accepted, and no proof: refuse


#: Certificates' keys learnt while verifying, kept for :meth:`TrustStore.accept` (bounded).
MAX_KNOWN_KEYS = 10_000


@dataclass(frozen=True, slots=True)
class TrustEntry:
    identity: str
    fingerprint: str
    accepted_at: int
    #: the accepted public key, hex (None: an entry of before key pins)
    key: str | None = None


class TrustStore(JsonStateFile[TrustEntry]):
    """Identity (``name@issuer``) -> accepted public key (and certificate fingerprint)."""

    FIELD = "accepted"
    WHAT = "trust store"
    error = TrustStoreError

    def __init__(self, path: Path | None) -> None:
        super().__init__(path)
        self._keys: OrderedDict[str, str] = OrderedDict()  # fingerprint -> key hex

    def _decode(self, key: str, value: Any) -> TrustEntry:
        pinned = value.get("key")
        if pinned is not None and (not isinstance(pinned, str) or len(bytes.fromhex(pinned)) != 32):
            raise ValueError(f"bad key of {key!r}")
        return TrustEntry(key, str(value["fingerprint"]), int(value["accepted_at"]), pinned)

    def _encode(self, entry: TrustEntry) -> Any:
        out: dict[str, Any] = {"fingerprint": entry.fingerprint, "accepted_at": entry.accepted_at}
        if entry.key is not None:
            out["key"] = entry.key
        return out

    def note_key(self, fingerprint: str, key: bytes) -> None:
        """Remember a verified certificate's key, so that accepting it by fingerprint pins the key."""
        self._keys[fingerprint] = key.hex()
        self._keys.move_to_end(fingerprint)
        while len(self._keys) > MAX_KNOWN_KEYS:
            self._keys.popitem(last=False)

    def status(
        self,
        identity: pki.Identity | str,
        fingerprint: str,
        key: bytes | None = None,
        earlier_keys: Sequence[bytes] = (),
    ) -> Acceptance:
        """How a certificate (``fingerprint``, its ``key``) of ``identity`` stands; ``earlier_keys``
        are the keys a verified chain of rotations says were this identity's before."""
        entry = self._entries.get(str(identity))
        if entry is None:
            return Acceptance.NEW
        if entry.key is None or key is None:
            return Acceptance.ACCEPTED if entry.fingerprint == fingerprint else Acceptance.CHANGED
        if entry.key == key.hex():
            return Acceptance.ACCEPTED
        if entry.key in (k.hex() for k in earlier_keys):
            return Acceptance.ROTATED
        return Acceptance.CHANGED

    def get(self, identity: pki.Identity | str) -> TrustEntry | None:
        return self._entries.get(str(identity))

    def accept(self, identity: pki.Identity | str, fingerprint: str, *, now: int | None = None) -> None:
        """Accept this certificate for this identity (replacing an older one is an explicit choice)."""
        self.accept_all([(identity, fingerprint)], now=now)

    def accept_all(self, accepted: Iterable[tuple[pki.Identity | str, str]], *, now: int | None = None) -> None:
        """Accept several certificates at once: one write, so either all are kept or none."""
        stamp = int(time.time()) if now is None else now
        entries = dict(self._entries)
        for identity, fingerprint in accepted:
            entries[str(identity)] = TrustEntry(str(identity), fingerprint, stamp, self._keys.get(fingerprint))
        for name, entry in entries.items():  # an old entry whose key is known now gets it
            if entry.key is None and entry.fingerprint in self._keys:
                entries[name] = TrustEntry(name, entry.fingerprint, entry.accepted_at, self._keys[entry.fingerprint])
        if entries != self._entries:
            self._replace(entries)

    def resolve(self, text: str) -> str | None:
        """The accepted identity ``text`` names: ``name@issuer`` as listed, or a bare name
        accepted under one issuer only."""
        if text in self._entries:
            return text
        found = [k for k in self._entries if k.rpartition("@")[0] == text]
        return found[0] if len(found) == 1 else None

    def revoke(self, identity: pki.Identity | str) -> bool:
        if str(identity) not in self._entries:
            return False
        self._replace({k: e for k, e in self._entries.items() if k != str(identity)})
        return True

    def list(self) -> list[TrustEntry]:
        return sorted(self._entries.values(), key=lambda e: e.identity)


def split_identity(text: str, issuers: Iterable[str]) -> tuple[str, str | None]:
    """``"carol@SecChat CA"`` -> ``("carol", "SecChat CA")`` when the part after the last ``@``
    is one of ``issuers``; otherwise ``(text, None)``: a plain name (which may hold an ``@``)."""
    name, at, issuer = text.rpartition("@")
    if at and name and issuer in set(issuers):
        return name, issuer
    return text, None
