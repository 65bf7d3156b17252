"""The newest version of each conference this user has seen: ``(creator, id) -> version``.

Why: a conference record is signed by its creator, so the untrusted directory cannot forge one --
but it can serve an *older* genuinely signed record (a rollback: an earlier member list), or a
record its creator deleted.  Records carry a version and deletions are creator-signed
tombstones (:mod:`.models`); this memory is what lets a client notice: a record older than one
seen before is refused (``rollback``), and so is any version a verified tombstone covers
(``deleted``).  A creator re-creating a deleted id signs a higher version, which is accepted.

The memory lives in the profile next to the trust store (``conference-versions.json``), written
atomically; ``VersionMemory(None)`` keeps it in memory.  It is bounded (:data:`MAX_ENTRIES`): the
entries seen longest ago go first, deletions last.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from secchat import pki

from .models import conference_key

__all__ = ["MAX_ENTRIES", "VERSIONS_FILE", "Seen", "SeenVersion", "VersionMemory", "VersionMemoryError"]

VERSIONS_FILE = "conference-versions.json"
MAX_ENTRIES = 20_000


class VersionMemoryError(Exception):
    """The version memory file is unreadable or corrupt."""


class Seen(enum.Enum):
    CURRENT = "current"  # never seen, or not older than what was seen
    ROLLED_BACK = "rolled_back"  # older than a version seen before
    DELETED = "deleted"  # a verified tombstone covers this version


@dataclass(frozen=True, slots=True)
class SeenVersion:
    version: int
    deleted: bool
    seen_at: int


class VersionMemory:
    """``creator/id`` -> the newest version seen and whether its creator deleted it."""

    VERSION = 1

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, SeenVersion] = {}
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") != self.VERSION:
                raise ValueError("unknown version")
            for key, v in data["conferences"].items():
                entry = SeenVersion(int(v["version"]), bool(v["deleted"]), int(v["seen_at"]))
                if not isinstance(key, str) or "/" not in key or entry.version < 1:
                    raise ValueError(f"bad entry {key!r}")
                self._entries[key] = entry
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise VersionMemoryError(f"the conference version memory {self.path} is unreadable: {exc}") from None

    def _save(self) -> None:
        if self.path is None:
            return
        data = {
            "version": self.VERSION,
            "conferences": {
                k: {"version": e.version, "deleted": e.deleted, "seen_at": e.seen_at}
                for k, e in sorted(self._entries.items())
            },
        }
        pki.write_file_atomically(self.path, json.dumps(data, indent=1).encode("utf-8"), 0o600)

    def get(self, creator: str, id: str) -> SeenVersion | None:
        return self._entries.get(conference_key(creator, id))

    def check(self, creator: str, id: str, version: int) -> Seen:
        """Is a record of this version acceptable, given what was seen before?"""
        seen = self.get(creator, id)
        if seen is None:
            return Seen.CURRENT
        if seen.deleted and version <= seen.version:
            return Seen.DELETED
        if version < seen.version:
            return Seen.ROLLED_BACK
        return Seen.CURRENT

    def remember(self, items: Iterable[tuple[str, str, int, bool]], *, now: int | None = None) -> bool:
        """Note records (``deleted`` False) or tombstones (True) seen, as ``(creator, id,
        version, deleted)``, in one write; only what is newer than the memory changes it.
        Returns whether anything changed."""
        stamp = int(time.time()) if now is None else now
        changed = False
        for creator, id, version, deleted in items:
            key = conference_key(creator, id)
            seen = self._entries.get(key)
            newer = seen is None or version > seen.version or (deleted and not seen.deleted and version == seen.version)
            if newer:
                self._entries[key] = SeenVersion(version, deleted, stamp)
                changed = True
        if changed:
            self._evict()
            self._save()
        return changed

    def _evict(self) -> None:
        excess = len(self._entries) - MAX_ENTRIES
        if excess > 0:
            oldest = sorted(self._entries.items(), key=lambda kv: (kv[1].deleted, kv[1].seen_at))
            for key, _ in oldest[:excess]:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
