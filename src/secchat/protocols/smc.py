"""Secure multicast (SMC) over the GKE key, one instance per tag, no I/O.

Why: once the group key exists every message is encrypted under it and, in signed mode, signed by
its sender, so only members read it and each is attributed to its true sender; the underlying
multicast is trusted for nothing.  To send m: sign ``("smc-sig", tag, sender, incarnation, seq,
SHA-256(m))`` with the long-term Ed25519 key (a digest, because Ed25519 hashes its input twice),
AES-GCM-encrypt ``m ‖ σ`` under the encryption key with associated data ``(tag, sender,
incarnation, seq)``, multicast.  On receipt: hold until the key exists (bounded), drop replays by
(sender, incarnation, seq) before any crypto, decrypt, verify, deliver in per-sender FIFO order.
Only an authenticated frame moves a stream: it starts a new or resumed one, and behind a gap it
is held however far ahead it is -- when the frames held behind a gap fill the reorder window the
gap is given up (``Lost``), so a sender is never silenced.
**Group mode** skips the signature: the AEAD authenticates the group only.  The trailer after
``m`` is the instance's authentication mode's (:mod:`.auth`: ``signed``, ``burst``, ``pairwise``,
``group``); in ``burst`` mode :meth:`SecureMulticast.multicast` gathers messages and
:meth:`SecureMulticast.flush` (the stack calls it whenever the driver takes its output, so an
isolated message leaves at once) seals them under one signature, ``burst_max`` at most.

``incarnation`` separates the sequence numbers of successive runs of one member (a member that
leaves and rejoins with the same key starts again at seq 0): it must grow from run to run (the
driver uses wall-clock microseconds at start).  Frames of an older incarnation are refused.
A rejoining member passes back its *high-water marks* (:meth:`SecureMulticast.high_water`, saved
with what it delivered): nothing at or below them, nor of an older incarnation, is accepted.

**Nothing lost in silence.**  Links are reliable only while both ends run and their queues have
room; a member cut off by a partition, paused, or restarted misses frames.  So each sender keeps
its recent frames in a bounded *retransmission store* (``store_frames`` / ``store_bytes``), and
every member sends each other member an :class:`SmcStatus` -- its stream position and a key
confirmation -- when its key is established, when a peer comes back (the detector restored it)
and every ``status_period``.  A receiver that sees a sender's position ahead of what it holds,
or a gap that outlives ``resend_after``, asks that sender for the range (:class:`SmcResend`);
the sender answers with the stored frames (verified like any other) and, for what its store no
longer holds, :class:`SmcGone`: the receiver skips those and reports them (:class:`Lost`), the
sender reports them too (:class:`Undelivered`).  A gap is given up without an answer only
after ``gap_timeout`` (the sender is gone), and reported all the same.

**Forks are loud.**  The confirmation in every status is an HMAC under the key-confirmation key:
a member holding another key for this instance is reported (:class:`KeyFork`) and we stop
sending under ours, so no bug anywhere can split a conference silently.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..codec import Tag, canonical, canonical_int, canonical_tuple
from ..crypto import (
    NONCE_SIZE,
    Aead,
    CryptoError,
    GroupKeys,
    Rng,
    Signer,
    Verifier,
    derive_group_keys,
    hmac_sha256,
)
from .auth import MAX_BURST, Authenticator, AuthError, authenticator_class
from .events import (
    Broadcast,
    Delivered,
    Event,
    KeyEstablished,
    KeyFork,
    Lost,
    Send,
    SessionKey,
    SetTimer,
    Undelivered,
)
from .gke import GroupKeyExchange
from .messages import Message, SmcData, SmcGone, SmcResend, SmcStatus

__all__ = ["KeyForked", "SecureMulticast", "SendQueueFull", "SmcLimits"]


class SendQueueFull(RuntimeError):
    """Local misuse: too many messages multicast before the key exists."""


class KeyForked(RuntimeError):
    """Another member holds another key for this instance: we no longer send under ours."""


@dataclass(frozen=True)
class SmcLimits:
    """Bounds on what an SMC instance keeps in memory."""

    max_queued_sends: int = 1024  # our own messages waiting for the key
    max_held: int = 4096  # received frames waiting for the key
    max_held_bytes: int = 32 << 20
    #: out-of-order frames kept per sender behind a gap, and their bytes: when either is
    #: exceeded the gap is given up (reported as lost) and what is held delivered.  The resend
    #: of a gap comes behind everything a link has ahead of it -- up to 8 MiB in flight and
    #: 8 MiB queued (:class:`secchat.net.channel.ChannelConfig`) -- and all of that arrives
    #: meanwhile: twice that, so the answer comes before the window is full
    reorder_window: int = 16384
    reorder_bytes: int = 32 << 20
    #: a gap in a sender's sequence still open after this long is given up too (a frame was lost
    #: in a bounded queue: later messages must not wait forever); far above any link delay
    gap_timeout: float = 30.0
    max_payload: int = 512 * 1024
    #: our recent frames, kept to answer resend requests; beyond either bound the oldest go.
    #: More frames than a link queue holds (4096): a reader learns of a frame its queue dropped
    #: only once the queue ahead of it has drained, and we kept sending meanwhile
    store_frames: int = 16384
    store_bytes: int = 16 << 20
    #: a gap still open this long is asked for (links are FIFO: it is a frame lost in a queue)
    resend_after: float = 0.2
    #: at most one resend burst per peer per this interval (a peer cannot make us amplify)
    resend_interval: float = 0.5
    #: asked, and what we asked for did not all come (a burst larger than the link's free queue
    #: is tail-dropped): ask again this long after, until gap_timeout without progress
    resend_retry: float = 1.0
    #: position and key confirmation to every member this often (groups above 20: longer)
    status_period: float = 5.0
    #: burst mode: most messages under one signature (a burst is what was multicast before the
    #: stack's output was next taken; a full burst is sealed at once)
    burst_max: int = 64
    #: burst mode: verified roots remembered (a frame of a remembered root costs hashes only)
    root_cache: int = 256

    def __post_init__(self) -> None:
        if not 1 <= self.burst_max <= MAX_BURST or self.root_cache < 1:
            raise ValueError(f"need 1 <= burst_max <= {MAX_BURST} and root_cache >= 1")
        if not 0 < self.resend_after < self.gap_timeout:
            raise ValueError("need 0 < resend_after < gap_timeout")
        if not self.resend_interval < self.resend_retry < self.gap_timeout:
            raise ValueError("need resend_interval < resend_retry < gap_timeout (a retry must not be refused)")
        if self.store_frames < 0 or self.store_bytes < 0 or self.status_period <= 0:
            raise ValueError("store bounds are >= 0 and the status period > 0")
        if self.reorder_window < 1 or self.reorder_bytes < self.max_payload:
            raise ValueError("the reorder window holds at least one frame of max_payload bytes")


class _Stream:
    """Receive state of one sender's incarnation."""

    __slots__ = (
        "asked_at", "floating", "gap_since", "horizon", "incarnation", "next_seq", "requested", "waiting",
        "waiting_bytes",
    )

    def __init__(self, incarnation: int) -> None:
        self.incarnation = incarnation
        self.next_seq = 0
        self.waiting: dict[int, bytes] = {}
        self.waiting_bytes = 0
        #: taken up midway by a member that resumed without high-water marks: the stream starts
        #: at its first authenticated frame (at or above ``next_seq``), nothing before awaited
        self.floating = False
        self.gap_since: float | None = None  # since when we miss frames and nothing came
        self.asked_at = 0.0  # when we last asked for them
        self.requested = 0  # frames below this were asked for again (SmcResend)
        self.horizon = 0  # the sender said (SmcStatus) or showed that frames below this exist


class SecureMulticast:
    """One SMC instance of member ``me``; owns its GKE session."""

    #: a frame next in its stream, with nothing held or missing, is delivered without the
    #: general path's bookkeeping, to the same effect (a test compares the two paths)
    _in_order_shortcut = True

    def __init__(
        self,
        tag: Tag,
        me: int,
        n: int,
        signer: Signer,
        verifiers: Sequence[Verifier],
        rng: Rng,
        stats: Counter,
        gke: GroupKeyExchange,
        *,
        auth: str | type[Authenticator] = "signed",
        incarnation: int = 0,
        limits: SmcLimits = SmcLimits(),
        resume: bool = False,
        high_water: Mapping[int, tuple[int, int]] | None = None,
    ) -> None:
        if len(verifiers) != n:
            raise ValueError("one verifier per member")
        self.tag = tag
        self.me = me
        self.n = n
        self.gke = gke
        self.parent: Any = None
        #: the authentication mode's class (:mod:`.auth`); its instance exists with the key
        self.auth_class = authenticator_class(auth)
        self.auth: Authenticator | None = None
        self._burst: list[bytes] = []  # burst mode: multicast, not sealed yet
        self.incarnation = incarnation
        self.limits = limits
        # a member rejoining with a restored key missed what was sent while it was away.  With
        # its high-water marks it knows exactly what it delivered before: nothing at or below a
        # mark, nor of an older incarnation, is accepted, and what came after is asked for.
        # Without them it takes each sender's stream up from the first authenticated frame.
        self.resume = resume
        self._exact = high_water is not None
        self._signer = signer
        self._verifiers = verifiers
        self._rng = rng
        self._stats = stats
        self._keys: GroupKeys | None = None
        self._aead: Aead | None = None
        self._seq = 0
        self._queued: deque[bytes] = deque()
        self._held: deque[SmcData] = deque()
        self._held_bytes = 0
        self._streams: dict[int, _Stream] = {}
        self._closed = False
        self._gap_timer: float | None = None
        # our recent frames (seq order, contiguous) for resend requests, and their bytes
        self._store: deque[SmcData] = deque()
        self._store_bytes = 0
        self._confirm = b""
        self._status_held: dict[int, SmcStatus] = {}  # statuses that came before our key
        self._resent: dict[int, tuple[float, int]] = {}  # peer -> (burst started, served up to)
        self._undelivered: dict[int, int] = {}  # peer -> reported Undelivered up to (once each)
        self._forks: set[int] = set()
        self.forked = False
        self._status_period = limits.status_period * max(1.0, n / 20)
        self._final_marks: dict[int, tuple[int, int]] | None = None  # high_water() once closed
        self._aad_prefix: dict[tuple[int, int], bytes] = {}  # see _aad
        for sender, mark in (high_water or {}).items():
            self._restore_mark(sender, mark)

    def _restore_mark(self, sender: int, mark: tuple[int, int]) -> None:
        """A high-water mark from an earlier run: ``sender``'s stream goes on after it."""
        if not (type(sender) is int and 0 <= sender < self.n and len(mark) == 2
                and all(type(v) is int for v in mark) and mark[0] >= 0 and mark[1] >= -1):
            raise ValueError(f"bad high-water mark {sender!r}: {mark!r} (member index: (incarnation >= 0, seq >= -1))")
        incarnation, seq = mark
        if sender == self.me:
            if (incarnation, seq) >= (self.incarnation, 0):
                raise ValueError(
                    f"our incarnation {self.incarnation} must be above the one we sent in before ({incarnation})"
                )
            return
        stream = self._streams[sender] = _Stream(incarnation)
        stream.next_seq = seq + 1

    def high_water(self) -> dict[int, tuple[int, int]]:
        """Per member index, the highest (incarnation, seq) of its stream delivered here or
        given up (seq -1: that incarnation was seen, nothing of it delivered yet); our own
        index: what we sent.  Saved with what was delivered and given back to
        :class:`SecureMulticast` (``high_water=``) on a rejoin of this instance, nothing at or
        below a mark, nor of an older incarnation, is accepted again.  Kept after :meth:`close`."""
        if self._final_marks is not None:
            return dict(self._final_marks)
        marks = {sender: (st.incarnation, st.next_seq - 1) for sender, st in self._streams.items()}
        marks[self.me] = (self.incarnation, self._seq - 1)
        return marks

    @property
    def established(self) -> bool:
        return self._aead is not None

    @property
    def fingerprint(self) -> str | None:
        return self._keys.fingerprint if self._keys else None

    # ----------------------------------------------------------------- inputs

    def init(self, now: float) -> list[Event]:
        return self.absorb(self.gke.init(now), now)

    def multicast(self, payload: bytes, now: float) -> list[Event]:
        """Local input: send ``payload`` to the group (queued, bounded, until the key exists)."""
        if self._closed:
            raise RuntimeError("this SMC instance was closed (re-keyed)")
        if self.forked:
            raise KeyForked("another member holds another key for this conference epoch")
        if len(payload) > self.limits.max_payload:
            raise ValueError(f"payload of {len(payload)} bytes exceeds {self.limits.max_payload}")
        if type(payload) is not bytes:  # a bytearray the caller may change later: our copy
            payload = bytes(payload)
        if self._aead is None:
            if len(self._queued) >= self.limits.max_queued_sends:
                raise SendQueueFull("too many messages waiting for the group key")
            self._queued.append(payload)
            return []
        if self.auth_class.batches:
            self._burst.append(payload)
            return self.flush() if len(self._burst) >= self.limits.burst_max else []
        assert self.auth is not None  # made with the key
        seq = self._seq
        trailer = self.auth.seal_one(self.incarnation, seq, payload)
        self._seq = seq + 1
        return self._frame(seq, payload, trailer)

    def make_authenticator(self, me: int, signer: Signer) -> Authenticator:
        """This instance's mode for member ``me`` holding ``signer`` (ours; the checker's insider
        passes another member's index to forge as it, with only its own secrets)."""
        assert self._keys is not None
        return self.auth_class(
            self.tag, me, self.n, signer, self._verifiers, self._keys, root_cache=self.limits.root_cache
        )

    @property
    def pending(self) -> bool:
        """Messages multicast and not sealed yet (burst mode): call :meth:`flush`."""
        return bool(self._burst)

    def flush(self) -> list[Event]:
        """Seal and send the burst gathered since the last flush (burst mode; else nothing)."""
        if not self._burst or self._aead is None or self._closed:
            return []
        burst, self._burst = self._burst, []
        return self._send(burst)

    def receive(self, sender: int, msg: Message, now: float) -> list[Event]:
        if self._closed:
            return self._drop("closed_instance")
        if isinstance(msg, SmcData):  # nearly every message: first
            if msg.sender >= self.n or msg.sender == self.me:
                return self._drop("bad_sender")
            if self._aead is None:
                size = len(msg.ciphertext)
                if len(self._held) >= self.limits.max_held or self._held_bytes + size > self.limits.max_held_bytes:
                    return self._drop("hold_full")
                self._held.append(msg)
                self._held_bytes += size
                return []
            return self._on_data(msg, now)
        if isinstance(msg, SmcStatus):
            return self._on_status(sender, msg, now)
        if isinstance(msg, SmcResend):
            return self._on_resend(sender, msg, now)
        if isinstance(msg, SmcGone):
            return self._on_gone(sender, msg, now)
        return self._drop("unexpected_message")

    def handle_timer(self, name: str, now: float) -> list[Event]:
        """``gap``: ask for the gaps open for ``resend_after``, give up those open for
        ``gap_timeout``.  ``status``: the periodic status to every member."""
        if name == "status":
            return [*self._status_to(None), SetTimer("status", now + self._status_period, self.tag)]
        out: list[Event] = []
        self._gap_timer = None
        for sender, stream in self._streams.items():
            due = self._gap_deadline(stream)
            if due is None or now < due:
                continue
            assert stream.gap_since is not None
            if now >= stream.gap_since + self.limits.gap_timeout:  # no progress for so long: given up, said
                end = min(stream.waiting) if stream.waiting else stream.horizon
                out += self._skip_to(sender, stream, end)
                out += self._deliver_ready(sender, stream, now)
            else:  # first ask, or again: the answer did not all come
                stream.requested = stream.next_seq
                out += self._ask(sender, stream, now)
        return out + self._arm_gap_timer()

    def _gap_deadline(self, stream: _Stream) -> float | None:
        """When ``stream``'s open gap is due: to be asked for (``resend_after``), or, once asked,
        to be given up (``gap_timeout``).  One expression for the timer and its handler, so a
        timer never fires for a deadline its handler does not see as due (a busy loop)."""
        if stream.gap_since is None or not (stream.waiting or stream.horizon > stream.next_seq):
            return None
        give_up = stream.gap_since + self.limits.gap_timeout
        if stream.requested > stream.next_seq:
            return min(stream.asked_at + self.limits.resend_retry, give_up)
        return min(stream.gap_since + self.limits.resend_after, give_up)

    def _arm_gap_timer(self) -> list[Event]:
        deadlines = [d for d in map(self._gap_deadline, self._streams.values()) if d is not None]
        if not deadlines:
            return []
        deadline = min(deadlines)
        if self._gap_timer == deadline:
            return []
        self._gap_timer = deadline
        return [SetTimer("gap", deadline, self.tag)]

    def peer_restored(self, peer: int) -> list[Event]:
        """The detector heard from ``peer`` again (a partition healed, it restarted): tell it
        where our stream is, so it asks for what it missed, and confirm our key."""
        return self._status_to(peer) if self._aead is not None and not self._closed else []

    def absorb(self, events: list[Event], now: float) -> list[Event]:
        out: list[Event] = []
        for ev in events:
            if isinstance(ev, SessionKey):
                out += self._establish(ev, now)
            else:
                out.append(ev)
        return out

    def close(self) -> None:
        """Erase the keys and everything held: later frames for this instance are refused."""
        if self._final_marks is None:
            self._final_marks = self.high_water()
        self._keys = None
        self._aead = None
        self._closed = True
        self.auth = None
        self._burst.clear()
        self._queued.clear()
        self._held.clear()
        self._held_bytes = 0
        self._streams.clear()
        self._store.clear()
        self._store_bytes = 0
        self._status_held.clear()

    # ----------------------------------------------------------------- sending

    def _aad(self, sender: int, incarnation: int, seq: int) -> bytes:
        """``canonical("smc", tag, sender, incarnation, seq)``, the frame's associated data:
        the canonical encoding of the four fields before ``seq`` (an array header, then each
        field) is the same for a whole stream, so it is made once per stream and ``seq``'s
        encoding appended (``tests/unit/test_smc.py`` checks the bytes against the tuple's)."""
        prefix = self._aad_prefix.get((sender, incarnation))
        if prefix is None:
            if len(self._aad_prefix) >= 4 * self.n:  # bounded: incarnations come and go
                self._aad_prefix.clear()
            # seq 0 encodes as the one byte 0x00, the last of the tuple's encoding
            prefix = self._aad_prefix[(sender, incarnation)] = canonical_tuple(
                ("smc", self.tag, sender, incarnation, 0))[:-1]
        return prefix + canonical_int(seq)

    def _send(self, payloads: Sequence[bytes]) -> list[Event]:
        """Seal ``payloads`` as our next frames (one burst in burst mode) and send them."""
        assert self.auth is not None  # only called once the key exists
        first = self._seq
        trailers = self.auth.seal(self.incarnation, first, payloads)
        self._seq += len(payloads)
        out: list[Event] = []
        for k, (payload, trailer) in enumerate(zip(payloads, trailers, strict=True)):
            out += self._frame(first + k, payload, trailer)
        return out

    def _frame(self, seq: int, payload: bytes, trailer: bytes) -> list[Event]:
        """Our message ``seq`` with its trailer, sealed: kept for resends, broadcast, and
        delivered to us."""
        assert self._aead is not None
        me, incarnation = self.me, self.incarnation
        nonce = self._rng.randbytes(NONCE_SIZE)
        ct = self._aead.seal(nonce, payload + trailer, self._aad(me, incarnation, seq))
        frame = SmcData(self.tag, me, incarnation, seq, nonce, ct)
        # into the retransmission store; the oldest frames go beyond its bounds
        store = self._store
        store.append(frame)
        self._store_bytes += len(ct)
        limits = self.limits
        while store and (len(store) > limits.store_frames or self._store_bytes > limits.store_bytes):
            self._store_bytes -= len(store.popleft().ciphertext)
        return [Broadcast(frame), Delivered(self.tag, me, incarnation, seq, payload)]

    # ----------------------------------------------------------------- status, resend, forks

    def _status_to(self, peer: int | None) -> list[Event]:
        assert self._keys is not None
        status = SmcStatus(self.tag, self.incarnation, self._seq, self._confirm, self._keys.fingerprint)
        return [Broadcast(status) if peer is None else Send(peer, status)]

    def _on_status(self, sender: int, msg: SmcStatus, now: float) -> list[Event]:
        if self._keys is None:  # judged once our key exists (one kept per member)
            self._status_held[sender] = msg
            return []
        if msg.confirm != self._confirm:
            if sender in self._forks:
                return []
            self._forks.add(sender)
            self.forked = True
            self._stats["smc.fork"] += 1
            return [KeyFork(self.tag, sender, self._keys.fingerprint, msg.fingerprint)]
        stream = self._streams.get(sender)
        if stream is not None and msg.incarnation < stream.incarnation:
            return self._drop("old_status")
        if stream is None or msg.incarnation > stream.incarnation:
            if msg.next_seq == 0:
                return []  # nothing sent yet: its first frame opens the stream
            stream = self._streams[sender] = _Stream(msg.incarnation)
            if self.resume and not self._exact:  # nothing below its position is ours; the
                stream.next_seq = msg.next_seq  # stream starts at the first authenticated frame
                stream.floating = True
                return []
        stream.horizon = max(stream.horizon, msg.next_seq)
        return self._ask(sender, stream, now) + self._arm_gap_timer()

    def _ask(self, sender: int, stream: _Stream, now: float) -> list[Event]:
        """Ask ``sender`` again for the first run of frames we miss: up to the first one we
        hold, or to the end of its stream as far as we know it (exact ranges, so that what the
        sender reports undelivered is exactly what we miss)."""
        end = min(stream.waiting) if stream.waiting else stream.horizon
        if end <= stream.next_seq or stream.requested >= end:
            return []
        if stream.gap_since is None:
            stream.gap_since = now
        stream.requested, stream.asked_at = end, now
        self._stats["smc.resend_requested"] += 1
        return [Send(sender, SmcResend(self.tag, stream.incarnation, stream.next_seq, end))]

    def _on_resend(self, sender: int, msg: SmcResend, now: float) -> list[Event]:
        if self._aead is None or msg.incarnation != self.incarnation or sender == self.me:
            return self._drop("bad_resend")
        since, upto = self._resent.get(sender, (-1e300, 0))
        if now - since >= self.limits.resend_interval:  # a new burst
            since, upto = now, 0
        # within one burst, only what was not sent again yet: a peer cannot make us amplify
        first, end = max(msg.first, upto), min(msg.end, self._seq)
        if first >= end:
            return self._drop("resend_repeated")
        self._resent[sender] = (since, end)
        oldest = self._store[0].seq if self._store else self._seq
        out: list[Event] = []
        if first < oldest:
            gone = min(end, oldest)
            self._stats["smc.resend_gone"] += gone - first
            out.append(Send(sender, SmcGone(self.tag, self.incarnation, first, gone)))
            told = max(first, self._undelivered.get(sender, 0))
            if gone > told:  # asked again (our answer was slow to arrive): reported once
                out.append(Undelivered(self.tag, sender, told, gone))
                self._undelivered[sender] = gone
            first = gone
        # newest first: a burst larger than the link queue's room is tail-dropped, and what must
        # get through is the part next to what the reader holds -- the frames we sent while it
        # was coming back.  If its reorder window fills before the rest comes, it gives up the
        # oldest part of the gap, never the newest.  (One pass over the deque: indexing a deque
        # in its middle costs O(n) each.)
        if first < end:
            frames = list(itertools.islice(self._store, first - oldest, end - oldest))
            out += [Send(sender, frame) for frame in reversed(frames)]
        self._stats["smc.resent"] += max(0, end - first)
        return out

    def _on_gone(self, sender: int, msg: SmcGone, now: float) -> list[Event]:
        stream = self._streams.get(sender)
        if stream is None or msg.incarnation != stream.incarnation or msg.end > stream.requested:
            return self._drop("unasked_gone")  # only ranges we asked for may be skipped
        if msg.end <= stream.next_seq:
            return []
        return self._skip_to(sender, stream, msg.end) + self._deliver_ready(sender, stream, now) + self._arm_gap_timer()

    def _skip_to(self, sender: int, stream: _Stream, end: int) -> list[Event]:
        """Give up every frame below ``end`` we do not hold: deliver those we hold in order and
        report the holes as lost.  Costs O(min(gap, frames held)), whatever ``end`` is."""
        out: list[Event] = []
        waiting = stream.waiting
        if end - stream.next_seq <= len(waiting):
            held = [seq for seq in range(stream.next_seq, end) if seq in waiting]
        else:
            held = sorted(seq for seq in waiting if seq < end)
        for seq in held:
            if seq > stream.next_seq:
                out.append(Lost(self.tag, sender, stream.incarnation, stream.next_seq, seq))
            payload = stream.waiting.pop(seq)
            stream.waiting_bytes -= len(payload)
            out.append(Delivered(self.tag, sender, stream.incarnation, seq, payload))
            stream.next_seq = seq + 1
        if end > stream.next_seq:
            out.append(Lost(self.tag, sender, stream.incarnation, stream.next_seq, end))
            stream.next_seq = end
        self._stats["smc.gap_skipped"] += 1
        stream.gap_since = None
        return out

    # ----------------------------------------------------------------- receiving

    def _establish(self, ev: SessionKey, now: float) -> list[Event]:
        if self._aead is not None or self._closed:
            return []
        self._keys = derive_group_keys(ev.secret, self.tag, ev.members)
        self._aead = Aead(self._keys.encryption)
        self._confirm = hmac_sha256(self._keys.confirmation, canonical("key-confirm", self.tag))
        self.auth = self.make_authenticator(self.me, self._signer)
        out: list[Event] = [KeyEstablished(self.tag, self._keys.fingerprint, ev.members)]
        # what waited for the key goes now: in bursts of burst_max in burst mode
        size = self.limits.burst_max if self.auth_class.batches else 1
        while self._queued:
            out += self._send([self._queued.popleft() for _ in range(min(size, len(self._queued)))])
        out += self._status_to(None)
        out.append(SetTimer("status", now + self._status_period, self.tag))
        held, self._held, self._held_bytes = self._held, deque(), 0
        for msg in held:
            out += self._on_data(msg, now)
        statuses, self._status_held = self._status_held, {}
        for sender, status in statuses.items():
            out += self._on_status(sender, status, now)
        return out

    def _on_data(self, msg: SmcData, now: float) -> list[Event]:
        stream = self._streams.get(msg.sender)
        if stream is not None and msg.incarnation < stream.incarnation:
            return self._drop("old_incarnation")
        if stream is not None and msg.incarnation == stream.incarnation and (
            msg.seq < stream.next_seq or msg.seq in stream.waiting
        ):
            return self._drop("replay")
        assert self._aead is not None  # held until the key exists
        try:
            plain = self._aead.open(msg.nonce, msg.ciphertext, self._aad(msg.sender, msg.incarnation, msg.seq))
        except CryptoError:
            return self._drop("decrypt_failed")
        assert self.auth is not None
        try:
            payload = self.auth.open(msg.sender, msg.incarnation, msg.seq, plain)
        except AuthError as exc:
            return self._drop(exc.reason)
        # authentic from here on: only now may the frame move the stream
        if (
            self._in_order_shortcut
            and stream is not None
            and msg.seq == stream.next_seq
            and msg.incarnation == stream.incarnation
            and not stream.waiting
            and stream.gap_since is None
            and not stream.floating
            and stream.horizon <= msg.seq
            and len(payload) <= self.limits.reorder_bytes
        ):
            # the common case, in order with nothing missing: what the general path below does
            # then, without its bookkeeping -- delivered at once, and no gap opens or closes, so
            # the gap timer stays as it is (``_arm_gap_timer`` would return nothing)
            stream.next_seq += 1
            return [Delivered(self.tag, msg.sender, msg.incarnation, msg.seq, payload)]
        if stream is None or msg.incarnation > stream.incarnation:
            stream = self._streams[msg.sender] = _Stream(msg.incarnation)
            stream.floating = self.resume and not self._exact
        if stream.floating:  # taken up midway: its first authenticated frame starts it
            stream.floating = False
            stream.next_seq = msg.seq
        stream.waiting[msg.seq] = payload
        stream.waiting_bytes += len(payload)
        out: list[Event] = []
        limits = self.limits
        while len(stream.waiting) > limits.reorder_window or stream.waiting_bytes > limits.reorder_bytes:
            # the gap outgrew what we may hold behind it: give it up, say so, deliver what
            # follows it (however far ahead the frame is: a sender is never silenced)
            out += self._skip_to(msg.sender, stream, min(stream.waiting))
            out += self._deliver_ready(msg.sender, stream, now)
        return out + self._deliver_ready(msg.sender, stream, now) + self._arm_gap_timer()

    def _deliver_ready(self, sender: int, stream: _Stream, now: float) -> list[Event]:
        out: list[Event] = []
        start = stream.next_seq
        while stream.next_seq in stream.waiting:
            payload = stream.waiting.pop(stream.next_seq)
            stream.waiting_bytes -= len(payload)
            out.append(Delivered(self.tag, sender, stream.incarnation, stream.next_seq, payload))
            stream.next_seq += 1
        if not stream.waiting and stream.horizon <= stream.next_seq:
            stream.gap_since = None  # nothing missing
        elif stream.gap_since is None or stream.next_seq > start:
            stream.gap_since = now  # missing frames, and patience counts from the last progress
            if not stream.waiting:  # the sender's stream goes on: the rest, please
                out += self._ask(sender, stream, now)
        return out

    def _drop(self, reason: str) -> list[Event]:
        self._stats[f"smc.dropped.{reason}"] += 1
        return []
