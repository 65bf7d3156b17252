"""End to end: three members' ``secchat`` command lines as separate OS processes, a real directory.

init, register, create, join (a bare majority), send, receive, a late join that catches up,
leave and rejoin with the same key, re-key to a new key; then every user-facing error path and
its message.  No fixed ports (the directory gets a socket the OS chose; members listen on port
0 and publish it), every wait bounded and polling for readiness.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from secchat.app.exit_codes import ExitCode
from tests.directory_support import SRC, ServerProcess

PASSPHRASE = "member passphrase"
CA_PASSPHRASE = "ca passphrase"
TIMEOUT = 30.0


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "SECCHAT_PASSPHRASE": PASSPHRASE, "SECCHAT_CA_PASSPHRASE": CA_PASSPHRASE, **extra}
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("SECCHAT_HOME", None)
    env.pop("SECCHAT_DIRECTORY", None)
    return env


CMD = [sys.executable, "-c", "from secchat.app.cli import main; main()"]


def secchat(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CMD, *args], env=env or _env(), capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"secchat {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


class Member:
    """``secchat join ID --send --json`` running; its event lines collected by a thread."""

    def __init__(self, home: Path, conference: str, *extra: str, wrap=lambda cmd: cmd,
                 env: dict[str, str] | None = None) -> None:
        """``wrap``: how to run the command (e.g. inside a network namespace, ``Host.command``)."""
        self.name = home.name
        self.proc = subprocess.Popen(
            wrap([*CMD, "join", conference, "--send", "--json", "--home", str(home), *extra]),
            env=env or _env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.events: list[dict] = []
        self._lines: queue.Queue[dict] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                ev = {"event": "raw", "text": line}
            ev["_at"] = time.time()  # when it reached us (for latencies)
            self.events.append(ev)

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait(self, predicate, what: str, timeout: float = TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in list(self.events):
                if predicate(ev):
                    return ev
            if self.proc.poll() is not None and not self._thread.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"{what}: not seen; events {self.events[-20:]}; stderr {self.stderr_tail()}")

    def key(self, epoch: int) -> str:
        ev = self.wait(lambda e: e["event"] == "key" and e["established"] and e["epoch"] == epoch, f"key of epoch {epoch}")
        return ev["fingerprint"]

    def received(self, text: str) -> dict:
        return self.wait(lambda e: e["event"] == "message" and e["text"] == text and e["state"] == "delivered"
                         and e["sender"] != self.name, f"message {text!r}")

    def stderr_tail(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        return (self.proc.stderr.read() if self.proc.stderr else "")[-2000:]

    def close(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._thread.join(5)
        return self.proc.returncode


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("app-cli")
    secchat("ca", "init", "--dir", str(root / "ca"))
    server = ServerProcess(root / "ca" / "ca.pem", f"sqlite:///{root / 'directory.sqlite3'}").start()
    homes = {}
    for name in ("alice", "bob", "carol"):
        home = root / name
        secchat("init", name, "--ca-dir", str(root / "ca"), "--directory", server.url, "--home", str(home))
        out = secchat("register", "--home", str(home)).stdout
        assert f"registered {name}@" in out
        homes[name] = home
    try:
        yield root, server, homes
    finally:
        server.close()


def test_three_member_processes_chat_rejoin_and_rekey(world):
    _root, _server, homes = world
    out = secchat("participants", "--home", str(homes["alice"])).stdout
    assert all(name in out for name in ("alice", "bob", "carol"))
    out = secchat("create", "room", "-m", "bob", "-m", "carol", "--from", "now", "--to", "+1h", "--accept-new",
                  "--home", str(homes["alice"])).stdout
    assert "created room by alice: alice, bob, carol" in out
    assert "room" in secchat("conferences", "--home", str(homes["carol"])).stdout

    members: list[Member] = []
    try:
        # a bare majority: alice and bob
        alice = Member(homes["alice"], "room")
        bob = Member(homes["bob"], "room", "--accept-new")
        members += [alice, bob]
        fp0 = alice.key(0)
        assert bob.key(0) == fp0
        alice.say("hello from alice")
        bob.received("hello from alice")
        alice.wait(lambda e: e["event"] == "message" and e["sender"] == "alice" and e["state"] == "delivered"
                   and e["seen_by"] == ["bob"], "a receipt from bob")

        # carol starts late and catches up: same key, the earlier message too
        carol = Member(homes["carol"], "room", "--accept-new")
        members.append(carol)
        assert carol.key(0) == fp0
        carol.received("hello from alice")
        carol.say("hi, carol here")
        alice.received("hi, carol here")
        bob.received("hi, carol here")

        # bob leaves and rejoins (a new process): the same key, messages from then on
        bob.say("/leave")
        assert bob.close() == 0
        alice.say("while bob is away")
        carol.received("while bob is away")
        bob = Member(homes["bob"], "room")
        members.append(bob)
        assert bob.key(0) == fp0
        alice.say("welcome back bob")
        bob.received("welcome back bob")

        # re-key: everyone follows to epoch 1 under a new key
        alice.say("/rekey")
        fp1 = alice.key(1)
        assert fp1 != fp0
        assert bob.key(1) == fp1 and carol.key(1) == fp1
        bob.say("in the new epoch")
        alice.received("in the new epoch")
        carol.received("in the new epoch")
        assert any(e["event"] == "notice" and "epoch 0 erased" in e["text"] for e in carol.events)
    finally:
        codes = [m.close() for m in members]
    assert all(code == 0 for code in codes), codes

    # the history is kept (encrypted) and shown after a restart
    out = subprocess.run([*CMD, "join", "room", "--history", "--json", "--home", str(homes["carol"])],
                         env=_env(), input="", capture_output=True, text=True, timeout=60)
    texts = [json.loads(line).get("text") for line in out.stdout.splitlines()]
    assert "hello from alice" in texts and "in the new epoch" in texts


# --------------------------------------------------------------------------- error paths


def _error(proc: subprocess.CompletedProcess, code: ExitCode) -> str:
    """The one sentence of a failed command, which must exit with its class's documented code."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc.stderr


def test_error_paths_say_one_clear_sentence(world):
    root, _server, homes = world
    alice, bob, carol = (str(homes[n]) for n in ("alice", "bob", "carol"))

    # wrong passphrase
    err = _error(secchat("conferences", "--home", alice, env=_env(SECCHAT_PASSPHRASE="not it"), check=False), ExitCode.PASSPHRASE)
    assert "wrong passphrase" in err

    # unknown conference
    err = _error(secchat("join", "no-such-room", "--home", alice, check=False), ExitCode.REFUSED)
    assert "there is no conference 'no-such-room'" in err

    # outside the time frame, not a member, certificate not trusted
    secchat("create", "later", "-m", "bob", "--from", "+1h", "--to", "+2h", "--accept-new", "--home", alice)
    err = _error(secchat("join", "later", "--home", alice, check=False), ExitCode.REFUSED)
    assert "conference 'later' is only open from" in err
    secchat("create", "pair", "-m", "bob", "--accept-new", "--home", alice)
    err = _error(secchat("join", "pair", "--home", carol, check=False), ExitCode.REFUSED)
    assert "you (carol) are not a member of conference 'pair'" in err
    secchat("trust", "revoke", "alice@SecChat CA", "--home", bob, check=False)
    err = _error(secchat("join", "pair", "--home", bob, check=False), ExitCode.UNTRUSTED)
    assert "certificates you have not accepted yet" in err and "alice@SecChat CA" in err
    fingerprint = err.split("alice@SecChat CA ")[1].split()[0].strip(";")
    assert len(fingerprint) == 64

    # accepting with a wrong fingerprint is refused; the right one works
    err = _error(secchat("trust", "accept", "alice", "00" * 32, "--home", bob, check=False), ExitCode.UNTRUSTED)
    assert "does not have the fingerprint you gave" in err
    assert fingerprint not in err  # the directory's own fingerprint is not offered to copy
    assert "accepted alice" in secchat("trust", "accept", "alice", fingerprint, "--home", bob).stdout
    assert "alice@SecChat CA" in secchat("trust", "list", "--home", bob).stdout

    # no profile
    err = _error(secchat("conferences", "--home", str(root / "nobody"), check=False), ExitCode.SETUP)
    assert "run `secchat init` first" in err

    # directory down: a profile pointing at a port nobody listens on
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = root / "down"
    secchat("init", "dave", "--ca-dir", str(root / "ca"), "--directory", f"http://127.0.0.1:{port}", "--home", str(down))
    err = _error(secchat("conferences", "--home", str(down), check=False), ExitCode.UNREACHABLE)
    assert "is unreachable" in err
    err = _error(secchat("register", "--home", str(down), check=False), ExitCode.UNREACHABLE)
    assert "unreachable" in err


def test_the_history_of_a_conference_that_ended_can_be_read(world):
    _root, _server, homes = world
    alice, bob = homes["alice"], homes["bob"]
    created = time.monotonic()
    secchat("create", "brief", "-m", "bob", "--from", "now", "--to", "+20s", "--accept-new", "--home", str(alice))
    a, b = Member(alice, "brief", "--accept-new"), Member(bob, "brief", "--accept-new")
    try:
        a.key(0)
        a.say("said before the end")
        b.received("said before the end")
    finally:
        a.close(), b.close()
    time.sleep(max(0.0, created + 22.0 - time.monotonic()))  # the 20 s time frame has passed
    proc = subprocess.run([*CMD, "join", "brief", "--history", "--home", str(bob)], env=_env(), input="",
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "alice: said before the end  (delivered)" in proc.stdout
    assert "conference 'brief' ended at " in proc.stdout and ":" in proc.stdout.split("ended at ")[1][:20]
    err = _error(secchat("join", "brief", "--home", str(bob), check=False), ExitCode.REFUSED)
    assert "ended at" in err and "secchat join --history" in err


def test_a_second_process_on_a_profile_in_use_is_refused_and_the_first_goes_on(world):
    _root, _server, homes = world
    alice, bob = homes["alice"], homes["bob"]
    secchat("create", "locked", "-m", "bob", "--accept-new", "--home", str(alice))
    a = Member(alice, "locked", "--accept-new")
    b = None
    try:
        a.wait(lambda e: e["event"] == "joined", "alice joined")
        second = subprocess.run([*CMD, "join", "locked", "--home", str(alice)], env=_env(), input="",
                                capture_output=True, text=True, timeout=60)
        assert second.returncode != 0
        assert f"the profile alice is in use by process {a.proc.pid} (secchat join)" in second.stderr, second.stderr
        chat = subprocess.run([*CMD, "chat", "--home", str(alice)], env=_env(), input="",
                              capture_output=True, text=True, timeout=60)
        assert chat.returncode != 0
        assert f"the profile alice is in use by process {a.proc.pid} (secchat join)" in chat.stderr, chat.stderr
        assert "locked by alice" in secchat("conferences", "--home", str(alice)).stdout  # reading still works
        b = Member(bob, "locked", "--accept-new")
        assert a.key(0) == b.key(0)
        a.say("the first process goes on")
        b.received("the first process goes on")
    finally:
        a.close()
        if b is not None:
            b.close()
    # the lock went with the process: the profile is free again
    again = subprocess.run([*CMD, "join", "locked", "--home", str(alice)], env=_env(), input="",
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr


def test_a_line_typed_without_a_key_then_rekey_reaches_every_member(world):
    """Issue 9: typed while the epoch has no key (alice alone: no majority), then ``/rekey``: the
    line is kept across the re-key and arrives once the new epoch has its key."""
    _root, _server, homes = world
    secchat("create", "rescue", "-m", "bob", "-m", "carol", "--accept-new", "--home", str(homes["alice"]))
    alice = Member(homes["alice"], "rescue")
    others: list[Member] = []
    try:
        alice.wait(lambda e: e["event"] == "joined", "alice joined")
        alice.say("typed before any key")
        alice.wait(lambda e: e["event"] == "message" and e["state"] == "sending", "the line waits")
        alice.say("/rekey")
        alice.wait(lambda e: e["event"] == "notice" and "re-keying rescue: epoch 1" in e["text"], "the re-key")
        others = [Member(homes["bob"], "rescue", "--accept-new"), Member(homes["carol"], "rescue", "--accept-new")]
        fp = alice.key(1)
        for m in others:
            assert m.key(1) == fp
            got = m.received("typed before any key")
            assert got["epoch"] == 1 and got["mid"] == 1
        alice.wait(lambda e: e["event"] == "message" and e["text"] == "typed before any key"
                   and e["state"] == "delivered" and sorted(e["seen_by"]) == ["bob", "carol"], "both confirmed it")
        for m in others:  # exactly once
            assert sum(e["event"] == "message" and e["text"] == "typed before any key" for e in m.events) == 1
    finally:
        for m in [alice, *others]:
            m.close()


_MALLORY = r"""
import asyncio, sys, time
from pathlib import Path
import msgspec
from secchat.app.conference import Rekey, Seen
from secchat.app.session import ChatApp

async def main(home, seconds):
    async with await ChatApp.open(Path(home)) as app:
        conf = await app.join("latency", accept_new=True)
        while not conf.established:
            await asyncio.sleep(0.05)
        print("ready", flush=True)
        node, start = conf._node, conf.epoch
        big = msgspec.msgpack.encode(Seen([(i % 3, 1 << 40) for i in range(1024)]))
        rekeys = receipts = far = 0
        end = time.time() + seconds
        while time.time() < end:
            for _ in range(20):  # re-key requests past its core: e + 1 and far epochs
                if rekeys < 1000:
                    node.send(conf.id, msgspec.msgpack.encode(Rekey(start + 1 + rekeys % 7)), epoch=conf.epoch)
                    rekeys += 1
            node.send(conf.id, big, epoch=conf.epoch)  # an oversized receipt
            receipts += 1
            if far < 200:  # frames of epochs nobody asked for: instances the others lack
                node.join(conf.id, epoch=start + 2 + far)
                far += 1
            await asyncio.sleep(0.02)
        print(f"sent {rekeys} re-keys, {receipts} oversized receipts, joined {far} epochs", flush=True)

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


def test_one_member_flooding_rekeys_and_receipts_cannot_slow_the_others(world):
    """Issue 9: carol (a modified client) sends 1,000 re-key requests, oversized receipts and
    frames of 200 epochs nobody started; alice's lines still reach bob within 100 ms (median)."""
    _root, _server, homes = world
    secchat("create", "latency", "-m", "bob", "-m", "carol", "--accept-new", "--home", str(homes["alice"]))
    alice = Member(homes["alice"], "latency")
    bob = Member(homes["bob"], "latency", "--accept-new")
    mallory = None
    try:
        fp = alice.key(0)
        assert bob.key(0) == fp  # the honest majority first; then carol joins and floods
        mallory = subprocess.Popen([sys.executable, "-c", _MALLORY, str(homes["carol"]), "15"], env=_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert mallory.stdout is not None
        assert mallory.stdout.readline().strip() == "ready", mallory.stderr.read() if mallory.stderr else ""
        sent: dict[str, float] = {}
        for k in range(120):  # 12 s of lines while carol floods
            text = f"line {k}"
            sent[text] = time.time()
            alice.say(text)
            time.sleep(0.1)
        deadline = time.monotonic() + TIMEOUT
        arrived: dict[str, float] = {}
        while time.monotonic() < deadline and len(arrived) < len(sent):
            for ev in list(bob.events):
                if ev.get("event") == "message" and ev.get("text") in sent and ev["text"] not in arrived:
                    arrived[ev["text"]] = ev["_at"]
            time.sleep(0.05)
        assert len(arrived) == len(sent), f"{len(sent) - len(arrived)} lines never reached bob"
        latencies = sorted(arrived[t] - sent[t] for t in sent)
        median = statistics.median(latencies)
        print(f"bob's delivery latency under carol's flood: median {median * 1000:.0f} ms, "
              f"p95 {latencies[int(0.95 * len(latencies))] * 1000:.0f} ms over {len(latencies)} lines")
        assert median < 0.100, median
        mallory.wait(30)
        assert "sent 1000 re-keys" in (mallory.stdout.read() or "")
    finally:
        if mallory is not None and mallory.poll() is None:
            mallory.kill()
        alice.close()
        bob.close()
