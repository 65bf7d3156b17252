"""Which path each peer uses (direct TLS or the relay), as the command line and the chat UI say it."""

from __future__ import annotations

import json

from secchat.app.cli_chat import _line
from secchat.app.conference import ConferenceCore, MemberStatus, Show
from secchat.app.tui import ConferenceModel


def test_the_core_reports_a_change_of_path_once() -> None:
    core = ConferenceCore("room", ("ann", "ben"), "ann", 0.0)
    core.on_peer("ben", True, 1.0, "direct")
    core.on_peer("ben", True, 1.1, "direct")  # nothing new
    core.on_peer("ben", True, 2.0, "relay")
    core.on_peer("ben", False, 3.0, "relay")  # down: no path
    shown = [a.event for a in core.take_actions() if isinstance(a, Show) and isinstance(a.event, MemberStatus)]
    assert shown == [MemberStatus("ben", True, "direct"), MemberStatus("ben", True, "relay"),
                     MemberStatus("ben", False, None)]


def test_join_prints_the_path() -> None:
    assert _line(MemberStatus("ben", True, "relay"), False) == "* ben is live (relay)"
    assert _line(MemberStatus("ben", False, None), False) == "* ben is suspected"
    event = json.loads(_line(MemberStatus("ben", True, "relay"), True))
    assert event["path"] == "relay" and event["up"] is True


def test_the_chat_ui_marks_members_reached_through_the_relay() -> None:
    model = ConferenceModel("room", "ann", ("ann", "ben", "cy"))
    model.apply(MemberStatus("ben", True, "relay"))
    model.apply(MemberStatus("cy", True, "direct"))
    text = model.members_text().plain
    assert "ben via relay" in text and "cy via relay" not in text
