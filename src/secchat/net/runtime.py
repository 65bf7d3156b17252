"""The asyncio driver of sans-I/O members over authenticated links.

Why: the protocol stack (:class:`secchat.protocols.stack.Member`) never does I/O and never reads
a clock; this module is its only live driver (the simulator is the other one).  It is thin, in
the manner of aioquic's asyncio adapter:

* a frame from the links is handed to the member of its conference with the sender's *index*
  (the runtime maps peer names to indices per conference; a frame from a peer that is not a
  member of that conference is dropped and counted);
* after every input (frame, timer, API call) it *pumps*: outgoing messages go to the links,
  events go to the application callback, and the member's ``next_deadline()`` is re-armed with
  ``loop.call_at`` (one handle per conference, cancelled and replaced each time);
* time is the loop's monotonic clock (``loop.time()``), the same clock ``call_at`` uses.

One peer identity may be a member of many conferences; all of them share one :class:`LinkManager`
and its connections, and the link envelope names the conference.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..codec import Tag
from ..protocols.driving import pump
from .links import LinkManager

__all__ = ["Conference", "MemberLike", "Runtime"]

log = logging.getLogger("secchat.net.runtime")


class MemberLike(Protocol):
    """What the runtime needs of a sans-I/O member (``secchat.protocols.stack.Member``)."""

    def start(self, now: float) -> None: ...
    def smc_init(self, tag: Tag, now: float, *, auth: str = ...) -> object: ...
    def multicast(self, tag: Tag, payload: bytes, now: float) -> Any: ...
    def receive(self, sender: int, data: bytes, now: float) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def next_deadline(self) -> float | None: ...
    def take_outgoing(self) -> list[Any]: ...
    def take_events(self) -> list[Any]: ...


#: ``on_event(conference_id, event)``
EventHandler = Callable[[str, Any], None]


@dataclass
class Conference:
    """One conference this process is a member of: its id, ordered member names, our index."""

    group: str
    names: tuple[str, ...]
    me: int
    member: MemberLike
    index: dict[str, int] = field(init=False)
    timer: asyncio.TimerHandle | None = field(default=None, init=False)
    deadline: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            raise ValueError("member names of a conference must be distinct")
        if not 0 <= self.me < len(self.names):
            raise ValueError("our index is outside the member list")
        self.index = {name: i for i, name in enumerate(self.names)}


class Runtime:
    """Drives any number of conferences of one identity over one :class:`LinkManager`.

    Construct it, then build the link manager with :meth:`on_message` as its handler, then
    :meth:`attach` it (the two refer to each other).
    """

    def __init__(self, on_event: EventHandler, *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._on_event = on_event
        self._loop = loop
        self._links: LinkManager | None = None
        #: ``store_sink(group, frame)``: our broadcast SMC frames, for the relay's store
        self.store_sink: Callable[[str, bytes], None] | None = None
        self.conferences: dict[str, Conference] = {}
        self.stats: dict[str, int] = {
            "frames_stored_in": 0,
            "frames_in": 0,
            "frames_out": 0,
            "frames_unknown_group": 0,
            "frames_not_a_member": 0,
            "frames_dropped_queue_full": 0,
            "frames_unsendable": 0,
            "timer_fires": 0,
        }

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    def attach(self, links: LinkManager) -> None:
        self._links = links

    def add_conference(self, group: str, names: Sequence[str], me: int, member: MemberLike) -> Conference:
        """Register a conference; its member starts heartbeating at once."""
        if group in self.conferences:
            raise ValueError(f"conference {group!r} is already running here")
        conf = Conference(group, tuple(names), me, member)
        if self._links is not None:
            unknown = [n for i, n in enumerate(conf.names) if i != me and n not in self._links.peers()]
            if unknown:
                raise ValueError(f"no pinned certificate for members {unknown}")
        self.conferences[group] = conf
        member.start(self.now())
        self._pump(conf)
        return conf

    # ------------------------------------------------------------------ API calls

    def smc_init(self, group: str, tag: Tag, *, auth: str = "signed", **restore: Any) -> None:
        """Start SMC instance ``tag`` in mode ``auth`` (:data:`secchat.protocols.auth.MODES`);
        ``restore`` (contribution, session_seed) rejoins a saved GKE."""
        conf = self._conf(group)
        conf.member.smc_init(tag, self.now(), auth=auth, **restore)
        self._pump(conf)

    def close_instance(self, group: str, tag: Tag) -> None:
        """Erase SMC instance ``tag`` of ``group`` (re-key): its keys leave memory."""
        conf = self._conf(group)
        conf.member.close_instance(tag)  # type: ignore[attr-defined]
        self._pump(conf)

    def remove_conference(self, group: str) -> None:
        """Stop driving ``group`` (leave): no more timers, heartbeats or deliveries for it."""
        conf = self.conferences.pop(group, None)
        if conf is not None and conf.timer is not None:
            conf.timer.cancel()
            conf.timer = None

    def multicast(self, group: str, tag: Tag, payload: bytes) -> Any:
        conf = self._conf(group)
        result = conf.member.multicast(tag, payload, self.now())
        self._pump(conf)
        return result

    def _conf(self, group: str) -> Conference:
        try:
            return self.conferences[group]
        except KeyError:
            raise ValueError(f"not a member of conference {group!r}") from None

    # ------------------------------------------------------------------ inputs

    def on_stored(self, group: str, payload: bytes) -> None:
        """An SMC frame of ``group`` from the relay's store (no member vouches for it)."""
        conf = self.conferences.get(group)
        receive = getattr(conf.member, "receive_stored", None) if conf is not None else None
        if conf is None or receive is None:
            self.stats["frames_unknown_group"] += 1
            return
        self.stats["frames_stored_in"] += 1
        receive(payload, self.now())
        self._pump(conf)

    def on_message(self, peer: str, group: str, payload: bytes) -> None:
        """Link handler: one data frame from ``peer`` for conference ``group``."""
        conf = self.conferences.get(group)
        if conf is None:
            self.stats["frames_unknown_group"] += 1
            return
        sender = conf.index.get(peer)
        if sender is None or sender == conf.me:
            self.stats["frames_not_a_member"] += 1
            return
        self.stats["frames_in"] += 1
        conf.member.receive(sender, payload, self.now())
        self._pump(conf)

    def _fire(self, group: str) -> None:
        conf = self.conferences.get(group)
        if conf is None:
            return
        conf.timer = None
        conf.deadline = None
        self.stats["timer_fires"] += 1
        conf.member.handle_timer(self.now())
        self._pump(conf)

    # ------------------------------------------------------------------ outputs

    def _pump(self, conf: Conference) -> None:
        pump(conf.member, conf.me, len(conf.names), lambda to, data: self._send(conf, to, data),
             lambda event: self._emit(conf, event))
        if self.store_sink is not None:
            take = getattr(conf.member, "take_stored", None)
            for data in take() if take is not None else ():
                self.store_sink(conf.group, data)
        self._arm(conf)

    def _send(self, conf: Conference, targets: Sequence[int], data: bytes) -> None:
        if self._links is None:
            return
        try:
            taken = self._links.send_many([conf.names[i] for i in targets], conf.group, data)
        except ValueError as exc:  # the stack produced a frame the links cannot carry: a bug
            log.error("cannot send a frame of %s: %s", conf.group, exc)
            self.stats["frames_unsendable"] += 1
            return
        self.stats["frames_out"] += taken
        self.stats["frames_dropped_queue_full"] += len(targets) - taken

    def _emit(self, conf: Conference, event: Any) -> None:
        try:
            self._on_event(conf.group, event)
        except Exception:
            log.exception("event handler failed on %s", type(event).__name__)

    def _arm(self, conf: Conference) -> None:
        deadline = conf.member.next_deadline()
        if deadline == conf.deadline and conf.timer is not None:
            return
        if conf.timer is not None:
            conf.timer.cancel()
            conf.timer = None
        conf.deadline = deadline
        if deadline is not None:
            conf.timer = self.loop.call_at(deadline, self._fire, conf.group)

    def close(self) -> None:
        for conf in self.conferences.values():
            if conf.timer is not None:
                conf.timer.cancel()
                conf.timer = None
