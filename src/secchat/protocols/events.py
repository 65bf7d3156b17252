"""What protocol instances hand back: actions for the driver, and outputs for the layer above.

Every state-machine method returns a list of these.  ``Send``/``Broadcast`` go to the network,
``SetTimer``/``CancelTimer`` to the member's timer table, and output events either to the parent
instance (GKE consumes ``Decided``, SMC consumes ``SessionKey``) or, at the top, to the
application.  All are frozen; none prints secrets (``SessionKey.secret`` is hidden from repr).
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..codec import Tag
from .messages import Message

__all__ = [
    "Action",
    "Broadcast",
    "CancelTimer",
    "ClosedEpochFrame",
    "Decided",
    "Delivered",
    "Event",
    "InstanceSeen",
    "KeyEstablished",
    "KeyFork",
    "Lost",
    "Output",
    "PeerRestored",
    "PeerSuspected",
    "RecordMismatch",
    "Send",
    "SessionKey",
    "SetTimer",
    "Undelivered",
]


class _Event(msgspec.Struct, frozen=True, gc=False):
    """Base of every event: a frozen struct (a tenth of a frozen dataclass's construction time,
    and a member makes two or three events per message it sends or receives).  Not tracked by
    the cycle collector (``gc=False``: fewer collections per message): an event holds only
    immutable values -- messages, tags, bytes, numbers, tuples of them -- so it can never be
    part of a reference cycle."""


# --------------------------------------------------------------------------- actions


class Send(_Event, frozen=True):
    """Send ``message`` to member ``to`` (never to oneself: instances handle their own part)."""

    to: int
    message: Message


class Broadcast(_Event, frozen=True):
    """Send ``message`` to every other member of the group."""

    message: Message


class SetTimer(_Event, frozen=True):
    """(Re)arm timer ``name`` of instance ``tag`` to fire at ``deadline`` (simulated or loop
    time); the member hands it back to that instance's ``handle_timer``."""

    name: str
    deadline: float
    tag: Tag = ()


class CancelTimer(_Event, frozen=True):
    name: str
    tag: Tag = ()


# --------------------------------------------------------------------------- outputs


class Decided(_Event, frozen=True):
    """Consensus instance ``tag`` decided ``value``."""

    tag: Tag
    value: bytes


class SessionKey(_Event, frozen=True):
    """GKE session ``tag`` computed its key: the sum of the decided members' contributions."""

    tag: Tag
    members: tuple[int, ...]
    secret: int

    def __repr__(self) -> str:  # never the secret
        return f"SessionKey(tag={self.tag!r}, members={self.members!r})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:  # nor in rich's pretty printer
        return [("tag", self.tag), ("members", self.members)]


class KeyEstablished(_Event, frozen=True):
    """SMC instance ``tag`` has its group keys; ``fingerprint`` is a one-way name of them."""

    tag: Tag
    fingerprint: str
    members: tuple[int, ...]


class Delivered(_Event, frozen=True):
    """SMC instance ``tag`` delivered ``payload`` from ``sender`` (authenticated per the mode)."""

    tag: Tag
    sender: int
    incarnation: int
    seq: int
    payload: bytes


class PeerSuspected(_Event, frozen=True):
    peer: int


class PeerRestored(_Event, frozen=True):
    peer: int


class RecordMismatch(_Event, frozen=True):
    """Member ``peer`` holds another record of this conference (same id, other digest): the two
    of us will never share a key, and ``peer`` counts as crashed here.  ``creator`` and
    ``members`` are what the peer says of its record (hostile text: make it terminal-safe)."""

    peer: int
    record: str
    creator: str
    members: int


class InstanceSeen(_Event, frozen=True):
    """Member ``sender`` sent a frame for ``epoch`` of our group (``group`` is its tag prefix,
    :attr:`~secchat.protocols.stack.GroupId.prefix`), an epoch newer than any this member ran:
    the others may have re-keyed.  The frame is kept (bounded) for when we join that epoch.
    Once per (epoch, sender) for epochs up to ``StackConfig.epoch_lookahead`` above the newest
    we ran; frames further ahead are dropped and counted, and reported only when one is the
    farthest its sender showed so far, at most once a second per sender (a member far behind
    still learns where the others are;
    the application decides whether to believe one member's word).  No peer can make us keep
    anything for far epochs, and each report costs one frame of its sender."""

    group: Tag
    epoch: int
    sender: int


class ClosedEpochFrame(_Event, frozen=True):
    """Member ``sender`` sent a frame for ``epoch`` of our group, which we closed
    (:meth:`~secchat.protocols.stack.Member.close_instance`, or released with
    :meth:`~secchat.protocols.stack.Member.release_epochs_below`): it is behind us.  The frame
    is dropped.  Once per (epoch, sender) (among the last 1024 reported)."""

    group: Tag
    epoch: int
    sender: int


class KeyFork(_Event, frozen=True):
    """Member ``peer`` holds another key (``fingerprint``) for SMC instance ``tag``: two keys
    exist where the protocols promise one.  We stop sending under ours."""

    tag: Tag
    peer: int
    ours: str
    fingerprint: str


class Lost(_Event, frozen=True):
    """Messages ``first`` .. ``end - 1`` of ``sender``'s ``incarnation`` will never be delivered
    here (its retransmission store no longer had them, or the gap was given up)."""

    tag: Tag
    sender: int
    incarnation: int
    first: int
    end: int

    @property
    def count(self) -> int:
        return self.end - self.first


class Undelivered(_Event, frozen=True):
    """Our messages ``first`` .. ``end - 1`` did not reach member ``peer``: it asked for them too
    late (they left our bounded retransmission store)."""

    tag: Tag
    peer: int
    first: int
    end: int

    @property
    def count(self) -> int:
        return self.end - self.first


Action = Send | Broadcast | SetTimer | CancelTimer
Output = (
    Decided | SessionKey | KeyEstablished | Delivered | PeerSuspected | PeerRestored | RecordMismatch
    | InstanceSeen | ClosedEpochFrame | KeyFork | Lost | Undelivered
)
Event = Action | Output
