"""The user's commands: ``secchat register | participants | create | delete | conferences | join | trust``.

Each opens the profile (``--home``, default: the platform's user data directory) through
:class:`secchat.app.session.ChatApp`, or delegates to the directory's own commands where those
already do the job (``register``, ``participants``, ``trust list|revoke``).  Passphrases come
from ``--passphrase-file``, ``SECCHAT_PASSPHRASE`` or a hidden prompt.  Errors are one sentence
on stderr and an exit code of :mod:`secchat.app.exit_codes`; never a traceback.  (``init`` is in
:mod:`secchat.app.cli_pki`, with the rest of the identity's lifecycle.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ..text import safe
from .cli_pki import HOME_OPTION as _HOME
from .cli_pki import PASSFILE_OPTION as _PASSFILE
from .cli_pki import PASSPHRASE_ENV, fail, read_passphrase, resolve_home
from .exit_codes import ExitCode, fail_for

T = TypeVar("T")

_home = resolve_home


def _run(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine; an :class:`AppError` becomes one sentence and its class's exit code.

    Anything else is a bug: one sentence too, unless ``SECCHAT_DEBUG=1`` asks for the traceback.
    """
    from .session import AppError

    try:
        return asyncio.run(fn())
    except AppError as exc:
        if exc.code == "untrusted" and exc.certificates:  # ours: a directory's codes never are
            raise _untrusted_hint(exc) from None
        raise fail_for(exc) from None
    except KeyboardInterrupt:
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if os.environ.get("SECCHAT_DEBUG") == "1":
            raise
        raise fail(f"unexpected failure ({type(exc).__name__}: {exc}); SECCHAT_DEBUG=1 shows the details") from None


async def _open(home: Path | None, passphrase_file: Path | None, **relay: Any):
    from .session import ChatApp

    settings = _settings(home)  # "there is no profile here" comes before any passphrase prompt
    prompt = f"passphrase for {settings.name}'s profile in {_home(home)}"
    return await ChatApp.open(_home(home), read_passphrase(passphrase_file, (PASSPHRASE_ENV,), prompt), **relay)


def _settings(home: Path | None):
    from .profile import ProfileError, load_settings

    try:
        return load_settings(_home(home))
    except ProfileError as exc:
        raise fail_for(exc) from None


# --------------------------------------------------------------------------- directory


def register(
    home: Annotated[Path | None, _HOME] = None,
    passphrase_file: Annotated[Path | None, _PASSFILE] = None,
) -> None:
    """Register your certificate with the directory (the thesis's Add Participant)."""
    from secchat.directory import cli as directory_cli

    from .profile import IDENTITY_DIR, TRUST_FILE

    settings = _settings(home)
    h = _home(home)
    directory_cli.register(settings.directory, h / IDENTITY_DIR, passphrase_file, h / TRUST_FILE,
                           settings.directory_timeout, settings.directory_ca_file(h))


_JSON = typer.Option("--json", help="Print one JSON document (for scripts).")


def participants(
    home: Annotated[Path | None, _HOME] = None,
    passphrase_file: Annotated[Path | None, _PASSFILE] = None,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """List the registered participants: identity, whether you accepted them, fingerprint, address."""
    from secchat.directory import cli as directory_cli

    from .profile import IDENTITY_DIR, TRUST_FILE

    settings = _settings(home)
    h = _home(home)
    directory_cli.participants(settings.directory, h / IDENTITY_DIR, passphrase_file, h / TRUST_FILE,
                               settings.directory_timeout, settings.directory_ca_file(h), as_json)


def unregister(
    home: Annotated[Path | None, _HOME] = None,
    passphrase_file: Annotated[Path | None, _PASSFILE] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask to confirm.")] = False,
) -> None:
    """Remove your name from the directory (a request signed by your key): peers no longer find
    you, and the name is free.  Your profile, key and history stay."""
    from secchat.directory import cli as directory_cli

    from .profile import IDENTITY_DIR, TRUST_FILE

    settings = _settings(home)
    h = _home(home)
    if not yes:
        if not sys.stdin.isatty():
            raise fail(f"unregister removes {settings.name} from the directory; add --yes to confirm",
                       ExitCode.USAGE)
        answer = typer.prompt(f"Type your name ({settings.name}) to unregister it", default="",
                              show_default=False)
        if answer.strip() != settings.name:
            raise fail("not confirmed: nothing changed", ExitCode.USAGE)
    directory_cli.unregister(settings.directory, h / IDENTITY_DIR, passphrase_file, h / TRUST_FILE,
                             settings.directory_timeout, settings.directory_ca_file(h))


_RELATIVE = re.compile(r"^\+((?:\d+[smhd])+)$")
_PART = re.compile(r"(\d+)([smhd])")
_DAY = re.compile(r"^(today|tomorrow)(?:\s+(\d{1,2}):(\d{2}))?$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """``now``; ``+30m``, ``+1h30m``, ``+1d``, ``+90s`` (from now); ``today 17:00``,
    ``tomorrow 09:00`` or ``tomorrow`` (00:00), in local time; or ISO 8601 (UTC when no zone)."""
    now = now or datetime.now(UTC)
    text = text.strip()
    if text == "now":
        return now
    m = _RELATIVE.match(text)
    if m:
        delta = timedelta()
        for amount, unit in _PART.findall(m.group(1)):
            delta += timedelta(**{_UNITS[unit]: int(amount)})
        return now + delta
    m = _DAY.match(text.lower())
    if m:
        local = now.astimezone()
        day = local.date() + timedelta(days=1 if m.group(1) == "tomorrow" else 0)
        hour, minute = int(m.group(2) or 0), int(m.group(3) or 0)
        if hour > 23 or minute > 59:
            raise fail(f"cannot read the time {text!r}: hours 0-23, minutes 0-59", ExitCode.USAGE)
        naive = datetime(day.year, day.month, day.day, hour, minute)
        return naive.astimezone()  # the local zone on that day (daylight saving included)
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise fail(
            f"cannot read the time {text!r}: use now, +30m, +1h30m, +1d, tomorrow 09:00 or ISO 8601",
            ExitCode.USAGE,
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _name(text: str, app: Any) -> str:
    """A participant's name given as ``name`` or ``name@issuer`` (issuer: one of our CAs), as
    every listing prints it."""
    from secchat import pki
    from secchat.directory.trust import split_identity

    return split_identity(text, [pki.identity_of(c).name for c in app.local.trusted])[0]


def _untrusted_hint(exc: Any) -> typer.Exit:
    lines = [f"  {safe(c.identity)}  {safe(c.fingerprint)}" for c in exc.certificates]
    typer.echo("certificates not accepted yet (check the fingerprints with their owners):", err=True)
    for line in lines:
        typer.echo(line, err=True)
    typer.echo("accept with `secchat trust accept NAME FINGERPRINT`, or pass --accept-new", err=True)
    return fail_for(exc)


def create(
    conference_id: Annotated[str, typer.Argument(help="A unique conference id (letters, digits, . _ ~ -).")],
    member: Annotated[list[str], typer.Option("--member", "-m", help="A member's name (repeat; you are added).")],
    start: Annotated[
        str, typer.Option("--from", help="Start: now, +30m, +1h30m, tomorrow 09:00 (local), ISO 8601.")
    ] = "now",
    end: Annotated[str, typer.Option("--to", help="End: +2h, +1d, today 18:00 (local), ISO 8601.")] = "+1d",
    accept_new: Annotated[
        bool, typer.Option("--accept-new", help="Accept members' certificates not seen before (prints them).")
    ] = False,
    home: Annotated[Path | None, _HOME] = None,
    passphrase_file: Annotated[Path | None, _PASSFILE] = None,
) -> None:
    """Create a conference among you and the given members during a time frame (signed by you)."""

    t0, t1 = parse_time(start), parse_time(end)
    if t1 <= t0:
        raise fail("the conference must end after it starts (--to after --from)", ExitCode.USAGE)
    if t1 <= datetime.now(UTC):
        raise fail(f"the conference would be over already (it ends {_when(t1)}): give a later --to",
                   ExitCode.USAGE)

    async def go():
        async with await _open(home, passphrase_file) as app:
            member[:] = [_name(m, app) for m in member]
            new = await app.unaccepted_participants(member) if accept_new else []
            # accepted by create itself, and only if the conference is created
            return new, await app.create(conference_id, member, t0, t1, accept_new=accept_new)

    new, view = _run(go)
    for c in new:
        typer.echo(f"accepted {safe(c.identity)} {safe(c.fingerprint)}")
    typer.echo(f"created {safe(view.id)} by {safe(view.creator)}: {safe(', '.join(view.members))}, "
               f"from {_when(view.t0)} to {_when(view.t1)}")


def delete(
    conference_id: Annotated[str, typer.Argument(help="The id of a conference you created.")],
    home: Annotated[Path | None, _HOME] = None,
    passphrase_file: Annotated[Path | None, _PASSFILE] = None,
) -> None:
    """Delete a conference you created (the directory keeps your signed tombstone; members who
    see it refuse the conference's record from then on; you may create the id again)."""

    async def go():
        async with await _open(home, passphrase_file) as app:
            await app.delete(conference_id)
            return app.name

    me = _run(go)
    typer.echo(f"deleted {safe(conference_id)} by {safe(me)}")


def _when(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def conferences(
    home: Annotated[Path | None, _HOME] = None,
    passphrase_file: Annotated[Path | None, _PASSFILE] = None,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """List your conferences (verified records): id and creator, time frame, open now, members."""

    async def go():
        async with await _open(home, passphrase_file) as app:
            return await app.conferences()

    views = _run(go)
    if as_json:
        typer.echo(json.dumps([
            {"id": v.id, "creator": v.creator, "key": v.key, "from": v.t0.isoformat(), "to": v.t1.isoformat(),
             "open_now": v.joinable_now, "members": list(v.members)}
            for v in views
        ]))
        return
    if not views:
        typer.echo("no conferences")
    for v in views:
        state = "open now" if v.joinable_now else "closed now"
        typer.echo(f"{safe(v.id)} by {safe(v.creator)}  {_when(v.t0)} .. {_when(v.t1)}  {state}  "
                   f"members: {safe(', '.join(v.members))}")


# --------------------------------------------------------------------------- trust


trust_app = typer.Typer(help="The member certificates you accepted.", no_args_is_help=True)


@trust_app.callback()
def _trust() -> None:
    """The member certificates you accepted."""


@trust_app.command("list")
def trust_list(home: Annotated[Path | None, _HOME] = None, as_json: Annotated[bool, _JSON] = False) -> None:
    """Show accepted identities and their certificate fingerprints."""
    from secchat.directory import cli as directory_cli

    from .profile import TRUST_FILE

    directory_cli.trust_list(_home(home) / TRUST_FILE, as_json)


@trust_app.command("accept")
def trust_accept(
    name: Annotated[str, typer.Argument(help="The participant's name, or name@issuer as listings show it.")],
    fingerprint: Annotated[str, typer.Argument(help="Its certificate's SHA-256 fingerprint (>= 32 hex digits).")],
    home: Annotated[Path | None, _HOME] = None,
    passphrase_file: Annotated[Path | None, _PASSFILE] = None,
) -> None:
    """Accept NAME's certificate from the directory if it has this fingerprint."""

    async def go():
        async with await _open(home, passphrase_file) as app:
            who = _name(name, app)
            await app.accept(who, fingerprint)
            return who

    who = _run(go)
    typer.echo(f"accepted {safe(who)} {safe(fingerprint)}")


@trust_app.command("revoke")
def trust_revoke(
    identity: Annotated[str, typer.Argument(help="name@issuer, as `secchat trust list` shows it, or a name.")],
    home: Annotated[Path | None, _HOME] = None,
) -> None:
    """Forget an accepted certificate (you will be asked again next time)."""
    from secchat.directory import cli as directory_cli

    from .profile import TRUST_FILE

    directory_cli.trust_revoke(identity, _home(home) / TRUST_FILE)


# --------------------------------------------------------------------------- join


def message_id(event: Any) -> str:
    """A message's id in ``join --json``: ``SENDER/EPOCH/SENT_AT`` (the sender's signed time, in
    microseconds) -- the same at every member; our own messages also carry ``local_id``, the
    same from ``sending`` to ``delivered``."""
    return f"{event.sender}/{event.epoch}/{int(event.sent_at.timestamp() * 1_000_000)}"


def _line(event: Any, as_json: bool, conference: dict[str, str] | None = None) -> str:
    """One event as a line; with ``as_json``, a JSON object that carries ``conference`` (id and
    creator) when given."""
    from .session import MAX_TEXT, ChatMessage, KeyStatus, MemberStatus, Notice, OtherRecord

    if as_json:
        where = conference or {}
        if isinstance(event, ChatMessage):
            return json.dumps({"event": "message", **where, "id": message_id(event), "local_id": event.local_id,
                               "sender": event.sender, "text": event.text, "state": event.state,
                               "epoch": event.epoch, "sent_at": event.sent_at.isoformat(), "mid": event.mid,
                               "seen_by": list(event.seen_by)})
        if isinstance(event, KeyStatus):
            return json.dumps({"event": "key", **where, "established": event.established, "epoch": event.epoch,
                               "fingerprint": event.fingerprint, "contributors": list(event.contributors)})
        if isinstance(event, MemberStatus):
            return json.dumps({"event": "member", **where, "name": event.name, "up": event.up, "path": event.path})
        if isinstance(event, OtherRecord):
            return json.dumps({"event": "other_record", **where, "member": event.member, "creator": event.creator,
                               "members": event.members, "text": event.text})
        return json.dumps({"event": "notice", **where, "text": event.text})
    # Names, texts and notices quote peers and the directory: terminal-safe, one line each.
    if isinstance(event, ChatMessage):
        when = event.sent_at.astimezone().strftime("%H:%M:%S")
        seen = f", seen by {safe(', '.join(event.seen_by))}" if event.seen_by else ""
        return f"[{when}] {safe(event.sender)}: {safe(event.text, max_len=MAX_TEXT)}  ({event.state}{seen})"
    if isinstance(event, KeyStatus):
        if event.established:
            return (f"* key established (epoch {event.epoch}, fingerprint {safe(event.fingerprint)}, "
                    f"contributors {safe(', '.join(event.contributors))})")
        return f"* waiting for the key of epoch {event.epoch} (a majority must join)"
    if isinstance(event, MemberStatus):
        via = f" ({event.path})" if event.up and event.path else ""
        return f"* {safe(event.name)} is {'live' if event.up else 'suspected'}{via}"
    if isinstance(event, Notice):
        return f"* {safe(event.text)}"
    return f"* {safe(repr(event))}"


async def _stdin_lines(queue: asyncio.Queue[str | None]) -> None:
    """Feed stdin lines (None at EOF) from a pipe, a terminal or a file."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    fd = sys.stdin.fileno()
    blocking = os.get_blocking(fd)
    try:
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (ValueError, OSError):  # a regular file: read it whole
        for line in sys.stdin.read().splitlines():
            await queue.put(line)
        await queue.put(None)
        return
    try:
        while True:
            try:
                data = await reader.readline()
            except ValueError:  # a line beyond the limit: dropped
                continue
            if not data:
                await queue.put(None)
                return
            await queue.put(data.decode("utf-8", "replace").rstrip("\r\n"))
    finally:
        # asyncio made the descriptor non-blocking; a terminal is shared with the shell
        with contextlib.suppress(OSError, ValueError):
            os.set_blocking(fd, blocking)
        transport.close()


def join(
    conference_id: Annotated[str, typer.Argument(help="The conference to join: its id, or creator/id.")],
    creator: Annotated[
        str | None,
        typer.Option("--creator", help="Whose conference of that id (needed when several creators use it)."),
    ] = None,
    send: Annotated[bool, typer.Option("--send", help="Multicast each line read from stdin.")] = False,
    accept_new: Annotated[
        bool, typer.Option("--accept-new", help="Accept members' certificates not seen before (prints them).")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print events as JSON lines (each with the conference id and creator).")
    ] = False,
    json_input: Annotated[
        bool, typer.Option("--json-input", help="Read JSON commands from stdin (send, rekey, leave): for scripts.")
    ] = False,
    show_history: Annotated[bool, typer.Option("--history", help="Print the locally kept messages first.")] = False,
    home: Annotated[Path | None, _HOME] = None,
    passphrase_file: Annotated[Path | None, _PASSFILE] = None,
    relay: Annotated[
        str | None,
        typer.Option("--relay", help="This run's NATS relay (nats://HOST:PORT[,...]) instead of the profile's."),
    ] = None,
    relay_only: Annotated[
        bool | None, typer.Option("--relay-only/--direct-too", help="Only through the relay (or not).")
    ] = None,
) -> None:
    """Join a conference and stay until Ctrl-C or the end of stdin.

    Prints when the key is established, each message (sender, time, state) and who is live or suspected.

    Lines on stdin: text (with --send) is multicast; /rekey starts a new epoch with a fresh key; /leave saves the key state and leaves (joining again gives the same key); /quit leaves too.

    With --json-input each line is a JSON command: {"cmd": "send", "text": "..."}, {"cmd": "rekey"} or {"cmd": "leave"}; each gets {"event": "ok", "cmd": ...} or {"event": "error", "cmd": ..., "code": ..., "text": ...}.
    """
    from .session import AppError, ChatMessage, MemberStatus

    def out(text: str) -> None:
        typer.echo(text)

    async def go() -> None:
        async with await _open(home, passphrase_file, relay=relay, relay_only=relay_only) as app:
            who = _name(creator, app) if creator is not None else None
            new = []
            if accept_new:  # to print what --accept-new accepts (only once the join succeeded)
                with contextlib.suppress(AppError):
                    new = await app.unaccepted(conference_id, creator=who)
            try:
                conf = await app.join(conference_id, creator=who, accept_new=accept_new)
            except AppError as exc:
                if not (show_history and exc.details.get("ended")):
                    raise
                # a conference that ended: its history needs no time frame, nor a key
                for msg in app.history(conference_id.rpartition("/")[2]):
                    out(_line(msg, as_json))
                out(_line_notice(str(exc), as_json))
                return
            where = {"conference": conf.id, "creator": conf.creator}
            for c in new:
                out(json.dumps({"event": "accepted", **where, "identity": c.identity, "fingerprint": c.fingerprint})
                    if as_json else f"* accepted {safe(c.identity)} {safe(c.fingerprint)}")
            if show_history:
                for msg in conf.history():
                    out(_line(msg, as_json, where))
            if as_json:
                out(json.dumps({"event": "joined", **where, "me": conf.me, "members": list(conf.members)}))
            else:
                out(f"* joined {safe(conf.id)} by {safe(conf.creator)} as {safe(conf.me)}; "
                    f"members {safe(', '.join(conf.members))}; "
                    f"the key needs {len(conf.members) // 2 + 1} of {len(conf.members)}")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, stop.set)

            async def printer() -> None:
                seen: set[str] = set()
                states: dict[int, str] = {}  # our messages' last printed state
                async for event in conf.events():
                    if isinstance(event, MemberStatus) and not as_json:
                        if not event.up and event.name not in seen:
                            continue  # not here yet: say nothing until it was live once
                        seen.add(event.name)
                    if isinstance(event, ChatMessage) and event.local_id is not None and not as_json:
                        if states.get(event.local_id) == event.state:
                            continue  # one more receipt, same state
                        states[event.local_id] = event.state
                    out(_line(event, as_json, where))
                stop.set()

            async def command(line: str) -> bool:
                """Run one line of stdin; False: leave."""
                if json_input:
                    return await _json_command(conf, line, out, where)
                if line.strip() in ("/leave", "/quit"):
                    return False
                if line.strip() == "/rekey":
                    await conf.rekey()
                elif not line.strip():
                    pass
                elif send:
                    try:
                        await conf.send(line)
                    except AppError as exc:
                        out(_line_notice(str(exc), as_json, where))
                else:
                    out(_line_notice("not sending: start with --send to multicast stdin", as_json, where))
                return True

            async def commands() -> None:
                lines: asyncio.Queue[str | None] = asyncio.Queue(64)
                feeder = asyncio.create_task(_stdin_lines(lines))
                try:
                    while True:
                        line = await lines.get()
                        if line is None or not await command(line):
                            break
                finally:
                    feeder.cancel()
                await conf.leave()

            tasks = [asyncio.create_task(printer()), asyncio.create_task(commands())]
            await stop.wait()
            tasks[1].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tasks[1]
            await conf.leave()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(tasks[0], 2)

    _run(go)


_JSON_COMMANDS = ("send", "rekey", "leave")


async def _json_command(conf: Any, line: str, out: Callable[[str], None], where: dict[str, str]) -> bool:
    """One ``--json-input`` command; False: leave."""
    from .session import AppError

    if not line.strip():
        return True
    cmd: Any = None
    try:
        request = json.loads(line)
        cmd = request.get("cmd") if isinstance(request, dict) else None
        if cmd not in _JSON_COMMANDS:
            raise ValueError(f"a command is a JSON object with cmd one of {', '.join(_JSON_COMMANDS)}")
        if cmd == "leave":
            out(json.dumps({"event": "ok", **where, "cmd": cmd}))
            return False
        if cmd == "rekey":
            await conf.rekey()
        else:
            text = request.get("text")
            if not isinstance(text, str) or not text:
                raise ValueError('"send" needs a non-empty "text"')
            await conf.send(text)
    except (ValueError, AppError) as exc:  # json.JSONDecodeError is a ValueError
        code = exc.code if isinstance(exc, AppError) else "bad_command"
        out(json.dumps({"event": "error", **where, "cmd": cmd if isinstance(cmd, str) else None,
                        "code": code, "text": str(exc)}))
        return True
    out(json.dumps({"event": "ok", **where, "cmd": cmd}))
    return True


def _line_notice(text: str, as_json: bool, conference: dict[str, str] | None = None) -> str:
    from .session import Notice

    return _line(Notice(text), as_json, conference)


def register_commands(app: typer.Typer) -> None:
    """Add these commands to the root ``secchat`` app."""
    app.command("register")(register)
    app.command("unregister")(unregister)
    app.command("participants")(participants)
    app.command("create")(create)
    app.command("delete")(delete)
    app.command("conferences")(conferences)
    app.command("join")(join)
    app.add_typer(trust_app, name="trust")
