"""Running the directory as a service: readiness that follows the database (real processes, a
real SQLite file and a real PostgreSQL behind a proxy that can refuse), two directory processes
on one PostgreSQL database answering as one name, and the systemd unit in ``deploy/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from secchat.directory.client import ConferenceDeleted, DirectoryClient, DirectoryError
from secchat.directory.trust import TrustStore
from tests import directory_support
from tests.directory_support import (
    PG_HOST,
    PG_PORT,
    ServerProcess,
    TlsFiles,
    fresh_pg_schema,
    make_tls_files,
)

from .faultproxy import FaultProxy

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "secchat-directory.service"

pg_schema = contextlib.contextmanager(fresh_pg_schema)


world = directory_support.world
ca_pem = directory_support.ca_pem


async def _until(http: httpx.AsyncClient, path: str, status: int, timeout: float = 15.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        answer = await http.get(path)
        if answer.status_code == status:
            return answer
        assert time.monotonic() < deadline, f"{path} still answers {answer.status_code}: {answer.text}"
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- readiness


def test_ready_on_sqlite_follows_the_database_file(ca_pem, tmp_path):
    """Readiness reads the directory's tables: a file without them (a wrong or half-restored
    database) is not ready, and ready again once they are back; liveness never changes."""
    import sqlite3

    db = tmp_path / "directory.sqlite3"
    server = ServerProcess(ca_pem, f"sqlite:///{db}").start()  # start() waits for /v1/ready

    def rename(old: str, new: str) -> None:
        with contextlib.closing(sqlite3.connect(db)) as conn:  # another process, as an operator's
            conn.execute(f"ALTER TABLE {old} RENAME TO {new}")
            conn.commit()

    async def run() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await http.get("/v1/ready")).json() == {"status": "ready", "database": "sqlite"}
            rename("participants", "participants_aside")
            answer = await _until(http, "/v1/ready", 503)
            assert answer.json()["error"] == {
                "code": "database_unavailable", "message": "the database is unavailable (OperationalError)"
            }
            assert (await http.get("/v1/health")).status_code == 200  # liveness is not readiness
            rename("participants_aside", "participants")
            await _until(http, "/v1/ready", 200)

    try:
        asyncio.run(run())
    finally:
        server.close()


@pytest.mark.postgres
def test_ready_follows_postgresql_going_away_and_coming_back(ca_pem):
    with pg_schema() as url:

        async def run() -> None:
            proxy = FaultProxy((PG_HOST, PG_PORT), source="127.0.0.1")
            host, port = await proxy.start()
            server = ServerProcess(ca_pem, url.replace(f"@{PG_HOST}:{PG_PORT}/", f"@{host}:{port}/"))
            try:
                await asyncio.to_thread(server.start)
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                    assert (await http.get("/v1/ready")).json() == {"status": "ready", "database": "postgresql"}
                    proxy.refuse()  # the database server is gone: connections reset, new ones refused
                    answer = await _until(http, "/v1/ready", 503)
                    assert answer.json()["error"]["code"] == "database_unavailable"
                    assert str(port) not in answer.text  # where the database is stays in the log
                    assert (await http.get("/v1/health")).status_code == 200
                    proxy.heal()
                    await _until(http, "/v1/ready", 200)
            finally:
                await asyncio.to_thread(server.close)
                await proxy.aclose()

        asyncio.run(run())


# --------------------------------------------------------------------------- several instances


@pytest.mark.postgres
def test_two_directories_on_one_postgresql_serve_one_view(world, ca_pem, tmp_path):
    """Two processes, one database, one name (as behind a load balancer): what is written through
    one is read, with its version, through the other; a race between them has one winner."""
    name = "https://directory.example"
    tls: TlsFiles = make_tls_files(tmp_path / "tls")
    with pg_schema() as url:
        servers = [ServerProcess(ca_pem, url, names=(name,), tls=tls) for _ in range(2)]
        try:
            with ThreadPoolExecutor(2) as pool:  # started at once: both create the schema
                list(pool.map(lambda s: s.start(), servers))
            a, b = (s.url for s in servers)
            assert a != b

            def client(user: str, url: str) -> DirectoryClient:
                u = world.user(user)
                return DirectoryClient(url, [world.ca_cert], u.key, u.cert, TrustStore(None),
                                       tls_ca=tls.ca, directory_name=name)

            alice_a, alice_b, bob_a, bob_b = client("alice", a), client("alice", b), client("bob", a), client("bob", b)
            alice_a.register()
            bob = bob_b.register()
            assert alice_b.get_participant("bob").fingerprint == bob.fingerprint
            alice_a.accept(alice_a.get_participant("bob"))
            created = alice_a.create_conference("room", 100, 2_000_000_000, ["alice", "bob"])
            assert created.version == 1

            bob_b.accept(bob_b.get_participant("alice"))
            seen = bob_b.get_conference("room", "alice")
            assert (seen.version, seen.digest) == (1, created.digest)
            assert [m.name for m in seen.members] == ["alice", "bob"]

            alice_b.delete_conference("room")  # deleted through B ...
            with pytest.raises(ConferenceDeleted):
                bob_a.get_conference("room", "alice")  # ... is deleted through A
            again = alice_a.create_conference("room", 100, 2_000_000_000, ["alice", "bob"])
            assert again.version == 2  # A's writer learnt of B's tombstone from the database
            assert bob_b.get_conference("room", "alice").version == 2

            def race(c: DirectoryClient) -> bool:
                try:
                    c.create_conference("race", 100, 2_000_000_000, ["alice"])
                    return True
                except DirectoryError as exc:
                    assert exc.code == "duplicate_conference", exc
                    return False

            with ThreadPoolExecutor(2) as pool:
                assert sorted(pool.map(race, [alice_a, alice_b])) == [False, True]
            for c in (alice_a, alice_b, bob_a, bob_b):
                c.close()
        finally:
            for s in servers:
                s.close()


# --------------------------------------------------------------------------- systemd


def test_the_systemd_unit_is_valid_hardened_and_uses_real_options(tmp_path):
    text = UNIT.read_text()
    exec_start = re.search(r"^ExecStart=((?:.*\\\n)*.*)$", text, re.M)
    assert exec_start is not None
    command = exec_start.group(1).replace("\\\n", " ").split()
    assert command[:3] == ["/opt/secchat/bin/secchat", "directory", "serve"]
    assert {"--tls-cert", "--tls-key", "--ca", "--name"} <= set(command)
    assert "SECCHAT_DIRECTORY_DB=" in text  # the database URL, from the environment
    serve_help = subprocess.run([sys.executable, "-m", "secchat.directory", "serve", "--help"],
                                capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": ""})
    for option in (t for t in command if t.startswith("--")):
        assert option in serve_help.stdout, f"the unit passes {option}, which serve does not know"

    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze (systemd) is not installed: the unit's syntax is not checked here")
    # verify wants ExecStart's program to exist: the one installed here stands in for /opt/secchat
    program = Path(sys.executable).with_name("secchat")
    assert program.exists(), program
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("/opt/secchat/bin/secchat", str(program)))
    verify = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # a setting systemd cannot parse is a warning ("..., ignoring") with exit code 0: none allowed
    assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify.stdout + verify.stderr
    security = subprocess.run([tool, "security", "--offline=yes", "--threshold=20", str(unit)],
                              capture_output=True, text=True, timeout=60)
    assert security.returncode == 0, security.stdout[-1500:] + security.stderr
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert exposure is not None and float(exposure.group(1)) <= 2.0, security.stdout[-500:]
