"""The namespace kit itself (:mod:`.netns`): hosts reach each other by their own addresses and
only by them, a host whose link is down is cut off and comes back, and nothing is left behind."""

from __future__ import annotations

import subprocess
import sys

from .netns import Network, require_netns

#: Connect to ADDRESS:PORT within 2 s; exit 0 if a byte comes back, else print why and exit 1.
_DIAL = (
    "import socket, sys\n"
    "try:\n"
    "    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as s:\n"
    "        s.sendall(b'x'); sys.exit(0 if s.recv(1) == b'x' else 1)\n"
    "except OSError as e:\n"
    "    print(e); sys.exit(1)\n"
)
_ECHO = (
    "import socket, sys\n"
    "srv = socket.create_server((sys.argv[1], 9000)); print('up', flush=True)\n"
    "while True:\n"
    "    c, _ = srv.accept(); c.sendall(c.recv(1)); c.close()\n"
)


def test_hosts_have_their_own_addresses_and_links(tmp_path):
    require_netns()
    with Network("hosts") as net:
        a, b = net.add_host("a"), net.add_host("b")
        assert a.address != b.address and not a.address.startswith("127.")
        echo = b.popen([sys.executable, "-c", _ECHO, b.address], stdout=subprocess.PIPE, text=True)
        assert echo.stdout is not None and echo.stdout.readline().strip() == "up"
        assert a.run([sys.executable, "-c", _DIAL, b.address, "9000"]).returncode == 0
        # b's service is on b's address only: not on a's loopback, not from the machine itself
        assert a.run([sys.executable, "-c", _DIAL, "127.0.0.1", "9000"]).returncode == 1
        outside = subprocess.run([sys.executable, "-c", _DIAL, b.address, "9000"], capture_output=True, timeout=30)
        assert outside.returncode == 1
        b.link_down()
        cut = a.run([sys.executable, "-c", _DIAL, b.address, "9000"])
        assert cut.returncode == 1, cut.stdout
        b.link_up()
        assert a.run([sys.executable, "-c", _DIAL, b.address, "9000"]).returncode == 0
        names = [a.namespace, b.namespace, net.switch]
        assert all(n.startswith(net.token) and net.token.startswith("hosts-") for n in names)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed for n in names), listed
    assert echo.poll() is not None  # the process inside was killed with its host
