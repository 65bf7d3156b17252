"""The directory as a real uvicorn process: 50 concurrent clients, SIGKILL under load, restarts.

The server inherits a listening socket bound to port 0 by the test (no fixed port, no race);
readiness is a bounded poll of ``/v1/health``.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from secchat import pki
from secchat.directory.client import (
    AsyncDirectoryClient,
    DirectoryClient,
    DirectoryError,
)
from secchat.directory.storage import Store, make_engine
from secchat.directory.trust import TrustStore
from tests import directory_support
from tests.directory_support import ServerProcess, World

db_url = directory_support.db_url
ca_pem = directory_support.ca_pem

N_CLIENTS = 50


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.fixture
def server(ca_pem, db_url):
    proc = ServerProcess(ca_pem, db_url).start()
    try:
        yield proc
    finally:
        proc.close()


def clients_for(world: World, url: str, names: list[str]) -> list[AsyncDirectoryClient]:
    result = []
    for name in names:
        u = world.user(name)
        result.append(AsyncDirectoryClient(url, [world.ca_cert], u.key, u.cert, TrustStore(None), deadline=30))
    return result


def stored(db: str) -> dict[str, list[tuple]]:
    engine = make_engine(db, pool_size=1)
    try:
        return Store(engine).dump()
    finally:
        engine.dispose()


def test_fifty_concurrent_clients(world, server, db_url):
    names = [f"user{i:02d}" for i in range(N_CLIENTS)]

    async def run() -> tuple[list[str], int]:
        clients = clients_for(world, server.url, names)
        # everyone registers twice at once: one row each
        await asyncio.gather(*(c.register() for c in clients for _ in range(2)))

        async def work(i: int, c: AsyncDirectoryClient) -> list[str]:
            neighbour = await c.get_participant(names[(i + 1) % N_CLIENTS])
            c.accept(neighbour)
            created = []
            for k in range(3):
                conf = await c.create_conference(f"c-{i}-{k}", 100, 200, [names[i], neighbour])
                created.append(conf.id)
            return created

        async def contend(c: AsyncDirectoryClient) -> bool:
            # a creator's clients all race for one conference id: exactly one wins (another
            # creator's conference of that id is another conference)
            try:
                await c.create_conference("contended", 1, 2, [c._core.identity.name])
                return True
            except DirectoryError as exc:
                assert exc.code == "duplicate_conference", exc
                return False

        results = await asyncio.gather(*(work(i, c) for i, c in enumerate(clients)))
        racers = clients_for(world, server.url, [names[0]] * N_CLIENTS)
        wins = await asyncio.gather(*(contend(c) for c in racers))
        for c in racers:
            await c.aclose()
        # every conference reads back verified by another member
        sample = random.Random(7).sample(range(N_CLIENTS), 10)
        for i in sample:
            reader = clients[(i + 1) % N_CLIENTS]
            reader.accept(await reader.get_participant(names[i]))
            conf = await reader.get_conference(f"c-{i}-0")
            assert [m.name for m in conf.members] == [names[i], names[(i + 1) % N_CLIENTS]]
        for c in clients:
            await c.aclose()
        return [x for r in results for x in r], sum(wins)

    ids, wins = asyncio.run(run())
    assert wins == 1
    rows = stored(db_url)
    assert sorted(r[0] for r in rows["participants"]) == names
    assert sorted(r[1] for r in rows["conferences"]) == sorted([*ids, "contended"])  # (creator, id, ...)
    assert len(rows["conference_members"]) == 2 * len(ids) + 1


def test_sigkill_under_load_loses_no_acknowledged_write(world, ca_pem, db_url):
    names = [f"k{i:02d}" for i in range(N_CLIENTS)]
    server = ServerProcess(ca_pem, db_url).start()
    acked_participants: set[str] = set()
    acked_conferences: set[str] = set()

    async def load() -> int:
        clients = clients_for(world, server.url, names)
        enough = asyncio.Event()
        failures = 0

        async def work(i: int, c: AsyncDirectoryClient) -> None:
            nonlocal failures
            try:
                await c.register()
                acked_participants.add(names[i])
                for k in range(1000):  # bounded; the kill stops it long before
                    conf = await c.create_conference(f"d-{i}-{k}", 1, 2, [names[i]])
                    acked_conferences.add(conf.id)
                    if len(acked_conferences) >= 100:
                        enough.set()
            except DirectoryError:
                failures += 1

        tasks = [asyncio.create_task(work(i, c)) for i, c in enumerate(clients)]
        await asyncio.wait_for(enough.wait(), 60)
        await asyncio.to_thread(server.kill)  # SIGKILL with requests in flight
        # requests still queued in the listening socket's backlog would wait for the next
        # server: give the others a moment to fail, then abandon those (never acknowledged)
        _, pending = await asyncio.wait(tasks, timeout=1)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            await c.aclose()
        return failures + len(pending)

    try:
        failures = asyncio.run(load())
        assert failures > 0, "the kill should have interrupted some clients"
        rows = stored(db_url)  # before the restart: the new server may still serve queued requests
        assert acked_participants <= {r[0] for r in rows["participants"]}
        assert acked_conferences <= {r[1] for r in rows["conferences"]}  # rows are (creator, id, ...)
        # no half-written conference: every stored conference has its member row
        assert {r[:2] for r in rows["conferences"]} == {r[:2] for r in rows["conference_members"]}
        server.start()  # same database, same socket
        u = world.user(names[0])
        with DirectoryClient(server.url, [world.ca_cert], u.key, u.cert, TrustStore(None)) as c:
            mine = {conf.id for conf in c.conferences_of()}
        assert {x for x in acked_conferences if x.startswith("d-0-")} <= mine
    finally:
        server.close()


def test_serve_without_db_uses_the_user_data_dir_and_survives_restart(world, ca_pem, tmp_path):
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg")}
    server = ServerProcess(ca_pem, None, env=env).start()
    u = world.user("persistent")
    try:
        with DirectoryClient(server.url, [world.ca_cert], u.key, u.cert, TrustStore(None)) as c:
            c.register()
            c.create_conference("kept", 10, 20, ["persistent"])
        server.stop()
        assert (tmp_path / "xdg" / "secchat" / "directory.sqlite3").exists()
        server.start()
        with DirectoryClient(server.url, [world.ca_cert], u.key, u.cert, TrustStore(None)) as c:
            assert c.get_participant("persistent").fingerprint == pki.fingerprint(u.cert)
            assert [m.name for m in c.get_conference("kept").members] == ["persistent"]
    finally:
        server.close()
