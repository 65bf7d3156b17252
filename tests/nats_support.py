"""Real nats-servers for the relay tests: single ones and clusters, on ports the OS chose.

``.ci/run`` exports ``SECCHAT_REQUIRE_NATS=1``: there a missing ``nats-server`` fails the tests;
elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.directory_support import kill_process, stop_process

NATS_SERVER = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK) else None
)


def require_nats() -> str:
    """The nats-server binary, or skip (fail where ``SECCHAT_REQUIRE_NATS=1``)."""
    if NATS_SERVER is None:
        reason = "nats-server is not installed (needed for the relay tests)"
        if os.environ.get("SECCHAT_REQUIRE_NATS") == "1":
            pytest.fail(reason + "; SECCHAT_REQUIRE_NATS=1 requires it")
        pytest.skip(reason)
    try:
        import nats  # noqa: F401
    except ImportError:
        pytest.fail("nats-py is missing: install secchat[test]")
    return NATS_SERVER


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nats-server did not listen on {port} within {timeout}s")


class NatsServer:
    """One nats-server with JetStream in its own directory; ``routes``: cluster peers."""

    def __init__(
        self,
        name: str = "n0",
        *,
        cluster_port: int | None = None,
        routes: tuple[int, ...] = (),
        host: str = "127.0.0.1",
    ) -> None:
        self.binary = require_nats()
        self.host = host
        self.name = name
        self.port = free_port()
        self.cluster_port = cluster_port
        self.routes = routes
        self.dir = Path(tempfile.mkdtemp(prefix=f"secchat-relay-{name}-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        args = [
            self.binary,
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.dir / "js"),
            "-n",
            self.name,
        ]
        if self.cluster_port is not None:
            args += [
                "--cluster_name",
                "secchat",
                "--cluster",
                f"nats://127.0.0.1:{self.cluster_port}",
            ]
            if self.routes:
                args += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        log = open(self.dir / "server.log", "wb")  # noqa: SIM115 -- the process holds it
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _wait_listening(self.port, self.proc)
        return self

    def kill(self) -> None:
        kill_process(self.proc)

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def cluster(n: int = 3) -> list[NatsServer]:
    """``n`` routed nats-servers with JetStream (started; a client may use any of them)."""
    ports = [free_port() for _ in range(n)]
    servers = [
        NatsServer(f"n{i}", cluster_port=ports[i], routes=tuple(p for p in ports if p != ports[i]))
        for i in range(n)
    ]
    for s in servers:
        s.start()
    return servers
