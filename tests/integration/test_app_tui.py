"""The chat UI (``secchat chat``), driven by Textual's pilot.

First against a small fake of the application core (same API as :mod:`secchat.app.session`),
then -- the acceptance test -- several members' UIs over real links: real TLS, a real directory
server process, a local CA under ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from secchat.app import tui
from secchat.app.session import (
    AppError,
    ChatApp,
    ChatMessage,
    ConferenceView,
    KeyStatus,
    MemberStatus,
    Notice,
    UnacceptedCertificate,
)
from secchat.app.tui import (
    Change,
    Changed,
    ConferenceModel,
    ConferencePane,
    MessageLine,
    SecChatApp,
    TrustScreen,
    message_text,
    pane_id,
)
from tests.app_support import PASSPHRASE, make_ca, make_profile, start_directory

DOCS = Path(__file__).resolve().parents[2] / "docs"

SIZE = (110, 32)


# --------------------------------------------------------------------------- the fake core


def app_error(code: str, message: str, **details: object) -> AppError:
    return AppError(message, code, **details)


class FakeConference:
    def __init__(self, id: str, me: str, members: tuple[str, ...], creator: str = "ben") -> None:
        self.id, self.me, self.members, self.epoch, self.creator = id, me, members, 0, creator
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.sent: list[str] = []
        self.rekeys = 0
        self.left = False
        self.past: list[ChatMessage] = []

    def events(self) -> AsyncIterator[object]:
        return self._events()

    async def _events(self) -> AsyncIterator[object]:
        while True:
            event = await self.queue.get()
            if event is None:
                return
            if isinstance(event, Exception):
                raise event
            yield event

    def emit(self, *events: object) -> None:
        for event in events:
            self.queue.put_nowait(event)

    async def send(self, text: str) -> None:
        if text.startswith("slow"):  # a send that takes a while (a full queue, a busy loop)
            await asyncio.sleep(0.2)
        if text == "too early":
            raise app_error("no_key", "The conference key is not established yet.")
        self.sent.append(text)
        self.emit(ChatMessage(self.me, datetime(2026, 1, 1, 12, 0, len(self.sent), tzinfo=UTC), text, "sending", self.epoch))

    async def rekey(self) -> None:
        self.rekeys += 1

    async def leave(self) -> None:
        self.left = True
        self.emit(None)

    def history(self) -> list[ChatMessage]:
        return list(self.past)


class FakeChatApp:
    """Conferences ``room`` (ann, ben, cy; ben and cy unseen), ``side`` (ann, ben), ``later``."""

    name = "ann"

    def __init__(self) -> None:
        now = datetime.now(UTC)
        hour = timedelta(hours=1)
        self.views = [
            ConferenceView("room", now - hour, now + hour, ("ann", "ben", "cy"), "ben", True),
            ConferenceView("side", now - hour, now + hour, ("ann", "ben"), "ann", True),
            ConferenceView("later", now + hour, now + 2 * hour, ("ann", "cy"), "cy", False),
        ]
        self.fingerprints = {"ben": "ab" * 32, "cy": "cd" * 32}
        self.accepted: list[tuple[str, str]] = []
        self.joined: dict[str, FakeConference] = {}
        self.closed = False

    async def participants(self) -> list[str]:
        return ["ann", "ben", "cy"]

    async def conferences(self) -> list[ConferenceView]:
        return list(self.views)

    async def accept(self, name: str, fingerprint: str) -> None:
        self.accepted.append((name, fingerprint))

    async def join(self, conference_id: str) -> FakeConference:
        # the UI joins by creator/id
        view = next((v for v in self.views if v.key == conference_id), None)
        if view is None:
            raise app_error("unknown", f"There is no conference {conference_id!r}.")
        if not view.joinable_now:
            raise app_error("time_frame", f"Conference {view.id!r} is not open now.")
        unseen = [UnacceptedCertificate(n, f"{n}@Test CA", self.fingerprints[n]) for n in view.members
                  if n != self.name and (n, self.fingerprints[n]) not in self.accepted]
        if unseen:
            raise app_error("untrusted", "Some member certificates were not accepted yet.", certificates=unseen)
        conference = FakeConference(view.id, self.name, view.members, view.creator)
        self.joined[view.id] = conference
        return conference

    async def aclose(self) -> None:
        self.closed = True


class RecordingApp(SecChatApp):
    """The UI, recording its notifications for the assertions."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.notes: list[tuple[str, str]] = []

    def notify(self, message: str, *, severity: str = "information", **kwargs: object) -> None:
        self.notes.append((severity, message))
        super().notify(message, severity=severity, **kwargs)


async def until(pilot, predicate: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    """Let the UI run until ``predicate()`` holds (bounded)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await pilot.pause(0.02)
    assert predicate(), what


def text_of(widget) -> str:
    return str(widget.content)


def pane(app: SecChatApp, conference_id: str) -> ConferencePane:
    return next(p for p in app.panes() if p.conference.id == conference_id)


def ref(app: SecChatApp, conference_id: str) -> str:
    """The list's key of the one listed conference with this id: ``creator/id``."""
    (key,) = [k for k, view in app.views.items() if view.id == conference_id]
    assert key == f"{app.views[key].creator}/{conference_id}"
    return key


async def select_row(pilot, app: SecChatApp, conference_id: str) -> None:
    table = app.query_one("#conferences")
    await until(pilot, lambda: table.row_count > 0, what="the conference list loads")
    table.focus()
    table.move_cursor(row=table.get_row_index(ref(app, conference_id)))
    await pilot.press("enter")


async def join_accepting(pilot, app: SecChatApp, conference_id: str) -> ConferencePane:
    await select_row(pilot, app, conference_id)
    await until(pilot, lambda: isinstance(app.screen, TrustScreen) or app.panes(), what="join answers")
    if isinstance(app.screen, TrustScreen):
        await pilot.press("a")
    await until(pilot, lambda: any(p.conference.id == conference_id for p in app.panes()), what="pane opens")
    return pane(app, conference_id)


async def type_line(pilot, text: str) -> None:
    await pilot.press(*[{" ": "space", "/": "slash"}.get(c, c) for c in text], "enter")


# --------------------------------------------------------------------------- with the fake core


def test_list_shows_time_frames_members_and_refuses_outside_the_time_frame():
    fake = FakeChatApp()

    async def main():
        app = RecordingApp(fake, refresh_every=None)
        async with app.run_test(size=SIZE) as pilot:
            table = app.query_one("#conferences")
            await until(pilot, lambda: table.row_count == 3)
            rows = {str(table.get_row(key)[0]): [str(c) for c in table.get_row(key)] for key in ("ben/room", "ann/side", "cy/later")}
            assert rows["room"][2] == "ann, ben, cy" and rows["room"][3] == "ben"
            assert rows["room"][4] == "joinable" and rows["later"][4] == "not yet open"
            assert rows["room"][1].endswith("UTC") and "–" in rows["room"][1]
            await select_row(pilot, app, "later")
            await until(pilot, lambda: app.notes)
            assert app.notes == [("error", "Conference 'later' is not open now.")]
            assert app.panes() == [] and not isinstance(app.screen, TrustScreen)

    asyncio.run(main())


def test_a_dead_directory_is_said_once_not_every_refresh():
    fake = FakeChatApp()
    down = app_error("directory_down", "The directory at http://127.0.0.1:9 is unreachable.")
    views = fake.views

    async def failing():
        if fake.views is None:
            raise down
        return list(fake.views)

    fake.conferences = failing
    fake.views = None

    async def main():
        app = RecordingApp(fake, refresh_every=0.05)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.notes)
            await pilot.pause(0.4)  # several periodic refreshes
            assert app.notes == [("error", str(down))]
            await pilot.press("ctrl+r")  # asked for: said again
            await until(pilot, lambda: len(app.notes) == 2)
            fake.views = views
            await until(pilot, lambda: app.query_one("#conferences").row_count == 3)
            assert len(app.notes) == 2

    asyncio.run(main())


def test_joining_asks_to_accept_unseen_certificates_with_their_fingerprints():
    fake = FakeChatApp()

    async def main():
        app = RecordingApp(fake, refresh_every=None)
        async with app.run_test(size=SIZE) as pilot:
            await select_row(pilot, app, "room")
            await until(pilot, lambda: isinstance(app.screen, TrustScreen))
            dialog = app.screen
            assert [(c.name, c.fingerprint) for c in dialog.certificates] == [("ben", "ab" * 32), ("cy", "cd" * 32)]
            table = dialog.query_one("#trust-certificates")
            assert [str(v) for v in table.get_row_at(1)] == ["cy@Test CA", "cd" * 32]
            assert app.focused.id == "refuse"  # the safe default
            assert str(app.query_one("#conferences").get_row("ben/room")[4]) == "joining…"
            await pilot.click("#accept")
            await until(pilot, lambda: app.panes())
            assert fake.accepted == [("ben", "ab" * 32), ("cy", "cd" * 32)]
            room = pane(app, "room")
            assert app.query_one("#tabs").active == room.id
            assert "not established" in text_of(room.query_one(".key")) and "2 of 3" in text_of(room.query_one(".key"))
            assert str(app.query_one("#conferences").get_row("ben/room")[4]) == "joined"

    asyncio.run(main())


def test_refusing_a_certificate_does_not_join():
    fake = FakeChatApp()

    async def main():
        app = RecordingApp(fake, refresh_every=None)
        async with app.run_test(size=SIZE) as pilot:
            await select_row(pilot, app, "side")
            await until(pilot, lambda: isinstance(app.screen, TrustScreen))
            await pilot.press("enter")  # on "Refuse", which has the focus
            await until(pilot, lambda: app.notes)
            assert fake.accepted == [] and fake.joined == {} and app.panes() == []
            assert str(app.query_one("#conferences").get_row("ann/side")[4]) == "joinable"
            assert app.notes == [("warning", "Not joining side by ann: you refused a member certificate.")]

    asyncio.run(main())


def test_live_members_key_and_message_states():
    fake = FakeChatApp()

    async def main():
        app = RecordingApp(fake, refresh_every=None)
        async with app.run_test(size=SIZE) as pilot:
            room = await join_accepting(pilot, app, "room")
            conf = fake.joined["room"]
            conf.emit(MemberStatus("ben", True), MemberStatus("cy", False),
                      KeyStatus(True, 0, "0123abcd", ("ann", "ben")))
            await until(pilot, lambda: "Key: established" in text_of(room.query_one(".key"))
                        and "○ cy" in text_of(room.query_one(".members")))
            members = text_of(room.query_one(".members"))
            assert "● ann (you)" in members and "● ben" in members and "2 of 3 up" in members
            assert "by 2 of 3: ann, ben" in text_of(room.query_one(".key"))
            assert "0123abcd" in text_of(room.query_one(".key"))

            await type_line(pilot, "hello all")
            await until(pilot, lambda: room.query(MessageLine))
            assert conf.sent == ["hello all"]
            [line] = room.query(MessageLine)
            assert "ann: hello all" in text_of(line) and "sending" in text_of(line)
            mine = line.message
            conf.emit(ChatMessage(mine.sender, mine.sent_at, mine.text, "sent", 0, 1))
            await until(pilot, lambda: "✓ sent" in text_of(line))
            conf.emit(ChatMessage(mine.sender, mine.sent_at, mine.text, "sent", 0, 1, ("ben",)))
            await until(pilot, lambda: "(seen by ben)" in text_of(line))
            conf.emit(ChatMessage(mine.sender, mine.sent_at, mine.text, "delivered", 0, 1, ("ben", "cy")))
            await until(pilot, lambda: "✓✓ delivered (seen by ben, cy)" in text_of(line))
            assert len(room.query(MessageLine)) == 1  # updated in place
            conf.emit(ChatMessage("ben", datetime(2026, 1, 1, 12, 1, tzinfo=UTC), "hi [b]ann[/b]", "delivered", 0),
                      Notice("cy joined late"))
            await until(pilot, lambda: len(room.query(MessageLine)) == 2)
            assert "ben: hi [b]ann[/b]" in text_of(room.query(MessageLine)[1])  # no markup from peers

            await type_line(pilot, "too early")
            await until(pilot, lambda: app.notes)
            assert app.notes[-1] == ("error", "The conference key is not established yet.")
            await type_line(pilot, "/rekey")
            await until(pilot, lambda: conf.rekeys == 1)
            say = room.query_one(".say")
            await pilot.press("up")  # recalls what was typed, newest first
            assert say.value == "/rekey"
            await pilot.press("up", "up")
            assert say.value == "hello all"
            await pilot.press("down", "down", "down")
            assert say.value == ""
            await type_line(pilot, "/nonsense")
            await until(pilot, lambda: "Unknown command" in app.notes[-1][1])
            await type_line(pilot, "/leave")
            await until(pilot, lambda: not app.panes())
            assert conf.left and app.query_one("#tabs").active == "list-pane"
            assert str(app.query_one("#conferences").get_row("ben/room")[4]) == "joinable"

    asyncio.run(main())


def test_leaving_and_joining_again_at_once():
    fake = FakeChatApp()
    fake.accepted += [("ben", "ab" * 32), ("cy", "cd" * 32)]

    async def main():
        app = RecordingApp(fake, refresh_every=0.05)  # refreshes racing with everything else
        async with app.run_test(size=SIZE) as pilot:
            current = await join_accepting(pilot, app, "room")
            for _ in range(3):
                before, old = current, fake.joined["room"]
                await type_line(pilot, "/leave")
                app.open_conference(ref(app, "room"))  # before the old pane is gone
                await until(pilot, lambda b=before, o=old: fake.joined["room"] is not o
                            and app.panes() and app.panes()[0] is not b)
                [current] = app.panes()
                assert current.conference is fake.joined["room"] and old.left
                await until(pilot, lambda c=current: app.focused is c.query_one(".say"))
            assert len(app.query(f"#{pane_id('ben/room')}")) == 1

    asyncio.run(main())


def test_lines_reach_the_conference_in_the_order_typed():
    fake = FakeChatApp()
    fake.accepted += [("ben", "ab" * 32), ("cy", "cd" * 32)]

    async def main():
        app = RecordingApp(fake, refresh_every=None)
        async with app.run_test(size=SIZE) as pilot:
            await join_accepting(pilot, app, "room")
            conf = fake.joined["room"]
            for line in ("slow one", "two", "slow three", "four", "/leave"):
                await type_line(pilot, line)
            await until(pilot, lambda: conf.left)
            assert conf.sent == ["slow one", "two", "slow three", "four"]

    asyncio.run(main())


def test_several_conferences_at_once_history_and_unread_counts():
    fake = FakeChatApp()
    fake.accepted += [("ben", "ab" * 32), ("cy", "cd" * 32)]
    earlier = datetime(2026, 1, 1, 9, 30, tzinfo=UTC)
    fake_join = fake.join

    async def join_with_history(conference_id):
        conference = await fake_join(conference_id)
        if conference_id == "ben/room":  # kept locally from an earlier run; it also arrives again live
            conference.past = [ChatMessage("ben", earlier, "from yesterday", "delivered", 0)]
            conference.emit(conference.past[0])
        return conference

    fake.join = join_with_history

    async def main():
        app = RecordingApp(fake, refresh_every=None)
        async with app.run_test(size=SIZE) as pilot:
            room = await join_accepting(pilot, app, "room")
            await until(pilot, lambda: room.query(MessageLine))
            await pilot.pause(0.1)
            assert [m.message.text for m in room.query(MessageLine)] == ["from yesterday"]
            app.action_show_list()
            side = await join_accepting(pilot, app, "side")
            assert [p.conference.id for p in app.panes()] == ["room", "side"]
            tabs = app.query_one("#tabs")
            assert tabs.active == side.id
            fake.joined["room"].emit(ChatMessage("cy", datetime.now(UTC), "in room", "delivered", 0),
                                     ChatMessage("ben", datetime.now(UTC), "also in room", "delivered", 0))
            fake.joined["side"].emit(ChatMessage("ben", datetime.now(UTC), "in side", "delivered", 0))
            await until(pilot, lambda: len(room.query(MessageLine)) == 3 and side.query(MessageLine))
            assert [m.message.text for m in room.query(MessageLine)] == ["from yesterday", "in room", "also in room"]
            assert [m.message.text for m in side.query(MessageLine)] == ["in side"]
            assert str(tabs.get_tab(room.id).label) == "room by ben (2)" and str(tabs.get_tab(side.id).label) == "side by ann"
            await type_line(pilot, "to side only")
            await until(pilot, lambda: fake.joined["side"].sent)
            assert fake.joined["room"].sent == []
            await pilot.press("ctrl+n")  # side -> the list -> room
            await pilot.press("ctrl+n")
            await until(pilot, lambda: tabs.active == room.id)
            assert str(tabs.get_tab(room.id).label) == "room by ben" and room.unread == 0
            assert app.focused is room.query_one(".say")
            # choosing an open conference in the list switches to its tab, it does not join again
            await pilot.press("ctrl+o")
            await select_row(pilot, app, "side")
            await until(pilot, lambda: tabs.active == side.id)
            assert len(app.panes()) == 2
            # a conference whose stream fails closes its tab with one sentence
            fake.joined["side"].emit(app_error("gone", "The conference side was closed by the network layer."))
            await until(pilot, lambda: len(app.panes()) == 1)
            assert app.notes[-1] == ("error", "The conference side was closed by the network layer.")

    asyncio.run(main())


def test_certificate_question_snapshot():
    """The question the user sees, as an SVG: who, which issuer, which fingerprint, two buttons."""
    fake = FakeChatApp()

    async def main():
        app = RecordingApp(fake, refresh_every=None)
        async with app.run_test(size=SIZE) as pilot:
            await select_row(pilot, app, "room")
            await until(pilot, lambda: isinstance(app.screen, TrustScreen))
            await pilot.pause(0.1)
            svg = app.export_screenshot()
            for needle in ("ben@Test&#160;CA", "ab" * 32, "cy@Test&#160;CA", "cd" * 32, "Accept", "Refuse",
                           "not&#160;accepted&#160;before"):
                assert needle in svg, needle
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, TrustScreen))
            assert fake.accepted == [] and app.panes() == []

    asyncio.run(main())


def test_the_model_folds_events_without_widgets():
    model = ConferenceModel("room", "ann", ("ann", "ben", "cy"))
    assert model.up == {"ann": True}
    assert "not established yet" in model.key_text().plain and "2 of 3" in model.key_text().plain
    assert model.apply(MemberStatus("ben", True)) == Change(Changed.MEMBERS)
    assert model.apply(MemberStatus("cy", False)).what is Changed.MEMBERS
    assert model.members_text().plain == "Members: ● ann (you)  ● ben  ○ cy   2 of 3 up"
    model.apply(KeyStatus(False, 1, None, ()))
    assert "not established yet (epoch 1)" in model.key_text().plain
    model.apply(KeyStatus(True, 1, "feedc0de", ("ann", "cy")))
    assert model.key_text().plain == "Key: established (epoch 1, fingerprint feedc0de) by 2 of 3: ann, cy"
    t = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    first = model.apply(ChatMessage("ann", t, "x", "sending", 1, local_id=1))
    again = model.apply(ChatMessage("ann", t, "x", "sent", 1, local_id=1))
    assert first == again and first.what is Changed.MESSAGE and len(model.messages) == 1
    assert model.messages[first.key].state == "sent"
    assert model.apply(Notice("hello")) == Change(Changed.NOTICE, text="hello")
    assert model.apply(object()) is None


def test_pane_ids_are_valid_and_one_to_one():
    from textual.widgets import Static

    ids = ["room", "a.b", "a_2e_b", "café/1", "a b", "a-b"]
    assert len({pane_id(i) for i in ids}) == len(ids)
    for i in ids:
        Static(id=pane_id(i))  # Textual accepts it


def test_peer_text_cannot_drive_the_terminal():
    evil = ChatMessage("ben", datetime(2026, 1, 1, 12, 0, tzinfo=UTC), "hi\x1b[2J\x1b]0;pwned\x07\u202eevil\tx", "delivered", 0)
    local = evil.sent_at.astimezone()
    plain = message_text(evil, "ann", today=local.date()).plain
    assert "\x1b" not in plain and "\x07" not in plain and "\u202e" not in plain
    # shown, not obeyed: each as a visible escape
    assert plain == local.strftime("%H:%M:%S") + " ben: hi\\x1b[2J\\x1b]0;pwned\\x07\\u202eevil\\tx  ✓✓ delivered"
    # a message from another day shows its date
    later = message_text(evil, "ann", today=local.date() + timedelta(days=1)).plain
    assert later.startswith(local.strftime("%Y-%m-%d %H:%M:%S") + " ben: ")


def test_a_flooding_peer_keeps_the_pane_bounded(monkeypatch):
    monkeypatch.setattr(tui, "MAX_LINES", 5)
    fake = FakeChatApp()
    fake.accepted += [("ben", "ab" * 32), ("cy", "cd" * 32)]

    async def main():
        app = RecordingApp(fake, refresh_every=None)
        async with app.run_test(size=SIZE) as pilot:
            room = await join_accepting(pilot, app, "room")
            start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
            fake.joined["room"].emit(*(ChatMessage("ben", start + timedelta(seconds=i), f"m{i}", "delivered", 0)
                                       for i in range(8)), Notice("a notice"))
            await until(pilot, lambda: "a notice" in str(room.query(".notice").first().content)
                        if room.query(".notice") else False)
            await pilot.pause(0.1)
            assert [m.message.text for m in room.query(MessageLine)] == ["m4", "m5", "m6", "m7"]
            assert len(room.model.messages) == 4 and len(room.query_one(".messages").children) == 5

    asyncio.run(main())


# --------------------------------------------------------------------------- over real links


def test_a_message_typed_in_one_members_ui_appears_in_anothers(tmp_path):
    """Two members' UIs and one headless member: real TLS links, a real directory process.

    Then a second conference in both UIs at once, a re-key from a UI, and leaving and joining
    again from a UI.
    """
    ca = tmp_path / "ca"
    ca.mkdir()
    make_ca(ca)
    server = start_directory(tmp_path, ca)
    homes = {n: make_profile(tmp_path, n, server.url, ca) for n in ("alice", "bob", "carol")}

    async def main():
        chats = {n: await ChatApp.open(h, PASSPHRASE) for n, h in homes.items()}
        carol_events: list[object] = []
        drain = None
        try:
            for chat in chats.values():
                await chat.register()
            alice, carol = chats["alice"], chats["carol"]
            for cert in await alice.unaccepted_participants(["bob", "carol"]):
                await alice.accept(cert.name, cert.fingerprint)
            now = datetime.now(UTC)
            await alice.create("room", ["bob", "carol"], now - timedelta(minutes=1), now + timedelta(hours=1))

            ui_a = SecChatApp(alice, refresh_every=None)
            ui_b = SecChatApp(chats["bob"], refresh_every=None)
            async with ui_a.run_test(size=(100, 22)) as pa, ui_b.run_test(size=(100, 22)) as pb:
                # bob has not seen alice's and carol's certificates: the UI asks him
                await select_row(pb, ui_b, "room")
                await until(pb, lambda: isinstance(ui_b.screen, TrustScreen), timeout=15)
                assert {c.name for c in ui_b.screen.certificates} == {"alice", "carol"}
                assert all(len(c.fingerprint) == 64 for c in ui_b.screen.certificates)
                await pb.press("a")
                await until(pb, lambda: ui_b.panes(), timeout=30, what="bob joined")
                await select_row(pa, ui_a, "room")  # alice accepted them when she created it
                await until(pa, lambda: ui_a.panes(), timeout=30, what="alice joined")
                conf = await carol.join("room", accept_new=True)
                drain = asyncio.create_task(_collect(conf, carol_events))

                room_a, room_b = pane(ui_a, "room"), pane(ui_b, "room")
                await until(pa, lambda: all(r.model.key and r.model.key.established for r in (room_a, room_b)),
                            timeout=30, what="the key")
                assert "Key: established" in text_of(room_a.query_one(".key"))
                assert room_a.model.key.fingerprint == room_b.model.key.fingerprint

                ui_b.query_one(".say").focus()
                await type_line(pb, "hello from bob")
                await until(pa, lambda: _line(room_a, "hello from bob", "delivered"), timeout=20,
                            what="bob's message in alice's UI")
                await until(pb, lambda: _line(room_b, "hello from bob", "sent", "delivered"), timeout=20)
                await type_line(pa, "hi bob, carol is here too")
                await until(pb, lambda: _line(room_b, "hi bob, carol is here too", "delivered"), timeout=20,
                            what="alice's message in bob's UI")
                await until(pa, lambda: all(room_a.model.up.get(n) for n in ("alice", "bob", "carol")),
                            timeout=20, what="everyone up in alice's UI")
                await until(pa, lambda: _line(room_a, "hi bob, carol is here too", "sent", "delivered"), timeout=20)
                await until(pa, lambda: any(isinstance(e, ChatMessage) and e.text == "hello from bob"
                                            for e in carol_events), timeout=20, what="the headless member")

                # a second conference at once (alice and bob): its own tab, its own key
                await alice.create("side", ["bob"], now - timedelta(minutes=1), now + timedelta(hours=1))
                for ui, pilot in ((ui_a, pa), (ui_b, pb)):
                    ui.action_refresh()
                    await until(pilot, lambda ui=ui: any(v.id == "side" for v in ui.views.values()), timeout=15, what="side listed")
                    ui.action_show_list()
                    await select_row(pilot, ui, "side")
                    await until(pilot, lambda ui=ui: len(ui.panes()) == 2, timeout=30, what="side joined")
                side_a, side_b = pane(ui_a, "side"), pane(ui_b, "side")
                await until(pa, lambda: all(s.model.key and s.model.key.established for s in (side_a, side_b)),
                            timeout=30, what="side's key")
                assert side_a.model.key.fingerprint != room_a.model.key.fingerprint
                # alice looks at room; bob writes in side: it lands in alice's side tab, unread
                ui_a.query_one("#tabs").active = room_a.id
                await pa.pause(0.1)
                await type_line(pb, "psst, side only")  # bob's input is side's (just opened)
                await until(pa, lambda: _line(side_a, "psst, side only", "delivered"), timeout=20,
                            what="bob's message in alice's side tab")
                assert not _line(room_a, "psst, side only", "delivered")
                assert str(ui_a.query_one("#tabs").get_tab(side_a.id).label) == "side by alice (1)"
                await pa.pause(0.3)
                svg = ui_a.export_screenshot(title="SecChat -- alice in conference room")
                assert "hello&#160;from&#160;bob" in svg and ">established<" in svg and "not&#160;established" not in svg
                (tmp_path / "chat-ui.svg").write_text(svg, encoding="utf-8")
                if os.environ.get("SECCHAT_UPDATE_SCREENSHOT") == "1":
                    (DOCS / "chat-ui.svg").write_text(svg, encoding="utf-8")

                # /rekey in alice's UI: both UIs show the new epoch's key, a new one
                first = room_a.model.key.fingerprint
                await type_line(pa, "/rekey")
                await until(pa, lambda: all(r.model.key.established and r.model.key.epoch == 1
                                            for r in (room_a, room_b)), timeout=30, what="the re-key")
                assert room_a.model.key.fingerprint == room_b.model.key.fingerprint != first
                assert any("epoch 1" in text_of(n) for n in room_b.query(".notice"))  # bob was told why
                # /leave in bob's UI, then join again from the list: no question, same key, history
                ui_b.query_one("#tabs").active = room_b.id
                await pb.pause(0.1)
                await type_line(pb, "/leave")
                await until(pb, lambda: [p.conference.id for p in ui_b.panes()] == ["side"], timeout=15,
                            what="bob left room")
                assert str(ui_b.query_one("#conferences").get_row("alice/room")[4]) == "joinable"
                await select_row(pb, ui_b, "room")
                await until(pb, lambda: len(ui_b.panes()) == 2, timeout=30, what="bob back")
                room_b = pane(ui_b, "room")
                assert not isinstance(ui_b.screen, TrustScreen)
                await until(pb, lambda: _line(room_b, "hello from bob", "sent", "delivered"), timeout=10,
                            what="bob's local history in the new pane")
                await until(pb, lambda: room_b.model.key and room_b.model.key.established, timeout=30)
                assert room_b.model.key.fingerprint == room_a.model.key.fingerprint
                await type_line(pa, "welcome back")
                await until(pb, lambda: _line(room_b, "welcome back", "delivered"), timeout=20,
                            what="a message after the rejoin")
        finally:
            if drain is not None:
                drain.cancel()
            for chat in chats.values():
                await chat.aclose()

    try:
        asyncio.run(asyncio.wait_for(main(), 80))
    finally:
        server.close()


async def _collect(conference, into: list[object]) -> None:
    async for event in conference.events():
        into.append(event)


def _line(pane_: ConferencePane, text: str, *states: str) -> bool:
    return any(m.message.text == text and m.message.state in states for m in pane_.query(MessageLine))


def test_chat_command_errors_are_one_sentence(tmp_path):
    from typer.testing import CliRunner

    from secchat.app.cli import app

    runner = CliRunner()
    missing = runner.invoke(app, ["chat", "--home", str(tmp_path / "nobody")])
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    assert "no SecChat profile" in missing.output and "secchat init" in missing.output

    ca = tmp_path / "ca"
    ca.mkdir()
    make_ca(ca)
    home = make_profile(tmp_path, "dora", "http://127.0.0.1:9", ca)
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    result = runner.invoke(app, ["chat", "--home", str(home), "--passphrase-file", str(wrong)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == "error: wrong passphrase for this profile's key store"


def test_chat_command_runs_the_ui_in_a_terminal(tmp_path):
    """``secchat chat`` in a pseudo-terminal: the UI comes up, a dead directory is one notification
    (no traceback), ctrl+q quits with status 0."""
    import pty
    import select
    import subprocess
    import sys
    import time

    ca = tmp_path / "ca"
    ca.mkdir()
    make_ca(ca)
    home = make_profile(tmp_path, "erin", "http://127.0.0.1:9", ca)  # nothing listens there
    env = {**os.environ, "SECCHAT_PASSPHRASE": PASSPHRASE, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "30"}
    src = str(Path(tui.__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from secchat.app.cli import main; main()", "chat", "--home", str(home)],
        stdin=terminal, stdout=terminal, stderr=terminal, env=env, close_fds=True, start_new_session=True,
    )
    os.close(terminal)
    screen = b""

    def read_until(needle: bytes, timeout: float) -> bool:
        nonlocal screen
        deadline = time.monotonic() + timeout
        while needle not in screen and time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.1)
            if ready:
                try:
                    screen += os.read(controller, 65536)
                except OSError:  # the child closed the terminal
                    break
        return needle in screen

    try:
        assert read_until(b"Conferences", 20), screen[-2000:]
        assert read_until(b"unreachable", 20), screen[-2000:]
        os.write(controller, b"\x11")  # ctrl+q
        assert proc.wait(20) == 0
        read_until(b"\0", 0.5)
        assert b"Traceback" not in screen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(controller)
