"""Acceptance over real processes in network namespaces: members cannot reach each other, all
reach the relay.

Each member runs in its own namespace ``rl-<run>-mN`` with one veth pair to the host
(10.77.N.2/30 <-> 10.77.N.1/30) and no other route, so another member's address is unreachable
from it; the relay (a real nats-server with JetStream) listens on the host side.  Members are
given each other's addresses anyway: their direct attempts fail and they use the relay.  A bare
majority forms the conference, chats, two late members and one that was away get everything,
and every member says (``path`` events) that it reaches every peer through the relay.  (A
minimal local fixture, prefixed ``rl``; the shared tests/integration/netns.py may replace it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import time

import pytest

from tests.nats_support import NatsServer, require_nats

from .netproc import Member, world, write_config

N = 5


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def rl_namespaces():
    """N namespaces, each reaching only its host-side address; removed in teardown."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    run = secrets.token_hex(2)
    names = [f"rl-{run}-m{i}" for i in range(N)]
    made: list[tuple[str, str]] = []
    try:
        for i, ns in enumerate(names):
            host_if, ns_if = f"rl{run}h{i}", f"rl{run}n{i}"
            _ip("netns", "add", ns)
            made.append((ns, host_if))
            _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            _ip("link", "set", ns_if, "netns", ns)
            _ip("addr", "add", f"10.77.{i}.1/30", "dev", host_if)
            _ip("link", "set", host_if, "up")
            _ip("-n", ns, "addr", "add", f"10.77.{i}.2/30", "dev", ns_if)
            _ip("-n", ns, "link", "set", ns_if, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield names
    finally:
        for ns, host_if in made:
            subprocess.run(["ip", "link", "del", host_if], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def rl_relay():
    require_nats()
    server = NatsServer("relay", host="0.0.0.0").start()
    yield server
    server.stop()


def test_members_that_cannot_reach_each_other_confer_through_the_relay(
    tmp_path, rl_namespaces, rl_relay
):
    names = [f"m{i}" for i in range(N)]
    _, _, ca_path, files = world(tmp_path, names)
    addresses = {n: (f"10.77.{i}.2", 7000) for i, n in enumerate(names)}
    configs = {}
    for i, n in enumerate(names):
        configs[n] = write_config(
            tmp_path / f"{n}.toml",
            files[n],
            ca_path,
            [files[m] for m in names],
            peers={p: a for p, a in addresses.items() if p != n},
            listen=f"10.77.{i}.2:7000",
            # each member reaches the relay at its own host-side address
            relay={"url": f"nats://10.77.{i}.1:{rl_relay.port}", "direct_probe_interval": 1.0},
            links={"connect_timeout": 1.0, "retry_max": 0.5},
        )

    def start(i: int, log: str = ""):
        n = names[i]
        return Member.start(
            n,
            configs[n],
            tmp_path / f"{n}{log}.log",
            prefix=("ip", "netns", "exec", rl_namespaces[i]),
        )

    async def delivered(m: Member, text: str, timeout: float = 60) -> None:
        await m.wait_for(lambda e: e["event"] == "delivered" and e["text"] == text, timeout)

    async def main():
        members: dict[str, Member] = {}
        retired: list[Member] = []
        try:
            # members really cannot reach each other: m0's namespace has no route to m1
            probe = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    rl_namespaces[0],
                    "python3",
                    "-c",
                    "import socket; socket.create_connection(('10.77.1.2', 7000), 1)",
                ],
                capture_output=True,
                text=True,
            )
            assert probe.returncode != 0 and "unreachable" in probe.stderr.lower(), probe.stderr
            for i in range(3):  # a bare majority
                members[names[i]] = await start(i)
            for n in names[:3]:
                await members[n].wait_for(lambda e: e["event"] == "established", 90)
            members["m0"].command(cmd="send", text="majority says hello")
            for n in names[1:3]:
                await delivered(members[n], "majority says hello")
            for i in (3, 4):  # late members
                members[names[i]] = await start(i)
            for n in names[3:]:
                await members[n].wait_for(lambda e: e["event"] == "established", 90)
            members["m3"].command(cmd="send", text="late ones are here")
            for n in names:
                if n != "m3":
                    await delivered(members[n], "late ones are here")
            # m1 goes away; m0 talks; m1 comes back and gets it
            away = members.pop("m1")
            away.command(cmd="quit")
            await asyncio.wait_for(away.proc.wait(), 20)
            retired.append(away)
            texts = [f"while m1 was away {k}" for k in range(5)]
            for t in texts:
                members["m0"].command(cmd="send", text=t)
            for n in ("m2", "m3", "m4"):
                await delivered(members[n], texts[-1])
            members["m1"] = await start(1, "-back")
            for t in texts:
                await delivered(members["m1"], t, 90)
            fingerprints = {
                m.of("established")[0][1]["fingerprint"] for m in [*members.values(), away]
            }
            assert len(fingerprints) == 1

            def latest_paths(m):
                paths = {}
                for _, e in m.of("path"):
                    paths[e["peer"]] = e["path"]
                return paths

            # m1 caught up from the store alone: its pipes to the others may still be coming back
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(
                set(latest_paths(m).values()) != {"relay"} for m in members.values()
            ):
                await asyncio.sleep(0.2)
            for m in members.values():
                paths = latest_paths(m)
                assert set(paths.values()) == {"relay"}, (m.name, paths)
                assert not [e for _, e in m.of("path") if e["path"] == "direct"], m.name
                stats = (await m.stats())["links"]
                assert stats["connections_opened"] + stats["connections_accepted"] >= 1
        finally:
            for m in [*members.values(), *retired]:
                if m.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        m.proc.kill()
                    await m.proc.wait()

    asyncio.run(asyncio.wait_for(main(), 400))
