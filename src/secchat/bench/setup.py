"""Group set-up for Figure 1: time to key over real processes, and compute of all members.

* :func:`tls_time_to_key`: n member processes over mutually authenticated TLS on loopback
  (:mod:`secchat.net.cluster`), all or only a bare majority joining at one moment; the mean over
  the joined members of the time from their start command to their key (the thesis's "average
  time it took a server from starting the protocol until it computed the group key").
* :func:`sim_gke`: the deterministic simulator, every member starting together; the compute
  inside all members' stacks (decoding and crypto included, the simulator's own bookkeeping
  excluded) until every member holds the key, and the wall time and peak memory of the run.
  ``all_pairs`` runs the GKE as it was before issue 11 (every member exchanges with every other)
  for a before/after comparison in the same run.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import time
from dataclasses import dataclass

from ..protocols.events import SessionKey
from ..protocols.gke import GroupKeyExchange
from ..protocols.stack import Member, gke_tag, smc_tag

__all__ = ["AllPairsGke", "SimSetup", "sim_gke", "tls_time_to_key"]

TAG = gke_tag(smc_tag("sim"))


class AllPairsGke(GroupKeyExchange):
    """The GKE before issue 11: its public key to every member, so every pair exchanges
    contributions (kept for the before/after curve only)."""

    def init(self, now: float):
        others = [j for j in range(self.n) if j != self.me]
        self._expected.update(others)
        self._after = others
        return super().init(now)


@dataclass(frozen=True)
class SimSetup:
    n: int
    cpu: float  # seconds, all members
    wall: float  # seconds, the whole simulation
    sim_time: float  # simulated seconds to the last key
    messages: int
    bytes: int
    max_rss_kb: int  # of this process, peak so far


def sim_gke(n: int, seed: int = 0, *, all_pairs: bool = False) -> SimSetup:
    from ..sim.simulator import NetworkModel, Simulation

    def factory(*args, **kwargs):
        return Member(*args, gke_cls=AllPairsGke if all_pairs else GroupKeyExchange, **kwargs)

    t0 = time.perf_counter()
    sim = Simulation(n, seed, network=NetworkModel(min_delay=0.0005, max_delay=0.002), measure_cpu=True,
                     member_factory=factory)
    done: set[int] = set()
    secrets: set[int] = set()

    def on_output(i: int, ev) -> None:
        if isinstance(ev, SessionKey):
            done.add(i)
            secrets.add(ev.secret)

    for node in sim.nodes:
        node.on_output = lambda now, ev, i=node.index: on_output(i, ev)
    for i in range(n):
        sim.start(i, lambda m, now: m.gke_init(TAG, now))
    if not sim.run(600.0, stop=lambda: len(done) == n):
        raise RuntimeError(f"GKE n={n} did not finish")
    if len(secrets) != 1:
        raise RuntimeError(f"GKE n={n}: members computed {len(secrets)} keys")
    return SimSetup(n, sum(node.cpu for node in sim.nodes), time.perf_counter() - t0, sim.now,
                    sim.protocol_messages, sim.bytes_sent, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def tls_time_to_key(n: int, joined: int, seed: int, timeout: float = 300.0) -> tuple[float, float]:
    """(mean, slowest) seconds from start to key over the joined members of one cluster run."""
    from ..net.cluster import ClusterSpec, run_cluster

    spec = ClusterSpec(n=n, join=joined, seed=seed, timeout=timeout, log_level="WARNING")
    result = asyncio.run(run_cluster(spec, out=lambda _line: None))
    if not result.ok:
        raise RuntimeError(f"cluster n={n} joined={joined} seed={seed} failed: {result.problems[:3]}")
    times = [m.elapsed for m in result.members if m.role == "joined" and m.elapsed is not None]
    return statistics.fmean(times), max(times)
