"""A conference across hosts: a directory host and three member hosts, each a network namespace
with its own address on one switch (:mod:`.netns`), everything a real ``secchat`` process.

The user's path, as ``docs/deploy.md`` tells it, with no loopback anywhere: the CA operator
makes the CA and a TLS certificate for the directory's address; the directory serves HTTPS on
its host's address; each member, on its own host, makes its key and a request (``init`` with the
``https://`` directory URL, its TLS CA, and its own address as listen and advertised host),
gets the request signed by the CA operator, installs the certificate and registers.  Alice
creates the conference; everyone joins; they chat.  Then carol's host loses its network (its
link goes down): the others see her suspected and go on chatting; when the link comes back
carol is seen live again, gets what was said while she was away, and is heard again.

Dave is as if behind NAT: nobody can reach him -- he listens on his host's loopback only and
publishes an address nobody has -- but he reaches everyone.  He chats like the others: one
reachable side per pair is enough (``docs/deploy.md``, "Addresses and ports").

Only the file system is shared between the hosts: it stands in for carrying the request and
the certificate between the member and the CA operator.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.directory_support import make_tls_files

from .netns import Host, Network, require_netns
from .test_app_cli import CMD, Member, _env, secchat

DIRECTORY_PORT = 8700  # the directory host's own port: nothing else listens in its namespace
MEMBER_PORT = 7000  # every member host listens on one TCP port (the same number on each)

_WAIT_READY = (
    "import ssl, sys, time, httpx\n"
    "ctx = ssl.create_default_context(cafile=sys.argv[2])\n"
    "end = time.monotonic() + 30\n"
    "while time.monotonic() < end:\n"
    "    try:\n"
    "        if httpx.get(sys.argv[1], verify=ctx, timeout=2).status_code == 200: sys.exit(0)\n"
    "    except httpx.TransportError: pass\n"
    "    time.sleep(0.1)\n"
    "sys.exit(1)\n"
)


def on(host: Host, *args: str) -> str:
    """``secchat ARGS`` on ``host``; its stdout (it must succeed)."""
    proc = host.run([*CMD, *args], env=_env())
    assert proc.returncode == 0, f"secchat {' '.join(args)} on {host.name} failed ({proc.returncode}): {proc.stderr}"
    return proc.stdout


def _up(member: Member, peer: str, up: bool, what: str, after: int) -> float:
    """Wait until ``member`` reports ``peer`` up (or down) in an event after the first ``after``;
    returns when it saw it (monotonic)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(e["event"] == "member" and e["name"] == peer and e["up"] is up for e in member.events[after:]):
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"{what}: not seen; events {member.events[after:][-20:]}")


@pytest.fixture
def network():
    require_netns()
    with Network("hosts") as net:
        yield net


def test_a_conference_across_four_hosts_survives_losing_one(network: Network, tmp_path: Path):
    started = time.monotonic()
    directory = network.add_host("directory")
    hosts = {name: network.add_host(name) for name in ("alice", "bob", "carol", "dave")}
    nowhere = network.unused_address()
    # (listen host, advertised host): each member its host's address; dave unreachable
    addresses = {name: (host.address, host.address) for name, host in hosts.items()}
    addresses["dave"] = ("127.0.0.1", nowhere)

    # the CA operator: the members' CA, and a TLS certificate for the directory's address
    secchat("ca", "init", "--dir", str(tmp_path / "ca"))
    tls = make_tls_files(tmp_path / "tls", (directory.address,))
    url = f"https://{directory.address}:{DIRECTORY_PORT}"

    with open(tmp_path / "directory.log", "wb") as log:  # the child keeps its own descriptor
        server = directory.popen(
            [sys.executable, "-m", "secchat.directory", "serve", "--ca", str(tmp_path / "ca" / "ca.pem"),
             "--db", f"sqlite:///{tmp_path / 'directory.sqlite3'}", "--host", directory.address,
             "--port", str(DIRECTORY_PORT), "--tls-cert", str(tls.cert), "--tls-key", str(tls.key)],
            env=_env(), stderr=log,
        )
    ready = hosts["alice"].run([sys.executable, "-c", _WAIT_READY, url + "/v1/ready", str(tls.ca)], env=_env())
    assert ready.returncode == 0, f"the directory is not ready: {(tmp_path / 'directory.log').read_text()[-2000:]}"
    assert server.poll() is None

    def enrol(name: str) -> Path:
        """One member's setup on its own host (the three go on at once, as on three machines)."""
        host, home = hosts[name], tmp_path / name
        listen, advertised = addresses[name]
        on(host, "init", name, "--directory", url, "--directory-ca", str(tls.ca), "--home", str(home),
           "--listen-host", listen, "--listen-port", str(MEMBER_PORT), "--advertise-host", advertised)
        # the request goes to the CA operator, the certificate comes back: no private key moves
        signed = tmp_path / f"{name}.pem"
        secchat("ca", "sign", str(home / "identity" / "request.pem"), "--dir", str(tmp_path / "ca"), "--out", str(signed))
        on(host, "identity", "install", str(signed), "--home", str(home))
        assert f"registered {name}@" in on(host, "register", "--home", str(home))
        return home

    with ThreadPoolExecutor(len(hosts)) as pool:
        homes = dict(zip(hosts, pool.map(enrol, hosts), strict=True))
    out = on(hosts["alice"], "create", "room", "-m", "bob", "-m", "carol", "-m", "dave", "--from", "now",
             "--to", "+1h", "--accept-new", "--home", str(homes["alice"]))
    assert "created room by alice: alice, bob, carol, dave" in out
    setup = time.monotonic() - started

    members: dict[str, Member] = {}
    try:
        for name, host in hosts.items():
            members[name] = Member(homes[name], "room", "--accept-new", wrap=host.command)
        alice, bob, carol, dave = (members[n] for n in ("alice", "bob", "carol", "dave"))
        keys = [m.wait(lambda e: e["event"] == "key" and e["established"], f"{m.name}'s key", timeout=90)
                for m in members.values()]  # four processes starting at once on a loaded machine
        assert len({k["fingerprint"] for k in keys}) == 1, keys
        formed = time.monotonic() - started
        # the addresses the members published are their hosts' own (dave's: one nobody has)
        contacts = on(hosts["bob"], "participants", "--home", str(homes["bob"])).splitlines()
        for name in hosts:
            assert any(line.startswith(f"{name}@") and line.endswith(f"{addresses[name][1]}:{MEMBER_PORT}")
                       for line in contacts), contacts

        alice.say("hello from alice's host")
        for m in (bob, carol, dave):
            m.received("hello from alice's host")
        carol.say("carol here")
        dave.say("dave here, reachable by nobody")
        for m in (alice, bob, dave):
            m.received("carol here")
        for m in (alice, bob, carol):
            m.received("dave here, reachable by nobody")

        # carol's host loses its network
        mark = {name: len(m.events) for name, m in members.items()}
        hosts["carol"].link_down()
        down_at = time.monotonic()
        for m in (alice, bob, dave):
            _up(m, "carol", False, f"{m.name} suspects carol", mark[m.name])
        suspected = time.monotonic() - down_at
        alice.say("while carol is away")
        bob.received("while carol is away")
        dave.received("while carol is away")
        bob.say("bob still here")
        alice.received("bob still here")
        dave.received("bob still here")
        assert not any(e["event"] == "message" and e["text"] == "while carol is away" for e in carol.events)

        # the link comes back: carol is live again, catches up, and is heard
        mark = {name: len(m.events) for name, m in members.items()}
        hosts["carol"].link_up()
        up_at = time.monotonic()
        for m in (alice, bob, dave):
            _up(m, "carol", True, f"{m.name} sees carol again", mark[m.name])
        carol.received("while carol is away")
        carol.received("bob still here")
        recovered = time.monotonic() - up_at
        carol.say("carol is back")
        for m in (alice, bob, dave):
            m.received("carol is back")
        dave.say("welcome back")
        carol.received("welcome back")
        assert all(m.proc.poll() is None for m in members.values())
    finally:
        codes = {name: m.close() for name, m in members.items()}
    assert all(code == 0 for code in codes.values()), codes
    print(f"\nsetup {setup:.1f} s, conference formed at {formed:.1f} s, carol suspected {suspected:.1f} s "
          f"after her link went down, caught up {recovered:.1f} s after it came back; "
          f"{time.monotonic() - started:.1f} s in all")
