"""``secchat chat``: the terminal chat UI (Textual) over the application core.

Why this shape: the thesis's GUI (§4.2) lists conferences, joins them, asks the user to accept
certificates it has not seen before, and then chats.  Everything that talks to the network lives
in :mod:`secchat.app.session` (:class:`~secchat.app.session.ChatApp` and its
:class:`~secchat.app.session.Conference`); this module only shows it.  The split is:

* :class:`ConferenceModel` -- plain state of one open conference (who is up, the key, the messages
  in order), folded from the conference's events.  No widgets, no I/O: testable on its own.
* Widgets render a model and turn key presses into calls on the core.  Every call on the core runs
  in a Textual worker (a conference's lines and commands through one outbox worker, so they keep
  the order typed); each conference's event stream is consumed by a worker that posts
  :class:`ConferencePane.Update` messages back to its pane.  Widgets hold no protocol logic.
* Every failure becomes a notification with one sentence (``str(AppError)``), never a traceback.
* Whatever comes from the network (names, ids, texts) is shown as plain text made terminal-safe
  by :func:`secchat.text.safe` (escape sequences, bidi overrides, newlines shown as escapes): a
  peer cannot style or drive the user's terminal.
* A conference is named by its creator and id (``creator/id``: two creators may use one id); the
  list, the tab and the trust dialog show both.

Layout: one tab "Conferences" (a table: id, time frame, members, creator, status) and one tab
per joined conference (members up/down, key status and contributors, messages with sender, time
and state, an input line with ``/rekey``, ``/leave``, ``/help``; Up/Down recall lines).  Several
conferences can be open at once; a tab counts what arrived while another was shown.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.notifications import SeverityLevel
from textual.screen import ModalScreen
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    Static,
    TabbedContent,
    TabPane,
)

from secchat.app.session import (
    MAX_TEXT,
    AppError,
    ChatApp,
    ChatMessage,
    Conference,
    ConferenceView,
    KeyStatus,
    MemberStatus,
    Notice,
    UnacceptedCertificate,
)
from secchat.text import safe

__all__ = [
    "Change",
    "Changed",
    "ConferenceModel",
    "ConferencePane",
    "SecChatApp",
    "TrustScreen",
    "run_chat",
]

log = logging.getLogger(__name__)


def conference_label(conference: Conference | ConferenceView) -> str:
    """``room by alice``: how a conference is shown (terminal-safe)."""
    return f"{safe(conference.id)} by {safe(conference.creator)}"


def conference_ref(conference: Conference | ConferenceView) -> str:
    """``alice/room``: what names a conference when joining (and its pane)."""
    return f"{conference.creator}/{conference.id}"


def ref_label(ref: str) -> str:
    """``alice/room`` shown as ``room by alice`` (terminal-safe)."""
    creator, _, id_ = ref.rpartition("/")
    return f"{safe(id_)} by {safe(creator)}" if creator else safe(id_)

#: How often the conference list is fetched again (``joinable_now`` changes with the clock).
LIST_REFRESH_SECONDS = 30.0
#: At most this many rounds of "accept the unseen certificates, then join again".
MAX_TRUST_ROUNDS = 3

#: Lines typed but not yet handed to the conference (the core queues them until the key exists).
OUTBOX = 100
#: Lines typed into a conference that Up / Down recall.
MAX_RECALL = 50
#: Lines (messages and notices) a conference's pane keeps; older ones leave the screen and memory.
MAX_LINES = 2000

#: sending: queued until the key exists; sent: encrypted and multicast; delivered: a member's
#: message that reached us, or ours once every live member confirmed it (receipts)
STATE_MARK = {"sending": ("…", "yellow"), "sent": ("✓", "cyan"), "delivered": ("✓✓", "green")}
CHAT_CSS = """
#list-hint {
    color: $text-muted;
    padding: 0 1;
}

#conferences {
    height: 1fr;
}

ConferencePane {
    layout: vertical;
}

ConferencePane .members, ConferencePane .key {
    padding: 0 1;
    background: $boost;
}

ConferencePane .messages {
    height: 1fr;
    border: round $primary-background;
    padding: 0 1;
}

ConferencePane .message, ConferencePane .notice {
    height: auto;
}

TrustScreen {
    align: center middle;
}

#trust-dialog {
    width: 96%;
    max-width: 120;
    height: auto;
    max-height: 90%;
    border: thick $warning;
    background: $surface;
    padding: 1 2;
}

#trust-question {
    margin-bottom: 1;
}

#trust-certificates {
    height: auto;
    max-height: 12;
}

#trust-buttons {
    height: auto;
    margin-top: 1;
    align-horizontal: right;
}

#trust-buttons Button {
    margin-left: 2;
}
"""

HELP_TEXT = "Enter sends the line to the conference. Commands: /rekey (new key epoch), /leave, /help."


# --------------------------------------------------------------------------- models (no widgets)


def message_key(message: ChatMessage) -> tuple[Any, ...]:
    """What identifies one message across its state updates (sending -> sent).

    Not ``local_id``: a message of ours read back from the local history has none, and the
    same message can reach a newly opened pane both from the history and from the event stream.
    """
    return (message.sender, message.sent_at, message.text)


def majority(n: int) -> int:
    return n // 2 + 1


class Changed(enum.Enum):
    MEMBERS = "members"
    KEY = "key"
    MESSAGE = "message"  # a new message or a new state of one (``Change.key``)
    NOTICE = "notice"  # ``Change.text``


@dataclass(frozen=True, slots=True)
class Change:
    """What :meth:`ConferenceModel.apply` changed, so the pane redraws only that."""

    what: Changed
    key: tuple[Any, ...] | None = None
    text: str | None = None


@dataclass
class ConferenceModel:
    """What the UI knows about one open conference, folded from its events."""

    id: str
    me: str
    members: tuple[str, ...]
    up: dict[str, bool] = field(default_factory=dict)
    #: how each live peer is reached: "direct" or "relay" (None: not known)
    paths: dict[str, str | None] = field(default_factory=dict)
    key: KeyStatus | None = None
    #: message key -> message, in order of first appearance (dicts keep insertion order)
    messages: dict[tuple[Any, ...], ChatMessage] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.up.setdefault(self.me, True)

    def apply(self, event: object) -> Change | None:
        """Fold ``event`` in; returns what changed, or None for an event this UI does not show."""
        if isinstance(event, MemberStatus):
            self.up[event.name] = event.up
            self.paths[event.name] = event.path
            return Change(Changed.MEMBERS)
        if isinstance(event, KeyStatus):
            self.key = event
            return Change(Changed.KEY)
        if isinstance(event, ChatMessage):
            key = message_key(event)
            self.messages[key] = event
            return Change(Changed.MESSAGE, key=key)
        if isinstance(event, Notice):
            return Change(Changed.NOTICE, text=event.text)
        return None

    def members_text(self) -> Text:
        text = Text("Members: ", style="bold")
        for i, name in enumerate(self.members):
            if i:
                text.append("  ")
            state = self.up.get(name)
            if state is None:
                text.append("? ", style="dim")
            elif state:
                text.append("● ", style="green")
            else:
                text.append("○ ", style="red")
            text.append(safe(name) + (" (you)" if name == self.me else ""), style="bold" if name == self.me else "")
            if state and self.paths.get(name) == "relay":
                text.append(" via relay", style="dim")
        live = sum(1 for name in self.members if self.up.get(name))
        text.append(f"   {live} of {len(self.members)} up", style="dim")
        return text

    def key_text(self) -> Text:
        n = len(self.members)
        key = self.key
        if key is None or not key.established:
            epoch = "" if key is None or not key.epoch else f" (epoch {key.epoch})"
            return Text.assemble(
                ("Key: ", "bold"),
                (f"not established yet{epoch}", "yellow"),
                f" -- needs a majority, {majority(n)} of {n} members, to join",
            )
        contributors = tuple(key.contributors)
        fp = key.fingerprint or "?"
        return Text.assemble(
            ("Key: ", "bold"),
            ("established", "bold green"),
            f" (epoch {key.epoch}, fingerprint {safe(fp)})",
            f" by {len(contributors)} of {n}: " if contributors else "",
            safe(", ".join(contributors)),
        )


def message_text(message: ChatMessage, me: str, today: date | None = None) -> Text:
    """One line: local time (with the date unless today), sender, text, state."""
    mark, colour = STATE_MARK.get(message.state, (message.state, "white"))
    local = message.sent_at.astimezone() if message.sent_at.tzinfo else message.sent_at
    today = today or datetime.now().astimezone().date()
    when = local.strftime("%H:%M:%S" if local.date() == today else "%Y-%m-%d %H:%M:%S")
    text = Text()
    text.append(f"{when} ", style="dim")
    text.append(safe(message.sender), style="bold cyan" if message.sender == me else "bold magenta")
    text.append(": ")
    text.append(safe(message.text, max_len=MAX_TEXT))
    text.append(f"  {mark} {message.state}", style=colour)
    if message.sender == me and message.seen_by:
        text.append(f" (seen by {safe(', '.join(message.seen_by))})", style="dim")
    return text


def time_frame_text(t0: datetime, t1: datetime) -> str:
    def fmt(t: datetime) -> str:
        return (t.astimezone(UTC) if t.tzinfo else t).strftime("%Y-%m-%d %H:%M")

    return f"{fmt(t0)} – {fmt(t1)} UTC"


def conference_status(
    view: ConferenceView, joined: bool, now: datetime | None = None, *, joining: bool = False
) -> Text:
    if joined:
        return Text("joined", style="bold green")
    if joining:
        return Text("joining…", style="italic green")
    if view.joinable_now:
        return Text("joinable", style="green")
    now = now or datetime.now(UTC)
    t0 = view.t0 if view.t0.tzinfo else view.t0.replace(tzinfo=UTC)
    t1 = view.t1 if view.t1.tzinfo else view.t1.replace(tzinfo=UTC)
    if now < t0:
        return Text("not yet open", style="yellow")
    if now >= t1:
        return Text("over", style="dim")
    return Text("not joinable", style="red")


# --------------------------------------------------------------------------- widgets


class TrustScreen(ModalScreen[bool]):
    """Ask whether to accept certificates not seen before (thesis §4.2); dismisses True/False."""

    BINDINGS: ClassVar = [
        Binding("escape", "refuse", "Refuse"),
        Binding("a", "accept", "Accept"),
        Binding("r", "refuse", "Refuse", show=False),
    ]

    def __init__(self, conference_id: str, certificates: Iterable[UnacceptedCertificate]) -> None:
        super().__init__()
        self.conference_id = conference_id
        self.certificates = tuple(certificates)

    def compose(self) -> ComposeResult:
        with Vertical(id="trust-dialog"):
            yield Label(
                Text.assemble(
                    "Joining ", (ref_label(self.conference_id), "bold"),
                    " needs member certificates you have not accepted before.\n"
                    "Your CA signed them; compare each fingerprint with its owner before you accept.\n"
                    "Once accepted, another certificate for the same identity will be refused.",
                ),
                id="trust-question",
            )
            table: DataTable[Text] = DataTable(id="trust-certificates", cursor_type="none")
            table.add_columns("Identity (name@issuer)", "Certificate fingerprint (SHA-256)")
            for cert in self.certificates:
                table.add_row(Text(safe(cert.identity)), Text(safe(cert.fingerprint)))
            yield table
            with Horizontal(id="trust-buttons"):
                yield Button("Accept", id="accept", variant="success")
                yield Button("Refuse", id="refuse", variant="error")

    def on_mount(self) -> None:
        self.query_one("#refuse", Button).focus()  # the safe default

    @on(Button.Pressed, "#accept")
    def action_accept(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#refuse")
    def action_refuse(self) -> None:
        self.dismiss(False)


class MessageLine(Static):
    """One message; re-rendered when its state changes."""

    def __init__(self, message: ChatMessage, me: str) -> None:
        super().__init__(message_text(message, me), classes="message")
        self.message = message
        self.me = me

    def show(self, message: ChatMessage) -> None:
        self.message = message
        self.update(message_text(message, self.me))


class ConferencePane(TabPane):
    """One open conference: members, key status, messages and an input line."""

    BINDINGS: ClassVar = [
        Binding("up", "recall(-1)", "Previous line", show=False),
        Binding("down", "recall(1)", "Next line", show=False),
    ]

    class Update(Message):
        """An event of the conference's stream (posted by the pump worker)."""

        def __init__(self, event: object) -> None:
            super().__init__()
            self.event = event

    class Ended(Message):
        """The conference's event stream ended (left or closed)."""

        def __init__(self, pane: ConferencePane, error: str | None) -> None:
            super().__init__()
            self.pane = pane
            self.error = error

    def __init__(self, conference: Conference) -> None:
        super().__init__(Content(conference_label(conference)), id=pane_id(conference_ref(conference)))
        self.conference = conference
        #: messages that arrived while another tab was shown (in the tab's label)
        self.unread = 0
        #: mounted, history shown, events flowing
        self.ready = False
        self.model = ConferenceModel(conference.id, conference.me, tuple(conference.members))
        self._lines: dict[tuple[Any, ...], MessageLine] = {}
        #: what the user typed here (Up / Down recall it), and where the recall stands
        self._typed: list[str] = []
        self._recall = 0
        #: lines and commands waiting to be handed to the conference, in order
        self._outbox: asyncio.Queue[tuple[Callable[[], Awaitable[None]], str]] = asyncio.Queue(OUTBOX)

    def compose(self) -> ComposeResult:
        yield Static(self.model.members_text(), classes="members")
        yield Static(self.model.key_text(), classes="key")
        yield VerticalScroll(classes="messages")
        yield Input(placeholder=f"Message to {conference_label(self.conference)} -- /help for commands",
                    classes="say")

    def on_mount(self) -> None:
        try:
            history = list(self.conference.history())
        except Exception as exc:  # history is a nicety: show the conference anyway
            log.exception("history of %s", self.conference.id)
            self.app.notify(f"Could not load the history of {self.conference.id}: {exc}",
                            severity="warning", markup=False)
            history = []
        for message in history:
            self._show(self.model.apply(message))
        self._pump()
        self._drain_outbox()
        self.ready = True

    @work(exclusive=True, group="events")
    async def _pump(self) -> None:
        """Consume the conference's events and post them to this pane."""
        error = None
        try:
            async for event in self.conference.events():
                self.post_message(self.Update(event))
        except asyncio.CancelledError:
            raise
        except AppError as exc:
            error = str(exc)
        except Exception as exc:
            log.exception("event stream of %s", self.conference.id)
            error = f"The connection to conference {self.conference.id} failed: {exc}"
        self.post_message(self.Ended(self, error))

    def on_conference_pane_update(self, message: ConferencePane.Update) -> None:
        message.stop()
        self._show(self.model.apply(message.event))

    def _show(self, change: Change | None) -> None:
        if change is None:
            return
        if change.what is Changed.MEMBERS:
            self.query_one(".members", Static).update(self.model.members_text())
        elif change.what is Changed.KEY:
            self.query_one(".key", Static).update(self.model.key_text())
        elif change.what is Changed.MESSAGE and change.key is not None:
            key = change.key
            line = self._lines.get(key)
            if line is not None:
                line.show(self.model.messages[key])
            else:
                line = MessageLine(self.model.messages[key], self.model.me)
                self._lines[key] = line
                self._log.mount(line)
                self._log.scroll_end(animate=False)
                self._count_unread()
        elif change.what is Changed.NOTICE and change.text is not None:
            self._log.mount(Static(Text(safe(change.text), style="italic dim"), classes="notice"))
            self._log.scroll_end(animate=False)
        self._trim()

    def _trim(self) -> None:
        """Keep at most :data:`MAX_LINES` lines (every buffer bounded, even for a flooding peer)."""
        log_ = self._log
        excess = len(log_.children) - MAX_LINES
        if excess <= 0:
            return
        old = list(log_.children[:excess])
        for widget in old:
            if isinstance(widget, MessageLine):
                key = message_key(widget.message)
                self._lines.pop(key, None)
                self.model.messages.pop(key, None)
        log_.remove_children(old)

    def _count_unread(self) -> None:
        tabs = next(iter(self.app.query("#tabs").results(TabbedContent)), None)
        if tabs is not None and tabs.active != self.id and self.id is not None:
            self.unread += 1
            tabs.get_tab(self.id).label = Content(f"{conference_label(self.conference)} ({self.unread})")

    def mark_read(self) -> None:
        """The user is looking at this conference now."""
        if self.unread and self.id is not None:
            self.unread = 0
            for tabs in self.app.query("#tabs").results(TabbedContent):
                tabs.get_tab(self.id).label = Content(conference_label(self.conference))

    @property
    def _log(self) -> VerticalScroll:
        return self.query_one(".messages", VerticalScroll)

    @on(Input.Submitted, ".say")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        line = event.value.strip()
        event.input.clear()
        if not line:
            return
        self._typed = [*self._typed[-(MAX_RECALL - 1):], line]
        self._recall = len(self._typed)
        if line.startswith("/"):
            command = line.split()[0].lower()
            if command == "/rekey":
                self._enqueue(self.conference.rekey, "Re-keying")
            elif command == "/leave":
                self._enqueue(self._leave, "Leaving")
            elif command == "/help":
                self.app.notify(HELP_TEXT, title="Commands")
            else:
                self.app.notify(f"Unknown command {command}; try /help.", severity="warning", markup=False)
            return
        self._enqueue(lambda: self.conference.send(line), "Sending")

    def action_recall(self, step: int) -> None:
        if not self._typed:
            return
        self._recall = max(0, min(len(self._typed), self._recall + step))
        field_ = self.query_one(".say", Input)
        field_.value = self._typed[self._recall] if self._recall < len(self._typed) else ""
        field_.cursor_position = len(field_.value)

    def _enqueue(self, call: Callable[[], Awaitable[None]], what: str) -> None:
        try:
            self._outbox.put_nowait((call, what))
        except asyncio.QueueFull:
            self.app.notify(f"{what} must wait: too many lines are still being handed over.", severity="warning")

    @work(exclusive=True, group="outbox")
    async def _drain_outbox(self) -> None:
        """Hand the user's lines to the conference one at a time, in the order typed."""
        while True:
            call, what = await self._outbox.get()
            await guarded(self.app, call, what)

    async def _leave(self) -> None:
        await self.conference.leave()
        self.app.notify(f"You left {self.conference.id}.", markup=False)
        self.post_message(self.Ended(self, None))


def pane_id(conference_id: str) -> str:
    """A widget id for a conference id (ids allow only letters, digits, '-' and '_')."""
    # one-to-one: '_' only ever opens or closes an escape, so two ids never share a pane
    return "conf-" + "".join(c if (c.isascii() and c.isalnum()) or c == "-" else f"_{ord(c):x}_"
                             for c in conference_id)


async def guarded(app: App[Any], call: Callable[[], Awaitable[Any]], what: str) -> bool:
    """Await ``call()``; on failure notify one sentence and return False."""
    try:
        await call()
    except AppError as exc:
        app.notify(str(exc), severity="error", markup=False)
        return False
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("%s failed", what)
        app.notify(f"{what} failed: {exc}", severity="error", markup=False)
        return False
    return True


class SecChatApp(App[None]):
    """The chat UI over a :class:`~secchat.app.session.ChatApp` (injected, so tests can fake it)."""

    TITLE = "SecChat"
    CSS = CHAT_CSS
    BINDINGS: ClassVar = [
        Binding("ctrl+r", "refresh", "Refresh list"),
        Binding("ctrl+o", "show_list", "Conferences"),
        Binding("ctrl+n", "next_tab", "Next tab"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, chat_app: ChatApp, *, refresh_every: float | None = LIST_REFRESH_SECONDS) -> None:
        super().__init__()
        self.chat = chat_app
        self.refresh_every = refresh_every
        self.views: dict[str, ConferenceView] = {}
        self._joining: set[str] = set()
        self._list_error: str | None = None  # the last error listing conferences, if failing
        # conference id -> set once its pane is gone (not ``_closing``: Textual's own flag)
        self._pane_closed: dict[str, asyncio.Event] = {}

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """Notifications quote names and ids from the network: no markup, no control characters."""
        super().notify(safe(message), title=safe(title), severity=severity, timeout=timeout, markup=markup)

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="tabs"), TabPane("Conferences", id="list-pane"):
            yield Static("Your conferences -- Enter joins the selected one.", id="list-hint")
            yield DataTable(id="conferences", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.chat.name
        table = self.query_one("#conferences", DataTable)
        table.add_column("Conference", key="id")
        table.add_column("Time frame", key="frame")
        table.add_column("Members", key="members")
        table.add_column("Creator", key="creator")
        table.add_column("Status", key="status")
        table.focus()
        self.action_refresh()
        if self.refresh_every:
            self.set_interval(self.refresh_every, lambda: self._load_conferences(periodic=True))

    # ---- the conference list

    def action_refresh(self) -> None:
        self._load_conferences()

    # Workers finish and messages arrive while the app shuts down: the widgets may be gone then,
    # so the app looks them up with these and does nothing without them.

    def _tabs(self) -> TabbedContent | None:
        return next(iter(self.query("#tabs").results(TabbedContent)), None)

    def _table(self) -> DataTable[Any] | None:
        return next(iter(self.query("#conferences").results(DataTable)), None)

    def action_show_list(self) -> None:
        tabs, table = self._tabs(), self._table()
        if tabs is not None and table is not None:
            tabs.active = "list-pane"
            table.focus()

    def action_next_tab(self) -> None:
        tabs = self._tabs()
        if tabs is None:
            return
        order = ["list-pane", *(p.id for p in self.panes() if p.id is not None)]
        tabs.active = order[(order.index(tabs.active) + 1) % len(order)] if tabs.active in order else order[0]

    @on(TabbedContent.TabActivated, "#tabs")
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if isinstance(event.pane, ConferencePane):
            event.pane.mark_read()
            for field_ in event.pane.query(Input):  # none yet while the pane is being mounted
                field_.focus()
        else:
            for table in self.query("#conferences"):
                table.focus()

    @work(exclusive=True, group="list")
    async def _load_conferences(self, *, periodic: bool = False) -> None:
        """Fetch the list; a periodic refresh repeats no error the user was already shown."""
        try:
            views = await self.chat.conferences()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, AppError):
                error = str(exc)
            else:
                log.exception("listing conferences")
                error = f"Could not list the conferences: {exc}"
            if not (periodic and error == self._list_error):
                self.notify(error, severity="error", markup=False)
            self._list_error = error
            return
        self._list_error = None
        self.views = {conference_ref(view): view for view in views}
        self._render_list()

    def _render_list(self) -> None:
        table = self._table()
        if table is None:
            return
        cursor = table.cursor_row
        table.clear()
        for view in sorted(self.views.values(), key=lambda v: (v.t0, v.id)):
            table.add_row(
                Text(safe(view.id), style="bold"),
                time_frame_text(view.t0, view.t1),
                Text(safe(", ".join(view.members))),
                Text(safe(view.creator)),
                conference_status(view, self.is_open(conference_ref(view)),
                                  joining=conference_ref(view) in self._joining),
                key=conference_ref(view),
            )
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1))

    def is_open(self, conference_id: str) -> bool:
        """Has the conference (``creator/id``) a pane (not one being closed)?"""
        return conference_id not in self._pane_closed and bool(self.query(f"#{pane_id(conference_id)}"))

    @on(DataTable.RowSelected, "#conferences")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.open_conference(event.row_key.value)

    # ---- joining

    def open_conference(self, conference_id: str) -> None:
        """Switch to the conference's tab (``creator/id``), joining it first if needed."""
        if self.is_open(conference_id):
            self._activate(conference_id)
            return
        if conference_id in self._joining:
            return
        self._joining.add(conference_id)
        self._render_list()
        self._join(conference_id)

    @work(group="join")
    async def _join(self, conference_id: str) -> None:
        try:
            conference = await self._join_trusting(conference_id)
        finally:
            self._joining.discard(conference_id)
        if conference is None:
            self._render_list()
            return
        closing = self._pane_closed.get(conference_id)
        if closing is not None:  # left and joined again at once: the old pane must go first
            await closing.wait()
        tabs = self._tabs()
        if tabs is None:
            return
        await tabs.add_pane(ConferencePane(conference))
        self._activate(conference_id)
        self._render_list()

    async def _join_trusting(self, conference_id: str) -> Conference | None:
        """Join; when certificates were not seen before, ask the user, accept them, try again."""
        for _ in range(MAX_TRUST_ROUNDS):
            try:
                return await self.chat.join(conference_id)
            except asyncio.CancelledError:
                raise
            except AppError as exc:
                certificates = exc.certificates if exc.code == "untrusted" else ()
                if not certificates:
                    self.notify(str(exc), severity="error", markup=False)
                    return None
            except Exception as exc:
                log.exception("joining %s", safe(conference_id))
                self.notify(f"Could not join {ref_label(conference_id)}: {exc}", severity="error", markup=False)
                return None
            if not await self.push_screen_wait(TrustScreen(conference_id, certificates)):
                self.notify(f"Not joining {ref_label(conference_id)}: you refused a member certificate.",
                            severity="warning", markup=False)
                return None
            for cert in certificates:
                if not await guarded(self, functools.partial(self.chat.accept, cert.name, cert.fingerprint),
                                     f"Accepting {cert.name}'s certificate"):
                    return None
        self.notify(f"Could not join {ref_label(conference_id)}: its certificates keep changing.",
                    severity="error", markup=False)
        return None

    def _activate(self, conference_id: str) -> None:
        tabs = self._tabs()
        if tabs is None or not self.is_open(conference_id):
            return
        tabs.active = pane_id(conference_id)
        for field_ in self.query_one(f"#{pane_id(conference_id)}", ConferencePane).query(Input):
            field_.focus()

    async def on_conference_pane_ended(self, message: ConferencePane.Ended) -> None:
        pane = message.pane
        if message.error:
            self.notify(message.error, severity="error", markup=False)
        cid = conference_ref(pane.conference)
        tabs = self._tabs()
        if pane.is_attached and pane.id is not None and tabs is not None and cid not in self._pane_closed:
            pane.ready = False
            self._pane_closed[cid] = closed = asyncio.Event()
            try:
                await tabs.remove_pane(pane.id)
            finally:
                del self._pane_closed[cid]
                closed.set()
            self.action_show_list()
        self._render_list()

    def panes(self) -> list[ConferencePane]:
        """The open conferences' panes (ready ones: mounted, with their history shown)."""
        return [pane for pane in self.query(ConferencePane) if pane.ready]


def run_chat(home: Path | None = None, passphrase_file: Path | None = None) -> int:
    """``secchat chat``: open the user's profile and run the UI; returns the exit status.

    The passphrase comes from ``passphrase_file``, ``$SECCHAT_PASSPHRASE`` or a hidden prompt
    (asked only once the profile is known to exist).  Errors are one sentence on stderr.
    """
    import sys

    from .cli_pki import PASSPHRASE_ENV, read_passphrase
    from .profile import ProfileError, default_home, load_settings

    home = Path(home) if home is not None else default_home()
    try:
        load_settings(home)
    except ProfileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    passphrase = read_passphrase(passphrase_file, (PASSPHRASE_ENV,), "passphrase")

    async def main() -> int:
        try:
            chat = await ChatApp.open(home, passphrase)
        except AppError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        try:
            chat.claim_profile()  # one process per profile, said at once
        except AppError as exc:
            await chat.aclose()
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"error: cannot open the profile in {home}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        status = 0
        try:
            await SecChatApp(chat).run_async()
        finally:
            try:
                await chat.aclose()  # leaves the conferences, saving their key state
            except Exception as exc:  # the UI is gone: say it in one sentence
                log.debug("closing", exc_info=True)
                print(f"error: closing the session failed: {exc}", file=sys.stderr)
                status = 1
        return status

    return asyncio.run(main())
