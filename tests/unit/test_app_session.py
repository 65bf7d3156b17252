"""``Conference`` against a fake node: message states, re-key, epoch catch-up, hostile payloads.

The fake records what the conference asks of the network layer and lets the test hand it the
stack's output events in any order; no sockets, no directory.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from secchat.app import session as session_mod
from secchat.app.session import (
    ChatMessage,
    Conference,
    KeyStatus,
    Notice,
    _Epoch,
    _Rekey,
    _Seen,
    _Text,
)
from secchat.directory.client import DirectoryError
from secchat.net.node import Joined
from secchat.protocols.events import Delivered, KeyEstablished
from secchat.protocols.stack import GroupId, smc_tag

MEMBERS = ("ann", "ben", "cy")


class FakeDemux:
    def __init__(self) -> None:
        self.tags: list = []

    def pending_tags(self):
        return list(self.tags)


@dataclass
class FakeNode:
    joined: list = field(default_factory=list)
    sent: list = field(default_factory=list)
    closed: list = field(default_factory=list)
    removed: bool = False
    conf: object = None
    on_send: object = None

    def __post_init__(self) -> None:
        member = SimpleNamespace(detector=SimpleNamespace(suspects=lambda i: False), stats=Counter(), demux=FakeDemux())
        self.conf = SimpleNamespace(member=member)
        self.runtime = SimpleNamespace(conferences={"room": self.conf})
        self.links = SimpleNamespace(connected=lambda name: True, set_address=lambda *a: None)

    def join(self, group, *, epoch=None, resume=False):
        self.joined.append((epoch, resume))
        return Joined(epoch or 0, False, resume)

    def saved_epoch(self, group):
        return None

    def send(self, group, payload, *, epoch=0):
        self.sent.append((epoch, msgspec.msgpack.decode(payload)))
        if self.on_send:
            self.on_send(epoch, payload)

    def smc(self, group, epoch=0):
        return None

    def close_epoch(self, group, epoch):
        self.closed.append(epoch)

    def remove_conference(self, group):
        self.removed = True

    def set_address(self, *a):
        pass


class FakeClient:
    async def get_participant(self, name):
        raise DirectoryError("not_found", "no")

    async def list_participants(self):
        return []


class FakeHistory:
    def __init__(self) -> None:
        self.rows: list = []

    def add_message(self, conf, msg):
        self.rows.append(msg)

    def messages(self, conf):
        return list(self.rows)

    def save_state(self, *a):
        pass


def make_conference() -> tuple[Conference, FakeNode]:
    node = FakeNode()
    app = SimpleNamespace(_node=node, name="ann", client=FakeClient(), history_store=FakeHistory(), _conferences={})
    app.history = lambda conf_id: session_mod.ChatApp.history(app, conf_id)
    record = SimpleNamespace(id="room", creator="ann", t0=0, t1=4_000_000_000,
                             members=[SimpleNamespace(name=n) for n in MEMBERS], digest=b"d" * 32)
    conf = Conference(app, record)  # type: ignore[arg-type]
    app._conferences["room"] = conf
    return conf, node


def drain(conf: Conference) -> list:
    out = []
    while not conf._queue.empty():
        out.append(conf._queue.get_nowait())
    return out


def payload(obj) -> bytes:
    return msgspec.msgpack.encode(obj)


def test_message_states_and_rekey_follow():
    async def main():
        conf, node = make_conference()
        conf._start()
        await conf.send("early")
        events = drain(conf)
        assert any(isinstance(e, ChatMessage) and e.state == "sending" and e.text == "early" for e in events)
        # the key arrives, then our queued message is sent (the stack reports our own delivery)
        conf._on_stack_event(KeyEstablished(smc_tag("room", 0), "f0", (0, 1)))
        conf._on_stack_event(Delivered(smc_tag("room", 0), 0, 1, 0, payload(_Text("early", 1.0))))
        events = drain(conf)
        assert KeyStatus(True, 0, "f0", ("ann", "ben")) in events
        sent = [e for e in events if isinstance(e, ChatMessage)]
        assert [(e.text, e.state, e.local_id) for e in sent] == [("early", "sent", 1)]
        # ben re-keys: we follow to epoch 1; its key closes epoch 0
        conf._on_stack_event(Delivered(smc_tag("room", 0), 1, 7, 0, payload(_Rekey(1))))
        assert conf.epoch == 1 and node.joined[-1][0] == 1 and node.joined[-1][1] is False
        conf._on_stack_event(KeyEstablished(smc_tag("room", 0), "stale", (0, 1)))  # an old epoch's event
        assert conf.fingerprint is None
        conf._on_stack_event(KeyEstablished(smc_tag("room", 1), "f1", (1, 2)))
        assert node.closed == [0] and conf.fingerprint == "f1"
        events = drain(conf)
        assert Notice("keys of epoch 0 erased") in events
        assert KeyStatus(True, 1, "f1", ("ben", "cy")) in events
        # a stale re-key to an epoch we are past is ignored
        conf._on_stack_event(Delivered(smc_tag("room", 1), 2, 7, 0, payload(_Rekey(1))))
        assert conf.epoch == 1
        conf._on_stack_event(Delivered(smc_tag("room", 1), 2, 7, 1, payload(_Text("hi", 2.0))))
        assert [m.text for m in conf.history()] == ["early", "hi"]
        await conf.leave()
        assert node.removed and drain(conf)[-1] is None

    asyncio.run(main())


def test_our_rekey_is_announced_over_the_old_epoch():
    async def main():
        conf, node = make_conference()
        conf._start()
        conf._on_stack_event(KeyEstablished(smc_tag("room", 0), "f0", (0, 1)))
        await conf.rekey()
        assert node.sent[-1][0] == 0 and conf.epoch == 1 and node.joined[-1][0] == 1 and node.joined[-1][1] is False
        await conf.send("new")
        assert node.sent[-1][0] == 1
        await conf.leave()

    asyncio.run(main())


def test_frames_of_a_newer_epoch_make_us_follow():
    async def main():
        conf, node = make_conference()
        conf._start()
        other_record = GroupId("room", bytes(32))
        node.conf.member.demux.tags = [("smc", ("other", "smc", 9)), ("smc", smc_tag(other_record, 7)),
                                       ("gke", (*smc_tag(conf.gid, 3), "gke"))]
        await asyncio.sleep(session_mod.STATUS_PERIOD * 2)
        assert conf.epoch == 3 and node.joined[-1][0] == 3 and node.joined[-1][1] is False
        await conf.leave()

    asyncio.run(main())


def test_the_event_queue_is_bounded():
    async def main():
        conf, _node = make_conference()
        for i in range(session_mod.EVENT_QUEUE + 50):
            conf._emit(Notice(str(i)))
        events = drain(conf)
        assert len(events) == session_mod.EVENT_QUEUE and events[0] == Notice("50")

    asyncio.run(main())


_any_payload = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda t, f: msgspec.msgpack.encode({"type": "text", "text": t, "sent_at": f}),
              st.text(max_size=50), st.floats(allow_nan=True, allow_infinity=True)),
    st.builds(lambda e: msgspec.msgpack.encode({"type": "rekey", "epoch": e}), st.integers(-(2**63), 2**64 - 1)),
    st.builds(lambda e: msgspec.msgpack.encode({"type": "epoch", "epoch": e}), st.integers(-(2**63), 2**64 - 1)),
)


@settings(max_examples=300, deadline=None)
@given(data=_any_payload, sender=st.integers(1, 2), epoch=st.integers(0, 3))
def test_hostile_payloads_never_escape_or_break_the_epoch(data, sender, epoch):
    conf, node = make_conference()
    conf._on_stack_event(Delivered(smc_tag("room", epoch), sender, 1, 0, data))
    conf._on_stack_event(Delivered(smc_tag("room", epoch), sender, 1, 1, payload(_Epoch(epoch))))
    assert 0 <= conf.epoch < 1 << 48
    assert all(0 <= e < 1 << 48 for e, _ in node.joined)


def test_receipts_turn_our_message_delivered():
    async def main():
        conf, node = make_conference()
        conf._start()
        conf._up = {"ben": True, "cy": False}
        conf._on_stack_event(KeyEstablished(smc_tag("room", 0), "f0", (0, 1)))
        await conf.send("hello")
        conf._on_stack_event(Delivered(smc_tag("room", 0), 0, 5, 0, payload(_Text("hello", 1.0))))
        drain(conf)
        conf._on_stack_event(Delivered(smc_tag("room", 0), 2, 9, 0, payload(_Seen([(0, 0, 4, 0)]))))  # wrong incarnation
        assert drain(conf) == []
        conf._on_stack_event(Delivered(smc_tag("room", 0), 1, 9, 0, payload(_Seen([(0, 0, 5, 0)]))))
        [update] = drain(conf)
        assert (update.state, update.seen_by, update.local_id) == ("delivered", ("ben",), 1)  # cy is not live
        conf._on_stack_event(Delivered(smc_tag("room", 0), 2, 9, 1, payload(_Seen([(0, 0, 5, 3)]))))
        [update] = drain(conf)
        assert update.seen_by == ("ben", "cy") and conf._tracked == {}
        # we confirm what we delivered, in one receipt per period
        conf._on_stack_event(Delivered(smc_tag("room", 0), 1, 9, 2, payload(_Text("yo", 2.0))))
        await asyncio.sleep(session_mod.RECEIPT_PERIOD * 2)
        receipts = [p for e, p in node.sent if p.get("type") == "seen"]
        assert receipts and receipts[-1]["upto"] == [[0, 1, 9, 2]]
        await conf.leave()

    asyncio.run(main())


def test_forks_and_losses_are_told_in_one_sentence_each():
    from secchat.protocols.events import KeyFork, Lost, Undelivered

    async def main():
        conf, _node = make_conference()
        conf._on_stack_event(KeyFork(smc_tag(conf.gid, 0), 1, "f00d", "\x1b[2Jbad"))
        conf._on_stack_event(Lost(smc_tag(conf.gid, 0), 2, 7, 3, 15))
        conf._on_stack_event(Undelivered(smc_tag(conf.gid, 0), 1, 0, 1))
        texts = [e.text for e in drain(conf) if isinstance(e, Notice)]
        assert "two keys exist for room epoch 0: ours f00d, ben's \\x1b[2Jbad: not sending under ours" in texts
        assert "12 messages from cy were lost while you were cut off" in texts
        assert "1 of your messages did not reach ben: it came back too late for them" in texts

    asyncio.run(main())
