"""A conference's life above the protocol stack, as a sans-I/O state machine.

Why: epochs, re-keys, receipts, the outbox of our own messages and rejoins decide whether a
typed line reaches everybody, and whether one member can stall the others.  They are protocol
logic, so they live here in the style of :mod:`secchat.protocols`: inputs (the stack's events,
``send_text``, ``rekey``, ``leave``, ``handle_timer(now)``), outputs (:data:`Action`: join or
close an epoch, multicast, persist, store, show), explicit deadlines, no I/O and no clock of its
own.  The asyncio chat app (:mod:`.session`) and the simulator's ``conference`` check
(:mod:`secchat.sim.checker`) drive this one class.

What it guarantees (the simulator checks it):

* **Nothing typed is lost.** A line accepted by :meth:`ConferenceCore.send_text` gets a message
  number ``mid`` (per sender, growing across restarts: it is in the saved state) and stays in
  the outbox -- persisted before ``send_text`` returns -- until every other member confirmed it.
  It is multicast in the current epoch once that epoch has its key, and again in every later
  epoch while unconfirmed, and again after :attr:`CoreConfig.resend_after` (doubling) if a live
  member has not confirmed it.  Receivers deliver each sender's messages once, in ``mid``
  order: a message above the next expected one is held (bounded) until the gap is filled or the
  sender says it gave the gap up (``floor``: its oldest message still kept).
* **Exactly once, also across restarts.** Per sender, the highest ``mid`` delivered is saved
  with the delivered message itself (one write): a replayed or re-sent message at or below it is
  dropped, whatever epoch, incarnation or frame it arrives in.
* **Re-keys are bounded and agreed.** A re-key request names ``e + 1`` and is multicast in epoch
  ``e``; a member follows another one to a newer epoch when that member shows to be there (its
  frames for an instance we lack, ``InstanceSeen``, or its re-key request): within
  :attr:`CoreConfig.follow_window` epochs on the word of one member, further when two members
  say so.  Each member can move us at most once per :attr:`CoreConfig.move_interval`
  (later moves wait, they are not dropped: everybody ends on the highest epoch).  Concurrent
  re-keys from several members name the same ``e + 1`` and so the same key exchange.  At most
  two epochs are open: the current one, and the last keyed one until the current has its key.
* **Liveness after everyone restarted.** A member that rejoins an epoch from its write-ahead
  state without the decision abstains in that key exchange (it may have voted).  If the epoch
  still has no key :attr:`CoreConfig.abstain_grace` later, it starts epoch ``e + 1`` itself: a
  fresh exchange in which everyone votes, so the conference never waits forever for votes that
  cannot come (docs/app.md says why this and not a saved vote).
* **Receipts are cheap.** A receipt lists, per sender, the highest ``mid`` delivered (at most n
  entries; one is checked per entry): O(entries) work, plus each of our messages becoming
  confirmed by a member once.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

import msgspec

__all__ = [
    "Action",
    "ChatMessage",
    "CloseEpoch",
    "ConferenceCore",
    "ConferenceState",
    "CoreConfig",
    "CoreError",
    "JoinEpoch",
    "KeyStatus",
    "MemberStatus",
    "Multicast",
    "Notice",
    "Outgoing",
    "Persist",
    "Show",
    "Store",
    "decode_payload",
]

log = logging.getLogger("secchat.app.conference")

MAX_TEXT = 64 * 1024
#: Epochs are tag parts (``codec.check_tag``: below 2**63); a peer's payload may not go near that.
MAX_EPOCH = 1 << 48


# --------------------------------------------------------------------------- what interfaces see


@dataclass(frozen=True)
class MemberStatus:
    name: str
    up: bool
    #: how we reach the member while it is up: "direct" (TLS over TCP) or "relay" (None: unknown)
    path: str | None = None


@dataclass(frozen=True)
class KeyStatus:
    established: bool
    epoch: int
    fingerprint: str | None
    contributors: tuple[str, ...]


@dataclass(frozen=True)
class ChatMessage:
    sender: str
    sent_at: datetime
    text: str
    state: str  # "sending" | "sent" | "delivered" | "failed"
    epoch: int
    #: our own messages: a number that stays the same from "sending" to "delivered" (the
    #: message's ``mid``; None for others')
    local_id: int | None = None
    #: our own messages: the members that confirmed they got it (receipts)
    seen_by: tuple[str, ...] = ()
    #: the sender's message number (one per sender, growing across its restarts)
    mid: int | None = None


@dataclass(frozen=True)
class Notice:
    text: str


@dataclass(frozen=True)
class OtherRecord(Notice):
    """``member`` holds another record of this conference (same id, another creator, member
    list or version): the two never share a key, and the member counts as crashed here.
    ``creator`` and ``members`` are what that member says of its record."""

    member: str = ""
    creator: str = ""
    members: int = 0


AppEvent = MemberStatus | KeyStatus | ChatMessage | Notice


class CoreError(Exception):
    """A user request that cannot be done now: ``str(e)`` is one sentence, ``code`` for programs."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- payloads

Epoch = Annotated[int, msgspec.Meta(ge=0, lt=MAX_EPOCH)]
Mid = Annotated[int, msgspec.Meta(ge=1, lt=1 << 62)]
#: Seconds since 1970, within what ``datetime`` can show.
Timestamp = Annotated[float, msgspec.Meta(ge=0, le=253402300799)]
Index = Annotated[int, msgspec.Meta(ge=0, lt=1 << 16)]


class Text(msgspec.Struct, tag="text", frozen=True):
    """A chat message: ``mid`` numbers the sender's messages; ``floor`` is the sender's oldest
    message it still keeps (it will never send one below: a receiver waiting for one gives up)."""

    mid: Mid
    floor: Mid
    text: Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
    sent_at: Timestamp


class Rekey(msgspec.Struct, tag="rekey", frozen=True):
    """"Start epoch ``epoch``": valid only as ``e + 1`` multicast in epoch ``e``."""

    epoch: Epoch


class EpochHint(msgspec.Struct, tag="epoch", frozen=True):
    """Sent over the current epoch when a member comes up or speaks in an epoch we closed: its
    frames show the member where we are (they reach it as an instance it lacks)."""

    epoch: Epoch


class Seen(msgspec.Struct, tag="seen", frozen=True):
    """Receipts: per sender (member index), the highest ``mid`` delivered here (cumulative)."""

    upto: Annotated[list[tuple[Index, Mid]], msgspec.Meta(max_length=1024)]


Payload = Text | Rekey | EpochHint | Seen
_decoder = msgspec.msgpack.Decoder(Payload)
_encode = msgspec.msgpack.encode


def decode_payload(data: bytes) -> Payload:
    """A peer's payload; ``msgspec.DecodeError``/``ValidationError`` on anything else."""
    return _decoder.decode(data)


# --------------------------------------------------------------------------- saved state


class Outgoing(msgspec.Struct, frozen=True):
    """One of our messages, kept (persisted) until every other member confirmed it."""

    mid: int
    text: str
    sent_at: float


class ConferenceState(msgspec.Struct):
    """What the core keeps across restarts (the outbox is persisted entry by entry:
    :class:`Store` and :class:`Persist` carry what changed)."""

    epoch: int = 0
    next_mid: int = 1
    #: per sender name: the highest mid delivered here (replays at or below are dropped)
    delivered: dict[str, int] = msgspec.field(default_factory=dict)
    #: per member name: the highest of our mids it confirmed
    acked: dict[str, int] = msgspec.field(default_factory=dict)
    #: secure multicast's per-sender high-water marks (incarnation, seq) in epoch
    #: ``marks_epoch``, kept by the driver: a rejoin of that epoch accepts nothing at or below
    marks_epoch: int = -1
    marks: dict[int, tuple[int, int]] = msgspec.field(default_factory=dict)


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class JoinEpoch:
    """Start ``epoch``'s secure multicast (write-ahead state first); the driver then calls
    :meth:`ConferenceCore.on_joined`."""

    epoch: int


@dataclass(frozen=True)
class CloseEpoch:
    """Erase ``epoch``'s keys; everything the stack keeps for it is released."""

    epoch: int


@dataclass(frozen=True)
class Multicast:
    epoch: int
    payload: bytes
    #: our messages in it (a driver that fails to send reports them: ``multicast_failed``)
    mids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Persist:
    """Make ``state`` durable, together with the :class:`Store` actions of the same step
    (one write): ``outbox_add`` joined the outbox, everything at or below ``outbox_drop`` left it."""

    state: ConferenceState
    outbox_add: tuple[Outgoing, ...] = ()
    outbox_drop: int = 0


@dataclass(frozen=True)
class Store:
    """A message for the local history (ours when first sent, others' when delivered)."""

    message: ChatMessage


@dataclass(frozen=True)
class Show:
    event: AppEvent


Action = JoinEpoch | CloseEpoch | Multicast | Persist | Store | Show


@dataclass(frozen=True)
class CoreConfig:
    #: a member (we too) can move us to a newer epoch at most this often
    move_interval: float = 2.0
    #: how far above our epoch one member's word takes us (two members' take us anywhere)
    follow_window: int = 4
    #: rejoined without the decision and abstaining: start a fresh epoch after this long
    abstain_grace: float = 3.0
    receipt_period: float = 0.3
    #: an unconfirmed message is multicast again after this long (doubling each time)
    resend_after: float = 2.0
    resend_max: float = 30.0
    #: our messages not sent yet (no key): beyond, send_text refuses
    max_unsent: int = 1000
    #: our messages kept for confirmation: beyond, the oldest sent ones are given up
    max_outbox: int = 2000
    max_outbox_bytes: int = 8 << 20
    #: per sender, messages held until the gap before them fills
    max_held: int = 256
    max_held_bytes: int = 1 << 20
    #: at most one epoch hint per this long
    hint_period: float = 1.0


@dataclass
class _Entry:
    out: Outgoing
    size: int
    sent_epoch: int = -1  # the epoch it was last multicast in (-1: never)
    next_resend: float = 0.0
    backoff: float = 0.0
    shown: str = "sending"


@dataclass
class _Held:
    messages: dict[int, tuple[Text, int]] = field(default_factory=dict)
    size: int = 0


def _mid_of(e: _Entry) -> int:
    return e.out.mid


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


class ConferenceCore:
    """One member's view of one conference (members by name, ``me`` among them)."""

    def __init__(
        self,
        conference: str,
        members: Sequence[str],
        me: str,
        now: float,
        *,
        state: ConferenceState | None = None,
        outbox: Sequence[Outgoing] = (),
        config: CoreConfig | None = None,
    ) -> None:
        if me not in members:
            raise ValueError(f"{me} is not a member of {conference}")
        self.id = conference
        self.members = tuple(members)
        self.me = me
        self.my_index = self.members.index(me)
        self.others = tuple(m for m in self.members if m != me)
        self.config = config or CoreConfig()
        self.state = state if state is not None else ConferenceState()
        self.stats: Counter[str] = Counter()
        self._actions: list[Action] = []
        self._dirty = False
        self._outbox_add: list[Outgoing] = []
        self._outbox_drop = 0
        self._outbox: list[_Entry] = []  # by mid, ascending
        self._outbox_bytes = 0
        for out in sorted(outbox, key=lambda o: o.mid):
            if out.mid < self.state.next_mid:
                self._append(out)
        self.epoch = self.state.epoch
        self.fingerprint: str | None = None
        self._open: set[int] = set()
        self._keyed: set[int] = set()
        self._claims: dict[int, int] = {}  # member index -> highest epoch it showed to be at
        self._charged: dict[int, float] = {}  # member index -> when it last moved us
        self._move_at: float | None = None
        self._abstain_at: float | None = None
        self._held: dict[str, _Held] = {}
        self._receipt_due = False
        self._receipt_at: float | None = None
        self._resend_at: float | None = None
        self._hint_due = False
        self._last_hint = -1e18
        self._up: dict[str, bool] = {}
        self._paths: dict[str, str | None] = {}
        self._left = False
        self._now = now
        self.sent = 0
        self.delivered = 0

    # ------------------------------------------------------------------ driver interface

    def take_actions(self) -> list[Action]:
        self._flush_persist()
        out, self._actions = self._actions, []
        return out

    def next_deadline(self) -> float | None:
        if self._left:
            return None
        times = [t for t in (self._move_at, self._abstain_at, self._receipt_at) if t is not None]
        if self._hint_due and self.established:
            times.append(self._last_hint + self.config.hint_period)
        if self.established and self._resend_at is not None:
            times.append(self._resend_at)
        soonest = min(times, default=None)
        return None if soonest is None else max(soonest, self._now)

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self._left:
            return
        if self._move_at is not None and now >= self._move_at:
            self._move_at = None
            self._consider(now)
        if self._abstain_at is not None and now >= self._abstain_at:
            self._abstain_at = None
            if not self.established:
                self._show(Notice(f"no key in epoch {self.epoch} of {self.id} (votes lost in restarts): "
                                  f"starting epoch {self.epoch + 1}"))
                self._charged[self.my_index] = now
                self._move(self.epoch + 1)
        if self._receipt_at is not None and now >= self._receipt_at:
            self._receipt_at = None
            self._send_receipt(now)
        if self._hint_due and self.established and now >= self._last_hint + self.config.hint_period:
            self._send_hint(now)
        if self.established and self._resend_at is not None and now >= self._resend_at:
            self._resend_due(now)

    # ------------------------------------------------------------------ inputs: the user

    def start(self) -> None:
        """Join the saved epoch (0 for a new conference)."""
        self._show(KeyStatus(False, self.epoch, None, ()))
        self._open.add(self.epoch)
        self._actions.append(JoinEpoch(self.epoch))

    def send_text(self, text: str, now: float) -> ChatMessage:
        """Accept a line from the user: persisted in the outbox, sent once the key exists."""
        self._now = now
        self._check_open()
        size = len(text.encode("utf-8"))
        if size > MAX_TEXT:
            raise CoreError(f"a message is at most {MAX_TEXT} bytes", "too_long")
        unsent = sum(1 for e in self._outbox if e.sent_epoch < 0)
        if unsent >= self.config.max_unsent:
            raise CoreError(
                f"{unsent} messages are waiting for the key of {self.id}: wait until they are sent",
                "send_failed",
            )
        out = Outgoing(self.state.next_mid, text, now)
        self.state.next_mid += 1
        entry = self._append(out)
        self._outbox_add.append(out)
        self._dirty = True
        self._trim_outbox()
        msg = self._own_message(entry)
        self._show(msg)
        if self.established:
            self._multicast_entries([entry], now)
        return msg

    def rekey(self, now: float) -> None:
        """Start epoch ``e + 1`` (every member follows)."""
        self._now = now
        self._check_open()
        last = self._charged.get(self.my_index)
        if last is not None and now < last + self.config.move_interval:
            wait = last + self.config.move_interval - now
            raise CoreError(f"the key of {self.id} changed moments ago: re-key again in {wait:.1f} s",
                            "rekey_too_soon")
        new = self.epoch + 1
        if self.established:
            self._actions.append(Multicast(self.epoch, _encode(Rekey(new))))
        self._charged[self.my_index] = now
        self._show(Notice(f"re-keying {self.id}: epoch {new}"))
        self._move(new)

    def leave(self, now: float) -> None:
        """Stop taking part: what is saved stays (joining again continues from it)."""
        self._now = now
        if self._left:
            return
        self._dirty = True
        self._flush_persist()
        self._left = True
        for e in sorted(self._open):
            self._actions.append(CloseEpoch(e))
        self._open.clear()
        self._show(Notice(f"left {self.id}"))

    # ------------------------------------------------------------------ inputs: the stack

    def on_joined(self, epoch: int, *, abstains: bool, now: float) -> None:
        """The driver joined ``epoch`` (:class:`JoinEpoch`); ``abstains``: without a vote in it."""
        self._now = now
        if abstains and epoch == self.epoch and epoch not in self._keyed:
            self._abstain_at = now + self.config.abstain_grace

    def on_key(self, epoch: int, fingerprint: str, contributors: Sequence[int], now: float) -> None:
        self._now = now
        if self._left or epoch not in self._open:
            return
        self._keyed.add(epoch)
        if epoch != self.epoch:
            return  # an older epoch's key, late: it delivers what was sent in it, nothing more
        self.fingerprint = fingerprint
        self._abstain_at = None
        for old in sorted(e for e in self._open if e < epoch):
            self._close(old)
            self._show(Notice(f"keys of epoch {old} erased"))
        self._show(KeyStatus(True, epoch, fingerprint, tuple(self.members[i] for i in contributors)))
        # everything unconfirmed goes out again in the new epoch (receivers drop what they have)
        self._multicast_entries([e for e in self._outbox if self._unconfirmed(e)], now)
        if self._hint_due:
            self._send_hint(now)

    def on_delivered(self, epoch: int, sender: int, payload: bytes, now: float) -> None:
        """A payload of another member, delivered by secure multicast of ``epoch``."""
        self._now = now
        if self._left or not 0 <= sender < len(self.members) or sender == self.my_index:
            return
        try:
            msg = decode_payload(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.stats["core.dropped.undecodable"] += 1  # counted, not logged: a peer could flood the log
            return
        self._claim(sender, epoch, now)
        if isinstance(msg, Text):
            self._on_text(sender, epoch, msg)
        elif isinstance(msg, Seen):
            self._on_seen(sender, msg)
        elif isinstance(msg, Rekey):
            if msg.epoch == epoch + 1:
                self._claim(sender, msg.epoch, now)
            else:
                self.stats["core.dropped.bad_rekey"] += 1
        # EpochHint: its arrival was the news (the claim above)

    def on_instance_seen(self, epoch: int, sender: int, now: float) -> None:
        """``sender`` sent a frame for an epoch of ours we have not started: it is there."""
        self._now = now
        if not self._left and 0 <= sender < len(self.members) and sender != self.my_index:
            self._claim(sender, epoch, now)

    def on_closed_epoch_frame(self, epoch: int, sender: int, now: float) -> None:
        """``sender`` speaks in an epoch we closed: it is behind; show it where we are."""
        self._now = now
        if not self._left and epoch < self.epoch:
            self._hint_due = True

    def on_peer(self, name: str, up: bool, now: float, path: str | None = None) -> None:
        self._now = now
        if name == self.me or name not in self.members:
            return
        path = path if up else None
        if self._up.get(name) == up and self._paths.get(name) == path:
            return
        came_up = up and not self._up.get(name)
        self._up[name] = up
        self._paths[name] = path
        self._show(MemberStatus(name, up, path))
        if came_up:
            self._hint_due = True

    def multicast_failed(self, epoch: int, mids: Sequence[int], reason: str) -> None:
        """The driver could not hand a :class:`Multicast` to the stack (a key fork, say): the
        messages stay in the outbox, unsent in that epoch."""
        wanted = set(mids)
        for e in self._outbox:
            if e.out.mid in wanted and e.sent_epoch == epoch:
                e.sent_epoch = -1 if e.shown == "sending" else epoch - 1
        if mids:
            self._show(Notice(f"cannot send in {self.id} now ({reason}): your messages wait"))

    # ------------------------------------------------------------------ properties

    @property
    def established(self) -> bool:
        return self.fingerprint is not None and self.epoch in self._keyed

    @property
    def open_epochs(self) -> frozenset[int]:
        return frozenset(self._open)

    def outbox(self) -> list[Outgoing]:
        return [e.out for e in self._outbox]

    def up(self) -> dict[str, bool]:
        return dict(self._up)

    def memory(self) -> int:
        """Entries this core holds (the simulator checks it stays bounded)."""
        return (len(self._outbox) + sum(len(h.messages) for h in self._held.values())
                + len(self._claims) + len(self._open))

    # ------------------------------------------------------------------ epochs

    def _claim(self, sender: int, epoch: int, now: float) -> None:
        if epoch <= self._claims.get(sender, -1):
            return
        self._claims[sender] = epoch
        if epoch > self.epoch:
            self._consider(now)

    def _consider(self, now: float) -> None:
        """Follow to the newest epoch the claims justify, as far as the rate limit allows."""
        if self._left:
            return
        cfg = self.config
        near = [c for c in self._claims.values() if self.epoch < c <= self.epoch + cfg.follow_window]
        target = max(near, default=self.epoch)
        ranked = sorted(self._claims.values(), reverse=True)
        quorum = min(2, len(self.others))
        if quorum and len(ranked) >= quorum:
            target = max(target, ranked[quorum - 1])
        if target <= self.epoch:
            return
        causes = [i for i, c in self._claims.items() if c >= target]
        ready = [i for i in causes if now >= self._charged.get(i, -1e18) + cfg.move_interval]
        if not ready:
            self._move_at = min(self._charged[i] + cfg.move_interval for i in causes)
            return
        cause = min(ready, key=lambda i: self._charged.get(i, -1e18))
        self._charged[cause] = now
        self._show(Notice(f"{self.members[cause]} is at epoch {target} of {self.id}: following"))
        self._move(target)

    def _move(self, epoch: int) -> None:
        if epoch <= self.epoch or epoch >= MAX_EPOCH:
            return
        keep = self.epoch if self.epoch in self._keyed else None  # delivers what is in flight
        for e in sorted(self._open):
            if e != keep:
                self._close(e)
        self.epoch = epoch
        self.state.epoch = epoch
        self.fingerprint = None
        self._abstain_at = None
        self._dirty = True
        self._flush_persist()  # the epoch is saved before its key exchange starts
        self._open.add(epoch)
        self._show(KeyStatus(False, epoch, None, ()))
        self._actions.append(JoinEpoch(epoch))
        self._consider(self._now)  # a newer claim may already be waiting (rate-limited)

    def _close(self, epoch: int) -> None:
        self._open.discard(epoch)
        self._keyed.discard(epoch)
        self._actions.append(CloseEpoch(epoch))

    def _send_hint(self, now: float) -> None:
        if not self.established:
            return  # without a key the hint waits for it
        self._hint_due = False
        if self.epoch == 0:
            return  # no one is behind epoch 0
        self._last_hint = now
        self._actions.append(Multicast(self.epoch, _encode(EpochHint(self.epoch))))

    # ------------------------------------------------------------------ our messages

    def _append(self, out: Outgoing) -> _Entry:
        entry = _Entry(out, len(out.text.encode("utf-8")) + 32)
        self._outbox.append(entry)
        self._outbox_bytes += entry.size
        return entry

    def _floor(self) -> int:
        return self._outbox[0].out.mid if self._outbox else self.state.next_mid

    def _min_acked(self) -> int:
        return min((self.state.acked.get(m, 0) for m in self.others), default=1 << 62)

    def _unconfirmed(self, e: _Entry) -> bool:
        return e.out.mid > self._min_acked()

    def _multicast_entries(self, entries: list[_Entry], now: float) -> None:
        floor = self._floor()
        for e in entries:
            out = e.out
            payload = _encode(Text(out.mid, floor, out.text, out.sent_at))
            first = e.sent_epoch < 0
            e.sent_epoch = self.epoch
            e.backoff = self.config.resend_after
            e.next_resend = now + e.backoff
            if self._resend_at is None or e.next_resend < self._resend_at:
                self._resend_at = e.next_resend
            self._actions.append(Multicast(self.epoch, payload, (out.mid,)))
            if first:
                self.sent += 1
                e.shown = "sent" if self.others else "delivered"
                msg = self._own_message(e)
                self._actions.append(Store(msg))
                self._show(msg)

    def _resend_due(self, now: float) -> None:
        """Multicast again what a live member has not confirmed after its back-off."""
        acked, up = self.state.acked, self._up
        confirmed = self._min_acked()  # once: every entry at or below it is confirmed by all
        self._resend_at = None
        for e in self._outbox:
            if e.sent_epoch < 0:
                continue  # never sent: it goes with the key (on_key)
            if e.next_resend <= now and any(up.get(m, True) and acked.get(m, 0) < e.out.mid for m in self.others):
                backoff = min(e.backoff * 2, self.config.resend_max)
                self._multicast_entries([e], now)
                e.backoff = backoff
                e.next_resend = now + backoff
            elif e.next_resend <= now:
                e.next_resend = now + e.backoff  # nobody live misses it: look again later
            if e.out.mid > confirmed and (self._resend_at is None or e.next_resend < self._resend_at):
                self._resend_at = e.next_resend

    def _own_message(self, e: _Entry) -> ChatMessage:
        mid = e.out.mid
        seen = tuple(m for m in self.others if self.state.acked.get(m, 0) >= mid)
        return ChatMessage(self.me, _ts(e.out.sent_at), e.out.text, e.shown, self.epoch, mid, seen, mid)

    def _trim_outbox(self) -> None:
        """Drop what every other member confirmed, and the oldest sent beyond the bounds."""
        acked = self._min_acked()
        cfg = self.config
        outbox, k, size = self._outbox, 0, self._outbox_bytes
        while k < len(outbox) and (
            outbox[k].out.mid <= acked
            or ((len(outbox) - k > cfg.max_outbox or size > cfg.max_outbox_bytes) and outbox[k].sent_epoch >= 0)
        ):
            size -= outbox[k].size
            if outbox[k].out.mid > acked:
                self.stats["core.outbox.given_up"] += 1
            k += 1
        if k:
            drop = outbox[k - 1].out.mid
            del outbox[:k]  # one shift of the list, not one per message
            self._outbox_bytes = size
            self._outbox_drop = max(self._outbox_drop, drop)
            self._dirty = True

    def _on_seen(self, sender: int, seen: Seen) -> None:
        name = self.members[sender]
        if len(seen.upto) > len(self.members):
            self.stats["core.dropped.oversized_receipt"] += 1
            return
        for index, mid in seen.upto:
            if index != self.my_index:
                continue  # about others' messages: not ours to track
            before = self.state.acked.get(name, 0)
            mid = min(mid, self.state.next_mid - 1)  # a member cannot confirm what we never sent
            if mid <= before:
                return
            self.state.acked[name] = mid
            self._dirty = True
            # our messages in (before, mid]: each becomes confirmed by this member once
            lo = bisect.bisect_right(self._outbox, before, key=_mid_of)  # the outbox is in mid order
            hi = bisect.bisect_right(self._outbox, mid, key=_mid_of)
            live = {m for m in self.others if self._up.get(m, True)}
            for e in self._outbox[lo:hi]:
                if e.sent_epoch < 0:
                    continue
                seen_by = {m for m in self.others if self.state.acked.get(m, 0) >= e.out.mid}
                e.shown = "delivered" if seen_by >= live else "sent"
                self._show(self._own_message(e))
            self._trim_outbox()
            return

    # ------------------------------------------------------------------ others' messages

    def _on_text(self, sender: int, epoch: int, msg: Text) -> None:
        name = self.members[sender]
        delivered = self.state.delivered
        if name not in delivered:
            # a sender we never heard: its stream starts at the oldest message it still keeps
            # (a late member gets those too; what is older, the sender gave up)
            delivered[name] = min(msg.mid, msg.floor) - 1
        if msg.mid <= delivered[name]:
            self.stats["core.dropped.duplicate"] += 1
            return
        held = self._held.setdefault(name, _Held())
        hw = delivered[name]
        if msg.floor > hw + 1:  # the sender gave up what we still miss below its floor
            below = sorted(m for m in held.messages if m < msg.floor)
            lost = msg.floor - hw - 1 - len(below)
            for m in below:
                self._deliver(name, *self._unhold(held, m))
            delivered[name] = max(delivered[name], msg.floor - 1)
            self._dirty = True
            if lost > 0:
                self._show(Notice(f"{lost} message{'s' if lost != 1 else ''} from {name} "
                                  "were lost while you were away"))
        if msg.mid > delivered[name] and msg.mid not in held.messages:
            if len(held.messages) >= self.config.max_held or held.size + len(msg.text) > self.config.max_held_bytes:
                self.stats["core.dropped.held_full"] += 1  # the sender sends it again
            else:
                held.messages[msg.mid] = (msg, epoch)
                held.size += len(msg.text)
        while delivered[name] + 1 in held.messages:
            self._deliver(name, *self._unhold(held, delivered[name] + 1))

    @staticmethod
    def _unhold(held: _Held, mid: int) -> tuple[Text, int]:
        text, epoch = held.messages.pop(mid)
        held.size -= len(text.text)
        return text, epoch

    def _deliver(self, name: str, msg: Text, epoch: int) -> None:
        self.state.delivered[name] = max(self.state.delivered.get(name, 0), msg.mid)
        self._dirty = True
        self.delivered += 1
        chat = ChatMessage(name, _ts(msg.sent_at), msg.text, "delivered", epoch, None, (), msg.mid)
        self._actions.append(Store(chat))
        self._show(chat)
        if not self._receipt_due:
            self._receipt_due = True
            self._receipt_at = self._now + self.config.receipt_period

    def _send_receipt(self, now: float) -> None:
        if not self._receipt_due:
            return
        if not self.established:
            self._receipt_at = now + self.config.receipt_period
            return
        self._receipt_due = False
        index = {m: i for i, m in enumerate(self.members)}
        upto = [(index[m], mid) for m, mid in self.state.delivered.items() if m in index and mid > 0]
        self._actions.append(Multicast(self.epoch, _encode(Seen(upto))))

    # ------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._left:
            raise CoreError(f"you left conference {self.id!r}", "left")

    def _show(self, event: AppEvent) -> None:
        self._actions.append(Show(event))

    def _flush_persist(self) -> None:
        if self._dirty:
            self._dirty = False
            state = msgspec.structs.replace(
                self.state, delivered=dict(self.state.delivered), acked=dict(self.state.acked),
                marks=dict(self.state.marks),
            )
            self._actions.append(Persist(state, tuple(self._outbox_add), self._outbox_drop))
            self._outbox_add = []
            self._outbox_drop = 0
