"""The eventually-strong failure detector ◇S of Chandra and Toueg, as a sans-I/O state machine.

Why: consensus must stop waiting for a crashed coordinator, but no timeout may ever decide what
consensus decides.  Each member heartbeats every ``period``; a peer silent for Δ(p) is suspected;
a message from a suspected peer un-suspects it and grows Δ(p) (×``backoff``, capped), so after the
network stabilises premature suspicions stop.  Any message from p counts as a heartbeat, and we
skip the heartbeat to p when we sent p something else within the period: under load the detector
costs nothing.

Heartbeats are fast only while it matters.  A member is *urgent* while something of its own may
wait on the detector (an undecided consensus instance, a key exchange without its key) and
*calm* otherwise; calm, it heartbeats every ``calm_period`` instead of every ``period``.  Each
member tells its peers its pace in its heartbeat (``Alive.calm``, sent unsuppressed to each peer
once per change), and a peer's silence is judged against the pace it last told.  Beats go out
on ticks of the period and a beat is skipped when other traffic went to the peer within the
period, so two frames to a peer are less than two periods apart: Δ(p) covers that at the fast
pace (Δ > 2·period), and a calm peer gets ``2·(calm_period − period)`` more.  A member starts
urgent, and a peer it has not heard say otherwise counts as urgent: the start hello stands for
the first heartbeat at no cost.  A peer that starts (or restarts) takes us for urgent, so a calm
member tells it at once.  Idle, a group then costs n(n−1)/calm_period heartbeats a second
instead of n(n−1)/period, and a crash is noticed within Δ(p) while anybody waits, within
Δ(p) + 2·calm_period otherwise.  Only liveness depends on any of this, never safety.

The detector owns one timer (``fd``): the earlier of the next heartbeat and the next expiry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .events import Broadcast, Event, PeerRestored, PeerSuspected, Send, SetTimer
from .messages import Alive

__all__ = ["DetectorConfig", "FailureDetector"]

_ALIVE = Alive()
_CALM = Alive(calm=True)


@dataclass(frozen=True)
class DetectorConfig:
    """Timing of the failure detector, in seconds.

    Constraint: ``period < initial_timeout <= max_timeout``; a timeout shorter than a heartbeat
    period would suspect every idle peer.  Idle heartbeats cost n² messages per period in a group
    of n, so groups larger than ``reference_group`` stretch the period and the timeouts in
    proportion (:meth:`scaled`): the per-member heartbeat rate stays that of a group of 20.
    ``calm_period`` is the heartbeat period of a member that nothing waits on (see the module).
    """

    period: float = 0.2
    initial_timeout: float = 1.0
    backoff: float = 1.5
    max_timeout: float = 30.0
    reference_group: int = 20
    calm_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.period < self.initial_timeout <= self.max_timeout:
            raise ValueError("need 0 < period < initial_timeout <= max_timeout")
        if self.calm_period < self.period:
            raise ValueError("need calm_period >= period")
        if self.backoff < 1:
            raise ValueError("backoff must be >= 1")

    def scaled(self, n: int) -> DetectorConfig:
        """The configuration for a group of ``n``: periods and timeouts × max(1, n / reference)."""
        factor = max(1.0, n / self.reference_group)
        if factor == 1.0:
            return self
        return replace(
            self,
            period=self.period * factor,
            calm_period=self.calm_period * factor,
            initial_timeout=self.initial_timeout * factor,
            max_timeout=max(self.max_timeout, self.initial_timeout * factor),
        )


class FailureDetector:
    """Suspects peers of member ``me`` in a group of ``n``."""

    TIMER = "fd"

    def __init__(self, me: int, n: int, config: DetectorConfig, now: float) -> None:
        self.me = me
        self.n = n
        self.config = config
        self._timeout = [config.initial_timeout] * n
        self._heard = [now] * n
        self._sent = [-math.inf] * n
        self._sent_all = -math.inf
        self._suspected: set[int] = set()
        #: peers that are up but not in our group (they hold another record): suspected for good
        self._excluded: set[int] = set()
        self._next_beat = now
        self.started = False
        #: our pace: calm (slow heartbeats) when nothing of ours waits on the detector
        self.calm = False
        #: the pace each peer last told us, and the pace we last told each (None: unknown)
        self._peer_calm = [False] * n
        self._told: list[bool | None] = [False] * n

    # ----------------------------------------------------------------- queries

    def suspects(self, peer: int) -> bool:
        return peer in self._suspected

    @property
    def suspected(self) -> frozenset[int]:
        return frozenset(self._suspected)

    def timeout_of(self, peer: int) -> float:
        return self._timeout[peer]

    # ----------------------------------------------------------------- inputs

    def start(self, now: float) -> list[Event]:
        """Begin heartbeating; peers get a full timeout from now before any suspicion."""
        self.started = True
        self._heard = [now] * self.n
        self._next_beat = now
        return self.handle_timer(now)

    def exclude(self, peer: int) -> list[Event]:
        """Suspect ``peer`` for good, whatever it sends: it is up, but not one of us (it holds
        another record of the conference).  Only liveness depends on this, never safety."""
        self._excluded.add(peer)
        if peer not in self._suspected:
            self._suspected.add(peer)
            return [PeerSuspected(peer)]
        return []

    def readmit(self, peer: int, now: float) -> list[Event]:
        """``peer`` holds our record after all (it restarted with it): judge it by heartbeats."""
        if peer not in self._excluded:
            return []
        self._excluded.discard(peer)
        return self.heard_from(peer, now)

    def heard_from(self, peer: int, now: float) -> list[Event]:
        """Any message from ``peer`` arrived."""
        self._heard[peer] = now
        if peer in self._suspected and peer not in self._excluded:
            self._suspected.discard(peer)
            self._timeout[peer] = min(self._timeout[peer] * self.config.backoff, self.config.max_timeout)
            self._told[peer] = None  # it may have missed our pace while cut off: tell it again
            return [PeerRestored(peer)]
        return []

    def paced(self, peer: int, calm: bool) -> None:
        """``peer``'s heartbeat told its pace (after :meth:`heard_from`)."""
        self._peer_calm[peer] = calm

    def greeted(self, peer: int, now: float) -> list[Event]:
        """``peer`` started (or restarted): it beats fast and takes us for urgent.  Calm, we
        tell it at once, before its timeout for us runs out."""
        self._peer_calm[peer] = False
        if not self.calm:
            self._told[peer] = False
            return []
        self._told[peer] = True
        self._sent[peer] = now
        return [Send(peer, _CALM)]

    def set_calm(self, calm: bool, now: float) -> list[Event]:
        """Our pace: calm when nothing of ours waits on the detector.  Becoming urgent beats
        at once (telling every peer); becoming calm is told with the next beat."""
        if calm == self.calm:
            return []
        self.calm = calm
        if calm or not self.started:
            return []
        self._next_beat = now
        return self.handle_timer(now)

    def sent_to(self, peer: int | None, now: float) -> None:
        """We sent ``peer`` (None: every peer) something: it doubles as a heartbeat."""
        if peer is None:
            self._sent_all = now
        else:
            self._sent[peer] = now

    def handle_timer(self, now: float) -> list[Event]:
        if not self.started:
            return []
        out: list[Event] = []
        config = self.config
        calm = self.calm
        period = config.calm_period if calm else config.period
        if now >= self._next_beat:
            since = now - period
            told = self._told
            if self._sent_all > since:  # everyone heard from us: only a change of pace is due
                quiet = [p for p in range(self.n) if p != self.me and told[p] is not calm]
            else:
                sent = self._sent
                quiet = [p for p in range(self.n) if p != self.me and (sent[p] <= since or told[p] is not calm)]
            alive = _CALM if calm else _ALIVE
            if quiet and len(quiet) == self.n - 1:
                out.append(Broadcast(alive))
                self._sent_all = now
            else:
                out.extend(Send(p, alive) for p in quiet)
            for p in quiet:
                self._sent[p] = now
                told[p] = calm
            self._next_beat = now + period
        next_expiry = math.inf
        extra = 2 * (config.calm_period - config.period)
        peer_calm = self._peer_calm
        for p in range(self.n):
            if p == self.me or p in self._suspected:
                continue
            expiry = self._heard[p] + self._timeout[p]
            if peer_calm[p]:
                expiry += extra
            if now >= expiry:
                self._suspected.add(p)
                out.append(PeerSuspected(p))
            else:
                next_expiry = min(next_expiry, expiry)
        out.append(SetTimer(self.TIMER, min(self._next_beat, next_expiry)))
        return out
