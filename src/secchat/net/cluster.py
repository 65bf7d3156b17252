"""A local cluster of member processes on loopback: ``secchat cluster --n 7 [--join K] ...``.

Why: the thesis's claims are about real peers on a network.  This launcher makes a CA and one
certificate per member in a temporary directory, starts each member as its own OS process
(:mod:`secchat.net.member_process`) over mutually authenticated TLS on 127.0.0.1, and plays a
scenario: only ``join`` members join at first, ``kill`` of them are SIGKILLed while the GKE runs,
``late`` members are started once the key exists, and every live member multicasts ``messages``
messages.  It then checks what the thesis promises: every live member holds the same key and got
every message of every live sender.

Ports are never guessed: the launcher binds each listening socket itself (port 0) and hands it
to the member process as an inherited file descriptor, so there is no window in which another
program could take the port.  Everything (processes, sockets, temporary directory) is cleaned up
on exit, including Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
import typer

from ..protocols.auth import MODES
from .provision import make_identities, write_identities

__all__ = ["ClusterResult", "ClusterSpec", "MemberResult", "cluster", "run_cluster"]

PASSPHRASE_ENV = "SECCHAT_CLUSTER_PASSPHRASE"
#: Most member processes one launcher starts (the scale target is 201 on one machine).
MAX_MEMBERS = 256
#: Member processes loading (unlocking their key stores) at once.
MAX_STARTING = 8
#: Longest stdout line read from a member.
MAX_LINE = 1 << 20


def majority(n: int) -> int:
    return n // 2 + 1  # = ceil((n + 1) / 2)


@dataclass(frozen=True)
class ClusterSpec:
    """A scenario.  ``join``: members that join at first (default all but the late ones);
    ``kill``: of those, how many are SIGKILLed during the GKE; ``late``: members started after the
    key exists; the rest (n - join - late) never start."""

    n: int = 7
    join: int | None = None
    kill: int = 0
    late: int = 0
    messages: int = 0
    restart_killed: bool = False  # start the killed members again (fresh state) once the key exists
    crash: int = 0  # members SIGKILLed after the key, restarted after the others multicast
    stall: int = 0  # live members SIGSTOPped (they stop reading) before the messages are sent
    message_size: int = 0  # pad each message to this many bytes
    partial_addresses: bool = False  # member i knows only the addresses of members 0..i-1
    seed: int | None = None
    mode: str = "signed"
    timeout: float = 60.0
    # a victim dies this long (seconds) after it reports that it joined, i.e. that its first GKE
    # messages are out (victims start first; the others once they are dead)
    kill_window: tuple[float, float] = (0.0, 0.002)
    log_level: str = "INFO"
    workdir: Path | None = None  # keep everything here (tests); default: a temp dir, removed
    env: dict[str, str] = field(default_factory=dict)  # extra environment; "{name}" is expanded
    stack: dict[str, Any] = field(default_factory=dict)
    links: dict[str, Any] = field(default_factory=dict)
    group: str = "cluster"
    passphrase: str | None = field(default=None, repr=False)  # of the key stores; default random

    @property
    def joiners(self) -> int:
        return self.n - self.late if self.join is None else self.join

    def check(self) -> None:
        if not 2 <= self.n <= MAX_MEMBERS:
            raise ValueError(f"n must be in 2..{MAX_MEMBERS}")
        if min(self.kill, self.late, self.messages) < 0 or self.joiners < 0:
            raise ValueError("counts cannot be negative")
        if self.joiners + self.late > self.n:
            raise ValueError(f"join ({self.joiners}) + late ({self.late}) exceeds n ({self.n})")
        if self.kill > self.joiners:
            raise ValueError("cannot kill more members than join")
        if self.joiners - self.kill < majority(self.n):
            raise ValueError(
                f"{self.joiners - self.kill} surviving joiners are fewer than the majority "
                f"{majority(self.n)} of n = {self.n}: the GKE cannot terminate"
            )
        live = self.joiners - self.kill + self.late + (self.kill if self.restart_killed else 0)
        if not 0 <= self.stall < live:
            raise ValueError(f"can stall 0..{live - 1} of the {live} live members")
        if not 0 <= self.crash <= self.joiners - self.kill - self.stall - 1:
            raise ValueError("crash must leave at least one joined member running")
        if not 0 <= self.message_size <= 256 << 10:
            raise ValueError("message size must be in 0..262144")
        if self.mode not in MODES:
            raise ValueError(f"mode is one of {', '.join(MODES)}")


@dataclass
class MemberResult:
    name: str
    role: str  # "joined", "killed", "late", "restarted", "stalled", "recovered", "absent"
    live: bool
    fingerprint: str | None = None
    elapsed: float | None = None
    members: list[str] | None = None
    delivered: dict[str, int] = field(default_factory=dict)  # sender -> count
    stats: dict[str, Any] | None = None
    exit_code: int | None = None
    log_path: Path | None = None


@dataclass
class ClusterResult:
    spec: ClusterSpec
    seed: int
    members: list[MemberResult]
    ok: bool
    problems: list[str]
    workdir: Path | None
    duration: float
    killed_mid_gke: int = 0  # victims killed before any member had the key


    @property
    def live(self) -> list[MemberResult]:
        return [m for m in self.members if m.live]

    def summary(self) -> str:
        live = self.live
        fps = {m.fingerprint for m in live}
        delivered = sum(sum(m.delivered.get(s.name, 0) for s in live) for m in live)
        expected = self.spec.messages * len(live) * len(live)
        held = fps - {None}
        key = next(iter(held)) if len(held) == 1 else "none" if not held else "MISMATCH"
        status = "OK" if self.ok else "FAILED: " + "; ".join(self.problems[:3])
        times = [m.elapsed for m in live if m.elapsed is not None and m.role == "joined"]
        median = f"{statistics.median(times):.3f}s" if times else "-"
        return (
            f"cluster n={self.spec.n} seed={self.seed} live={len(live)} "
            f"killed={self.spec.kill} ({self.killed_mid_gke} before any key) late={self.spec.late}: "
            f"key {key} at {sum(m.fingerprint is not None for m in live)}/{len(live)} live members, "
            f"median time to key {median}, messages {delivered}/{expected} -> {status}"
        )


class _Proc:
    def __init__(self, name: str, index: int, role: str, config: Path, log: Path) -> None:
        self.name = name
        self.index = index
        self.role = role
        self.config = config
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.established = asyncio.Event()
        self.info: dict[str, Any] = {}
        self.delivered: dict[str, set[tuple[int, int]]] = {}
        self.stats: dict[str, Any] | None = None
        self.stats_event = asyncio.Event()
        self.killed = False
        self.progress = asyncio.Event()  # set on every delivery
        self.out_file = log.with_suffix(".out")
        self.kill_after_join: float | None = None
        self.gone = asyncio.Event()  # SIGKILLed

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class _Cluster:
    def __init__(self, spec: ClusterSpec, out: Callable[[str], None]) -> None:
        self.spec = spec
        self.out = out
        self.seed = spec.seed if spec.seed is not None else random.SystemRandom().randrange(1 << 31)
        self.rng = random.Random(self.seed)
        self.procs: list[_Proc] = []
        self.sockets: dict[int, socket.socket] = {}
        self.workdir: Path | None = None
        self._own_workdir = False
        self.passphrase = spec.passphrase or secrets.token_urlsafe(24)
        self.killed_mid_gke = 0
        self._starting = asyncio.Semaphore(MAX_STARTING)

    # ------------------------------------------------------------------ setup

    def prepare(self) -> None:
        spec = self.spec
        if spec.workdir is not None:
            self.workdir = Path(spec.workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="secchat-cluster-"))
            self._own_workdir = True
        names = [f"m{i}" for i in range(spec.n)]
        ca_cert, identities = make_identities(names, ca_name="SecChat cluster CA")
        ca_path, files = write_identities(self.workdir / "pki", ca_cert, identities, self.passphrase)
        joiners = list(range(spec.joiners))
        late = list(range(spec.joiners, spec.joiners + spec.late))
        victims = set(self.rng.sample(joiners, spec.kill))
        for i in joiners + late:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            sock.set_inheritable(True)
            self.sockets[i] = sock
        addresses = {names[i]: f"127.0.0.1:{s.getsockname()[1]}" for i, s in self.sockets.items()}
        for i, name in enumerate(names):
            role = "killed" if i in victims else "joined" if i in joiners else "late" if i in late else "absent"
            config = {
                "identity": {
                    "name": name, "key": str(files[i].key_path), "cert": str(files[i].cert_path),
                    "ca": str(ca_path), "passphrase_env": PASSPHRASE_ENV,
                },
                "peers": {n: a for n, a in addresses.items()
                          if n != name and (not spec.partial_addresses or names.index(n) < i)},
                "conference": [{
                    "id": spec.group, "mode": spec.mode, "join": "command",
                    "members": [{"name": f.name, "cert": str(f.cert_path)} for f in files],
                }],
            }
            if i in self.sockets:
                config["listen"] = {"fd": self.sockets[i].fileno()}
            if spec.links:
                config["links"] = dict(spec.links)
            if spec.stack:
                config["stack"] = dict(spec.stack)
            path = self.workdir / f"{name}.toml"
            path.write_text(tomli_w.dumps(config), encoding="utf-8")
            self.procs.append(_Proc(name, i, role, path, self.workdir / f"{name}.log"))

    def _env(self, proc: _Proc) -> dict[str, str]:
        import secchat

        env = dict(os.environ)
        src = str(Path(secchat.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env[PASSPHRASE_ENV] = self.passphrase
        env["SECCHAT_LOG_LEVEL"] = self.spec.log_level
        for key, value in self.spec.env.items():
            env[key] = value.replace("{name}", proc.name).replace("{workdir}", str(self.workdir))
        return env

    async def spawn(self, proc: _Proc) -> None:
        """Start ``proc``; returns once it is ready (or gone) when others are starting too: at
        most :data:`MAX_STARTING` members load at once, since each unlocks its key store with
        scrypt (128 MiB for a moment) -- 201 at once would want 25 GiB."""
        sock = self.sockets[proc.index]
        async with self._starting:
            with open(proc.log, "ab") as log:
                proc.proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "secchat.net.member_process", str(proc.config),
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                    pass_fds=(sock.fileno(),), env=self._env(proc), limit=MAX_LINE,
                )
            proc.ready.clear()
            proc.reader = asyncio.get_running_loop().create_task(self._read(proc))
            waits = {asyncio.ensure_future(proc.ready.wait()), asyncio.ensure_future(proc.proc.wait())}
            _done, pending = await asyncio.wait(waits, timeout=self.spec.timeout, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()

    async def _read(self, proc: _Proc) -> None:
        assert proc.proc is not None and proc.proc.stdout is not None
        stream = proc.proc.stdout
        while True:
            try:
                line = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue
            if not line:
                break
            with open(proc.out_file, "ab") as f:
                f.write(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event")
            if kind == "ready":
                proc.ready.set()
            elif kind == "joined" and proc.kill_after_join is not None:
                asyncio.get_running_loop().call_later(proc.kill_after_join, self.kill, proc)
                proc.kill_after_join = None
            elif kind == "established":
                proc.info = event
                proc.established.set()
            elif kind == "delivered":
                proc.delivered.setdefault(event["sender"], set()).add((event["incarnation"], event["seq"]))
                proc.progress.set()
            elif kind == "stats":
                proc.stats = event
                proc.stats_event.set()
            elif kind == "error":
                self.out(f"[red]{proc.name}: {event.get('message')}[/red]")
        # the process ended: nobody should keep waiting for it (results look at proc.info)
        proc.ready.set()
        proc.established.set()
        proc.stats_event.set()
        proc.gone.set()
        proc.progress.set()

    def command(self, proc: _Proc, cmd: dict[str, Any]) -> None:
        if proc.running and proc.proc and proc.proc.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                proc.proc.stdin.write((json.dumps(cmd) + "\n").encode())

    async def wait_all(self, events: list[asyncio.Event], what: str) -> bool:
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), self.spec.timeout)
            return True
        except TimeoutError:
            self.out(f"[red]timed out waiting for {what}[/red]")
            return False

    def kill(self, proc: _Proc, *, keep_socket: bool = False) -> None:
        proc.gone.set()
        if proc.running and proc.proc is not None:
            proc.killed = True
            if not any(p.info for p in self.procs if p.role == "joined"):
                self.killed_mid_gke += 1
            with contextlib.suppress(ProcessLookupError):
                proc.proc.send_signal(signal.SIGKILL)
        if not (keep_socket or self.spec.restart_killed):
            sock = self.sockets.pop(proc.index, None)
            if sock is not None:
                sock.close()  # a dead member's port refuses connections from now on

    # ------------------------------------------------------------------ the scenario

    async def play(self) -> list[str]:
        spec = self.spec
        problems: list[str] = []
        first = [p for p in self.procs if p.role in ("joined", "killed")]
        late = [p for p in self.procs if p.role == "late"]
        await asyncio.gather(*(self.spawn(p) for p in first))
        if not await self.wait_all([p.ready for p in first], "the first members to start"):
            return ["members did not start"]
        self.out(f"{len(first)} members ready; joining (seed {self.seed})")
        # the victims start the GKE first and die right after their first messages are out;
        # then the others start it: every victim dies mid-GKE, before anyone has the key
        victims = [p for p in first if p.role == "killed"]
        for p in victims:
            p.kill_after_join = self.rng.uniform(*spec.kill_window)
            self.command(p, {"cmd": "join"})
        if victims and not await self.wait_all([p.gone for p in victims], "the victims to die"):
            problems.append("a victim could not be killed")
        survivors = [p for p in first if p.role == "joined"]
        for p in survivors:
            self.command(p, {"cmd": "join"})
        if not await self.wait_all([p.established for p in survivors], "the group key"):
            problems.append("not every surviving member established the key")
        self.out(f"{sum(bool(p.info) for p in survivors)}/{len(survivors)} surviving members have the key")
        if late:
            await asyncio.gather(*(self.spawn(p) for p in late))
            if await self.wait_all([p.ready for p in late], "the late members to start"):
                for p in late:
                    self.command(p, {"cmd": "join"})
                if not await self.wait_all([p.established for p in late], "the late members' key"):
                    problems.append("not every late member established the key")
            self.out(f"{sum(bool(p.info) for p in late)}/{len(late)} late members have the key")
        if spec.restart_killed:
            problems += await self._restart([p for p in self.procs if p.role == "killed"], "restarted")
        live = [p for p in self.procs if p.role in ("joined", "late", "restarted") and p.running]
        for p in self.rng.sample(live, spec.stall):
            assert p.proc is not None
            p.proc.send_signal(signal.SIGSTOP)  # it stops reading: its peers' queues must stay bounded
            p.role = "stalled"
            self.out(f"{p.name} stalled (SIGSTOP)")
        live = [p for p in live if p.role != "stalled"]
        crashed = self._crash_victims(live) if spec.crash else []
        for p in crashed:
            self.kill(p, keep_socket=True)
            p.role = "crashed"
            self.out(f"{p.name} crashed (SIGKILL) after the key")
        if crashed:
            await asyncio.gather(*(p.proc.wait() for p in crashed if p.proc is not None))
            await asyncio.sleep(0.3)  # the others see the connections end before they multicast
            live = [p for p in live if p.role != "crashed"]
        if spec.messages:
            self._send(live)
            problems += await self._wait_messages(live, live)
        if crashed:
            # restarted with fresh state: the messages multicast meanwhile wait in the others' queues
            problems += await self._restart(crashed, "recovered")
            live += crashed
            if spec.messages:
                self._send(crashed)
                problems += await self._wait_messages(live, live)
        if spec.messages:
            self.out(f"messages: {spec.messages} from each of {len(live)} live members multicast")
        for p in live:
            self.command(p, {"cmd": "stats"})
        await self.wait_all([p.stats_event for p in live], "final statistics")
        return problems

    def _crash_victims(self, live: list[_Proc]) -> list[_Proc]:
        """Members to crash after the key, sparing one member of the decided set that still
        holds its original contribution: a restarted member (fresh state) can only compute the
        key from such a member's answer.  Crashing all of them leaves the crash-stop model of
        the thesis; an application would restore the saved GKE state instead."""
        joined = [p for p in live if p.role == "joined"]
        decided = set(next((p.info.get("members") for p in joined if p.info), None) or ())
        originals = [p for p in joined if p.name in decided]
        keep = self.rng.choice(originals) if originals else None
        candidates = [p for p in joined if p is not keep]
        if len(candidates) < self.spec.crash:
            raise ValueError("not enough members to crash while sparing a decided one")
        return self.rng.sample(candidates, self.spec.crash)

    async def _restart(self, procs: list[_Proc], role: str) -> list[str]:
        for p in procs:
            if p.proc is not None:
                await p.proc.wait()
            if p.reader is not None:
                with contextlib.suppress(BaseException):
                    await p.reader
            p.role, p.killed, p.info = role, False, {}
            p.established = asyncio.Event()
            p.stats_event = asyncio.Event()
            p.gone = asyncio.Event()
            p.delivered.clear()
        await asyncio.gather(*(self.spawn(p) for p in procs))
        problems = []
        if await self.wait_all([p.ready for p in procs], f"the {role} members to start"):
            for p in procs:
                self.command(p, {"cmd": "join", "resume": True})  # they took part before
            if not await self.wait_all([p.established for p in procs], f"the {role} members' key"):
                problems.append(f"not every {role} member established the key")
        self.out(f"{sum(bool(p.info) for p in procs)}/{len(procs)} {role} members have the key")
        return problems

    def _send(self, senders: list[_Proc]) -> None:
        for p in senders:
            self.command(p, {"cmd": "send", "count": self.spec.messages, "size": self.spec.message_size})

    async def _wait_messages(self, receivers: list[_Proc], senders: list[_Proc]) -> list[str]:
        """Until every receiver has every message of every sender (or the timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.spec.timeout
        while self._missing(receivers, senders):
            if loop.time() >= deadline:
                return [f"timed out waiting for {self._missing(receivers, senders)} messages"]
            for p in receivers:
                p.progress.clear()
            waiters = [asyncio.ensure_future(p.progress.wait()) for p in receivers]
            try:
                await asyncio.wait(waiters, timeout=min(1.0, deadline - loop.time()),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
        return []

    def _missing(self, receivers: list[_Proc], senders: list[_Proc]) -> int:
        want = self.spec.messages
        return sum(max(0, want - len(r.delivered.get(s.name, ()))) for r in receivers for s in senders)

    async def shutdown(self) -> None:
        for p in self.procs:
            if p.role == "stalled" and p.running and p.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    p.proc.send_signal(signal.SIGCONT)
        for p in self.procs:
            self.command(p, {"cmd": "quit"})
            if p.proc is not None and p.proc.stdin is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    p.proc.stdin.close()
        # every member stops at once: one grace period in all, not one per member in turn
        await asyncio.gather(*(self._stop(p) for p in self.procs if p.proc is not None))

    async def _stop(self, p: _Proc) -> None:
        assert p.proc is not None
        try:  # n members closing ~2n connections each at once on one machine: grace grows with n
            await asyncio.wait_for(p.proc.wait(), 5 + 0.2 * len(self.procs))
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                p.proc.kill()
            await p.proc.wait()
        if p.reader is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(p.reader, 2)

    def hard_cleanup(self) -> None:
        for p in self.procs:
            if p.proc is not None and p.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.proc.kill()
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()

    def results(self, problems: list[str], duration: float) -> ClusterResult:
        members = []
        for p in self.procs:
            is_live = p.role in ("joined", "late", "restarted", "recovered") and p.proc is not None and not p.killed
            members.append(MemberResult(
                name=p.name, role=p.role, live=is_live,
                fingerprint=p.info.get("fingerprint"), elapsed=p.info.get("elapsed"),
                members=p.info.get("members"),
                delivered={s: len(v) for s, v in p.delivered.items()},
                stats=p.stats, exit_code=p.proc.returncode if p.proc else None,
                log_path=p.log if not self._own_workdir else None,
            ))
        live = [m for m in members if m.live]
        fps = {m.fingerprint for m in live}
        if None in fps:
            problems.append(f"live members without a key: {[m.name for m in live if m.fingerprint is None]}")
        if len(fps - {None}) > 1:
            problems.append(f"live members hold different keys: {sorted(fp for fp in fps if fp)}")
        want = self.spec.messages
        missing = [(r.name, s.name, r.delivered.get(s.name, 0)) for r in live for s in live
                   if r.delivered.get(s.name, 0) < want]
        if missing:
            problems.append(f"{len(missing)} (receiver, sender) pairs miss messages, e.g. {missing[:3]}")
        for m in live:
            if m.exit_code not in (0, None):
                problems.append(f"{m.name} exited with {m.exit_code}")
        return ClusterResult(self.spec, self.seed, members, not problems, problems,
                             None if self._own_workdir else self.workdir, duration, self.killed_mid_gke)


async def run_cluster(spec: ClusterSpec, *, out: Callable[[str], None] | None = None) -> ClusterResult:
    """Play ``spec`` with real member processes; always cleans up processes and sockets."""
    spec.check()
    c = _Cluster(spec, out or (lambda _msg: None))
    started = time.monotonic()
    try:
        c.prepare()
        problems = await c.play()
        await c.shutdown()
        return c.results(problems, time.monotonic() - started)
    finally:
        c.hard_cleanup()
        if c._own_workdir and c.workdir is not None:
            shutil.rmtree(c.workdir, ignore_errors=True)


def render(result: ClusterResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=150)
    table = Table(title=f"secchat cluster (n={result.spec.n}, seed={result.seed})")
    for col in ("member", "role", "live", "time to key", "key fingerprint", "delivered",
                "RSS MiB", "peak queue KiB", "dropped"):
        table.add_column(col)
    live = result.live
    for m in result.members:
        got = sum(m.delivered.get(s.name, 0) for s in live)
        stats = m.stats or {}
        links = stats.get("links", {})
        expected = result.spec.messages * len(live) if m.live else 0
        table.add_row(
            m.name, m.role, "yes" if m.live else "no",
            f"{m.elapsed:.3f}s" if m.elapsed is not None else "-",
            m.fingerprint or "-",
            f"{got}/{expected}" if m.live else "-",
            f"{stats.get('rss_kb', 0) / 1024:.1f}" if stats else "-",
            f"{links.get('queue_peak_bytes', 0) / 1024:.0f}" if stats else "-",
            str(links.get("frames_dropped_queue_full", 0)) if stats else "-",
        )
    console.print(table)


def cluster(
    n: int = typer.Option(7, "--n", min=2, max=MAX_MEMBERS, help="Number of members."),
    join: int | None = typer.Option(None, "--join", help="Members that join at first (default: all but the late ones)."),
    kill: int = typer.Option(0, "--kill", help="Joined members SIGKILLed during the GKE."),
    late: int = typer.Option(0, "--late", help="Members started after the key exists."),
    messages: int = typer.Option(0, "--messages", help="Messages each live member multicasts."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the scenario (which members die, when)."),
    mode: str = typer.Option("signed", "--mode", help="signed | burst | pairwise | group"),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for each phase."),
    crash: int = typer.Option(0, "--crash", help="Members SIGKILLed after the key and restarted after the others multicast."),
    stall: int = typer.Option(0, "--stall", help="Live members SIGSTOPped (not reading) before the messages."),
    message_size: int = typer.Option(0, "--message-size", help="Pad each message to this many bytes."),
    partial_addresses: bool = typer.Option(
        False, "--partial-addresses", help="Member i knows only the addresses of members 0..i-1."),
    restart_killed: bool = typer.Option(False, "--restart-killed", help="Start the killed members again once the key exists."),
    keep: str | None = typer.Option(None, "--keep", help="Keep configs, certificates and logs in this directory."),
    log_level: str = typer.Option("INFO", "--log-level", help="Log level of the member processes."),
) -> None:
    """Run n member processes over mutually authenticated TLS on loopback and check they agree."""
    from rich.console import Console

    console = Console(stderr=True)
    spec = ClusterSpec(n=n, join=join, kill=kill, late=late, messages=messages, restart_killed=restart_killed, stall=stall, crash=crash,
                       partial_addresses=partial_addresses,
                       message_size=message_size, seed=seed, mode=mode,
                       timeout=timeout, workdir=Path(keep) if keep else None, log_level=log_level)
    try:
        spec.check()
    except ValueError as exc:
        console.print(f"[red]secchat cluster: {exc}[/red]")
        raise typer.Exit(2) from None
    result = asyncio.run(run_cluster(spec, out=console.print))
    render(result)
    print(result.summary())
    raise typer.Exit(0 if result.ok else 1)
