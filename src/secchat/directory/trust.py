"""The user's accepted certificates: identity -> certificate fingerprint (the thesis's key store).

Why: the directory is untrusted, and even a CA-valid certificate is only used for a conference
once the user accepted it (§4.2: "the user will be asked if he trusts these certificates").
Later, a *different* certificate for an accepted identity is refused outright: that is what a
directory (or a CA) swapping a member's key would look like.  The store is a small JSON file,
written atomically; ``TrustStore(None)`` keeps it in memory.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from secchat import pki

__all__ = ["Acceptance", "TrustEntry", "TrustStore", "TrustStoreError", "default_trust_path"]


def default_trust_path() -> Path:
    """Where a user's accepted certificates live: ``<user data dir>/accepted-certificates.json``."""
    return Path(platformdirs.user_data_dir("secchat")) / "accepted-certificates.json"


class TrustStoreError(Exception):
    """The trust store file is unreadable or corrupt."""


class Acceptance(enum.Enum):
    ACCEPTED = "accepted"  # this exact certificate was accepted before
    NEW = "new"  # no certificate of this identity was accepted yet
    CHANGED = "changed"  # another certificate of this identity was accepted: refuse


@dataclass(frozen=True, slots=True)
class TrustEntry:
    identity: str
    fingerprint: str
    accepted_at: int


class TrustStore:
    """Identity (``name@issuer``) -> accepted certificate fingerprint."""

    VERSION = 1

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, TrustEntry] = {}
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") != self.VERSION:
                raise ValueError("unknown version")
            self._entries = {
                key: TrustEntry(key, str(v["fingerprint"]), int(v["accepted_at"]))
                for key, v in data["accepted"].items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TrustStoreError(f"the trust store {self.path} is unreadable: {exc}") from None

    def _save(self) -> None:
        if self.path is None:
            return
        data = {
            "version": self.VERSION,
            "accepted": {
                k: {"fingerprint": e.fingerprint, "accepted_at": e.accepted_at}
                for k, e in sorted(self._entries.items())
            },
        }
        pki.write_file_atomically(self.path, json.dumps(data, indent=2).encode("utf-8"), 0o600)

    def status(self, identity: pki.Identity | str, fingerprint: str) -> Acceptance:
        entry = self._entries.get(str(identity))
        if entry is None:
            return Acceptance.NEW
        return Acceptance.ACCEPTED if entry.fingerprint == fingerprint else Acceptance.CHANGED

    def get(self, identity: pki.Identity | str) -> TrustEntry | None:
        return self._entries.get(str(identity))

    def accept(self, identity: pki.Identity | str, fingerprint: str, *, now: int | None = None) -> None:
        """Accept this certificate for this identity (replacing an older one is an explicit choice)."""
        self._entries[str(identity)] = TrustEntry(
            str(identity), fingerprint, int(time.time()) if now is None else now
        )
        self._save()

    def accept_all(self, accepted: Iterable[tuple[pki.Identity | str, str]], *, now: int | None = None) -> None:
        """Accept several certificates at once: one write, so either all are kept or none."""
        stamp = int(time.time()) if now is None else now
        entries = dict(self._entries)
        for identity, fingerprint in accepted:
            entries[str(identity)] = TrustEntry(str(identity), fingerprint, stamp)
        if entries == self._entries:
            return
        previous, self._entries = self._entries, entries
        try:
            self._save()
        except BaseException:
            self._entries = previous
            raise

    def revoke(self, identity: pki.Identity | str) -> bool:
        removed = self._entries.pop(str(identity), None) is not None
        if removed:
            self._save()
        return removed

    def list(self) -> list[TrustEntry]:
        return sorted(self._entries.values(), key=lambda e: e.identity)

    def __len__(self) -> int:
        return len(self._entries)
