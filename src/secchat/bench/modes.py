"""The message modes of Figure 2: one registry, one measuring loop.

Why a registry: Figure 2 draws every mode on the same axes, and new modes (another helper's
signed-burst or pairwise-MAC modes, a peer system) must appear without touching the figure
code.  A mode is a :class:`MessageMode`: a name, a legend label, and ``prepare(payload)``, which
builds a fresh sender/receiver pair and returns ``(send, receive)``: ``send()`` makes one frame
of ``payload`` as the sender's stack puts it on the wire, ``receive(frame)`` takes it through
the receiver's stack until the payload is delivered (and authenticated as the mode promises).

To add a mode: ``register(MessageMode(...))`` from the module that implements it, and name that
module in :data:`PROVIDERS` (imported on first use of :func:`modes`).  A mode that needs an
optional package says so with ``missing``: it is skipped with that line.
"""

from __future__ import annotations

import functools
import importlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["PROVIDERS", "MessageMode", "measure", "modes", "register"]

Send = Callable[[], bytes]
Receive = Callable[[bytes], object]


@dataclass(frozen=True)
class MessageMode:
    name: str  # CSV column value, stable
    label: str  # legend
    prepare: Callable[[bytes], tuple[Send, Receive]]
    #: "secchat", "thesis" or "peer" (:data:`FAMILIES`): where the legend puts it
    family: str = "secchat"
    #: None when usable here, else the one line saying how to add it
    missing: Callable[[], str | None] = lambda: None


_REGISTRY: dict[str, MessageMode] = {}
#: Modules whose import registers modes, in legend order.  Another mode module appends itself.
PROVIDERS: list[str] = ["secchat.bench.builtin_modes", "secchat.bench.peers"]
_loaded = False


def register(mode: MessageMode) -> None:
    if mode.name in _REGISTRY:
        raise ValueError(f"message mode {mode.name!r} registered twice")
    _REGISTRY[mode.name] = mode


#: Legend order: ours, then the thesis's, then the peers' (registration order within each).
FAMILIES = ("secchat", "thesis", "peer")


def modes() -> list[MessageMode]:
    """Every registered mode, ours first (providers imported once)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for name in PROVIDERS:
            importlib.import_module(name)
    return sorted(_REGISTRY.values(), key=lambda m: FAMILIES.index(m.family) if m.family in FAMILIES else 0)


def _batch(fn: Callable[[], object], count: int) -> float:
    t0 = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - t0) / count * 1e6


def _append_frame(frames: list[bytes], send: Send) -> None:
    frames.append(send())


def _receive_next(frames: Iterator[bytes], receive: Receive) -> None:
    receive(next(frames))


def measure(mode: MessageMode, size: int, repeat: int, count: int) -> tuple[float, float]:
    """Median µs per message (send, receive) over ``repeat`` batches of ``count`` messages."""
    send, receive = mode.prepare(os.urandom(size))
    sends, recvs = [], []
    for _ in range(repeat):
        frames: list[bytes] = []
        sends.append(_batch(functools.partial(_append_frame, frames, send), count))
        recvs.append(_batch(functools.partial(_receive_next, iter(frames), receive), count))
    return statistics.median(sends), statistics.median(recvs)
