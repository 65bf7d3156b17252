"""The reliable channel without sockets: seeded schedules in the style of trio's fake net.

Two :class:`Channel` ends talk over *paths* (each one ordered by default, like a TCP
connection); a ``random.Random(seed)`` decides every step: frames offered, paths opened, cut
(their contents lost, after a random prefix got through), segments duplicated or overtaking
others, time jumping ahead (acks due, paths stalling), and the sender restarting (a new
session).  After every step the bounds on buffered bytes hold; at the end a fresh path heals
everything and each end must have delivered exactly the frames the other's current run
accepted, once each and in order.  A failing seed prints and replays.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from secchat.net.channel import Channel, ChannelConfig
from secchat.net.errors import FrameError
from secchat.net.framing import Ack, Data, decode_message, encode_data

SCHEDULES = int(os.environ.get("SECCHAT_CHANNEL_SCHEDULES", "100000"))
CONFIG = ChannelConfig(
    queue_max_frames=6,
    queue_max_bytes=300,
    unacked_max_bytes=400,
    initial_window=90,
    ack_every_frames=3,
    ack_every_bytes=200,
    ack_delay=0.05,
    stall_timeout=0.5,
)
MAX_FRAME = 32 + 1 + 8  # envelope + group "g" + largest payload below
QUEUE_FRAMES, QUEUE_BYTES = CONFIG.queue_max_frames, CONFIG.queue_max_bytes
UNACKED_BYTES = max(CONFIG.unacked_max_bytes, MAX_FRAME)
REORDER_BYTES = CONFIG.unacked_max_bytes


class Path:
    __slots__ = ("flight", "sessions", "up")

    def __init__(self, a: Channel, b: Channel) -> None:
        self.up = True
        # flight[x]: what is on the wire towards end x, in order: ("hello", fields) or frame bytes
        self.flight: list[list] = [[("hello", b.hello_fields())], [("hello", a.hello_fields())]]
        self.sessions = (b.session, a.session)  # the run whose hello opened it, towards end x


class End:
    __slots__ = ("accepted", "chan", "delivered", "path", "sent")

    def __init__(self, session: int, cls: type[Channel]) -> None:
        self.chan = cls(session, CONFIG)
        self.path: Path | None = None  # the path we send on (the peer's hello arrived on it)
        self.sent = 0
        self.accepted: list[bytes] = []  # frames our current run accepted, in order
        self.delivered: list[tuple[int, bytes]] = []  # (peer session, payload)


class World:
    def __init__(self, seed: int, cls: type[Channel] = Channel) -> None:
        self.rng = random.Random(seed)
        self.cls = cls
        self.now = 0.0
        self.sessions = 0
        self.ends = [End(self._session(), cls), End(self._session(), cls)]
        self.paths: list[Path] = []
        self.earlier: list[set[tuple[int, bytes]]] = [set(), set()]  # delivered by earlier runs

    def _session(self) -> int:
        self.sessions += 1
        return self.sessions

    def open_path(self) -> None:
        a, b = self.ends
        self.paths.append(Path(a.chan, b.chan))
        if len(self.paths) > 3:
            self.paths = [p for p in self.paths if p.up or p.flight[0] or p.flight[1]][-3:]

    def cut(self, path: Path) -> None:
        path.up = False
        for x in (0, 1):
            keep = self.rng.randrange(len(path.flight[x]) + 1)  # a prefix still got through
            del path.flight[x][keep:]
            if self.ends[x].path is path:
                self.ends[x].path = None
            if self.ends[1 - x].path is path:
                self.ends[1 - x].path = None

    def pump(self, x: int) -> None:
        end = self.ends[x]
        if end.path is None or not end.path.up:
            return
        budget = self.rng.choice((1, 60, 1 << 30))
        end.path.flight[1 - x].extend(end.chan.frames_to_send(self.now, budget))

    def deliver(self, x: int, path: Path) -> None:
        """One segment towards end x, usually the first in line, sometimes a later one or a copy."""
        queue = path.flight[x]
        r = self.rng.random()
        i = 0
        if r < 0.08 and len(queue) > 1:
            i = self.rng.randrange(1, min(len(queue), 4))  # overtakes (a transport that reorders)
        item = queue[i] if r > 0.94 else queue.pop(i)  # r > 0.94: duplicated
        end = self.ends[x]
        if isinstance(item, tuple):
            fields = item[1]
            if not end.chan.on_session(*fields, now=self.now):
                self.cut(path)  # a path of a replaced run: the driver closes it
                return
            if path.up and (
                end.path is None
                or not end.path.up
                or self.paths.index(path) > self._index(end.path)
            ):
                end.path = path
                end.chan.new_path(self.now)
            return
        message = decode_message(item[4:])
        assert isinstance(message, Data | Ack)
        peer_session = path.sessions[x]
        try:
            got = end.chan.receive(message, peer_session, self.now)
        except FrameError as exc:
            raise AssertionError(f"an honest sender overflowed the reorder window: {exc}") from None
        if got:
            end.delivered.extend((peer_session, payload) for _, payload in got)
            self.check_order()

    def _index(self, path: Path) -> int:
        return self.paths.index(path) if path in self.paths else -1

    def step(self) -> None:
        rng = self.rng
        r = rng.random()
        x = rng.randrange(2)
        end = self.ends[x]
        if r < 0.25:
            payload = b"%d" % end.sent
            end.sent += 1
            if end.chan.send("g", payload):
                end.accepted.append(payload)
        elif r < 0.45:
            self.pump(x)
        elif r < 0.80:
            busy = [p for p in self.paths if p.flight[x]]
            if busy:
                self.deliver(x, rng.choice(busy))
        elif r < 0.84:
            self.open_path()
        elif r < 0.87:
            live = [p for p in self.paths if p.up]
            if live:
                self.cut(rng.choice(live))
        elif r < 0.97:
            self.advance(rng.choice((0.01, 0.06, 0.3, 0.6)))
        elif r < 0.985:
            self.restart(x)
        else:
            self.pump(0)
            self.pump(1)

    def advance(self, dt: float) -> None:
        self.now += dt
        for end in self.ends:
            timer = end.chan.get_timer()
            if timer is not None and timer <= self.now:
                end.chan.handle_timer(self.now)
            if end.chan.stalled and end.path is not None:  # the driver drops a stalled path
                self.cut(end.path)
                self.open_path()

    def restart(self, x: int) -> None:
        """End x's sender starts a new run: what it held is lost, the peer must not mix runs."""
        old = self.ends[x]
        self.earlier[x].update(old.delivered)  # its receiving side starts over too
        self.ends[x] = End(self._session(), self.cls)
        for p in self.paths:  # its connections die with it: nothing on them reaches the new run
            if p.up:
                self.cut(p)
            p.flight[x].clear()
        self.open_path()

    def check_bounds(self) -> None:
        # the channel's own counters (read directly: this runs after every step)
        for end in self.ends:
            ch = end.chan
            assert len(ch._queue) <= QUEUE_FRAMES and ch._queued_bytes <= QUEUE_BYTES, "queue bound"
            assert ch._unacked_bytes <= UNACKED_BYTES, "unacknowledged bytes bound"
            assert ch._reorder_bytes <= REORDER_BYTES, "reorder window bound"

    def check_order(self, complete: bool = False) -> None:
        """What this run of x delivered of the peer's current run: a gap-free slice of what the
        peer accepted, in order, starting where an earlier run of x left off; ``complete``:
        running to the end."""
        for x in (0, 1):
            peer = self.ends[1 - x]
            session = peer.chan.session
            mine = [p for s, p in self.ends[x].delivered if s == session]
            start = (
                peer.accepted.index(mine[0]) if mine else (len(peer.accepted) if complete else 0)
            )
            assert mine == peer.accepted[start : start + len(mine)], (mine, peer.accepted)
            missing = [p for p in peer.accepted[:start] if (session, p) not in self.earlier[x]]
            assert not missing, f"never delivered to any run: {missing}"
            if complete:
                assert start + len(mine) == len(peer.accepted), (
                    f"lost frames: {len(mine)} of {len(peer.accepted) - start} delivered"
                )

    def heal(self) -> None:
        """A fresh path that loses nothing, time enough for every ack: everything arrives."""
        for p in self.paths:
            if p.up:
                self.cut(p)
        self.open_path()
        path = self.paths[-1]
        for _ in range(10_000):
            moved = False
            for x in (0, 1):
                while path.flight[x]:
                    self.deliver_in_order(x, path)
                    moved = True
            for x in (0, 1):
                if self.ends[x].path is path:
                    before = len(path.flight[1 - x])
                    self.pump(x)
                    moved = moved or len(path.flight[1 - x]) > before
            if not moved:
                if not any(e.chan.get_timer() is not None for e in self.ends):
                    return
                self.now += CONFIG.ack_delay
                for end in self.ends:
                    end.chan.handle_timer(self.now)
        raise AssertionError("the healed schedule did not settle")

    def deliver_in_order(self, x: int, path: Path) -> None:
        saved = self.rng
        self.rng = _NO_FAULTS
        try:
            self.deliver(x, path)
        finally:
            self.rng = saved


class _NoFaults(random.Random):
    def random(self) -> float:
        return 0.5


_NO_FAULTS = _NoFaults(0)


def run_schedule(seed: int, cls: type[Channel] = Channel, steps: int | None = None) -> World:
    world = World(seed, cls)
    world.open_path()
    for _ in range(steps if steps is not None else 8 + world.rng.randrange(28)):
        world.step()
        world.check_bounds()
    for end in world.ends:  # the counters the bounds are checked on are the real sums
        ch = end.chan
        assert ch._queued_bytes == sum(i[3] for i in ch._queue)
        assert ch._unacked_bytes == sum(i[3] for i in ch._unacked)
    world.heal()
    world.check_bounds()
    world.check_order(complete=True)
    for end in world.ends:
        assert end.chan.unacked[0] == 0 and end.chan.queued[0] == 0, (
            "all acknowledged after the heal"
        )
    return world


def test_seeded_schedules_deliver_exactly_once_in_order():
    t0 = time.perf_counter()
    failures = []
    resent = reordered = 0
    for seed in range(SCHEDULES):
        try:
            world = run_schedule(seed)
        except AssertionError as exc:
            failures.append((seed, str(exc)[:200]))
            if len(failures) >= 5:
                break
            continue
        stats = world.ends[0].chan.stats
        resent += stats["frames_resent"]
        reordered += stats["frames_reordered"]
    elapsed = time.perf_counter() - t0
    print(
        f"{SCHEDULES} schedules in {elapsed:.1f}s ({SCHEDULES / elapsed:.0f}/s); "
        f"end 0 resent {resent} frames, parked {reordered} out of order"
    )
    assert not failures, f"failing seeds (replay with run_schedule(seed)): {failures}"
    assert resent > 0 and reordered > 0  # the schedules did exercise resending and reordering


class AcksWhatItParked(Channel):
    """Broken: acknowledges frames parked out of order as if delivered."""

    __slots__ = ()

    def _ack_point(self) -> int:
        return max(self._reorder, default=self.rx_next - 1) + 1


class ForgetsToResend(Channel):
    """Broken: a new path carries on after the last frame sent instead of resending."""

    __slots__ = ()

    def new_path(self, now: float) -> None:
        cursor, inflight = self._cursor, self._inflight_bytes
        super().new_path(now)
        self._cursor, self._inflight_bytes = cursor, inflight


@pytest.mark.parametrize("broken", [AcksWhatItParked, ForgetsToResend])
def test_a_broken_channel_is_caught(broken):
    for seed in range(5000):
        try:
            run_schedule(seed, broken)
        except AssertionError as exc:
            print(f"{broken.__name__} caught by seed {seed}: {str(exc)[:120]}")
            return
    raise AssertionError(f"{broken.__name__} passed 5000 schedules")


def _pair(config: ChannelConfig = CONFIG) -> tuple[Channel, Channel]:
    a, b = Channel(1, config), Channel(2, config)
    a.on_session(*b.hello_fields(), now=0.0)
    b.on_session(*a.hello_fields(), now=0.0)
    a.new_path(0.0)
    b.new_path(0.0)
    return a, b


def _feed(ch: Channel, frames: list[bytes], session: int, now: float) -> list[bytes]:
    got = []
    for frame in frames:
        message = decode_message(frame[4:])
        assert isinstance(message, Data | Ack)
        got += [p for _, p in ch.receive(message, session, now)]
    return got


def test_a_peer_that_never_acknowledges_gets_one_window_per_path():
    config = ChannelConfig(initial_window=1000, unacked_max_bytes=1 << 20)
    a, _b = _pair(config)
    for _ in range(100):
        assert a.send("g", bytes(100))
    window = 1000 // (100 + 1 + 32)  # frames of 133 bytes as the bounds count them
    assert len(a.frames_to_send(0.0)) == window  # one window, not everything queued
    assert a.frames_to_send(0.1) == []
    for i in range(5):  # reconnects, never acknowledging: each path resends one window again
        a.on_session(2, 0, 0, 0, now=1.0 + i)
        a.new_path(1.0 + i)
        assert len(a.frames_to_send(1.0 + i)) == window
    assert a.stats["frames_resent"] == 5 * window


def test_the_ack_timer_and_the_stall_are_deadlines():
    a, b = _pair()
    assert a.get_timer() is None
    a.send("g", b"x")
    frames = a.frames_to_send(10.0)
    assert a.get_timer() == 10.0 + CONFIG.stall_timeout  # in flight: a stall deadline
    assert _feed(b, frames, 1, 10.0) == [b"x"]
    assert b.get_timer() == 10.0 + CONFIG.ack_delay and b.frames_to_send(10.0) == []
    b.handle_timer(10.0 + CONFIG.ack_delay)
    ack = b.frames_to_send(10.06)
    assert len(ack) == 1 and b.get_timer() is None
    _feed(a, ack, 2, 10.06)
    assert a.unacked == (0, 0) and a.get_timer() is None
    a.send("g", b"y")
    a.frames_to_send(20.0)  # lost: no ack ever comes
    a.handle_timer(20.0 + CONFIG.stall_timeout - 0.01)
    assert not a.stalled
    a.handle_timer(20.0 + CONFIG.stall_timeout)
    assert a.stalled  # the driver opens another path
    a.new_path(21.0)
    assert not a.stalled and len(a.frames_to_send(21.0)) == 1  # and "y" goes again at once


def test_a_stale_run_of_the_peer_is_refused():
    a, _ = _pair()
    assert a.on_session(5, 0, 0, 0, now=0.0)  # the peer restarted (sessions grow)
    assert not a.on_session(2, 0, 0, 0, now=0.0)  # a late hello of the run it replaced
    assert _feed(a, [encode_data("g", b"old", 0, 0)], 2, 0.0) == []
    assert a.stats["frames_stale_session"] == 2


def test_far_out_of_order_frames_are_a_peer_fault():
    a, _ = _pair()
    with pytest.raises(FrameError) as info:
        for seq in range(1, 1000):
            _feed(a, [encode_data("g", bytes(20), seq, 0)], 2, 0.0)
    assert info.value.code == "reorder_overflow"
