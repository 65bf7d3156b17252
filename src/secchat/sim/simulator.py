"""A deterministic discrete-event simulator for groups of sans-I/O members.

Why: the protocols' claims (agreement, one key, exactly-once delivery) must hold under every
schedule, and a failing schedule must replay exactly.  Everything here is driven by one seeded
``random.Random`` and a simulated clock: per-message random delays (so links reorder), a
stabilisation time before which delays can exceed the detectors' timeouts (partial synchrony:
detectors are wrong for a while), crashes of any minority at any moment, members that start late,
and an adversary that replays, tampers with and forges frames.  Same seed, same run, byte for
byte: :attr:`Simulation.trace_digest` hashes every delivery.

Members that have not started yet are not running: frames sent to them wait (as they would in the
sender's link queue) and arrive when they start.  A crashed member receives and sends nothing.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import math
import operator
import random
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..crypto import Signer
from ..protocols.driving import pump
from ..protocols.events import Output
from ..protocols.stack import GroupId, Member, StackConfig

__all__ = ["NetworkModel", "SimNode", "Simulation"]

_SMC_DATA = b"\x1e"  # the wire type of SmcData (tag 30)
_NOT_PROTOCOL = (b"\x01", b"\x02")  # Alive, RecordHello: neither counts as a protocol message

# queue entry kinds: (when, seq, kind, payload); ``seq`` is unique, so kinds are never compared
_CALL, _TIMER, _DELIVER, _FANOUT = 0, 1, 2, 3
#: one trace record per delivery: sender, receiver, time, and the frame's length and bytes --
#: or, for a fanout, _DIGESTED and the frame's SHA-256 (computed once for all its deliveries)
_TRACE = struct.Struct("<qqdQ")
_DIGESTED = 1 << 63


_when = operator.itemgetter(0)
_clock = time.perf_counter
_FAR = float(1 << 62)  # buckets beyond share one (see Simulation._bucket)


class _Fanout:
    """The deliveries of one frame sent to several members, in (time, sequence number) order.

    Why: the queue holds one entry per fanout (its next delivery), not one per delivery.  A
    group's record hellos alone are n(n-1) deliveries, all queued at once: a heap of a million
    entries costs a cache miss per level on every push and pop, and hundreds of megabytes.  The
    order of events is unchanged (each delivery keeps the time and sequence number it was given
    when it was sent), and the frame's digest for the trace is computed once.
    """

    __slots__ = ("data", "digest", "items", "next", "sender")

    def __init__(self, sender: int, data: bytes, items: list[tuple[float, int, int]]) -> None:
        self.sender = sender
        self.data = data
        self.digest = hashlib.sha256(data).digest()
        # by time; on equal times by sequence number, which grows along the list: a stable sort
        # by time alone gives the (time, seq) order, and compares floats, not tuples
        items.sort(key=_when)
        self.items = items  # (when, seq, to)
        self.next = 0


@dataclass(frozen=True)
class NetworkModel:
    """Delays in simulated seconds.

    A frame takes ``uniform(min_delay, max_delay)``.  Before ``stabilisation``, frames from the
    ``slow`` members, and a ``slow_fraction`` of all others, take ``uniform(max_delay,
    unstable_max_delay)`` instead -- longer than the detectors' timeout when
    ``unstable_max_delay`` exceeds it, so detectors suspect members that are up.
    """

    min_delay: float = 0.001
    max_delay: float = 0.02
    unstable_max_delay: float = 0.02
    stabilisation: float = 0.0
    slow: frozenset[int] = frozenset()
    slow_fraction: float = 0.0


@dataclass(slots=True)
class SimNode:
    index: int
    member: Member | None = None
    #: for members of *different* groups in one network (:meth:`Simulation.place`): the group
    #: this node runs and its roster, the node index of each member index of that group
    group: GroupId | None = None
    roster: tuple[int, ...] | None = None
    position: dict[int, int] = field(default_factory=dict)
    started_at: float | None = None
    crashed_at: float | None = None
    waiting: list[tuple[int, bytes]] = field(default_factory=list)
    #: this member's send and emit callbacks for :func:`pump` (made once per run of a member)
    pumps: tuple[int, int, Callable[..., object], Callable[[Output], None]] | None = None
    outputs: list[tuple[float, Output]] = field(default_factory=list)
    #: seconds spent inside this member's calls (perf_counter: the simulator is one thread doing
    #: no I/O, so that is CPU time; process_time would cost a system call per event)
    cpu: float = 0.0
    on_output: Callable[[float, Output], None] | None = None

    @property
    def up(self) -> bool:
        return self.member is not None and self.crashed_at is None


class Simulation:
    """n members, one seed, one clock."""

    def __init__(
        self,
        n: int,
        seed: int,
        *,
        network: NetworkModel | None = None,
        config: StackConfig | None = None,
        group: GroupId | str = "sim",
        member_factory: Callable[..., Member] = Member,
        measure_cpu: bool = False,
    ) -> None:
        self.n = n
        self.seed = seed
        self.group = group
        self.rng = random.Random(seed)
        self.network = network or NetworkModel()
        self.config = config or StackConfig()
        self.member_factory = member_factory
        self.measure_cpu = measure_cpu
        key_rng = random.Random(f"keys/{seed}")
        self.signers = [Signer(key_rng.randbytes(32)) for _ in range(n)]
        self.verifiers = [s.verifier() for s in self.signers]
        self.nodes = [SimNode(i) for i in range(n)]
        self.now = 0.0
        # the event queue, ordered by (time, sequence number): events in time buckets of
        # ``_width`` seconds; the earliest bucket is a heap (``_queue``), later ones are lists
        # (``_buckets``, their ids in the heap ``_bucket_ids``) made heaps when their turn comes.
        # Why: a group of 1001 has ~500,000 frames in flight; one heap of them all costs a cache
        # miss per level on every push and pop (~5 us), a bucket's heap fits in the cache.  The
        # order is exactly that of one heap: a bucket holds a time interval, and holds all of it.
        self._queue: list[tuple[float, int, int, Any]] = []
        self._queue_id: float = -1  # the bucket ``_queue`` holds; earlier events go there too
        self._buckets: dict[float, list[tuple[float, int, int, Any]]] = {}
        self._bucket_ids: list[float] = []
        spread = self.network.max_delay - self.network.min_delay
        self._per_bucket = 256.0 / (spread if spread > 0 else self.network.max_delay or 1.0)
        self._seq = 0
        self._timer_at: dict[int, float] = {}
        self._trace = hashlib.sha256()
        self._trace_buffer = bytearray()  # records not hashed yet (hashed 64 KiB at a time)
        self.messages_sent = 0
        self.protocol_messages = 0
        self.bytes_sent = 0
        #: every frame put on the wire: (time, sender, bytes) -- the adversary's view
        self.wire_log: list[tuple[float, int, bytes]] = []
        self.keep_wire_log = False
        #: share of a crashed member's frames still in flight that die with it (its link queues)
        self.crash_loss = 0.0
        #: crashed members may come back (:meth:`restart`): what is sent to them meanwhile waits,
        #: as the senders' links hold frames their peer has not acknowledged (lost are only
        #: those its earlier run received)
        self.restarts = False
        #: (one side, from, until): frames across it wait in the links until the partition heals
        self.partitions: list[tuple[frozenset[int], float, float]] = []
        #: (member, from, until): secure multicast data frames sent to it are lost (a paused
        #: reader whose link queue, full of a bulk sender's data, tail-drops); counted in
        #: ``frames_lost``
        self.lossy_links: list[tuple[int, float, float]] = []
        self.frames_lost = 0
        #: crashes so far (while none, no sender can be down: a delivery need not look)
        self._crashes = 0

    # ----------------------------------------------------------------- scheduling

    def at(self, when: float, fn: Callable[[], object]) -> None:
        """Run ``fn`` at simulated time ``when``."""
        self._push(when, _CALL, fn)

    def _push(self, when: float, kind: int, payload: Any) -> None:
        self._seq += 1
        self._enqueue((when, self._seq, kind, payload))

    def _bucket(self, when: float) -> float:
        """The bucket of time ``when``: monotone in time (int() of a non-negative float rounds
        down); every time too far for an int, infinity included, shares the last bucket."""
        scaled = when * self._per_bucket
        return int(scaled) if scaled < _FAR else math.inf

    def _enqueue(self, entry: tuple[float, int, int, Any]) -> None:
        bucket = self._bucket(entry[0])
        if bucket <= self._queue_id:
            heapq.heappush(self._queue, entry)
        else:
            later = self._buckets.get(bucket)
            if later is None:
                self._buckets[bucket] = [entry]
                heapq.heappush(self._bucket_ids, bucket)
            else:
                later.append(entry)

    def _next_event(self) -> tuple[float, int, int, Any] | None:
        """The earliest event (left queued), or None."""
        queue = self._queue
        if not queue:
            if not self._bucket_ids:
                return None
            self._queue_id = heapq.heappop(self._bucket_ids)
            queue = self._queue = self._buckets.pop(self._queue_id)
            heapq.heapify(queue)
        return queue[0]

    def delay(self, sender: int) -> float:
        net = self.network
        if self.now < net.stabilisation and (sender in net.slow or self.rng.random() < net.slow_fraction):
            return self.rng.uniform(net.max_delay, net.unstable_max_delay)
        return self.rng.uniform(net.min_delay, net.max_delay)

    # ----------------------------------------------------------------- node life

    def start(self, i: int, action: Callable[[Member, float], Any] | None = None, **kwargs: Any) -> Member | None:
        """Start member ``i`` now (it receives what was sent to it so far) and run ``action``.

        A member that crashed (before starting, in the scenario's terms) stays down: None.
        """
        node = self.nodes[i]
        if node.crashed_at is not None:
            return None
        if node.member is None:
            roster = node.roster or range(self.n)
            node.member = self.member_factory(
                node.group or self.group,
                node.position[i] if node.roster else i,
                len(roster),
                self.signers[i],
                [self.verifiers[p] for p in roster],
                random.Random(f"member/{self.seed}/{i}"),
                self.now,
                self.config,
                **kwargs,
            )
            node.started_at = self.now
            node.pumps = None
            node.member.start(self.now)
            self._flush(node)
        if action is not None:
            self._run(node, lambda m: action(m, self.now))
        waiting, node.waiting = node.waiting, []
        for sender, data in waiting:
            self._push(self.now, _DELIVER, (sender, i, data, True))
        return node.member

    def place(self, i: int, group: GroupId, roster: tuple[int, ...]) -> None:
        """Before it starts, make node ``i`` a member of ``group`` whose member list is the
        nodes ``roster`` (in index order): as with authenticated links, its frames go to those
        nodes only, and it accepts frames only from them, renumbered to its group's indices."""
        if i not in roster or len(set(roster)) != len(roster):
            raise ValueError("a roster lists distinct nodes, the placed node among them")
        node = self.nodes[i]
        node.group, node.roster = group, tuple(roster)
        node.pumps = None
        node.position = {p: k for k, p in enumerate(roster)}

    def restart(self, i: int, action: Callable[[Member, float], Any] | None = None, **kwargs: Any) -> Member | None:
        """A crashed member's process starts again: a new stack, every volatile state lost
        (what it keeps on disk is the driver's, given through ``action`` and ``kwargs``)."""
        node = self.nodes[i]
        node.member, node.crashed_at = None, None
        return self.start(i, action, **kwargs)  # it gets what the links held for it meanwhile

    def partition(self, side: set[int], start: float, end: float) -> None:
        """From ``start`` to ``end``, frames between ``side`` and the other members are held
        (as reliable links hold them while a connection cannot be made) until ``end``."""
        self.partitions.append((frozenset(side), start, end))

    def lossy(self, i: int, start: float, end: float) -> None:
        """From ``start`` to ``end``, frames sent to member ``i`` are lost."""
        self.lossy_links.append((i, start, end))

    def crash(self, i: int) -> None:
        node = self.nodes[i]
        if node.crashed_at is None:
            self._crashes += 1
            node.crashed_at = self.now
            if not self.restarts:
                node.waiting.clear()
            self._timer_at.pop(i, None)

    def call(self, i: int, action: Callable[[Member, float], Any]) -> Any:
        """Run a local API call on a running member now (no-op on a crashed one)."""
        node = self.nodes[i]
        if not node.up:
            return None
        return self._run(node, lambda m: action(m, self.now))

    # ----------------------------------------------------------------- network

    def inject(self, sender: int, to: int, data: bytes, when: float | None = None) -> None:
        """The adversary puts ``data`` on the link sender -> to."""
        self._push(self.now if when is None else when, _DELIVER, (sender, to, data, False))

    def _flush(self, node: SimNode) -> None:
        member = node.member
        assert member is not None
        pumps = node.pumps
        if pumps is None:
            index, roster = node.index, node.roster
            if roster is None:
                me, n = index, self.n

                def send(to: Sequence[int], data: bytes) -> None:
                    self._send(index, to, data)
            else:  # a member of its own group: its indices name the nodes of its roster
                me, n = node.position[index], len(roster)

                def send(to: Sequence[int], data: bytes) -> None:
                    self._send(index, [roster[t] for t in to], data)
            pumps = node.pumps = (me, n, send, lambda ev: self._output(node, ev))
        deadline = pump(member, *pumps)
        if deadline is not None and self._timer_at.get(node.index) != deadline:
            self._timer_at[node.index] = deadline
            self._push(deadline, _TIMER, (node.index, deadline))

    def _send(self, sender: int, targets: Sequence[int], data: bytes) -> None:
        now = self.now
        if self.keep_wire_log:
            self.wire_log.append((now, sender, data))
        kind = data[1:2]
        lossy = [i for i, start, end in self.lossy_links if start <= now < end] if kind == _SMC_DATA else ()
        net = self.network
        rng = self.rng
        random_ = rng.random
        stable = now >= net.stabilisation
        lo, span = net.min_delay, net.max_delay - net.min_delay
        partitions = self.partitions
        seq = self._seq
        # the common case, in one comprehension: self.delay(sender) inlined, the same draws
        # (random.uniform(a, b) is a + (b - a) * random())
        if stable and not lossy and not partitions:
            items = [(now + (lo + span * random_()), seq + k, to) for k, to in enumerate(targets, 1)]
            seq += len(items)
            targets = ()
        else:
            items = []
        for to in targets:
            if lossy and to in lossy:
                self.frames_lost += 1
                continue
            when = now + self.delay(sender)
            for side, start, end in partitions or ():
                if start <= now < end and (sender in side) != (to in side):
                    when = max(when, end + self.delay(sender))
            seq += 1
            items.append((when, seq, to))
        self._seq = seq
        count = len(items)
        if not count:
            return
        self.messages_sent += count
        if kind not in _NOT_PROTOCOL:  # neither a heartbeat nor the record hello in its place
            self.protocol_messages += count
        self.bytes_sent += len(data) * count
        if count == 1:
            when, seq, to = items[0]
            self._enqueue((when, seq, _DELIVER, (sender, to, data, True)))
        else:
            fanout = _Fanout(sender, data, items)
            when, seq, _ = fanout.items[0]
            self._enqueue((when, seq, _FANOUT, fanout))

    def _output(self, node: SimNode, ev: Output) -> None:
        node.outputs.append((self.now, ev))
        if node.on_output is not None:
            node.on_output(self.now, ev)

    def _run(self, node: SimNode, fn: Callable[[Member], Any]) -> Any:
        assert node.member is not None
        if self.measure_cpu:
            t0 = time.perf_counter()
            result = fn(node.member)
            node.cpu += time.perf_counter() - t0
        else:
            result = fn(node.member)
        self._flush(node)
        return result

    def _deliver(self, sender: int, to: int, data: bytes, genuine: bool, when: float, digest: bytes | None) -> None:
        node = self.nodes[to]
        if node.crashed_at is not None:
            if self.restarts:  # the senders' links hold it for the member's next run
                node.waiting.append((sender, data))
            return
        if genuine and self._crashes and self.nodes[sender].crashed_at is not None and self.rng.random() < self.crash_loss:
            return  # died in the crashed sender's queues: a broadcast cut halfway
        member = node.member
        if member is None:
            node.waiting.append((sender, data))
            return
        if node.roster is not None:  # the receiver's links know its group's members only
            index = node.position.get(sender)
            if index is None:
                return
            sender = index
        buffer = self._trace_buffer
        if digest is None:
            buffer += _TRACE.pack(sender, to, when, len(data))
            buffer += data
        else:
            buffer += _TRACE.pack(sender, to, when, _DIGESTED)
            buffer += digest
        if len(buffer) >= 65536:
            self._trace.update(buffer)
            buffer.clear()
        if self.measure_cpu:
            t0 = _clock()
            member.receive(sender, data, when)
            node.cpu += _clock() - t0
        else:
            member.receive(sender, data, when)
        if type(member) is Member and not member.has_output():
            return  # nothing to pump: no frame, no event, the same deadline
        self._flush(node)

    # ----------------------------------------------------------------- main loop

    def run(self, until: float, stop: Callable[[], bool] | None = None) -> bool:
        """Process events up to simulated time ``until``; True if ``stop()`` became true.

        The cyclic garbage collector is paused meanwhile (and resumed, if it ran, on return):
        a run allocates tuples and frames by the million and keeps the members' state, and
        each full collection walks all of it (~5 s of a 60 s run of 1001 members).  Nothing
        here depends on cycles being freed; what cycles a run leaves are freed after it."""
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._run_events(until, stop)
        finally:
            if paused:
                gc.enable()

    def _run_events(self, until: float, stop: Callable[[], bool] | None) -> bool:
        heappop, heapreplace = heapq.heappop, heapq.heapreplace
        deliver = self._deliver
        next_event = self._next_event
        while (event := next_event()) is not None:
            when, _, kind, payload = event
            if when > until:
                break
            self.now = when
            queue = self._queue
            if kind == _FANOUT:
                items = payload.items
                k = payload.next
                to = items[k][2]
                k += 1
                if k < len(items):  # the fanout's next delivery takes this one's place
                    payload.next = k
                    nxt = items[k]
                    if self._bucket(nxt[0]) <= self._queue_id:
                        heapreplace(queue, (nxt[0], nxt[1], _FANOUT, payload))
                    else:
                        heappop(queue)
                        self._enqueue((nxt[0], nxt[1], _FANOUT, payload))
                else:
                    heappop(queue)
                deliver(payload.sender, to, payload.data, True, when, payload.digest)
            else:
                heappop(queue)
                if kind == _DELIVER:
                    sender, to, data, genuine = payload
                    deliver(sender, to, data, genuine, when, None)
                elif kind == _TIMER:
                    i, deadline = payload
                    node = self.nodes[i]
                    if not node.up or self._timer_at.get(i) != deadline:
                        continue
                    del self._timer_at[i]
                    self._run(node, operator.methodcaller("handle_timer", when))
                else:
                    payload()
            if stop is not None and stop():
                return True
        self.now = until
        return stop is not None and stop()

    @property
    def trace_digest(self) -> str:
        self._trace.update(self._trace_buffer)
        self._trace_buffer.clear()
        return self._trace.hexdigest()
