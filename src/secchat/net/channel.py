"""The reliable channel to one peer: ordered, exactly-once delivery over paths that break.

Why this shape (aioquic's stream sender / receiver, h11's ``Connection``): the rules that make
a link reliable are the hard part and must be testable without sockets, so they live here, with
no I/O, no clock and no tasks.  :class:`Channel` is driven by API calls -- :meth:`send`,
:meth:`receive`, :meth:`on_session`, :meth:`new_path`, :meth:`handle_timer` -- and the driver
pulls :meth:`frames_to_send` and :meth:`get_timer`.  :mod:`.links` is one driver (TLS over TCP);
the seeded tests are another; anything implementing :class:`Transport` (an ordered path of
frames to the peer, e.g. a relay subject) can carry a channel.

The rules:

* **Numbering.**  Every frame we keep gets the next sequence number of our *session* (a random
  id of this run of the link layer, shared by all our channels).  Only a frame that is kept gets
  a number, so the peer never waits for a gap; a full queue drops the *newest* frame (tail drop).
* **Cumulative acks.**  The receiver's ``rx_next`` (every frame below it was delivered) rides
  on each data frame it sends, or on an explicit ``Ack`` once ``ack_every_frames`` /
  ``ack_every_bytes`` accumulated or ``ack_delay`` passed (a deadline, not a sleep).  An ack is
  only ever the count of frames *delivered*: a frame parked out of order is not acknowledged.
* **Paths.**  The driver calls :meth:`new_path` whenever frames start going out on another
  connection; the channel then resends from the oldest unacknowledged frame (a cursor moves
  back: nothing is copied).  The peer's ``Hello`` (:meth:`on_session`) says what it has, so the
  resend starts where the peer is, one round trip after the connection is up.  Frames can
  arrive twice (resent) or out of order (an old path still draining, or a transport that
  reorders): duplicates are dropped, early frames wait in a reorder window bounded like the
  sender's unacknowledged bytes; beyond it the peer is misbehaving (:class:`FrameError`).
* **A new run of the peer** (another session in its ``Hello``) starts from the ``resend_from``
  the Hello names; frames still arriving from the previous run are stale and dropped.
  Sessions grow from run to run (the driver derives them from a persisted incarnation or the
  clock), so a late Hello of a replaced run is refused, and a receiver never goes back to a
  run it left and delivers its frames twice.  Every
  Hello's ``resend_from`` is a floor: frames below it were acknowledged by an earlier run of
  ours and will never come.
* **Bounded.**  Frames never sent: ``queue_max_frames`` / ``queue_max_bytes``.  Frames sent and
  not yet acknowledged: ``unacked_max_bytes``.  And each path starts with a window of
  ``initial_window`` bytes in flight that doubles with every acknowledgement, so a peer that
  reconnects but never acknowledges costs ``initial_window`` of resending per connection, not
  everything we hold for it.  A frame larger than the window still goes out alone (so
  ``unacked_max_bytes`` is exceeded by at most one frame; the links keep it above the largest
  frame).  Unacknowledged frames are also bounded in number by the peer's reorder window.
* **Stalls.**  Data in flight with no acknowledgement for ``stall_timeout`` means the path is
  dead even if TCP has not noticed (a partition swallows packets silently; TCP's retransmission
  backoff would wait many seconds after the heal): :attr:`stalled` becomes true and the driver
  opens another path.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import FrameError
from .framing import Ack, Data, data_size, encode_ack, encode_data

__all__ = ["Channel", "ChannelConfig", "Transport"]


class Transport(Protocol):
    """One ordered path of frames to a peer -- the seam where a transport plugs in.

    A TLS connection (:mod:`.links`) is the first; a relay subject can be another.  The channel
    never touches it: its driver writes what :meth:`Channel.frames_to_send` returns and feeds
    what arrives to :meth:`Channel.receive` with the ``peer_session`` of the path's Hello.
    """

    peer_session: int

    def write(self, frames: Sequence[bytes]) -> None:
        """Queue complete frames (length prefix included) for sending, in order, in one go."""

    def drain(self) -> Awaitable[None]:
        """Wait until the path's write buffer is below its high-water mark."""

    def buffered(self) -> int:
        """Bytes written but not yet handed to the network."""

    def abort(self) -> None:
        """Drop the path now (what it still buffers is lost: the channel resends it)."""


@dataclass(frozen=True)
class ChannelConfig:
    """Bounds and timers of one channel (see the module docstring for what each bounds)."""

    queue_max_frames: int = 4096
    queue_max_bytes: int = 8 << 20
    unacked_max_bytes: int = 8 << 20
    initial_window: int = 1 << 20
    ack_every_frames: int = 64
    ack_every_bytes: int = 256 << 10
    ack_delay: float = 0.05
    stall_timeout: float = 2.0

    def __post_init__(self) -> None:
        if self.queue_max_frames < 1 or self.queue_max_bytes < 1:
            raise ValueError("queue bounds must be positive")
        if not 0 < self.initial_window <= self.unacked_max_bytes:
            raise ValueError("need 0 < initial_window <= unacked_max_bytes")
        if self.ack_delay <= 0:
            raise ValueError("ack_delay must be positive")
        if self.ack_every_frames < 1 or not 0 < self.ack_every_bytes < self.unacked_max_bytes:
            raise ValueError(
                "need ack_every_frames >= 1 and 0 < ack_every_bytes < unacked_max_bytes"
            )
        if self.stall_timeout <= self.ack_delay:
            raise ValueError("stall_timeout must exceed ack_delay (else every path stalls)")

    @property
    def reorder_max_frames(self) -> int:
        return 4 * self.queue_max_frames


#: (seq, group, payload, size)
_Item = tuple[int, str, bytes, int]

_STATS = (
    "frames_dropped_queue_full",
    "frames_resent",
    "frames_duplicate",
    "frames_reordered",
    "frames_stale_session",
    "acks_sent",
    "queue_peak_bytes",
)


class Channel:
    """Reliable, ordered, exactly-once frames to and from one peer (no I/O; see the module doc).

    ``session`` names this run of ours; ``stats`` (shared by all channels of a link manager)
    gets the counters named in ``_STATS``.
    """

    __slots__ = (
        "_ack_at",
        "_ack_now",
        "_acked",
        "_cursor",
        "_high",
        "_inflight_bytes",
        "_next_seq",
        "_queue",
        "_queued_bytes",
        "_reorder",
        "_reorder_bytes",
        "_rx_unacked_bytes",
        "_rx_unacked_frames",
        "_stall_at",
        "_unacked",
        "_unacked_bytes",
        "_window",
        "config",
        "dropped",
        "last_progress",
        "overflowing",
        "rx_next",
        "rx_session",
        "session",
        "stalled",
        "stats",
    )

    def __init__(
        self, session: int, config: ChannelConfig | None = None, stats: dict[str, int] | None = None
    ) -> None:
        self.session = session
        self.config = cfg = config or ChannelConfig()
        self.stats = stats if stats is not None else {}
        for key in _STATS:
            self.stats.setdefault(key, 0)
        # sending: [acked, high) sent and unacknowledged, [high, next_seq) never sent;
        # cursor: the next frame to put on the current path (< high while resending)
        self._unacked: deque[_Item] = deque()
        self._queue: deque[_Item] = deque()
        self._unacked_bytes = self._queued_bytes = self._inflight_bytes = 0
        self._acked = self._high = self._cursor = self._next_seq = 0
        self._window = cfg.initial_window
        self._stall_at: float | None = None
        self.stalled = False
        self.dropped = 0
        self.overflowing = False
        self.last_progress = 0.0  # when a frame last left the queue (application back-pressure)
        # receiving
        self.rx_session = 0
        self.rx_next = 0
        self._reorder: dict[int, tuple[str, bytes]] = {}
        self._reorder_bytes = 0
        self._rx_unacked_frames = self._rx_unacked_bytes = 0
        self._ack_at: float | None = None
        self._ack_now = False

    # ------------------------------------------------------------------ sending

    def send(self, group: str, payload: bytes) -> bool:
        """Queue one frame (``group``/``payload`` already checked); False if tail-dropped."""
        cfg = self.config
        size = data_size(group, payload)
        if (
            len(self._queue) >= cfg.queue_max_frames
            or self._queued_bytes + size > cfg.queue_max_bytes
        ):
            self.dropped += 1
            self.overflowing = True
            self.stats["frames_dropped_queue_full"] += 1
            return False
        self._queue.append((self._next_seq, group, payload, size))
        self._next_seq += 1
        self._queued_bytes += size
        if self._queued_bytes > self.stats["queue_peak_bytes"]:
            self.stats["queue_peak_bytes"] = self._queued_bytes
        return True

    def frames_to_send(self, now: float, max_bytes: int = 1 << 62) -> list[bytes]:
        """Encoded frames for the current path, about ``max_bytes`` of them (at least one).

        Resends come first, then new frames, within the path's window; every data frame
        carries our acknowledgement, and an explicit ``Ack`` goes out when one is due and no
        data frame can carry it.
        """
        out: list[bytes] = []
        ack = self._ack_point()
        budget = max_bytes
        while budget > 0:
            step = self._next_item()
            if step is None:
                break
            item, fresh = step
            size = item[3]
            if fresh:
                self._queue.popleft()
                self._queued_bytes -= size
                self._unacked.append(item)
                self._unacked_bytes += size
                self._high += 1
                self.last_progress = now
            else:
                self.stats["frames_resent"] += 1
            self._cursor += 1
            if not self._inflight_bytes:
                self._stall_at = now + self.config.stall_timeout
            self._inflight_bytes += size
            out.append(encode_data(item[1], item[2], item[0], ack))
            budget -= size
        if self.overflowing and self._drained():
            self.overflowing = False
        if out:
            self._acked_by_us()
        elif self._ack_now:
            out.append(encode_ack(ack))
            self.stats["acks_sent"] += 1
            self._acked_by_us()
        return out

    def wants_to_send(self) -> bool:
        """Would :meth:`frames_to_send` return anything now?"""
        return self._ack_now or self._next_item() is not None

    def _next_item(self) -> tuple[_Item, bool] | None:
        """The next frame the current path may carry, and whether it is sent for the first time."""
        if self._cursor < self._high:
            item, fresh = self._unacked[self._cursor - self._acked], False
        elif self._queue:
            if len(self._unacked) >= self.config.reorder_max_frames:
                return None  # the peer's reorder window could not hold them all
            item, fresh = self._queue[0], True
        else:
            return None
        if self._inflight_bytes and self._inflight_bytes + item[3] > self._window:
            return None
        return item, fresh

    def has_pending(self) -> bool:
        """Is anything queued or unacknowledged (so that a path to the peer is needed)?"""
        return bool(self._queue) or self._acked < self._high

    def _drained(self) -> bool:
        cfg = self.config
        return (
            self._queued_bytes <= cfg.queue_max_bytes // 2
            and len(self._queue) <= cfg.queue_max_frames // 2
        )

    def _on_ack(self, upto: int, now: float) -> None:
        """The peer delivered every frame of ours below ``upto``."""
        upto = min(upto, self._high)  # a peer cannot acknowledge what we never sent
        if upto <= self._acked:
            return
        for _ in range(upto - self._acked):
            item = self._unacked.popleft()
            self._unacked_bytes -= item[3]
            if item[0] < self._cursor:
                self._inflight_bytes -= item[3]
        self._acked = upto
        if self._cursor < upto:
            self._cursor = upto
            self._inflight_bytes = 0
        self._window = min(self._window * 2, self.config.unacked_max_bytes)
        self._stall_at = now + self.config.stall_timeout if self._inflight_bytes else None
        self.stalled = False

    # ------------------------------------------------------------------ paths

    def hello_fields(self) -> tuple[int, int, int, int]:
        """(session, ack_session, ack_next, resend_from) for the Hello opening a new path."""
        return self.session, self.rx_session, self._ack_point(), self._acked

    def on_session(
        self, peer_session: int, ack_session: int, ack_next: int, resend_from: int, now: float
    ) -> bool:
        """A path's Hello arrived: the peer's run, its view of our frames, where it sends from.

        False if the Hello names an older run of the peer than the one we receive from
        (sessions grow from run to run): that path is stale and the driver closes it.
        """
        if peer_session < self.rx_session:
            self.stats["frames_stale_session"] += 1
            return False
        if peer_session != self.rx_session:  # a new run of the peer: start where it starts
            self.rx_session = peer_session
            self.rx_next = resend_from
            self._reorder.clear()
            self._reorder_bytes = 0
            self._rx_unacked_frames = self._rx_unacked_bytes = 0
            self._ack_at = None
            self._ack_now = False
        elif resend_from > self.rx_next:  # acknowledged by an earlier run of ours: never comes
            self.rx_next = resend_from
            self._reorder.clear()  # what is parked comes again: this path resends from there
            self._reorder_bytes = 0
        if ack_session == self.session:
            self._on_ack(ack_next, now)
        return True

    def new_path(self, now: float) -> None:
        """Frames go out on another path from now on: resend everything unacknowledged."""
        self._cursor = self._acked
        self._inflight_bytes = 0
        self._window = self.config.initial_window
        self._stall_at = None
        self.stalled = False
        if self._rx_unacked_frames:
            self._ack_now = True  # the new path may not have carried our Hello's ack yet

    # ------------------------------------------------------------------ receiving

    def receive(
        self, message: Data | Ack, peer_session: int, now: float
    ) -> list[tuple[str, bytes]]:
        """A frame from the peer, on a path whose Hello named ``peer_session``.

        Returns the ``(group, payload)`` frames now deliverable, in order (possibly none).
        Raises :class:`FrameError` when the peer sends far beyond what it may have in flight.
        """
        if peer_session != self.rx_session:
            self.stats["frames_stale_session"] += 1  # left over from a previous run of the peer
            return []
        if isinstance(message, Ack):
            self._on_ack(message.next, now)
            return []
        self._on_ack(message.ack, now)
        seq = message.seq
        if seq < self.rx_next or seq in self._reorder:
            self.stats["frames_duplicate"] += 1
            return []
        cfg = self.config
        if seq > self.rx_next:  # overtook a frame still in flight (another path, or reordered)
            size = data_size(message.group, message.payload)
            if (
                self._reorder_bytes + size > cfg.unacked_max_bytes
                or len(self._reorder) >= cfg.reorder_max_frames
            ):
                raise FrameError("frames far out of order", code="reorder_overflow")
            self._reorder[seq] = (message.group, message.payload)
            self._reorder_bytes += size
            self.stats["frames_reordered"] += 1
            return []
        delivered = [(message.group, message.payload)]
        nbytes = len(message.payload)
        self.rx_next += 1
        while self.rx_next in self._reorder:
            group, payload = self._reorder.pop(self.rx_next)
            self._reorder_bytes -= data_size(group, payload)
            delivered.append((group, payload))
            nbytes += len(payload)
            self.rx_next += 1
        self._rx_unacked_frames += len(delivered)
        self._rx_unacked_bytes += nbytes
        if (
            self._rx_unacked_frames >= cfg.ack_every_frames
            or self._rx_unacked_bytes >= cfg.ack_every_bytes
        ):
            self._ack_now = True
        elif self._ack_at is None:  # delayed ack, unless a frame of ours carries it first
            self._ack_at = now + cfg.ack_delay
        return delivered

    def _ack_point(self) -> int:
        """What we acknowledge: every frame below it was delivered (never one merely parked)."""
        return self.rx_next

    def _acked_by_us(self) -> None:
        self._rx_unacked_frames = self._rx_unacked_bytes = 0
        self._ack_at = None
        self._ack_now = False

    # ------------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        """The earliest deadline at which :meth:`handle_timer` has something to do."""
        ack = None if self._ack_now else self._ack_at
        stall = None if self.stalled else self._stall_at
        if ack is None:
            return stall
        return ack if stall is None else min(ack, stall)

    def handle_timer(self, now: float) -> None:
        """Deadlines passed: an acknowledgement is due, or the path is declared stalled."""
        if self._ack_at is not None and now >= self._ack_at:
            self._ack_at = None
            self._ack_now = True
        if self._stall_at is not None and now >= self._stall_at and self._inflight_bytes:
            self.stalled = True
            self._stall_at = None

    # ------------------------------------------------------------------ introspection

    @property
    def queued(self) -> tuple[int, int]:
        """(frames, bytes) never sent yet."""
        return len(self._queue), self._queued_bytes

    @property
    def unacked(self) -> tuple[int, int]:
        """(frames, bytes) sent and not yet acknowledged."""
        return len(self._unacked), self._unacked_bytes

    @property
    def reorder_bytes(self) -> int:
        return self._reorder_bytes
