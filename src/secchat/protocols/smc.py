"""Secure multicast (SMC) over the GKE key, one instance per tag, no I/O.

Why: once the group key exists every message is encrypted under it and, in signed mode, signed by
its sender, so only members read it and each is attributed to its true sender; the underlying
multicast is trusted for nothing.  To send m: sign ``("smc-sig", tag, sender, incarnation, seq,
SHA-256(m))`` with the long-term Ed25519 key (a digest, because Ed25519 hashes its input twice),
AES-GCM-encrypt ``m ‖ σ`` under the encryption key with associated data ``(tag, sender,
incarnation, seq)``, multicast.  On receipt: hold until the key exists (bounded), drop replays by
(sender, incarnation, seq) before any crypto, decrypt, verify, deliver in per-sender FIFO order.
**Group mode** skips the signature: the AEAD authenticates the group only.

``incarnation`` separates the sequence numbers of successive runs of one member (a member that
leaves and rejoins with the same key starts again at seq 0): it must grow from run to run (the
driver uses wall-clock microseconds at start).  Frames of an older incarnation are refused.
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..codec import Tag, canonical
from ..crypto import (
    SIGNATURE_SIZE,
    Aead,
    CryptoError,
    GroupKeys,
    Rng,
    Signer,
    Verifier,
    derive_group_keys,
)
from .events import Broadcast, Delivered, Event, KeyEstablished, SessionKey, SetTimer
from .gke import GroupKeyExchange
from .messages import Message, SmcData

__all__ = ["SecureMulticast", "SendQueueFull", "SmcLimits"]


class SendQueueFull(RuntimeError):
    """Local misuse: too many messages multicast before the key exists."""


@dataclass(frozen=True)
class SmcLimits:
    """Bounds on what an SMC instance keeps in memory."""

    max_queued_sends: int = 1024  # our own messages waiting for the key
    max_held: int = 4096  # received frames waiting for the key
    max_held_bytes: int = 32 << 20
    reorder_window: int = 1024  # out-of-order frames kept per sender
    reorder_bytes: int = 16 << 20  # and their bytes; when either is full the gap is given up
    #: a gap in a sender's sequence still open after this long is given up too (a frame was lost
    #: in a bounded queue: later messages must not wait forever); far above any link delay
    gap_timeout: float = 30.0
    max_payload: int = 512 * 1024


class _Stream:
    """Receive state of one sender's incarnation."""

    __slots__ = ("floating", "gap_since", "incarnation", "next_seq", "waiting", "waiting_bytes")

    def __init__(self, incarnation: int) -> None:
        self.incarnation = incarnation
        self.next_seq = 0
        self.waiting: dict[int, bytes] = {}
        self.waiting_bytes = 0
        #: a rejoining member's view of a stream it joined midway: gaps are skipped, not awaited
        self.floating = False
        self.gap_since: float | None = None  # when the oldest open gap appeared


class SecureMulticast:
    """One SMC instance of member ``me``; owns its GKE session."""

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
        signed: bool = True,
        incarnation: int = 0,
        limits: SmcLimits = SmcLimits(),
        resume: bool = False,
    ) -> None:
        if len(verifiers) != n:
            raise ValueError("one verifier per member")
        self.tag = tag
        self.me = me
        self.n = n
        self.gke = gke
        self.parent: Any = None
        self.signed = signed
        self.incarnation = incarnation
        self.limits = limits
        # a member rejoining with a restored key missed what was sent while it was away: it takes
        # each sender's stream up from the first authenticated frame it sees (FIFO links)
        self.resume = resume
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
        if len(payload) > self.limits.max_payload:
            raise ValueError(f"payload of {len(payload)} bytes exceeds {self.limits.max_payload}")
        if self._aead is None:
            if len(self._queued) >= self.limits.max_queued_sends:
                raise SendQueueFull("too many messages waiting for the group key")
            self._queued.append(bytes(payload))
            return []
        return self._send(payload)

    def receive(self, sender: int, msg: Message, now: float) -> list[Event]:
        if not isinstance(msg, SmcData):
            return self._drop("unexpected_message")
        if self._closed:
            return self._drop("closed_instance")
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

    def handle_timer(self, name: str, now: float) -> list[Event]:
        """``gap``: give up the gaps that have been open for ``gap_timeout``."""
        out: list[Event] = []
        self._gap_timer = None
        for sender, stream in self._streams.items():
            if stream.waiting and stream.gap_since is not None and now - stream.gap_since >= self.limits.gap_timeout:
                self._stats["smc.gap_skipped"] += 1
                stream.next_seq = min(stream.waiting)
                out += self._deliver_ready(sender, stream, now)
        return out + self._arm_gap_timer()

    def _arm_gap_timer(self) -> list[Event]:
        opened = [st.gap_since for st in self._streams.values() if st.waiting and st.gap_since is not None]
        if not opened:
            return []
        deadline = min(opened) + self.limits.gap_timeout
        if self._gap_timer == deadline:
            return []
        self._gap_timer = deadline
        return [SetTimer("gap", deadline, self.tag)]

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
        self._keys = None
        self._aead = None
        self._closed = True
        self._queued.clear()
        self._held.clear()
        self._held_bytes = 0
        self._streams.clear()

    # ----------------------------------------------------------------- sending

    def _aad(self, sender: int, incarnation: int, seq: int) -> bytes:
        return canonical("smc", self.tag, sender, incarnation, seq)

    def _signed_part(self, sender: int, incarnation: int, seq: int, payload: bytes) -> bytes:
        return canonical("smc-sig", self.tag, sender, incarnation, seq, hashlib.sha256(payload).digest())

    def _send(self, payload: bytes) -> list[Event]:
        seq = self._seq
        self._seq += 1
        plain = payload
        if self.signed:
            plain = payload + self._signer.sign(self._signed_part(self.me, self.incarnation, seq, payload))
        nonce = self._rng.randbytes(12)
        assert self._aead is not None  # only called once the key exists
        ct = self._aead.seal(nonce, plain, self._aad(self.me, self.incarnation, seq))
        return [
            Broadcast(SmcData(self.tag, self.me, self.incarnation, seq, nonce, ct)),
            Delivered(self.tag, self.me, self.incarnation, seq, bytes(payload)),
        ]

    # ----------------------------------------------------------------- receiving

    def _establish(self, ev: SessionKey, now: float) -> list[Event]:
        if self._aead is not None or self._closed:
            return []
        self._keys = derive_group_keys(ev.secret, self.tag, ev.members)
        self._aead = Aead(self._keys.encryption)
        out: list[Event] = [KeyEstablished(self.tag, self._keys.fingerprint, ev.members)]
        while self._queued:
            out += self._send(self._queued.popleft())
        held, self._held, self._held_bytes = self._held, deque(), 0
        for msg in held:
            out += self._on_data(msg, now)
        return out

    def _on_data(self, msg: SmcData, now: float) -> list[Event]:
        stream = self._streams.get(msg.sender)
        if stream is not None and msg.incarnation < stream.incarnation:
            return self._drop("old_incarnation")
        if stream is not None and msg.incarnation == stream.incarnation:
            if msg.seq < stream.next_seq or msg.seq in stream.waiting:
                return self._drop("replay")
            if msg.seq >= stream.next_seq + self.limits.reorder_window:
                return self._drop("beyond_reorder_window")
        assert self._aead is not None  # held until the key exists
        try:
            plain = self._aead.open(msg.nonce, msg.ciphertext, self._aad(msg.sender, msg.incarnation, msg.seq))
        except CryptoError:
            return self._drop("decrypt_failed")
        if self.signed:
            if len(plain) < SIGNATURE_SIZE:
                return self._drop("bad_signature")
            payload, sig = plain[:-SIGNATURE_SIZE], plain[-SIGNATURE_SIZE:]
            try:
                self._verifiers[msg.sender].verify(
                    self._signed_part(msg.sender, msg.incarnation, msg.seq, payload), sig
                )
            except CryptoError:
                return self._drop("bad_signature")
        else:
            payload = plain
        if stream is None and self.resume:
            stream = self._streams[msg.sender] = _Stream(msg.incarnation)
            stream.next_seq = msg.seq
            stream.floating = True
        elif stream is None or msg.incarnation > stream.incarnation:
            if msg.seq >= self.limits.reorder_window:
                return self._drop("beyond_reorder_window")
            stream = self._streams[msg.sender] = _Stream(msg.incarnation)
        stream.waiting[msg.seq] = payload
        stream.waiting_bytes += len(payload)
        if msg.seq > stream.next_seq and (
            stream.floating
            or len(stream.waiting) >= self.limits.reorder_window
            or stream.waiting_bytes > self.limits.reorder_bytes
        ):
            # give the gap up (frames lost in a bounded queue somewhere, or we rejoined midway):
            # later messages must not wait forever for ones that will never come
            self._stats["smc.gap_skipped"] += 1
            stream.next_seq = min(stream.waiting)
        return self._deliver_ready(msg.sender, stream, now) + self._arm_gap_timer()

    def _deliver_ready(self, sender: int, stream: _Stream, now: float) -> list[Event]:
        out: list[Event] = []
        while stream.next_seq in stream.waiting:
            payload = stream.waiting.pop(stream.next_seq)
            stream.waiting_bytes -= len(payload)
            out.append(Delivered(self.tag, sender, stream.incarnation, stream.next_seq, payload))
            stream.next_seq += 1
        if not stream.waiting:
            stream.gap_since = None
        elif stream.gap_since is None:
            stream.gap_since = now
        return out

    def _drop(self, reason: str) -> list[Event]:
        self._stats[f"smc.dropped.{reason}"] += 1
        return []
