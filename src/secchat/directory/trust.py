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
from typing import Any, Generic, TypeVar

import platformdirs

from secchat import pki

__all__ = ["Acceptance", "JsonStateFile", "TrustEntry", "TrustStore", "TrustStoreError", "default_trust_path"]


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
    ACCEPTED = "accepted"  # this exact certificate was accepted before
    NEW = "new"  # no certificate of this identity was accepted yet
    CHANGED = "changed"  # another certificate of this identity was accepted: refuse


@dataclass(frozen=True, slots=True)
class TrustEntry:
    identity: str
    fingerprint: str
    accepted_at: int


class TrustStore(JsonStateFile[TrustEntry]):
    """Identity (``name@issuer``) -> accepted certificate fingerprint."""

    FIELD = "accepted"
    WHAT = "trust store"
    error = TrustStoreError

    def _decode(self, key: str, value: Any) -> TrustEntry:
        return TrustEntry(key, str(value["fingerprint"]), int(value["accepted_at"]))

    def _encode(self, entry: TrustEntry) -> Any:
        return {"fingerprint": entry.fingerprint, "accepted_at": entry.accepted_at}

    def status(self, identity: pki.Identity | str, fingerprint: str) -> Acceptance:
        entry = self._entries.get(str(identity))
        if entry is None:
            return Acceptance.NEW
        return Acceptance.ACCEPTED if entry.fingerprint == fingerprint else Acceptance.CHANGED

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
            entries[str(identity)] = TrustEntry(str(identity), fingerprint, stamp)
        if entries != self._entries:
            self._replace(entries)

    def revoke(self, identity: pki.Identity | str) -> bool:
        if str(identity) not in self._entries:
            return False
        self._replace({k: e for k, e in self._entries.items() if k != str(identity)})
        return True

    def list(self) -> list[TrustEntry]:
        return sorted(self._entries.values(), key=lambda e: e.identity)
