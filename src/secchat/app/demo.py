"""``secchat demo``: the whole system on one machine, as a user would run it, told as a story.

A local CA, a directory server (SQLite, loopback, its own process), n participants each with
its own profile (key store, accepted certificates, encrypted history) and its own
``secchat join`` process speaking TLS to the others.  A bare majority joins and gets the key,
messages flow, the other members start late and catch up on the same key and every message.
Everything lives in a temporary directory that is removed at the end, and every process is
stopped.  The exit status is 0 only if every member ends on the same key with every message.

With ``--relay`` the members publish no address and reach each other only through an untrusted
NATS relay (a ``nats-server`` with JetStream started for the demo, or the URL given); then one
member goes away, the others talk, and it comes back to everything said meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import pki
from ..protocols.consensus import majority
from .profile import init_profile
from .session import ChatApp

__all__ = ["run_demo"]

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory"]
CONFERENCE = "demo"
CLI = [sys.executable, "-c", "from secchat.app.cli import main; main()"]


def _name(i: int) -> str:
    return NAMES[i] if i < len(NAMES) else f"member{i}"


@dataclass
class _Member:
    name: str
    home: Path
    late: bool
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    joined_at: float | None = None
    key_at: float | None = None
    fingerprint: str | None = None
    received: list[str] = field(default_factory=list)
    sent: int = 0
    reader: asyncio.Task[None] | None = None


class _Demo:
    def __init__(self, n: int, console: Console, timeout: float, relay: str | None = None) -> None:
        self.relay = relay
        self.n = n
        self.t = majority(n)
        self.console = console
        self.timeout = timeout
        self.t_start = time.monotonic()
        self.changed = asyncio.Event()
        self.members: list[_Member] = []
        self.directory: asyncio.subprocess.Process | None = None
        self.passphrase = os.urandom(12).hex()

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{time.monotonic() - self.t_start:6.2f}s[/] {text}")

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SECCHAT_PASSPHRASE"] = self.passphrase
        env.pop("SECCHAT_HOME", None)
        return env

    # ------------------------------------------------------------------ setup

    async def start_directory(self, root: Path, ca_pem: Path) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.set_inheritable(True)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        try:
            self.directory = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "secchat.directory", "serve", "--ca", str(ca_pem),
                "--db", f"sqlite:///{root / 'directory.sqlite3'}", "--fd", str(sock.fileno()),
                pass_fds=(sock.fileno(),), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                env=self.env(),
            )
        finally:
            sock.close()  # the server holds its own copy

        async def healthy() -> bool:
            directory = self.directory
            assert directory is not None
            async with httpx.AsyncClient(timeout=1.0) as client:
                while True:
                    if directory.returncode is not None:
                        return False
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get(url + "/v1/health")).status_code == 200:
                            return True
                    await asyncio.sleep(0.05)

        if not await self.progress("starting the directory server", healthy):
            raise RuntimeError("the directory server did not start")
        return url

    async def progress(self, label: str, wait: Callable, timeout: float | None = None):
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=self.console, transient=True) as bar:
            bar.add_task(label)
            return await asyncio.wait_for(wait(), timeout or self.timeout)

    async def until(self, label: str, predicate: Callable[[], bool]) -> None:
        async def loop() -> bool:
            while not predicate():
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.2)
                self.check_alive()
            return True

        try:
            await self.progress(label, loop)
        except TimeoutError:
            raise RuntimeError(f"timed out {label}") from None

    def check_alive(self) -> None:
        for m in self.members:
            if m.proc is not None and m.proc.returncode not in (None, 0):
                raise RuntimeError(f"{m.name}'s process exited with status {m.proc.returncode}")

    # ------------------------------------------------------------------ members

    async def spawn(self, m: _Member) -> None:
        m.started = time.monotonic()
        m.proc = await asyncio.create_subprocess_exec(
            *CLI, "join", CONFERENCE, "--send", "--json", "--accept-new", "--home", str(m.home),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=self.env(),
        )
        m.reader = asyncio.create_task(self.read(m))

    async def read(self, m: _Member) -> None:
        assert m.proc is not None and m.proc.stdout is not None
        async for raw in m.proc.stdout:
            try:
                ev = json.loads(raw)
            except json.JSONDecodeError:
                continue
            kind = ev.get("event")
            if kind == "joined":
                m.joined_at = time.monotonic()
            elif kind == "key" and ev.get("established"):
                m.key_at = time.monotonic()
                m.fingerprint = ev["fingerprint"]
                self.say(f"[bold green]{m.name}[/] has the conference key [cyan]{ev['fingerprint']}[/] "
                         f"(from {', '.join(ev['contributors'])})")
            elif kind == "message" and ev.get("state") == "delivered" and ev.get("sender") != m.name:
                m.received.append(ev["text"])
                self.say(f"[bold]{m.name}[/] got [italic]{ev['text']!r}[/] from {ev['sender']}")
            elif kind == "message" and ev.get("sender") == m.name and ev.get("state") == "sent" and not ev.get("seen_by"):
                m.sent += 1
            self.changed.set()
        self.changed.set()

    def send(self, m: _Member, text: str) -> None:
        assert m.proc is not None and m.proc.stdin is not None
        m.proc.stdin.write(text.encode() + b"\n")
        self.say(f"[bold]{m.name}[/] says [italic]{text!r}[/]")

    async def stop(self) -> None:
        for m in self.members:
            if m.proc is not None and m.proc.returncode is None and m.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    m.proc.stdin.close()  # end of input: the member leaves and exits
        for m in self.members:
            if m.proc is None:
                continue
            try:
                await asyncio.wait_for(m.proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    m.proc.kill()
                await m.proc.wait()
            if m.reader is not None:
                m.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await m.reader
        if self.directory is not None and self.directory.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.directory.terminate()
            try:
                await asyncio.wait_for(self.directory.wait(), 5)
            except TimeoutError:
                self.directory.kill()
                await self.directory.wait()

    # ------------------------------------------------------------------ the story

    async def run(self, root: Path) -> bool:
        n, t = self.n, self.t
        ca_dir = root / "ca"
        ca_pass = os.urandom(12).hex()
        ca_key, ca_cert = pki.create_ca("SecChat Demo CA")
        pki.save_private_key(ca_dir / pki.CA_KEY_FILE, ca_key, ca_pass)
        (ca_dir / pki.CA_CERT_FILE).write_bytes(pki.cert_to_pem(ca_cert))
        self.say(f"local CA [cyan]{pki.fingerprint(ca_cert)[:16]}[/] in {ca_dir}")
        url = await self.start_directory(root, ca_dir / pki.CA_CERT_FILE)
        self.say(f"directory serving {url} (SQLite, untrusted: members verify everything it says)")

        self.members = [_Member(_name(i), root / _name(i), late=i >= t) for i in range(n)]

        async def enroll(m: _Member) -> str:
            await asyncio.to_thread(init_profile, m.home, m.name, self.passphrase, url, ca_dir, ca_pass,
                                    relay=self.relay or "", relay_only=self.relay is not None)
            async with await ChatApp.open(m.home, self.passphrase) as app:
                return await app.register()

        fps = await self.progress(f"creating and registering {n} participants", lambda: asyncio.gather(
            *(enroll(m) for m in self.members)))
        for m, fp in zip(self.members, fps, strict=True):
            self.say(f"{m.name}: certificate [cyan]{fp[:16]}[/] registered")
        creator = self.members[0]
        async with await ChatApp.open(creator.home, self.passphrase) as app:
            for p in await app.participant_details():
                if p.name != creator.name:
                    await app.accept(p.name, p.fingerprint)
            now = datetime.now(UTC)
            view = await app.create(CONFERENCE, [m.name for m in self.members], now - timedelta(minutes=1),
                                    now + timedelta(hours=1))
        self.say(f"{creator.name} created conference [bold]{view.id}[/] for {', '.join(view.members)} "
                 f"(signed record; the key needs {t} of {n})")

        early = [m for m in self.members if not m.late]
        late = [m for m in self.members if m.late]
        self.say(f"a bare majority joins: {', '.join(m.name for m in early)}")
        t_join = time.monotonic()
        for m in early:
            await self.spawn(m)
        await self.until("waiting for the majority's key", lambda: all(m.fingerprint for m in early))
        launch_to_key = max(m.key_at for m in early) - t_join  # type: ignore[type-var, operator]
        # from the moment the last of the majority had joined (its process up, record verified)
        key_time = max(m.key_at for m in early) - max(m.joined_at or t_join for m in early)  # type: ignore[type-var, operator]
        for m in early:
            self.send(m, f"hello from {m.name}")
        await self.until("messages among the majority",
                         lambda: all(len(m.received) >= len(early) - 1 for m in early))

        if late:
            self.say(f"the others start late: {', '.join(m.name for m in late)}")
            for m in late:
                await self.spawn(m)
            await self.until("late members getting the key and catching up",
                             lambda: all(m.fingerprint and len(m.received) >= len(early) for m in late))
            for m in late:
                self.send(m, f"{m.name} caught up")
            await self.until("everyone getting every message",
                             lambda: all(len(m.received) >= n - 1 for m in self.members))
        if self.relay is not None:
            await self.away_and_back()
        total = time.monotonic() - self.t_start
        return self.summary(key_time, launch_to_key, total)

    async def away_and_back(self) -> None:
        """One member leaves; the others talk; it comes back to everything said meanwhile."""
        away, speaker = self.members[1], self.members[0]
        others = [m for m in self.members if m is not away]
        self.say(f"[bold]{away.name}[/] goes away")
        assert away.proc is not None and away.proc.stdin is not None
        away.proc.stdin.close()
        await asyncio.wait_for(away.proc.wait(), self.timeout)
        texts = [f"said while {away.name} was away ({i})" for i in range(3)]
        for text in texts:
            self.send(speaker, text)
        await self.until("the others getting it",
                         lambda: all(set(texts) <= set(m.received) for m in others if m is not speaker))
        self.say(f"[bold]{away.name}[/] comes back")
        await self.spawn(away)
        await self.until(f"{away.name} catching up", lambda: set(texts) <= set(away.received))
        self.say(f"[bold green]{away.name}[/] caught up on {len(texts)} messages said while away")

    def summary(self, key_time: float, launch_to_key: float, total: float) -> bool:
        table = Table(title="SecChat demo", show_lines=False)
        for col in ("member", "joined", "key after joining", "sent", "received", "key fingerprint"):
            table.add_column(col)
        for m in self.members:
            to_key = f"{m.key_at - (m.joined_at or m.started):.2f}s" if m.key_at else "-"
            table.add_row(m.name, "late" if m.late else "majority", to_key, str(m.sent), str(len(m.received)),
                          m.fingerprint or "-")
        self.console.print(table)
        fps = {m.fingerprint for m in self.members}
        ok = len(fps) == 1 and None not in fps and all(len(m.received) >= self.n - 1 for m in self.members)
        messages = sum(len(m.received) for m in self.members)
        self.console.print(
            f"time to key {key_time:.2f}s after a bare majority ({self.t} of {self.n}) had joined "
            f"({launch_to_key:.2f}s after starting their processes); "
            f"{messages} messages delivered; fingerprints {'[green]all equal[/]' if len(fps) == 1 else '[red]DIFFER[/]'}; "
            f"total {total:.1f}s"
        )
        return ok


def _start_relay(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A nats-server with JetStream on a port the OS chose, for the demo's relay."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not os.access(binary, os.X_OK):
        raise RuntimeError("--relay needs nats-server installed (or --relay-url of a running one)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(root / "relay")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc, f"nats://127.0.0.1:{port}"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the relay (nats-server) did not start")


def run_demo(n: int = 5, *, timeout: float = 60.0, console: Console | None = None, keep: Path | None = None,
             relay: bool = False, relay_url: str | None = None) -> int:
    """Run the demo with ``n`` participants; 0 when every member ends on one key with every message.

    ``relay``: through a NATS relay only (``relay_url``, or a nats-server started here)."""
    console = console or Console(highlight=False)

    async def main(root: Path) -> bool:
        server: subprocess.Popen[bytes] | None = None
        url = relay_url
        if relay and url is None:
            try:
                server, url = _start_relay(root)
            except RuntimeError as exc:
                console.print(f"[red]demo failed:[/] {exc}")
                return False
        if url is not None:
            console.print(f"relay {url}: members publish no address and reach each other only through it")
        demo = _Demo(n, console, timeout, url)
        try:
            return await demo.run(root)
        except RuntimeError as exc:
            console.print(f"[red]demo failed:[/] {exc}")
            return False
        finally:
            await demo.stop()
            if server is not None:
                server.kill()
                server.wait()

    with tempfile.TemporaryDirectory(prefix="secchat-demo-") as tmp:
        root = Path(keep) if keep is not None else Path(tmp)
        (root / "ca").mkdir(parents=True, exist_ok=True)
        try:
            ok = asyncio.run(main(root))
        except KeyboardInterrupt:
            console.print("interrupted")
            return 130
    return 0 if ok else 1
