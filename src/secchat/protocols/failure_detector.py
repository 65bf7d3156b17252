"""The eventually-strong failure detector ◇S of Chandra and Toueg, as a sans-I/O state machine.

Why: consensus must stop waiting for a crashed coordinator, but no timeout may ever decide what
consensus decides.  Each member heartbeats every ``period``; a peer silent for Δ(p) is suspected;
a message from a suspected peer un-suspects it and grows Δ(p) (×``backoff``, capped), so after the
network stabilises premature suspicions stop.  Any message from p counts as a heartbeat, and we
skip the heartbeat to p when we sent p something else within the period: under load the detector
costs nothing, idle it costs n messages per period per member.

The detector owns one timer (``fd``): the earlier of the next heartbeat and the next expiry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .events import Broadcast, Event, PeerRestored, PeerSuspected, Send, SetTimer
from .messages import Alive

__all__ = ["DetectorConfig", "FailureDetector"]

_ALIVE = Alive()


@dataclass(frozen=True)
class DetectorConfig:
    """Timing of the failure detector, in seconds.

    Constraint: ``period < initial_timeout <= max_timeout``; a timeout shorter than a heartbeat
    period would suspect every idle peer.  Idle heartbeats cost n² messages per period in a group
    of n, so groups larger than ``reference_group`` stretch the period and the timeouts in
    proportion (:meth:`scaled`): the per-member heartbeat rate stays that of a group of 20.
    """

    period: float = 0.2
    initial_timeout: float = 1.0
    backoff: float = 1.5
    max_timeout: float = 30.0
    reference_group: int = 20

    def __post_init__(self) -> None:
        if not 0 < self.period < self.initial_timeout <= self.max_timeout:
            raise ValueError("need 0 < period < initial_timeout <= max_timeout")
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
            return [PeerRestored(peer)]
        return []

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
        period = self.config.period
        if now >= self._next_beat:
            since = now - period
            quiet = (
                []
                if self._sent_all > since
                else [p for p in range(self.n) if p != self.me and self._sent[p] <= since]
            )
            if quiet and len(quiet) == self.n - 1:
                out.append(Broadcast(_ALIVE))
                self._sent_all = now
            else:
                out.extend(Send(p, _ALIVE) for p in quiet)
                for p in quiet:
                    self._sent[p] = now
            self._next_beat = now + period
        next_expiry = math.inf
        for p in range(self.n):
            if p == self.me or p in self._suspected:
                continue
            expiry = self._heard[p] + self._timeout[p]
            if now >= expiry:
                self._suspected.add(p)
                out.append(PeerSuspected(p))
            else:
                next_expiry = min(next_expiry, expiry)
        out.append(SetTimer(self.TIMER, min(self._next_beat, next_expiry)))
        return out
