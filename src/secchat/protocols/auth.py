"""How an SMC frame proves who sent it: the message authentication modes, no I/O.

Why a module of its own: every mode answers one question -- which trailer goes after the payload
inside the AEAD, and is a received trailer right -- and :class:`~.smc.SecureMulticast` only asks
it at two points (sealing a burst of frames, opening one).  The AEAD under the group key comes
first in every mode, so only members read a frame and a frame of a non-member is refused before
any of this runs; the modes differ in what a *member* can forge:

* ``signed`` -- an Ed25519 signature on ``("smc-sig", tag, sender, incarnation, seq,
  SHA-256(m))`` per message.  Non-repudiation: every member, and anyone shown the frame and the
  certificate, can tell who sent it.
* ``burst`` -- Wong–Lam tree chaining: one signature on ``("smc-burst", tag, sender,
  incarnation, first_seq, count, root)`` where ``root`` is the RFC 9162 Merkle root over the
  ``count`` messages the sender emitted together; each frame carries the signature and its
  audit path, so each is verifiable alone, and a receiver verifies each root's signature once
  (a bounded cache) and then only hashes.  The same proof as ``signed``, amortised.
* ``pairwise`` -- after Canetti et al. 1999: one 16-byte HMAC-SHA256 per receiver, under a key
  only the sender and that receiver hold (HKDF of their static X25519 secret, bound to the
  instance tag, both indices and both identity keys).  Per-sender authenticity to each member,
  nothing transferable: the receiver could have computed the MAC itself.  Costs 16 bytes and
  one HMAC per receiver on the sender's side, so it is for small groups (``PAIRWISE_MAX``).
* ``group`` -- no trailer: the AEAD proves "a member sent this", nothing more.

A mode is chosen by name (:data:`MODES`) when an SMC instance starts, the same for every member of
the instance.  Peer junk raises :class:`AuthError` with a short ``reason``; SMC drops the frame,
counts ``smc.dropped.<reason>`` and delivers nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import ClassVar

from ..codec import Tag, canonical, canonical_tuple
from ..crypto import (
    MERKLE_HASH_SIZE,
    SIGNATURE_SIZE,
    CryptoError,
    GroupKeys,
    Signer,
    Verifier,
    hkdf,
    hmac_sha256,
    merkle_leaf,
    merkle_root_from_path,
    merkle_tree,
)

__all__ = [
    "MODES",
    "PAIRWISE_MAX",
    "AuthError",
    "Authenticator",
    "BurstSignatures",
    "GroupOnly",
    "PairwiseMacs",
    "Signatures",
    "authenticator_class",
]

#: Largest group for pairwise MACs: each frame carries 16 bytes per receiver.
PAIRWISE_MAX = 64
MAC_SIZE = 16
#: Burst trailer, fixed part: root ‖ signature ‖ path length (1) ‖ index (2) ‖ count (2).
_BURST_FIXED = MERKLE_HASH_SIZE + SIGNATURE_SIZE + 5
#: Most messages under one burst signature (a path of at most 8 hashes).
MAX_BURST = 256


class AuthError(Exception):
    """A received trailer is wrong; ``reason`` names how (a stats counter)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Authenticator:
    """One member's view of a mode, for one SMC instance (made once the group key exists).
    Subclasses hold what the mode needs: our signer, the members' keys, a cache."""

    #: True if frames sealed together share one proof (SMC then gathers a burst before sealing)
    batches: ClassVar[bool] = False

    def __init__(
        self, tag: Tag, me: int, n: int, signer: Signer, verifiers: Sequence[Verifier], keys: GroupKeys,
        *, root_cache: int = 256,
    ) -> None:
        self.tag = tag
        self.me = me
        self.n = n
        self._signer = signer
        self._verifiers = verifiers

    def seal(self, incarnation: int, first_seq: int, payloads: Sequence[bytes]) -> list[bytes]:
        """The trailers of our messages ``first_seq`` .. ``first_seq + len(payloads) - 1``."""
        raise NotImplementedError

    def seal_one(self, incarnation: int, seq: int, payload: bytes) -> bytes:
        """The trailer of our message ``seq`` sealed alone (every message, in a mode that does
        not batch): what :meth:`seal` gives for it, without the lists."""
        return self.seal(incarnation, seq, [payload])[0]

    def open(self, sender: int, incarnation: int, seq: int, plain: bytes) -> bytes:
        """The payload of ``plain`` (payload ‖ trailer) from ``sender``, or :class:`AuthError`."""
        raise NotImplementedError


class GroupOnly(Authenticator):
    """``group``: the AEAD alone (any member could have sent the frame)."""

    def seal(self, incarnation: int, first_seq: int, payloads: Sequence[bytes]) -> list[bytes]:
        return [b""] * len(payloads)

    def seal_one(self, incarnation: int, seq: int, payload: bytes) -> bytes:
        return b""

    def open(self, sender: int, incarnation: int, seq: int, plain: bytes) -> bytes:
        return plain


class Signatures(Authenticator):
    """``signed``: one Ed25519 signature per message, on a digest of it."""

    def _statement(self, sender: int, incarnation: int, seq: int, payload: bytes) -> bytes:
        return canonical_tuple(("smc-sig", self.tag, sender, incarnation, seq, hashlib.sha256(payload).digest()))

    def seal(self, incarnation: int, first_seq: int, payloads: Sequence[bytes]) -> list[bytes]:
        return [self.seal_one(incarnation, first_seq + k, p) for k, p in enumerate(payloads)]

    def seal_one(self, incarnation: int, seq: int, payload: bytes) -> bytes:
        return self._signer.sign(self._statement(self.me, incarnation, seq, payload))

    def open(self, sender: int, incarnation: int, seq: int, plain: bytes) -> bytes:
        if len(plain) < SIGNATURE_SIZE:
            raise AuthError("bad_signature")
        payload, sig = plain[:-SIGNATURE_SIZE], plain[-SIGNATURE_SIZE:]
        try:
            self._verifiers[sender].verify(self._statement(sender, incarnation, seq, payload), sig)
        except CryptoError:
            raise AuthError("bad_signature") from None
        return payload


class BurstSignatures(Authenticator):
    """``burst``: one signature on the Merkle root of the messages sealed together.

    Trailer: ``path (32 bytes a node) ‖ root ‖ signature ‖ depth (1) ‖ index (2) ‖ count (2)``;
    the message is leaf ``index`` of ``count``, so the burst starts at ``seq - index``.  The root
    travels along so that a wrong path (``bad_path``) and a wrong signature (``bad_signature``)
    are told apart; it is recomputed from the message and the path all the same.
    """

    batches: ClassVar[bool] = True

    def __init__(
        self, tag: Tag, me: int, n: int, signer: Signer, verifiers: Sequence[Verifier], keys: GroupKeys,
        *, root_cache: int = 256,
    ) -> None:
        super().__init__(tag, me, n, signer, verifiers, keys)
        self._cache_size = root_cache
        #: (sender, incarnation, first seq, count, root) of the signatures we verified, in
        #: insertion order: the oldest go first
        self._verified: dict[tuple[int, int, int, int, bytes], None] = {}

    def _statement(self, sender: int, incarnation: int, first_seq: int, count: int, root: bytes) -> bytes:
        return canonical("smc-burst", self.tag, sender, incarnation, first_seq, count, root)

    def seal(self, incarnation: int, first_seq: int, payloads: Sequence[bytes]) -> list[bytes]:
        count = len(payloads)
        if not 0 < count <= MAX_BURST:
            raise ValueError(f"a burst has 1 to {MAX_BURST} messages")
        root, paths = merkle_tree([merkle_leaf(p) for p in payloads])
        signed = root + self._signer.sign(self._statement(self.me, incarnation, first_seq, count, root))
        tail = count.to_bytes(2, "big")
        return [
            b"".join(path) + signed + bytes((len(path),)) + k.to_bytes(2, "big") + tail
            for k, path in enumerate(paths)
        ]

    def open(self, sender: int, incarnation: int, seq: int, plain: bytes) -> bytes:
        size = len(plain)
        if size < _BURST_FIXED:
            raise AuthError("bad_trailer")
        depth, index, count = plain[-5], int.from_bytes(plain[-4:-2], "big"), int.from_bytes(plain[-2:], "big")
        at = size - _BURST_FIXED  # root, then signature
        end = at - depth * MERKLE_HASH_SIZE  # end of the payload, start of the path
        if end < 0 or not index < count <= MAX_BURST or index > seq:
            raise AuthError("bad_trailer")
        payload = plain[:end]
        root = plain[at : at + MERKLE_HASH_SIZE]
        if not self._path_leads_to(payload, index, count, plain[end:at], root):
            raise AuthError("bad_path")
        first = seq - index
        key = (sender, incarnation, first, count, root)
        if key not in self._verified:
            statement = self._statement(sender, incarnation, first, count, root)
            try:
                self._verifiers[sender].verify(statement, plain[at + MERKLE_HASH_SIZE : size - 5])
            except CryptoError:
                raise AuthError("bad_signature") from None
            if len(self._verified) >= self._cache_size:
                del self._verified[next(iter(self._verified))]
            self._verified[key] = None
        return payload

    @staticmethod
    def _path_leads_to(payload: bytes, index: int, count: int, path: bytes, root: bytes) -> bool:
        """Does ``path`` lead from ``payload`` at ``index`` of ``count`` to ``root``?"""
        try:
            return merkle_root_from_path(merkle_leaf(payload), index, count, path) == root
        except CryptoError:
            return False


class PairwiseMacs(Authenticator):
    """``pairwise``: one MAC per receiver under the pair's key (Canetti et al. 1999)."""

    def __init__(
        self, tag: Tag, me: int, n: int, signer: Signer, verifiers: Sequence[Verifier], keys: GroupKeys,
        *, root_cache: int = 256,
    ) -> None:
        if n > PAIRWISE_MAX:
            raise ValueError(f"pairwise MACs are for groups of at most {PAIRWISE_MAX} members")
        super().__init__(tag, me, n, signer, verifiers, keys)
        self._keys: dict[int, bytes] = {}

    def _pair_key(self, peer: int) -> bytes:
        """HKDF of our static secret with ``peer``, bound to the tag, both indices and both keys;
        made on first use (one X25519 each), at most ``n - 1`` of them."""
        key = self._keys.get(peer)
        if key is None:
            (lo, lo_key), (hi, hi_key) = sorted(
                ((self.me, self._verifiers[self.me].public_bytes), (peer, self._verifiers[peer].public_bytes))
            )
            try:
                secret = self._signer.static_secret(self._verifiers[peer])
            except CryptoError:
                raise AuthError("bad_peer_key") from None
            key = hkdf(
                secret,
                salt=b"secchat/smc/pairwise-mac/v1",
                info=canonical("pair-mac", self.tag, lo, hi, lo_key, hi_key),
                length=32,
            )
            self._keys[peer] = key
        return key

    def _input(self, sender: int, incarnation: int, seq: int, payload: bytes) -> bytes:
        # the sender is in the input: one key serves both directions of a pair
        return canonical("smc-mac", self.tag, sender, incarnation, seq, hashlib.sha256(payload).digest())

    def seal(self, incarnation: int, first_seq: int, payloads: Sequence[bytes]) -> list[bytes]:
        keys = [self._pair_key(j) for j in range(self.n) if j != self.me]
        out = []
        for k, payload in enumerate(payloads):
            data = self._input(self.me, incarnation, first_seq + k, payload)
            out.append(b"".join(hmac_sha256(key, data)[:MAC_SIZE] for key in keys))
        return out

    def open(self, sender: int, incarnation: int, seq: int, plain: bytes) -> bytes:
        size = (self.n - 1) * MAC_SIZE
        if len(plain) < size:
            raise AuthError("bad_trailer")
        payload = plain[: len(plain) - size]
        slot = len(payload) + (self.me - (self.me > sender)) * MAC_SIZE
        mac = plain[slot : slot + MAC_SIZE]
        expected = hmac_sha256(self._pair_key(sender), self._input(sender, incarnation, seq, payload))[:MAC_SIZE]
        if not hmac.compare_digest(mac, expected):
            raise AuthError("bad_mac")
        return payload


_CLASSES: dict[str, type[Authenticator]] = {
    "signed": Signatures,
    "burst": BurstSignatures,
    "pairwise": PairwiseMacs,
    "group": GroupOnly,
}
#: The modes by name, as SMC, the configuration and ``secchat sim check --auth`` spell them.
MODES = tuple(_CLASSES)


def authenticator_class(mode: str | type[Authenticator]) -> type[Authenticator]:
    """The class of mode ``mode`` (a name of :data:`MODES`, or a class: the checker's variants)."""
    if isinstance(mode, type):
        return mode
    try:
        return _CLASSES[mode]
    except KeyError:
        raise ValueError(f"unknown SMC mode {mode!r}: choose one of {', '.join(MODES)}") from None
