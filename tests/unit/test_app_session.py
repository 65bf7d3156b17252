"""``Conference`` (the glue over ``ConferenceCore``) against a fake node: sending across a re-key, notices.

The fake records what the conference asks of the network layer and lets the test hand it the
stack's output events in any order; no sockets, no directory.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace

import msgspec

from secchat.app import session as session_mod
from secchat.app.session import (
    ChatMessage,
    Conference,
    KeyStatus,
    Notice,
)
from secchat.directory.client import DirectoryError
from secchat.net.node import Joined
from secchat.protocols.events import Delivered, KeyEstablished
from secchat.protocols.stack import smc_tag

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

    def path(self, name):
        return "direct"

    def join(self, group, *, epoch=None, resume=False, high_water=None):
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

    def release_epochs_below(self, group, epoch):
        self.released = epoch

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

    def load_conference(self, record):
        return None, []

    def save_conference(self, conference, record, messages, state, outbox_add=(), outbox_drop=0):
        self.rows.extend(messages)


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


def test_a_line_typed_before_the_key_is_sent_after_a_rekey():
    """Issue 9's first loss: typed while epoch 0 had no key, then /rekey: epoch 1's key sends it."""

    async def main():
        conf, node = make_conference()
        conf._start()
        await conf.send("early")
        events = drain(conf)
        assert any(isinstance(e, ChatMessage) and e.state == "sending" and e.text == "early" for e in events)
        assert node.sent == []  # nothing goes to the stack before the key
        await conf.rekey()
        assert conf.epoch == 1 and node.joined[-1][0] == 1
        conf._on_stack_event(KeyEstablished(smc_tag(conf.gid, 1), "f1", (0, 1)))
        texts = [(e, p["text"]) for e, p in node.sent if p.get("type") == "text"]
        assert texts == [(1, "early")]
        events = drain(conf)
        assert KeyStatus(True, 1, "f1", ("ann", "ben")) in events
        assert [(e.text, e.state, e.local_id) for e in events if isinstance(e, ChatMessage)] == [("early", "sent", 1)]
        # another member's message is delivered and kept, with its number
        conf._on_stack_event(Delivered(smc_tag(conf.gid, 1), 2, 7, 0, payload(
            {"type": "text", "mid": 1, "floor": 1, "text": "hi", "sent_at": 2.0})))
        assert [m.text for m in conf.history()] == ["early", "hi"]
        await conf.leave()
        assert node.removed and drain(conf)[-1] is None

    asyncio.run(main())


def test_the_event_queue_is_bounded():
    async def main():
        conf, _node = make_conference()
        for i in range(session_mod.EVENT_QUEUE + 50):
            conf._emit(Notice(str(i)))
        events = drain(conf)
        assert len(events) == session_mod.EVENT_QUEUE and events[0] == Notice("50")

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
