"""A conference across hosts: a directory host and three member hosts, each a network namespace
with its own address on one switch (:mod:`.netns`), everything a real ``secchat`` process.

The user's path, as ``docs/deploy.md`` tells it, with no loopback anywhere: the CA operator
makes the CA and a TLS certificate for the directory's address; the directory serves HTTPS on
its host's address; each member, on its own host, makes its key and a request (``init`` with the
``https://`` directory URL, its TLS CA, and its own address as listen and advertised host),
gets the request signed by the CA operator, installs the certificate and registers.  Alice
creates the conference; everyone joins; they chat.  Then carol's host loses its network (its
link goes down): alice and bob see her suspected and go on chatting; when the link comes back
carol is seen live again, gets what was said while she was away, and is heard again.

Only the file system is shared between the hosts: it stands in for carrying the request and
the certificate between the member and the CA operator.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.directory_support import SRC, make_tls_files

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
    hosts = {name: network.add_host(name) for name in ("alice", "bob", "carol")}

    # the CA operator: the members' CA, and a TLS certificate for the directory's address
    secchat("ca", "init", "--dir", str(tmp_path / "ca"))
    tls = make_tls_files(tmp_path / "tls", (directory.address,))
    url = f"https://{directory.address}:{DIRECTORY_PORT}"

    with open(tmp_path / "directory.log", "wb") as log:  # the child keeps its own descriptor
        server = directory.popen(
            [sys.executable, "-m", "secchat.directory", "serve", "--ca", str(tmp_path / "ca" / "ca.pem"),
             "--db", f"sqlite:///{tmp_path / 'directory.sqlite3'}", "--host", directory.address,
             "--port", str(DIRECTORY_PORT), "--tls-cert", str(tls.cert), "--tls-key", str(tls.key)],
            env=_env(PYTHONPATH=SRC), stderr=log,
        )
    ready = hosts["alice"].run([sys.executable, "-c", _WAIT_READY, url + "/v1/ready", str(tls.ca)], env=_env())
    assert ready.returncode == 0, f"the directory is not ready: {(tmp_path / 'directory.log').read_text()[-2000:]}"
    assert server.poll() is None

    def enrol(name: str) -> Path:
        """One member's setup on its own host (the three go on at once, as on three machines)."""
        host, home = hosts[name], tmp_path / name
        on(host, "init", name, "--directory", url, "--directory-ca", str(tls.ca), "--home", str(home),
           "--listen-host", host.address, "--listen-port", str(MEMBER_PORT), "--advertise-host", host.address)
        # the request goes to the CA operator, the certificate comes back: no private key moves
        signed = tmp_path / f"{name}.pem"
        secchat("ca", "sign", str(home / "identity" / "request.pem"), "--dir", str(tmp_path / "ca"), "--out", str(signed))
        on(host, "identity", "install", str(signed), "--home", str(home))
        assert f"registered {name}@" in on(host, "register", "--home", str(home))
        return home

    with ThreadPoolExecutor(len(hosts)) as pool:
        homes = dict(zip(hosts, pool.map(enrol, hosts), strict=True))
    out = on(hosts["alice"], "create", "room", "-m", "bob", "-m", "carol", "--from", "now", "--to", "+1h",
             "--accept-new", "--home", str(homes["alice"]))
    assert "created room by alice: alice, bob, carol" in out
    setup = time.monotonic() - started

    members: dict[str, Member] = {}
    try:
        for name, host in hosts.items():
            members[name] = Member(homes[name], "room", "--accept-new", wrap=host.command)
        alice, bob, carol = members["alice"], members["bob"], members["carol"]
        fingerprint = alice.key(0)
        assert bob.key(0) == fingerprint and carol.key(0) == fingerprint
        formed = time.monotonic() - started
        # the addresses the members published (and dialled) are their hosts' own
        contacts = on(hosts["bob"], "participants", "--home", str(homes["bob"])).splitlines()
        for name, host in hosts.items():
            assert any(line.startswith(f"{name}@") and line.endswith(f"{host.address}:{MEMBER_PORT}")
                       for line in contacts), contacts

        alice.say("hello from alice's host")
        bob.received("hello from alice's host")
        carol.received("hello from alice's host")
        carol.say("carol here")
        alice.received("carol here")
        bob.received("carol here")

        # carol's host loses its network
        mark = {name: len(m.events) for name, m in members.items()}
        hosts["carol"].link_down()
        down_at = time.monotonic()
        _up(alice, "carol", False, "alice suspects carol", mark["alice"])
        _up(bob, "carol", False, "bob suspects carol", mark["bob"])
        suspected = time.monotonic() - down_at
        alice.say("while carol is away")
        bob.received("while carol is away")
        bob.say("bob still here")
        alice.received("bob still here")
        assert not any(e["event"] == "message" and e["text"] == "while carol is away" for e in carol.events)

        # the link comes back: carol is live again, catches up, and is heard
        mark = {name: len(m.events) for name, m in members.items()}
        hosts["carol"].link_up()
        up_at = time.monotonic()
        _up(alice, "carol", True, "alice sees carol again", mark["alice"])
        _up(bob, "carol", True, "bob sees carol again", mark["bob"])
        carol.received("while carol is away")
        carol.received("bob still here")
        recovered = time.monotonic() - up_at
        carol.say("carol is back")
        alice.received("carol is back")
        bob.received("carol is back")
        alice.say("welcome back")
        carol.received("welcome back")
        assert all(m.proc.poll() is None for m in members.values())
    finally:
        codes = {name: m.close() for name, m in members.items()}
    assert all(code == 0 for code in codes.values()), codes
    print(f"\nsetup {setup:.1f} s, conference formed at {formed:.1f} s, carol suspected {suspected:.1f} s "
          f"after her link went down, caught up {recovered:.1f} s after it came back; "
          f"{time.monotonic() - started:.1f} s in all")
