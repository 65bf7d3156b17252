"""The asyncio driver against a fake member and fake links: routing, index mapping, timers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from secchat.net.runtime import Runtime


@dataclass(frozen=True)
class Out:
    to: int | None
    data: bytes


class FakeMember:
    """Records calls; produces outgoing frames and deadlines on demand."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.outgoing: list[Out] = []
        self.events: list[object] = []
        self.deadline: float | None = None

    def start(self, now):
        self.calls.append(("start", now))

    def smc_init(self, tag, now, auth="signed"):
        self.calls.append(("smc_init", tag, auth))
        self.outgoing.append(Out(None, b"pk"))

    def multicast(self, tag, payload, now):
        self.calls.append(("multicast", tag, payload))

    def receive(self, sender, data, now):
        self.calls.append(("receive", sender, data))
        if data == b"ping":
            self.outgoing.append(Out(sender, b"pong"))
            self.events.append(("got ping", sender))

    def handle_timer(self, now):
        self.calls.append(("timer", now))
        self.deadline = None

    def next_deadline(self):
        return self.deadline

    def take_outgoing(self):
        out, self.outgoing = self.outgoing, []
        return out

    def take_events(self):
        out, self.events = self.events, []
        return out


class FakeLinks:
    def __init__(self, peers):
        self._peers = list(peers)
        self.sent: list[tuple[tuple[str, ...], str, bytes]] = []
        self.full: set[str] = set()

    def peers(self):
        return self._peers

    def send_many(self, names, group, payload):
        names = tuple(names)
        self.sent.append((names, group, payload))
        return sum(n not in self.full for n in names)


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def make(loop, names=("a", "b", "c"), me=1):
    events = []
    rt = Runtime(lambda group, ev: events.append((group, ev)), loop=loop)
    links = FakeLinks([n for i, n in enumerate(names) if i != me])
    rt.attach(links)  # type: ignore[arg-type]
    member = FakeMember()
    rt.add_conference("g", names, me, member)
    return rt, links, member, events


def test_broadcast_goes_to_every_other_member(loop):
    rt, links, member, _ = make(loop)
    rt.smc_init("g", ("g", "smc", 0))
    assert member.calls[0][0] == "start"
    assert links.sent == [(("a", "c"), "g", b"pk")]


def test_frames_map_names_to_indices_and_back(loop):
    rt, links, member, events = make(loop)
    rt.on_message("c", "g", b"ping")
    assert ("receive", 2, b"ping") in member.calls
    assert links.sent[-1] == (("c",), "g", b"pong")
    assert events == [("g", ("got ping", 2))]


def test_frames_from_strangers_or_unknown_groups_are_dropped(loop):
    rt, _, member, _ = make(loop)
    rt.on_message("mallory", "g", b"ping")
    rt.on_message("b", "g", b"ping")  # ourselves
    rt.on_message("a", "other", b"ping")
    assert not [c for c in member.calls if c[0] == "receive"]
    assert rt.stats["frames_not_a_member"] == 2
    assert rt.stats["frames_unknown_group"] == 1


def test_timer_is_armed_at_the_deadline_and_rearmed(loop):
    rt, _, member, _ = make(loop)
    conf = rt.conferences["g"]
    assert conf.timer is None
    member.deadline = loop.time() + 5
    rt.on_message("a", "g", b"x")
    assert conf.timer is not None and conf.timer.when() == member.deadline
    first = conf.timer
    member.deadline += 1
    rt.on_message("a", "g", b"x")
    assert first.cancelled() and conf.timer.when() == member.deadline
    rt._fire("g")
    assert member.calls[-1][0] == "timer"
    assert conf.timer is None


def test_timer_fires_on_the_loop(loop):
    rt, _, member, _ = make(loop)
    member.deadline = loop.time()  # due at once
    rt.on_message("a", "g", b"x")
    loop.run_until_complete(asyncio.sleep(0.01))
    assert any(c[0] == "timer" for c in member.calls)


def test_queue_overflow_is_counted(loop):
    rt, links, _, _ = make(loop)
    links.full.add("a")
    rt.smc_init("g", ("g", "smc", 0))
    assert rt.stats["frames_dropped_queue_full"] == 1
    assert rt.stats["frames_out"] == 1


def test_misuse_raises(loop):
    rt, _, member, _ = make(loop)
    with pytest.raises(ValueError):
        rt.add_conference("g", ("a", "b", "c"), 1, member)
    with pytest.raises(ValueError):
        rt.multicast("nope", ("nope", "smc", 0), b"")
    with pytest.raises(ValueError):
        rt.add_conference("h", ("a", "b", "zed"), 1, FakeMember())  # no pin for zed
    with pytest.raises(ValueError):
        rt.add_conference("i", ("a", "a"), 0, FakeMember())


def test_event_handler_bug_does_not_break_the_driver(loop):
    def boom(group, ev):
        raise RuntimeError("bug")

    rt = Runtime(boom, loop=loop)
    rt.attach(FakeLinks(["a", "c"]))  # type: ignore[arg-type]
    member = FakeMember()
    rt.add_conference("g", ("a", "b", "c"), 1, member)
    rt.on_message("a", "g", b"ping")  # handler raises; logged, not propagated
    assert ("receive", 0, b"ping") in member.calls


def test_a_frame_the_links_refuse_is_counted_not_raised(loop):
    rt, links, _member, _ = make(loop)

    def refuse(names, group, payload):
        raise ValueError("too large")

    links.send_many = refuse  # type: ignore[method-assign]
    rt.smc_init("g", ("g", "smc", 0))
    assert rt.stats["frames_unsendable"] == 1
