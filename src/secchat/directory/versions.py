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
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .models import conference_key
from .trust import JsonStateFile

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


class VersionMemory(JsonStateFile[SeenVersion]):
    """``creator/id`` -> the newest version seen and whether its creator deleted it."""

    FIELD = "conferences"
    WHAT = "conference version memory"
    error = VersionMemoryError

    def _decode(self, key: str, value: Any) -> SeenVersion:
        entry = SeenVersion(int(value["version"]), bool(value["deleted"]), int(value["seen_at"]))
        if "/" not in key or entry.version < 1:
            raise ValueError(f"bad entry {key!r}")
        return entry

    def _encode(self, entry: SeenVersion) -> Any:
        return {"version": entry.version, "deleted": entry.deleted, "seen_at": entry.seen_at}

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
        entries = dict(self._entries)
        for creator, id, version, deleted in items:
            key = conference_key(creator, id)
            seen = entries.get(key)
            if seen is None or version > seen.version or (deleted and not seen.deleted and version == seen.version):
                entries[key] = SeenVersion(version, deleted, stamp)
        if entries == self._entries:
            return False
        excess = len(entries) - MAX_ENTRIES
        if excess > 0:  # bounded: the entries seen longest ago go first, deletions last
            for key, _ in sorted(entries.items(), key=lambda kv: (kv[1].deleted, kv[1].seen_at))[:excess]:
                del entries[key]
        self._replace(entries)
        return True
