"""Hosts for tests: Linux network namespaces with their own addresses on one private switch.

Why: a test "across hosts" must not take loopback shortcuts -- every process binds and dials a
real address of its own host, and a host can lose its network while the others go on.  Each
:class:`Host` is a network namespace with one interface, ``eth0`` (a veth pair), whose other end
is a port of a bridge; the bridge lives in a namespace of its own (the *switch*), so nothing is
added to the machine's own network: no interface, route or address outside the namespaces.

Names: every namespace is ``<prefix>-<pid>-<random>-<host>`` -- unique per test (so parallel
runs never collide, whoever runs them) and traceable to the process that made it.  Interfaces
are created directly inside the namespaces (never in the shared one), so their short names
(``eth0``, ``br0``, ``p-<host>``) are private to them; the addresses (``10.77.0.0/24`` by
default) are private to the switch for the same reason.

Cleanup always runs: :meth:`Network.close` (the context manager's exit) kills every process
still inside our namespaces -- started by us, found by ``ip netns pids`` -- then deletes them.
Namespaces left by a test process that was killed outright (its pid is gone) are removed the
next time a :class:`Network` of the same prefix is made (:func:`sweep`).

Use::

    with Network("relay") as net:
        a, b = net.add_host("a"), net.add_host("b")
        proc = b.popen(["nats-server", "-a", b.address])
        a.run(["ping", "-c1", b.address])
        b.link_down(); ...; b.link_up()

Only root can do this; :func:`unavailable` says why not (or None), :func:`require_netns` skips
a test with that reason -- or fails it when ``SECCHAT_REQUIRE_NETNS=1`` (CI: the machine can).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["Host", "Network", "require_netns", "sweep", "unavailable"]

REQUIRE_ENV = "SECCHAT_REQUIRE_NETNS"
#: Seconds an ``ip`` command may take (it never should; a hung one must not hang the test).
IP_TIMEOUT = 20.0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None if they can (probed by making one)."""
    if os.geteuid() != 0:
        return f"network namespaces need root (this test runs as uid {os.geteuid()})"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"netnsprobe-{os.getpid()}-{secrets.token_hex(3)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def require_netns() -> None:
    """Skip the calling test when namespaces cannot be made -- or fail it under
    ``SECCHAT_REQUIRE_NETNS=1``, where a skip would hide that the test did not run."""
    import pytest

    reason = unavailable()
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 requires the namespace tests", pytrace=False)
    pytest.skip(reason)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_inside(namespace: str) -> None:
    """SIGKILL every process inside ``namespace`` (all of them are ours: the name is)."""
    for _ in range(3):
        pids = [int(p) for p in _ip("netns", "pids", namespace, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _delete(namespace: str) -> None:
    _kill_inside(namespace)
    _ip("netns", "del", namespace, check=False)


def sweep(prefix: str) -> list[str]:
    """Delete the namespaces of ``prefix`` whose creating process is gone; returns their names."""
    gone = []
    for name in _namespaces():
        parts = name.split("-")
        if len(parts) >= 4 and parts[0] == prefix and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            _delete(name)
            gone.append(name)
    return gone


class Host:
    """One namespace: ``address`` on ``eth0``, processes started inside it, its link."""

    def __init__(self, network: Network, name: str, namespace: str, address: str) -> None:
        self.network, self.name, self.namespace, self.address = network, name, namespace, address
        self.procs: list[subprocess.Popen[Any]] = []

    def command(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` as run inside this host (``ip netns exec``: the same process, no shell)."""
        return ["ip", "netns", "exec", self.namespace, *cmd]

    def run(self, cmd: Sequence[str], *, timeout: float = 60.0, check: bool = False, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside this host to its end (text output captured unless redirected)."""
        kwargs.setdefault("capture_output", True)
        return subprocess.run(self.command(cmd), text=True, timeout=timeout, check=check, **kwargs)

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``cmd`` inside this host; it is killed when the network closes, if still running."""
        proc = subprocess.Popen(self.command(cmd), **kwargs)
        self.procs.append(proc)
        return proc

    def link_down(self) -> None:
        """The host loses its network: its interface goes down (as with a pulled cable), so it
        reaches nobody and nobody reaches it; its processes keep running."""
        _ip("-n", self.namespace, "link", "set", "eth0", "down")

    def link_up(self) -> None:
        """The network is back: the interface up, its address and route as before."""
        _ip("-n", self.namespace, "link", "set", "eth0", "up")

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.address})"


class Network:
    """A private switch and the hosts on it (see the module docstring)."""

    def __init__(self, prefix: str, subnet: str = "10.77.0.0/24") -> None:
        if not prefix.isalnum():
            raise ValueError("the prefix is letters and digits (it starts every namespace name)")
        sweep(prefix)
        self.token = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        self.subnet = ipaddress.ip_network(subnet)
        self._addresses = self.subnet.hosts()
        self.hosts: dict[str, Host] = {}
        self.switch = f"{self.token}-switch"
        self._made: list[str] = []
        try:
            self._add_namespace(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, name: str, address: str | None = None) -> Host:
        """A new host ``name`` on the switch, with ``address`` (default: the subnet's next)."""
        if name in self.hosts or name == "switch" or not name.isalnum() or len(name) > 12:
            raise ValueError(f"host names are unique, letters and digits, at most 12: {name!r}")
        addr = address or str(next(self._addresses))
        namespace = f"{self.token}-{name}"
        self._add_namespace(namespace)
        port = f"p-{name}"
        _ip("link", "add", "eth0", "netns", namespace, "type", "veth", "peer", "name", port, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        _ip("-n", namespace, "addr", "add", f"{addr}/{self.subnet.prefixlen}", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        host = Host(self, name, namespace, addr)
        self.hosts[name] = host
        return host

    def unused_address(self) -> str:
        """An address of the subnet that no host has (the last one): dialling it goes nowhere."""
        return str(self.subnet.broadcast_address - 1)

    def close(self) -> None:
        """Kill what runs inside, delete every namespace made (idempotent, never raises)."""
        for host in self.hosts.values():
            for proc in host.procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                with contextlib.suppress(Exception):
                    proc.wait(10)
        for name in reversed(self._made):
            with contextlib.suppress(Exception):
                _delete(name)
        self._made.clear()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
