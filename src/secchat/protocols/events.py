"""What protocol instances hand back: actions for the driver, and outputs for the layer above.

Every state-machine method returns a list of these.  ``Send``/``Broadcast`` go to the network,
``SetTimer``/``CancelTimer`` to the member's timer table, and output events either to the parent
instance (GKE consumes ``Decided``, SMC consumes ``SessionKey``) or, at the top, to the
application.  All are frozen; none prints secrets (``SessionKey.secret`` is hidden from repr).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to member ``to`` (never to oneself: instances handle their own part)."""

    to: int
    message: Message


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send ``message`` to every other member of the group."""

    message: Message


@dataclass(frozen=True, slots=True)
class SetTimer:
    """(Re)arm timer ``name`` of instance ``tag`` to fire at ``deadline`` (simulated or loop
    time); the member hands it back to that instance's ``handle_timer``."""

    name: str
    deadline: float
    tag: Tag = ()


@dataclass(frozen=True, slots=True)
class CancelTimer:
    name: str
    tag: Tag = ()


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class Decided:
    """Consensus instance ``tag`` decided ``value``."""

    tag: Tag
    value: bytes


@dataclass(frozen=True, slots=True)
class SessionKey:
    """GKE session ``tag`` computed its key: the sum of the decided members' contributions."""

    tag: Tag
    members: tuple[int, ...]
    secret: int = field(repr=False)


@dataclass(frozen=True, slots=True)
class KeyEstablished:
    """SMC instance ``tag`` has its group keys; ``fingerprint`` is a one-way name of them."""

    tag: Tag
    fingerprint: str
    members: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Delivered:
    """SMC instance ``tag`` delivered ``payload`` from ``sender`` (authenticated per the mode)."""

    tag: Tag
    sender: int
    incarnation: int
    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class PeerSuspected:
    peer: int


@dataclass(frozen=True, slots=True)
class PeerRestored:
    peer: int


@dataclass(frozen=True, slots=True)
class RecordMismatch:
    """Member ``peer`` holds another record of this conference (same id, other digest): the two
    of us will never share a key, and ``peer`` counts as crashed here.  ``creator`` and
    ``members`` are what the peer says of its record (hostile text: make it terminal-safe)."""

    peer: int
    record: str
    creator: str
    members: int


@dataclass(frozen=True, slots=True)
class InstanceSeen:
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


@dataclass(frozen=True, slots=True)
class ClosedEpochFrame:
    """Member ``sender`` sent a frame for ``epoch`` of our group, which we closed
    (:meth:`~secchat.protocols.stack.Member.close_instance`, or released with
    :meth:`~secchat.protocols.stack.Member.release_epochs_below`): it is behind us.  The frame
    is dropped.  Once per (epoch, sender) (among the last 1024 reported)."""

    group: Tag
    epoch: int
    sender: int


@dataclass(frozen=True, slots=True)
class KeyFork:
    """Member ``peer`` holds another key (``fingerprint``) for SMC instance ``tag``: two keys
    exist where the protocols promise one.  We stop sending under ours."""

    tag: Tag
    peer: int
    ours: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Lost:
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


@dataclass(frozen=True, slots=True)
class Undelivered:
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
