"""The simulator's bucketed event queue runs events in (time, sequence) order, as one heap would."""

from __future__ import annotations

import math
import random

from secchat.sim.simulator import NetworkModel, Simulation


def test_events_run_in_time_then_sequence_order() -> None:
    rng = random.Random(5)
    sim = Simulation(3, 1, network=NetworkModel(min_delay=0.001, max_delay=0.002))
    ran: list[tuple[float, int]] = []
    expected: list[tuple[float, int]] = []
    count = 0

    def event(when: float, k: int, spawn: int) -> None:
        nonlocal count
        assert sim.now == when
        ran.append((when, k))
        for _ in range(spawn):  # events scheduled while running: now, soon, later, far
            later = when + rng.choice([0.0, 0.0, rng.uniform(0, 1e-5), rng.uniform(0, 0.01), rng.uniform(0, 5)])
            count += 1
            expected.append((later, count))
            sim.at(later, lambda w=later, c=count: event(w, c, 0))

    for _ in range(2000):
        when = rng.choice([rng.uniform(0, 0.01), round(rng.uniform(0, 0.01), 4), rng.uniform(0, 100)])
        count += 1
        expected.append((when, count))
        sim.at(when, lambda w=when, c=count: event(w, c, rng.randrange(3)))
    count += 1
    expected.append((math.inf, count))
    sim.at(math.inf, lambda c=count: ran.append((math.inf, c)))
    sim.run(math.inf)
    assert ran == sorted(expected)
