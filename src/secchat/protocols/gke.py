"""Cachin–Strobl fault-tolerant group key exchange, one session per tag, no I/O.

Why: the key must exist as soon as a majority ``t = ⌈(n+1)/2⌉`` takes part, without waiting for
anyone else and without a timeout deciding anything.  Each member draws ``y_i`` uniform in
[0, 2^256) and a fresh X25519 session key, and sends the public key to all.  On a public key from
j it returns ``y_i`` sealed to j (AES-GCM under HKDF(X25519(own, j's)) bound to the tag, both
indices and both keys).  Holding t contributions it proposes, in consensus ``tag + ("consensus",)``,
the list of (member, key id, d_k) with ``d_k = y_{u_k} − y_{u_{k+1}} mod 2^256`` (cyclic).  On the
decision it picks any m whose contribution it knows and computes
``K = Σ_{j=1}^{t−1} j·d_{m+j} + t·y_{u_m} mod 2^256``, which equals ``Σ y_{u_j}``.

The key id (8 bytes of SHA-256 of the contributor's session key) ties each decided difference to
one incarnation of its member: a member that restarted without its state knows its fresh
contribution is not among the decided ones and waits for a contribution that is.  Members keep
answering public keys after they finish -- and a member that has decided sends the decision
along -- so a late starter, or a member restarted with its saved state, still finishes.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from enum import Enum
from typing import Annotated, Any

import msgspec

from ..codec import Tag, canonical
from ..crypto import Aead, CryptoError, EphemeralKey, Rng, hkdf
from .consensus import Consensus, Detector, majority
from .events import Decided, Event, Send, SessionKey
from .messages import Contribution, Decision, Message, PublicKey

__all__ = ["GkeState", "GroupKeyExchange", "key_formula", "neighbours", "ring_reach"]

MODULUS = 1 << 256
KEY_ID_SIZE = 8
#: Contributions remembered per member (one per incarnation of its session key).
MAX_KEYS_PER_MEMBER = 4

_Entry = tuple[
    Annotated[int, msgspec.Meta(ge=0, lt=1 << 16)],
    Annotated[bytes, msgspec.Meta(min_length=KEY_ID_SIZE, max_length=KEY_ID_SIZE)],
    Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)],
]
_value_decoder = msgspec.msgpack.Decoder(list[_Entry])


class GkeState(Enum):
    RUNNING = "running"  # contributions being collected
    PROPOSED = "proposed"  # consensus running
    DECIDED = "decided"  # decided, but no decided contribution known yet
    FINISHED = "finished"


def key_id(public_key: bytes) -> bytes:
    return hashlib.sha256(public_key).digest()[:KEY_ID_SIZE]


def ring_reach(n: int) -> int:
    """k: a member exchanges contributions with the k members on either side of it on the ring,
    2k ≥ t − 1 of them (all others when the group is small)."""
    return min(majority(n) // 2, n - 1)  # ⌈(t − 1)/2⌉


def neighbours(me: int, n: int) -> tuple[list[int], list[int]]:
    """The ring neighbours of ``me``: the k after it (we send them our public key), then the k
    before it (they send us theirs), without repeats."""
    k = ring_reach(n)
    after = [(me + d) % n for d in range(1, k + 1)]
    before = [j for j in ((me - d) % n for d in range(1, k + 1)) if j not in after and j != me]
    return after, before


def key_formula(diffs: list[int], m: int, y_m: int) -> int:
    """``Σ_{j=1}^{t−1} j·d_{m+j} + t·y_m mod 2^256`` (indices cyclic, 0-based ``m``)."""
    t = len(diffs)
    total = t * y_m
    for j in range(1, t):
        total += j * diffs[(m + j) % t]
    return total % MODULUS


def encode_proposal(entries: list[tuple[int, bytes, int]]) -> bytes:
    return canonical(*[(u, kid, d.to_bytes(32, "big")) for u, kid, d in entries])


def decode_proposal(value: bytes, n: int, t: int) -> list[tuple[int, bytes, int]]:
    """Parse a decided value; ``ValueError`` unless it is t distinct members of the group."""
    try:
        raw = _value_decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"malformed GKE proposal: {exc}") from None
    members = [u for u, _, _ in raw]
    if len(raw) != t or len(set(members)) != t or any(u >= n for u in members):
        raise ValueError("GKE proposal must name t distinct members of the group")
    return [(u, kid, int.from_bytes(d, "big")) for u, kid, d in raw]


class GroupKeyExchange:
    """One GKE session of member ``me`` among ``n``; owns its consensus instance."""

    def __init__(
        self,
        tag: Tag,
        me: int,
        n: int,
        rng: Rng,
        stats: Counter,
        consensus: Consensus,
        *,
        contribution: int | None = None,
        session_seed: bytes | None = None,
        decision: bytes | None = None,
        voter: bool = True,
        detector: Detector,
    ) -> None:
        self.tag = tag
        self.me = me
        self.n = n
        self.t = majority(n)
        self.consensus = consensus
        self.parent: Any = None  # the SMC instance that consumes our events (set by the stack)
        self._stats = stats
        self._rng = rng
        # (y, session key) may be restored from a previous incarnation to rejoin with the same key
        self._y = contribution if contribution is not None else int.from_bytes(rng.randbytes(32), "big")
        seed = session_seed if session_seed is not None else rng.randbytes(32)
        self._session_seed = seed
        self._eph = EphemeralKey(_FixedRng(seed))
        self.public_key = self._eph.public_bytes
        self._key_id = key_id(self.public_key)
        self._contrib: dict[int, dict[bytes, int]] = {me: {self._key_id: self._y}}
        self._pairs: dict[tuple[int, bytes], Aead] = {}
        self._answered: set[tuple[int, bytes]] = set()
        self._detector = detector
        self._after, before = neighbours(me, n)
        #: members whose contribution we expect: the ring neighbours, and every member we asked
        #: since (never shrinks: an expected member suspected wrongly still answers)
        self._expected: set[int] = {*self._after, *before}
        self.state = GkeState.RUNNING
        #: False for a member that may have voted in this session's consensus before a restart
        self.voter = voter
        self._restored_decision = decision
        self._restored = contribution is not None
        self.decided: list[tuple[int, bytes, int]] | None = None
        self.members: tuple[int, ...] = ()
        self.secret: int | None = None

    # ----------------------------------------------------------------- state for restoring

    @property
    def contribution(self) -> int:
        return self._y

    @property
    def session_seed(self) -> bytes:
        return self._session_seed

    def saved_state(self) -> dict:
        """What to persist (encrypted!) to rejoin this session with the same key: pass it back as
        ``Member.smc_init(tag, now, resume=True, **state)``."""
        state = {"contribution": self._y, "session_seed": self._session_seed}
        if self.consensus.decision is not None:
            state["decision"] = self.consensus.decision
        return state

    def known_contributions(self) -> dict[int, int]:
        """god view for the checker: member -> contribution under its current session key."""
        return {j: next(iter(keys.values())) for j, keys in self._contrib.items() if keys}

    # ----------------------------------------------------------------- inputs

    def init(self, now: float) -> list[Event]:
        """Local input: start the session (send our session key to the ring neighbours after us;
        to all our neighbours when we rejoin, since those before us answered our earlier run)."""
        rejoin = self._restored_decision is not None or not self.voter or self._restored
        out = self._ask(sorted(self._expected) if rejoin else self._after)
        out += self._ask_more()
        if self._restored_decision is not None:  # rejoining with the saved decision: same key now
            self.state = GkeState.PROPOSED
            return out + self.absorb(self.consensus.restore(self._restored_decision), now)
        if not self.voter:  # learn the decision, never vote again (see Consensus.abstain)
            self.state = GkeState.PROPOSED
            return out + self.absorb(self.consensus.abstain(), now)
        return out + self._maybe_propose()

    def receive(self, sender: int, msg: Message, now: float) -> list[Event]:
        if sender == self.me:
            return self._drop("from_self")
        if isinstance(msg, PublicKey):
            return self._on_public_key(sender, msg)
        if isinstance(msg, Contribution):
            return self._on_contribution(sender, msg)
        return self._drop("unexpected_message")

    def peer_back(self, peer: int) -> list[Event]:
        """``peer`` restarted or came back from a partition: the session key we sent its
        earlier run is lost with it.  Send it again if we still wait for that member's
        contribution -- it is alive, so the detector will never make us ask anyone else, and
        the frame also shows it this session exists (it may be in an older epoch)."""
        if self.state is GkeState.FINISHED or peer not in self._expected or self._contrib.get(peer):
            return []
        self._stats["gke.asked_again"] += 1
        return self._ask([peer])

    def suspicion_changed(self) -> list[Event]:
        """The detector's suspect list changed: expected contributions may fall short."""
        return self._ask_more()

    def absorb(self, events: list[Event], now: float) -> list[Event]:
        """Events from our consensus instance: pass actions on, consume the decision."""
        out: list[Event] = []
        for ev in events:
            if isinstance(ev, Decided):
                out += self._on_decided(ev.value)
            else:
                out.append(ev)
        return out

    # ----------------------------------------------------------------- whom to ask

    def _ask(self, peers: list[int]) -> list[Event]:
        """Send our session key to ``peers``: each answers with its contribution."""
        msg = PublicKey(self.tag, self.public_key)
        return [Send(j, msg) for j in peers]

    def _ask_more(self) -> list[Event]:
        """Ask members beyond those expected when the expected ones no longer suffice.

        Running, we need t contributions; decided without a decided contribution, one of the
        decided members'.  Peers we expect count until the detector suspects them; the members
        asked next are the nearest round the ring (running) or the decided ones (decided)."""
        if self.state is GkeState.RUNNING:
            have = {j for j, keys in self._contrib.items() if keys}
            need = self.t - len(have)
            pool = [(self.me + d * s) % self.n for d in range(1, self.n // 2 + 1) for s in (1, -1)]
        elif self.state is GkeState.DECIDED and self.decided is not None:
            have, need = set(), 1
            pool = [u for u, _, _ in self.decided]
        else:
            return []
        if need <= 0:
            return []
        suspects = self._detector.suspects
        wanted = set(pool)
        need -= sum(
            1 for j in self._expected if j in wanted and not self._contrib.get(j) and not suspects(j)
        )
        asks: list[int] = []
        for j in pool:
            if need <= 0:
                break
            if j == self.me or j in self._expected or j in have or suspects(j):
                continue
            self._expected.add(j)
            asks.append(j)
            need -= 1
        if asks:
            self._stats["gke.asked_beyond_ring"] += len(asks)
        return self._ask(asks)

    # ----------------------------------------------------------------- contributions

    def _pair(self, peer: int, peer_key: bytes) -> Aead:
        """The AEAD shared with ``peer``'s session key: one X25519 exchange and one HKDF per
        pair, bound to the tag, both indices and both session keys.  Both directions use it,
        with random nonces, and the associated data names sender and receiver.  It is kept
        only until both directions are done (:meth:`_on_contribution`): an AES-GCM context
        holds ~1.4 KB, half a gigabyte over the ~n²/2 pairs of a group of 1001.  A peer that
        asks again (restarted with its saved session key) costs one more exchange."""
        aead = self._pairs.get((peer, peer_key))
        if aead is None:
            shared = self._eph.exchange(peer_key)
            me, my_key = self.me, self.public_key  # ordered by index (never equal: not from us)
            (lo, lo_key), (hi, hi_key) = ((me, my_key), (peer, peer_key)) if me < peer else ((peer, peer_key), (me, my_key))
            aead = Aead(
                hkdf(
                    shared,
                    salt=b"secchat/gke/contribution/v1",
                    info=canonical("contribution-key", self.tag, lo, hi, lo_key, hi_key),
                    length=32,
                )
            )
            if len(self._pairs) >= self.n * MAX_KEYS_PER_MEMBER:
                self._pairs.clear()
            self._pairs[(peer, peer_key)] = aead
        return aead

    def _on_public_key(self, sender: int, msg: PublicKey) -> list[Event]:
        """Answer every public key, even one whose contribution overtook it and that we answered
        then: the same key comes again from a member restarted with its saved state, which lost
        our answer with its earlier run -- and its restart may reach us after its key (checker
        seed 9032 of the restarts check: a member restarted twice waited for ever on a ring
        neighbour that took its key for answered).  A duplicate is dropped by its receiver."""
        return self._answer(sender, msg.key)

    def _answer(self, sender: int, key: bytes) -> list[Event]:
        """Seal our contribution to ``sender``'s session ``key``."""
        try:
            to_peer = self._pair(sender, key)
        except CryptoError:
            return self._drop("bad_public_key")
        if len(self._answered) < self.n * MAX_KEYS_PER_MEMBER:
            self._answered.add((sender, key))
        nonce = self._rng.randbytes(12)
        sealed = to_peer.seal(nonce, self._y.to_bytes(32, "big"), canonical("contribution", self.tag, self.me, sender))
        out: list[Event] = [Send(sender, Contribution(self.tag, self.public_key, nonce, sealed))]
        if self.consensus.decision is not None:
            # a late or restarted member: hand it the decision too, so it needs nobody's round
            out.append(Send(sender, Decision(self.consensus.tag, self.consensus.decision)))
        return out

    def _on_contribution(self, sender: int, msg: Contribution) -> list[Event]:
        known = self._contrib.setdefault(sender, {})
        kid = key_id(msg.key)
        if kid in known:
            return self._drop("duplicate_contribution")
        try:
            from_peer = self._pair(sender, msg.key)
            plain = from_peer.open(msg.nonce, msg.sealed, canonical("contribution", self.tag, sender, self.me))
        except CryptoError:
            return self._drop("bad_contribution")
        if len(plain) != 32:
            return self._drop("bad_contribution")
        if len(known) >= MAX_KEYS_PER_MEMBER:
            known.pop(next(iter(known)))
        known[kid] = int.from_bytes(plain, "big")
        out: list[Event] = []
        if (sender, msg.key) not in self._answered:
            # the contribution doubles as the sender's public key: answer now rather than wait for
            # a PublicKey that may be slower, or lost in a link queue that overflowed
            out += self._answer(sender, msg.key)
        if (sender, msg.key) in self._answered:  # both directions done: the pair's AEAD goes
            self._pairs.pop((sender, msg.key), None)
        if self.state is GkeState.DECIDED:
            return out + self._try_finish()
        return out + self._maybe_propose()

    def _maybe_propose(self) -> list[Event]:
        if self.state is not GkeState.RUNNING or len(self._contrib) < self.t:
            return []
        ready = sorted(j for j, keys in self._contrib.items() if keys)
        if len(ready) < self.t:
            return []
        chosen = ready[: self.t] if self.me in ready[: self.t] else [*ready[: self.t - 1], self.me]
        chosen.sort()
        entries = []
        for u in chosen:
            kid, y = next(reversed(self._contrib[u].items()))
            entries.append((u, kid, y))
        diffs = [
            (u, kid, (y - entries[(k + 1) % self.t][2]) % MODULUS) for k, (u, kid, y) in enumerate(entries)
        ]
        self.state = GkeState.PROPOSED
        return self.absorb(self.consensus.propose(encode_proposal(diffs)), 0.0)

    # ----------------------------------------------------------------- decision

    def _on_decided(self, value: bytes) -> list[Event]:
        try:
            self.decided = decode_proposal(value, self.n, self.t)
        except ValueError:
            self._stats["gke.undecodable_decision"] += 1
            return []
        self.members = tuple(u for u, _, _ in self.decided)
        self.state = GkeState.DECIDED
        out = self._try_finish()
        return out if out else self._ask_more()

    def _try_finish(self) -> list[Event]:
        assert self.decided is not None
        diffs = [d for _, _, d in self.decided]
        for m, (u, kid, _) in enumerate(self.decided):
            y = self._contrib.get(u, {}).get(kid)
            if y is not None:
                self.secret = key_formula(diffs, m, y)
                self.state = GkeState.FINISHED
                return [SessionKey(self.tag, self.members, self.secret)]
        self._stats["gke.waiting_for_decided_contribution"] += 1
        return []

    def _drop(self, reason: str) -> list[Event]:
        self._stats[f"gke.dropped.{reason}"] += 1
        return []


class _FixedRng:
    """Hands out one fixed 32-byte string: lets a session key be re-created from its seed."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed

    def randbytes(self, n: int) -> bytes:
        assert n == len(self._seed)
        return self._seed
