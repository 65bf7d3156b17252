"""The tag demultiplexer: routes every message to its protocol instance by (protocol, tag).

Why: a member runs many instances at once (SMC, its GKE session, that session's consensus; several
epochs).  Messages for an instance this member has not started yet are legitimate -- a late
starter receives the others' messages before it joins -- so they are kept, bounded per instance
and in the number of instances, and replayed in arrival order when the instance starts; what was
kept for an instance that will never start (a skipped or closed epoch) is released.  Anything
else unknown is dropped and counted.  Which tags may be kept at all (epochs) is the stack's
policy (``Member``), not ours.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from ..codec import Tag
from .messages import (
    Abstain,
    Ack,
    Alive,
    Contribution,
    Decision,
    Estimate,
    Message,
    Nack,
    Proposal,
    PublicKey,
    SmcData,
    SmcGone,
    SmcResend,
    SmcStatus,
)

__all__ = ["Demux", "protocol_of"]

#: Pending instances one sender may open (an SMC epoch needs three: smc, gke, consensus).
MAX_PENDING_PER_SENDER = 4
#: Closed instances remembered (three per closed SMC epoch).
MAX_CLOSED = 192

_PROTOCOL = {
    Estimate: "consensus",
    Proposal: "consensus",
    Ack: "consensus",
    Nack: "consensus",
    Decision: "consensus",
    Abstain: "consensus",
    PublicKey: "gke",
    Contribution: "gke",
    SmcData: "smc",
    SmcStatus: "smc",
    SmcResend: "smc",
    SmcGone: "smc",
}


def protocol_of(msg: Message) -> str | None:
    return _PROTOCOL.get(type(msg))


class Demux:
    """Instance registry of one member, with a bounded pending area."""

    def __init__(
        self,
        prefix: Tag,
        stats: Counter,
        *,
        max_pending_instances: int = 16,
        max_pending_per_instance: int = 4096,
        max_pending_bytes: int = 64 << 20,
    ) -> None:
        self.prefix = prefix  # (conference id, record digest): every tag of ours starts so
        self._stats = stats
        self._instances: dict[tuple[str, Tag], Any] = {}
        self._pending: dict[tuple[str, Tag], deque[tuple[int, Message, int]]] = {}
        self.max_pending_instances = max_pending_instances
        self.max_pending_per_instance = max_pending_per_instance
        self.max_pending_bytes = max_pending_bytes
        self._pending_bytes = 0
        # instances closed for good (a re-key erased their keys): their frames are refused,
        # not kept for later; bounded, oldest forgotten first
        self._closed: dict[tuple[str, Tag], None] = {}
        # who opened each pending entry: one member flooding made-up tags can take at most
        # MAX_PENDING_PER_SENDER of the slots, never all of them
        self._opened_by: dict[tuple[str, Tag], int] = {}
        self._opened: Counter = Counter()

    def register(self, protocol: str, tag: Tag, instance: Any) -> list[tuple[int, Message]]:
        """Add an instance; returns the messages kept for it, oldest first."""
        key = (protocol, tag)
        if key in self._instances:
            raise ValueError(f"{protocol} instance {tag!r} already exists")
        self._instances[key] = instance
        kept = self._take_pending(key)
        return [(sender, msg) for sender, msg, _ in kept]

    def _take_pending(self, key: tuple[str, Tag]):
        kept = self._pending.pop(key, ())
        self._pending_bytes -= sum(size for _, _, size in kept)
        opener = self._opened_by.pop(key, None)
        if opener is not None:
            self._opened[opener] -= 1
        return kept

    def unregister(self, protocol: str, tag: Tag) -> None:
        """Close an instance for good: later messages for it are dropped and counted."""
        key = (protocol, tag)
        self._instances.pop(key, None)
        self._take_pending(key)
        self._closed[key] = None
        while len(self._closed) > MAX_CLOSED:
            del self._closed[next(iter(self._closed))]

    def get(self, protocol: str, tag: Tag) -> Any:
        return self._instances.get((protocol, tag))

    def is_closed(self, protocol: str, tag: Tag) -> bool:
        """Instance ``tag`` was closed here (among the last :data:`MAX_CLOSED`)."""
        return (protocol, tag) in self._closed

    def release(self, which: Callable[[str, Tag], bool]) -> int:
        """Forget the messages kept for every pending ``(protocol, tag)`` that ``which``
        selects (an epoch that was skipped or closed): their bytes and their opener's quota
        are free again.  Returns how many messages went."""
        released = 0
        for key in [key for key in self._pending if which(*key)]:
            released += len(self._take_pending(key))
        self._stats["demux.released"] += released
        return released

    def instances(self, protocol: str) -> list[Any]:
        return [inst for (p, _), inst in self._instances.items() if p == protocol]

    def route(self, sender: int, msg: Message, size: int) -> Any:
        """The instance for ``msg``, or None (the message was kept or dropped and counted)."""
        protocol = _PROTOCOL.get(type(msg))
        if protocol is None or isinstance(msg, Alive):
            self._stats["demux.dropped.no_instance_kind"] += 1
            return None
        inst = self._instances.get((protocol, msg.tag))
        if inst is not None:
            return inst
        self.keep(sender, protocol, msg, size)
        return None

    def keep(self, sender: int, protocol: str, msg: Message, size: int) -> bool:
        """Keep ``msg`` for instance (``protocol``, its tag), not started here yet; False if it
        was dropped (and counted): not ours, closed, or beyond the bounds."""
        key = (protocol, msg.tag)  # type: ignore[union-attr]  # every routed message has a tag
        if msg.tag[:2] != self.prefix:  # type: ignore[union-attr]
            self._stats["demux.dropped.foreign_group"] += 1
            return False
        if key in self._closed:
            self._stats["demux.dropped.closed_instance"] += 1
            return False
        queue = self._pending.get(key)
        if queue is None:
            if len(self._pending) >= self.max_pending_instances:
                self._stats["demux.dropped.too_many_pending_instances"] += 1
                return False
            if self._opened[sender] >= MAX_PENDING_PER_SENDER:
                self._stats["demux.dropped.sender_pending_quota"] += 1
                return False
            queue = self._pending[key] = deque()
            self._opened_by[key] = sender
            self._opened[sender] += 1
        if len(queue) >= self.max_pending_per_instance or self._pending_bytes + size > self.max_pending_bytes:
            self._stats["demux.dropped.pending_full"] += 1
            return False
        queue.append((sender, msg, size))
        self._pending_bytes += size
        self._stats["demux.kept_for_later"] += 1
        return True

    def pending_tags(self) -> list[tuple[str, Tag]]:
        """(protocol, tag) of the instances that messages are kept for (not started here yet)."""
        return list(self._pending)

    @property
    def pending_count(self) -> int:
        return sum(len(q) for q in self._pending.values())
