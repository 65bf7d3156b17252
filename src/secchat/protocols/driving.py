"""The one send/deliver step every driver of a :class:`~secchat.protocols.stack.Member` takes.

Why: after each input (a frame, a timer, an API call) a driver pulls the member's outgoing
frames, hands them to its network, hands the events up and re-arms the member's deadline.  The
simulator, the asyncio runtime and the unit tests' manual network each did this with their own
loop (and their own reading of ``Outgoing.to``); :func:`pump` is the one copy.  No I/O here:
the driver passes its network as ``send`` and its event sink as ``emit``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = ["Pumpable", "pump"]

log = logging.getLogger("secchat.protocols.driving")


class Pumpable(Protocol):
    def take_outgoing(self) -> list[Any]: ...
    def take_events(self) -> list[Any]: ...
    def next_deadline(self) -> float | None: ...


def pump(
    member: Pumpable,
    me: int,
    n: int,
    send: Callable[[Sequence[int], bytes], object],
    emit: Callable[[Any], object],
) -> float | None:
    """Hand ``member``'s frames to ``send(targets, data)`` (member indices, never ``me``) and its
    events to ``emit``; return its next deadline.  ``Outgoing.to`` None means every other member;
    an index outside the group is the stack's bug: logged and dropped."""
    for out in member.take_outgoing():
        to = out.to
        if to is None:
            targets: Sequence[int] = [i for i in range(n) if i != me]
        elif 0 <= to < n and to != me:
            targets = (to,)
        else:
            log.error("member %d addressed a frame to index %r", me, to)
            continue
        send(targets, out.data)
    for event in member.take_events():
        emit(event)
    return member.next_deadline()
