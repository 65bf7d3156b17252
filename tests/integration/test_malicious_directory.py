"""A malicious directory against the real command line (issue 8): it can refuse service, nothing more.

Real processes throughout: the directory server (uvicorn, SQLite), our malicious proxy in front
of it (:mod:`tests.malicious_directory`, which rewrites answers per caller) and each
``secchat`` command a user runs.  Every attack below is refused with its own code or sentence,
every command returns within its deadline, and the user's local state -- trust store, version
memory, history, config -- is byte for byte what it was before the refused command.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
import tomli_w

from secchat import pki
from secchat.app.exit_codes import ExitCode
from secchat.app.profile import CONFIG_FILE, HISTORY_FILE, TRUST_FILE
from secchat.directory.versions import VERSIONS_FILE
from tests.app_support import CA_PASSPHRASE, PASSPHRASE, make_ca, make_profile
from tests.directory_support import SRC, ServerProcess, free_listener, spawn_serving, stop_process

#: bob's profile is set to this directory deadline (config.toml ``directory_timeout``).
DEADLINE = 3.0
#: What starting a ``secchat`` process may add on a slow machine (imports, key unlock).
STARTUP = 12.0
CMD = [sys.executable, "-c", "from secchat.app.cli import main; main()"]
USERS = ("alice", "bob", "carol", "mallory", "dave")


def _env() -> dict[str, str]:
    env = {**os.environ, "SECCHAT_PASSPHRASE": PASSPHRASE, "SECCHAT_CA_PASSPHRASE": CA_PASSPHRASE}
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for var in ("SECCHAT_HOME", "SECCHAT_DIRECTORY", "SECCHAT_DEBUG"):
        env.pop(var, None)
    return env


REFUSALS = (ExitCode.USAGE, ExitCode.UNREACHABLE, ExitCode.REFUSED, ExitCode.UNTRUSTED)


class Proxy:
    """``python -m tests.malicious_directory`` on a socket bound here, in front of ``upstream``."""

    def __init__(self) -> None:
        self.sock = free_listener()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.proc: subprocess.Popen | None = None

    def start(self, upstream: str, timeout: float = 20.0) -> Proxy:
        cmd = [sys.executable, "-m", "tests.malicious_directory", "--upstream", upstream,
               "--fd", str(self.sock.fileno())]
        root = str(Path(__file__).resolve().parents[2])
        env = {**_env(), "PYTHONPATH": os.pathsep.join([root, SRC])}
        self.proc = spawn_serving(cmd, env, self.sock, self.url + "/__evil/log", timeout=timeout, cwd=root)
        return self

    def rules(self, *rules: dict) -> None:
        assert httpx.put(self.url + "/__evil/rules", json=list(rules), timeout=10).status_code == 204

    def log(self) -> list[dict]:
        return httpx.get(self.url + "/__evil/log", timeout=10).json()

    def close(self) -> None:
        stop_process(self.proc)
        self.sock.close()


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = make_ca(root / "ca")
        self.proxy = Proxy()
        # the server answers to the name its clients use: the proxy's URL
        self.server = ServerProcess(self.ca / pki.CA_CERT_FILE, f"sqlite:///{root / 'a.sqlite3'}",
                                    names=(self.proxy.url,)).start()
        self.proxy.start(self.server.url)
        self.homes = {n: make_profile(root, n, self.proxy.url, self.ca) for n in USERS}
        config = self.homes["bob"] / CONFIG_FILE
        settings = tomllib.loads(config.read_text())
        config.write_text(tomli_w.dumps({**settings, "directory_timeout": DEADLINE}))
        for name in USERS:
            assert f"registered {name}@" in self.run(name, "register").stdout
            self.run(name, "conferences")  # the first opening creates the (encrypted) history
        # alice's "room" with bob, which several tests ask for: here, so that none depends on
        # another having run first (pytest -n, -k)
        self.run("alice", "create", "room", "-m", "bob", "--accept-new")

    def run(self, who: str, *args: str, input: str = "", ok: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([*CMD, *args, "--home", str(self.homes[who])], env=_env(), input=input,
                              capture_output=True, text=True, timeout=120)
        if ok and proc.returncode != 0:
            raise AssertionError(f"{who}: secchat {' '.join(args)} failed: {proc.stderr}")
        return proc

    def refused(self, who: str, *args: str) -> str:
        """Run a command that must fail cleanly and change nothing local; return its stderr."""
        before = state(self.homes[who])
        proc = self.run(who, *args, ok=False)
        # a refusal of a documented class (secchat --help), never 1 (an unexpected failure, a bug)
        assert proc.returncode in REFUSALS, (proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert state(self.homes[who]) == before, f"secchat {' '.join(args)} changed {who}'s local state"
        return proc.stderr

    def record(self, creator: str, id: str) -> dict:
        """The honest record as the real server has it (to be served again later)."""
        answer = httpx.get(f"{self.server.url}/v1/conferences/{creator}/{id}", timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def close(self) -> None:
        self.proxy.close()
        self.server.close()


def state(home: Path) -> dict[str, bytes]:
    """Every file of the profile that holds state, byte for byte (missing ones as None)."""
    files = (TRUST_FILE, VERSIONS_FILE, HISTORY_FILE, HISTORY_FILE + "-wal", CONFIG_FILE)
    return {f: (home / f).read_bytes() if (home / f).exists() else None for f in files}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("malicious"))
    try:
        yield w
    finally:
        w.close()


@pytest.fixture(autouse=True)
def honest_again(world):
    world.proxy.rules()
    yield
    world.proxy.rules()


def _serve(caller: str, path: str, body: object, status: int = 200) -> dict:
    return {"action": "replace", "caller": caller, "method": "GET", "path": path, "status": status, "json": body}


# --------------------------------------------------------------------------- records


def test_a_deleted_record_served_again_is_refused(world):
    world.run("alice", "create", "gone", "-m", "bob", "--accept-new")
    assert "gone by alice" in world.run("bob", "conferences").stdout
    old = world.record("alice", "gone")
    assert "deleted gone by alice" in world.run("alice", "delete", "gone").stdout
    # the honest directory says so, with alice's signed tombstone: bob keeps that fact
    err = world.run("bob", "join", "gone", "--creator", "alice", ok=False).stderr
    assert "alice deleted the conference 'gone'" in err
    # now the directory serves the deleted record to bob again, both ways of asking
    world.proxy.rules(_serve("bob", "/v1/conferences/alice/gone", old), _serve("bob", "/v1/conferences", [old]))
    for args in (("join", "gone", "--creator", "alice"), ("join", "alice/gone"), ("join", "gone")):
        err = world.refused("bob", *args)
        assert "alice deleted the conference 'gone'; the directory served its record anyway" in err, err


def test_an_older_version_is_refused(world):
    world.run("alice", "create", "roll", "-m", "bob", "--accept-new")
    old = world.record("alice", "roll")
    world.run("alice", "delete", "roll")
    world.run("alice", "create", "roll", "-m", "bob", "-m", "carol", "--accept-new")
    assert world.record("alice", "roll")["version"] == 2
    assert "roll by alice" in world.run("bob", "conferences").stdout  # bob sees version 2
    world.proxy.rules(_serve("bob", "/v1/conferences/alice/roll", old))
    err = world.refused("bob", "join", "roll", "--creator", "alice")
    assert "version 1 of 'roll' by alice, older than version 2 seen before: refused (a rollback)" in err, err


def test_a_same_id_record_by_another_creator(world):
    world.run("mallory", "create", "room", "-m", "bob", "--accept-new")  # alice's "room": the World's
    listing = world.run("bob", "conferences").stdout
    assert "room by alice" in listing and "room by mallory" in listing
    # two creators' "room": bob must say whose
    err = world.refused("bob", "join", "room")
    assert "2 creators have a conference 'room' (alice, mallory): say whose, e.g. --creator alice" in err, err
    # asked for alice's, the directory answers with mallory's (genuinely signed by her)
    world.proxy.rules(_serve("bob", "/v1/conferences/alice/room", world.record("mallory", "room")))
    err = world.refused("bob", "join", "room", "--creator", "alice")
    assert "asked for conference 'room' by alice, got 'room' by mallory" in err, err
    world.proxy.rules()
    # joining says whose conference it is, always
    out = world.run("bob", "join", "mallory/room", "--accept-new").stdout
    assert "* joined room by mallory as bob; members mallory, bob" in out, out


def test_a_request_replayed_at_another_directory_is_refused(world, tmp_path):
    other = ServerProcess(world.ca / pki.CA_CERT_FILE, f"sqlite:///{tmp_path / 'b.sqlite3'}").start()
    try:
        # alice uses directory B too (its own name: its URL); it holds a conference "twice" of hers
        settings = tomllib.loads((world.homes["alice"] / CONFIG_FILE).read_text())
        at_b = tmp_path / "alice-at-b"
        at_b.mkdir()
        for f in (CONFIG_FILE, TRUST_FILE):
            (at_b / f).write_bytes((world.homes["alice"] / f).read_bytes())
        (at_b / "identity").symlink_to(world.homes["alice"] / "identity")
        (at_b / CONFIG_FILE).write_text(tomli_w.dumps({**settings, "directory": other.url}))
        world.homes["alice@b"] = at_b
        world.run("alice@b", "register")
        world.run("alice@b", "create", "twice", "-m", "alice")
        world.run("alice", "create", "twice", "-m", "alice")
        world.run("alice", "delete", "twice")  # at A, through the proxy, which keeps the request
        (captured,) = [r for r in world.proxy.log()
                       if r["method"] == "DELETE" and r["path"] == "/v1/conferences/alice/twice"]
        before = httpx.get(f"{other.url}/v1/conferences/alice/twice", timeout=10).json()
        replay = httpx.request("DELETE", f"{other.url}/v1/conferences/alice/twice", headers=captured["headers"],
                              content=base64.b64decode(captured["body"]), timeout=10)
        assert replay.status_code == 421 and replay.json()["error"]["code"] == "wrong_directory", replay.text
        assert httpx.get(f"{other.url}/v1/conferences/alice/twice", timeout=10).json() == before
        # at A itself it is a replay of a request already received
        again = httpx.request("DELETE", f"{world.server.url}/v1/conferences/alice/twice", headers=captured["headers"],
                             content=base64.b64decode(captured["body"]), timeout=10)
        assert again.status_code == 401 and again.json()["error"]["code"] == "replayed_request", again.text
    finally:
        world.homes.pop("alice@b", None)
        other.close()


# --------------------------------------------------------------------------- trust


def test_create_accept_new_against_a_forged_participant(world, tmp_path):
    ca_key = pki.load_private_key(world.ca / pki.CA_KEY_FILE, CA_PASSPHRASE)
    ca_cert = pki.cert_from_pem((world.ca / pki.CA_CERT_FILE).read_bytes())
    forged = pki.issue_certificate(ca_key, ca_cert, "dave", pki.generate_key().public_key())
    honest = httpx.get(f"{world.server.url}/v1/participants/dave", timeout=10).json()
    fake = {**honest, "cert_pem": pki.cert_to_pem(forged).decode(), "fingerprint": pki.fingerprint(forged),
            "contact": None}
    world.proxy.rules(_serve("alice", "/v1/participants/dave", fake))
    before = state(world.homes["alice"])
    proc = world.run("alice", "create", "forged", "-m", "dave", "--accept-new", ok=False)
    assert proc.returncode == ExitCode.REFUSED and "certificate_mismatch" in proc.stderr, proc.stderr
    assert "accepted" not in proc.stdout
    assert state(world.homes["alice"]) == before  # the trust store byte for byte
    # the same create against the honest directory accepts dave's real certificate
    world.proxy.rules()
    out = world.run("alice", "create", "forged", "-m", "dave", "--accept-new").stdout
    assert f"accepted dave@App Test CA {honest['fingerprint']}" in out
    assert honest["fingerprint"] in (world.homes["alice"] / TRUST_FILE).read_text()


def test_a_failed_join_accepts_nothing(world):
    world.run("alice", "create", "later", "-m", "carol", "--from", "+1h", "--to", "+2h", "--accept-new")
    world.run("alice", "create", "now", "-m", "carol", "--accept-new")
    assert not (world.homes["carol"] / TRUST_FILE).exists()  # carol never accepted anyone
    err = world.refused("carol", "join", "later", "--creator", "alice", "--accept-new")
    assert "conference 'later' is only open from" in err
    # the record verifies and is accepted, then publishing carol's address fails: nothing is kept
    world.proxy.rules({"action": "replace", "caller": "carol", "method": "PUT", "prefix": "/v1/participants/",
                       "status": 503, "json": {"error": {"code": "unavailable", "message": "try again"}}})
    err = world.refused("carol", "join", "now", "--creator", "alice", "--accept-new")
    assert "is unreachable or failing" in err
    world.proxy.rules()
    world.run("carol", "join", "now", "--creator", "alice", "--accept-new")
    assert "alice@App Test CA" in (world.homes["carol"] / TRUST_FILE).read_text()
    assert "alice/now" in (world.homes["carol"] / VERSIONS_FILE).read_text()


def test_a_mistyped_fingerprint_is_not_answered_with_the_real_one(world):
    honest = httpx.get(f"{world.server.url}/v1/participants/carol", timeout=10).json()["fingerprint"]
    err = world.refused("dave", "trust", "accept", "carol", honest[:31])
    assert "at least 32 hex digits" in err
    wrong = honest[:30] + ("00" if honest[30:32] != "00" else "11")
    err = world.refused("dave", "trust", "accept", "carol", wrong)
    assert "does not have the fingerprint you gave" in err and honest not in err


# --------------------------------------------------------------------------- bounds


def test_a_directory_answering_one_byte_per_second(world):
    world.proxy.rules({"action": "trickle", "caller": "bob", "prefix": "/v1/", "rate": 1.0, "pad": 4096})
    for args in (("conferences",), ("participants",), ("join", "room", "--creator", "alice")):
        started = time.monotonic()
        err = world.refused("bob", *args)
        took = time.monotonic() - started
        assert f"did not answer within {DEADLINE:g} s" in err, (args, err)
        assert took < DEADLINE + STARTUP, (args, took)


def test_a_listing_flood_is_bounded_and_reported_once(world):
    world.proxy.rules({"action": "flood", "caller": "bob", "path": "/v1/participants", "count": 1000, "pages": 100},
                      {"action": "flood", "caller": "bob", "path": "/v1/participants/bob/conferences",
                       "kind": "conferences", "count": 1000, "pages": 100})
    for args, what in ((("participants",), "participants"), (("conferences",), "conference records")):
        before = state(world.homes["bob"])
        started = time.monotonic()
        proc = world.run("bob", *args)
        took = time.monotonic() - started
        lines = proc.stderr.splitlines()
        assert len(lines) == 2, lines
        assert "cut after 5000 certificate checks" in lines[0] and f"skipped 5000 {what}" in lines[1], lines
        assert took < DEADLINE + STARTUP
        assert state(world.homes["bob"]) == before
    # a page larger than the server's own is refused outright
    world.proxy.rules({"action": "flood", "caller": "bob", "path": "/v1/participants", "count": 20_000, "pages": 1})
    err = world.refused("bob", "participants")
    assert "more than 1000" in err and len(err.splitlines()) == 1


def test_escape_sequences_in_error_messages_never_reach_the_terminal(world):
    forged = {"error": {"code": "untrusted", "message": "\x1b[2J\x1b]0;owned\x07\u202e\nerror: certificates "
                        "not accepted yet (check the fingerprints with their owners):\naccept with `secchat "
                        "trust accept NAME FINGERPRINT`, or pass --accept-new"}}
    world.proxy.rules({"action": "replace", "caller": "bob", "prefix": "/v1/", "status": 400, "json": forged})
    for args in (("conferences",), ("participants",), ("join", "room", "--creator", "alice")):
        proc = subprocess.run([*CMD, *args, "--home", str(world.homes["bob"])], env=_env(), input="",
                              capture_output=True, timeout=120)  # bytes, as the terminal gets them
        out = proc.stdout + proc.stderr
        assert proc.returncode == ExitCode.REFUSED  # the directory refused (its forged code is not ours)
        assert not any(c in out for c in (b"\x1b", b"\x07", "\u202e".encode())), out
        lines = proc.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines  # our one line, no forged ones
        assert "\\x1b[2J" in lines[0] and "\\n" in lines[0]
    # a code that is not one is not shown as one
    world.proxy.rules({"action": "replace", "caller": "bob", "prefix": "/v1/", "status": 400,
                       "json": {"error": {"code": "\x1b[31mred", "message": "m"}}})
    err = world.refused("bob", "conferences")
    assert "(bad_response)" in err and "\\x1b" not in err


def test_the_proxy_passes_honest_answers_through(world):
    # the suite's baseline: without rules the same commands work
    assert world.run("bob", "participants").stdout.count("@App Test CA") == len(USERS)
    assert json.loads(json.dumps(world.record("alice", "room")))["creator"] == "alice"


# --------------------------------------------------------------------------- split view


def _joined(world: World, who: str, *args: str) -> subprocess.Popen:
    cmd = [*CMD, "join", *args, "--json", "--accept-new", "--home", str(world.homes[who])]
    return subprocess.Popen(cmd, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


_PENDING: dict[subprocess.Popen, bytes] = {}  # per process: bytes read past its last whole line


def _events_until(proc: subprocess.Popen, done, timeout: float) -> list[dict]:
    """JSON events of a running ``join --json`` until ``done(events)`` (or the timeout).

    Reads the pipe's fd itself: a buffered ``readline`` after ``select`` leaves lines that came
    in the same chunk in Python's buffer, where ``select`` never sees them (two events written
    together, the second one waited for in vain)."""
    import selectors

    fd = proc.stdout.fileno()
    events: list[dict] = []
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while not done(events) and time.monotonic() < deadline:
            pending = _PENDING.get(proc, b"")
            if b"\n" in pending:
                line, _, _PENDING[proc] = pending.partition(b"\n")
                events.append(json.loads(line))
                continue
            if sel.select(timeout=0.2):
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                _PENDING[proc] = pending + chunk
    finally:
        sel.close()
    return events


def test_a_split_view_of_two_member_orders_is_said_and_never_shares_a_key(world):
    """alice made ``split`` = (alice, bob, carol), deleted it and made it again as (alice,
    carol, bob): two records she really signed.  The directory serves bob the first (and hides
    the tombstone from him), everyone else the second.  bob and alice are told at once that the
    other holds another record, and bob, alone with his record, gets no key (so shares none)."""
    world.run("alice", "create", "split", "-m", "bob", "-m", "carol", "--accept-new")
    first = world.record("alice", "split")
    world.run("alice", "delete", "split")
    world.run("alice", "create", "split", "-m", "carol", "-m", "bob", "--accept-new")
    world.proxy.rules(_serve("bob", "/v1/conferences/alice/split", first), _serve("bob", "/v1/conferences", [first]))
    procs = {who: _joined(world, who, "split", "--creator", "alice") for who in ("alice", "bob", "carol")}
    try:
        def other(events: list[dict], name: str) -> list[dict]:
            return [e for e in events if e["event"] == "other_record" and e["member"] == name]

        def key(events: list[dict]) -> list[dict]:
            return [e for e in events if e["event"] == "key" and e["established"]]

        seen_bob = _events_until(procs["bob"], lambda ev: other(ev, "alice"), STARTUP + 60)
        seen_alice = _events_until(procs["alice"], lambda ev: other(ev, "bob"), STARTUP + 60)
        if not (other(seen_bob, "alice") and other(seen_alice, "bob")):
            for proc in procs.values():
                proc.stdin.close()
            raise AssertionError(f"bob saw {seen_bob}; alice saw {seen_alice}; stderr: "
                                 + " | ".join(p.stderr.read()[-800:] for p in procs.values()))
        [said_to_bob], [said_to_alice] = other(seen_bob, "alice"), other(seen_alice, "bob")
        assert said_to_bob["creator"] == "alice" and said_to_alice["creator"] == "alice"
        assert "holds another record of 'split'" in said_to_alice["text"]
        seen_bob += _events_until(procs["bob"], lambda ev: False, 2.0)
        assert not key(seen_bob), "bob, alone with his record, has no key (and shares none)"
    finally:
        for proc in procs.values():
            proc.stdin.close()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
