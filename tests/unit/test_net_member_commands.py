"""The member process's stdin commands: bad lines are answered with an error event, never raised."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from secchat.net.config import parse_config
from secchat.net.member_process import MemberProcess
from secchat.net.node import Joined
from secchat.protocols.stack import GroupId


class FakeNode:
    def __init__(self) -> None:
        self.runtime = SimpleNamespace(conferences={"c": None}, now=lambda: 0.0)
        self.conferences = {"c": SimpleNamespace(gid=GroupId.unbound("c"))}
        self.joined: list[str] = []
        self.sent: list[tuple[str, bytes]] = []

    def join(self, group, **kw):
        self.joined.append(group)
        return Joined(0, False, False)

    def send(self, group, payload):
        if group not in self.joined:
            raise ValueError("join first")
        self.sent.append((group, payload))


@pytest.fixture
def proc():
    cfg = parse_config({
        "identity": {"name": "m0", "key": "k", "cert": "c", "ca": "ca", "passphrase_env": "P"},
        "conference": [{"id": "c", "members": [{"name": "m0", "cert": "a"}, {"name": "m1", "cert": "b"}]}],
    })
    p = MemberProcess(cfg)
    p.node = FakeNode()  # type: ignore[assignment]
    return p


def events(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize(
    "line",
    [b"not json", b"[1, 2]", b'{"cmd": 5}', b'{"cmd": "dance"}', b'{"cmd": "send"}',
     b'{"cmd": "send", "count": -1}', b'{"cmd": "send", "count": true}',
     b'{"cmd": "send", "count": 1, "size": 999999999}', b'{"cmd": "join", "group": "nope"}',
     b'{"cmd": "send", "text": "before join"}', b'{"cmd": "join", "resume": "yes"}'],
)
def test_bad_commands_give_an_error_event(proc, capsys, line):
    proc.handle_command(line)
    [event] = events(capsys)
    assert event["event"] == "error" and event["message"].startswith("bad command")
    assert proc.node.sent == []


def test_join_then_send(proc, capsys):
    proc.handle_command(b'{"cmd": "join"}')
    proc.handle_command(b'{"cmd": "join", "group": "c"}')  # idempotent
    proc.handle_command(b'{"cmd": "send", "text": "hi"}')
    assert proc.node.joined == ["c"]
    assert proc.node.sent == [("c", b"hi")]
    assert [e["event"] for e in events(capsys)] == ["joined"]
