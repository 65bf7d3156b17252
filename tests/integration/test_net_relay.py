"""Links through a real nats-server (and a three-server cluster): the relay as the insecure channel.

Covers: members with no known address reach each other through the relay; nothing on the relay
names a member or a conference, and what it carries is ciphertext; a direct link replaces the
relay when it becomes possible, losing and duplicating nothing; a cluster server killed in the
middle of a stream loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from secchat.net.links import LinkConfig, LinkManager
from secchat.net.provision import credentials, make_identities, pins
from secchat.net.relay import RelayConfig
from tests.nats_support import NatsServer, cluster

from .netproc import Member, write_config
from .netproc import world as proc_world
from .test_net_links import Inbox, until

FAST = LinkConfig(
    retry_initial=0.02, retry_factor=2.0, retry_max=0.2, connect_timeout=2.0, hello_timeout=2.0
)
NAMES = ("alice-secret", "bob-secret", "carol-secret")
GROUP = "room-of-the-secret-conference"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


@pytest.fixture(scope="module")
def world():
    return make_identities(list(NAMES))


@pytest.fixture
def nats_server():
    server = NatsServer().start()
    yield server
    server.stop()


async def member(world, name, relay: RelayConfig, *, listen=False, addresses=None):
    ca, ids = world
    me = next(m for m in ids if m.name == name)
    inbox = Inbox()
    lm = LinkManager(
        name, credentials(me, ca), pins(ids), inbox, config=FAST, relay=relay, addresses=addresses
    )
    addr = await lm.start() if listen else None
    if not listen:
        await lm.start_relay()
    return lm, inbox, addr


def payloads(inbox, sender):
    return [p for s, _, p in inbox.items if s == sender]


def test_members_without_addresses_talk_through_the_relay_and_it_learns_no_name(world, nats_server):
    async def main():
        import nats

        seen: list[tuple[str, bytes]] = []
        spy = await nats.connect(nats_server.url)

        async def record(msg):
            seen.append((msg.subject, msg.data))

        await spy.subscribe(">", cb=record)
        relay = RelayConfig(servers=(nats_server.url,))
        ms = [await member(world, n, relay) for n in NAMES]
        try:
            for i in range(300):
                for j, (lm, _, _) in enumerate(ms):
                    for k, other in enumerate(NAMES):
                        if k != j:
                            lm.send(other, GROUP, b"secret-text-%d" % i)
            for _j, (_, inbox, _) in enumerate(ms):
                await inbox.wait(600, 30)
            for j, (lm, inbox, _) in enumerate(ms):
                for k, other in enumerate(NAMES):
                    if k != j:
                        assert payloads(inbox, other) == [b"secret-text-%d" % i for i in range(300)]
                        assert lm.path(other) == "relay"
            await spy.flush()
            assert len(seen) > 10
            for subject, data in seen:
                for secret in (*NAMES, GROUP, "secret"):
                    assert secret not in subject
                    assert secret.encode() not in data  # TLS: the relay carries ciphertext only
        finally:
            for lm, _, _ in ms:
                await lm.aclose()
            await spy.close()

    run(main())


def test_a_direct_link_replaces_the_relay_and_switching_loses_nothing(world, nats_server):
    async def main():
        relay = RelayConfig(servers=(nats_server.url,), direct_probe_interval=0.3)
        a, a_in, a_addr = await member(world, NAMES[0], relay, listen=True)
        b, b_in, _ = await member(world, NAMES[1], relay, listen=True)
        try:
            sent = 0

            async def pump(count):
                nonlocal sent
                for _ in range(count):
                    b.send(NAMES[0], GROUP, b"%d" % sent)
                    a.send(NAMES[1], GROUP, b"%d" % sent)
                    sent += 1
                    if sent % 20 == 0:
                        await asyncio.sleep(0.005)

            await pump(200)
            await until(lambda: b.path(NAMES[0]) == "relay" and a.path(NAMES[1]) == "relay", 20)
            b.set_address(NAMES[0], a_addr)  # now b can reach a directly
            while not (b.path(NAMES[0]) == "direct" and a.path(NAMES[1]) == "direct"):
                await pump(20)
                assert sent < 100_000
            await pump(200)
            expected = [b"%d" % i for i in range(sent)]
            await until(lambda: len(a_in.items) >= sent and len(b_in.items) >= sent, 30)
            await asyncio.sleep(0.2)  # anything duplicated would have arrived by now
            assert payloads(a_in, NAMES[1]) == expected
            assert payloads(b_in, NAMES[0]) == expected
            # the relay pipes were retired once the direct link was up
            await until(lambda: all(not c.relay for c in a._peers[NAMES[1]].conns), 10)
        finally:
            await a.aclose()
            await b.aclose()

    run(main())


def test_a_cluster_server_killed_mid_stream_loses_nothing(world):
    servers = cluster(3)
    try:

        async def main():
            urls = tuple(s.url for s in servers)
            a, _, _ = await member(world, NAMES[0], RelayConfig(servers=urls))
            b, b_in, _ = await member(world, NAMES[1], RelayConfig(servers=urls[::-1]))
            try:
                total = 3000
                for i in range(total // 2):
                    a.send(NAMES[1], GROUP, b"%d" % i)
                    if i % 50 == 0:
                        await asyncio.sleep(0.005)
                await until(lambda: len(b_in.items) >= 100, 30)
                on = a.relay.nats.connected_url.port
                victim = next(s for s in servers if s.port == on)
                victim.kill()  # a's server, mid-stream
                for i in range(total // 2, total):
                    a.send(NAMES[1], GROUP, b"%d" % i)
                    if i % 50 == 0:
                        await asyncio.sleep(0.005)
                await b_in.wait(total, 60)
                await asyncio.sleep(0.2)
                assert payloads(b_in, NAMES[0]) == [b"%d" % i for i in range(total)]
                assert a.relay.nats.connected_url.port != on
            finally:
                await a.aclose()
                await b.aclose()

        run(main())
    finally:
        for s in servers:
            s.stop()


def test_relay_config_checks_itself():
    with pytest.raises(ValueError, match="nats://"):
        RelayConfig(servers=("http://relay",))
    with pytest.raises(ValueError, match="prefix"):
        RelayConfig(prefix="a.b")
    assert not RelayConfig().enabled
    with pytest.raises(ValueError, match="chunk"):
        RelayConfig(chunk=10)


def test_member_processes_form_a_conference_through_the_relay_only(tmp_path, nats_server):
    """Five real member processes, none knowing another's address: they form the conference
    through the relay, chat, and say in their events that each peer is reached by the relay."""
    names = [f"m{i}" for i in range(5)]
    _, _, ca_path, files = proc_world(tmp_path, names)

    async def main():
        members = []
        try:
            for n in names:
                config = write_config(
                    tmp_path / f"{n}.toml",
                    files[n],
                    ca_path,
                    [files[m] for m in names],
                    relay={"url": nats_server.url, "only": True},
                )
                members.append(await Member.start(n, config, tmp_path / f"{n}.log"))
            for m in members:
                await m.wait_for(lambda e: e["event"] == "established", 60)
            fingerprints = {m.of("established")[0][1]["fingerprint"] for m in members}
            assert len(fingerprints) == 1
            members[0].command(cmd="send", text="hello through the relay")
            for m in members[1:]:
                await m.wait_for(
                    lambda e: e["event"] == "delivered" and e["text"] == "hello through the relay",
                    30,
                )
            for m in members:
                paths = {e["peer"]: e["path"] for _, e in m.of("path")}
                assert paths == {n: "relay" for n in names if n != m.name}, (m.name, paths)
                stats = (await m.stats())["links"]
                assert stats["relay_pipes_opened"] + stats["relay_pipes_accepted"] >= 4
                assert stats["connections_accepted"] + stats["connections_opened"] >= 4
        finally:
            for m in members:
                m.command(cmd="quit")
            for m in members:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(m.proc.wait(), 20)
                if m.proc.returncode is None:
                    m.proc.kill()

    run(main())


def _away_and_back(tmp_path, relay: dict, *, midway=None) -> None:
    """m2 leaves; m0 sends 20 messages (``midway()`` after the first 10) and leaves too; m2 comes
    back and must get all 20 from the relay's JetStream store, verified and in order, and say it
    caught up.  Nobody online has them: SMC resends only a sender's own frames, and m0 is gone.
    (m1 stays: a member outside the decided contributors needs one of them for the key itself.)"""
    names = ["m0", "m1", "m2"]
    _, _, ca_path, files = proc_world(tmp_path, names)
    configs = {
        n: write_config(
            tmp_path / f"{n}.toml", files[n], ca_path, [files[m] for m in names], relay=relay
        )
        for n in names
    }

    async def stop(m):
        m.command(cmd="quit")
        await asyncio.wait_for(m.proc.wait(), 20)

    async def main():
        members = {n: await Member.start(n, configs[n], tmp_path / f"{n}.log") for n in names}
        back = None
        try:
            for m in members.values():
                await m.wait_for(lambda e: e["event"] == "established", 60)
            for m in members.values():
                await m.wait_for(lambda e: e["event"] == "caught_up", 30)
            await stop(members["m2"])
            texts = [f"while you were away {i}" for i in range(20)]
            for i, t in enumerate(texts):
                if i == 10 and midway is not None:
                    await asyncio.sleep(0.5)
                    midway()
                members["m0"].command(cmd="send", text=t)
            await members["m1"].wait_for(
                lambda e: e["event"] == "delivered" and e["text"] == texts[-1], 60
            )
            async with asyncio.timeout(60):  # m0's frames are in the store
                while (await members["m0"].stats())["links"]["store_published"] < 20:
                    await asyncio.sleep(0.1)
            await stop(members["m0"])
            back = await Member.start("m2", configs["m2"], tmp_path / "m2-back.log")
            caught = await back.wait_for(lambda e: e["event"] == "caught_up", 60)
            got = [e for _, e in back.of("delivered") if e["sender"] == "m0"]
            assert [e["text"] for e in got] == texts
            assert [e["seq"] for e in got] == sorted(e["seq"] for e in got)
            assert caught["frames"] >= 20
            assert not back.of("lost")
            assert not [e for _, e in back.of("path") if e["peer"] == "m0" and e["path"]]
            stats = await back.stats()
            assert stats["runtime"]["frames_stored_in"] >= 20
            assert stats["stack"].get("member.stored.received", 0) >= 20
        finally:
            for m in [*members.values(), back]:
                if m is not None and m.proc.returncode is None:
                    m.proc.kill()
                    await m.proc.wait()

    run(main())


def test_a_member_that_was_away_gets_what_was_sent_from_the_relay_store_alone(
    tmp_path, nats_server
):
    _away_and_back(tmp_path, {"url": nats_server.url, "only": True})


def test_the_store_in_a_three_server_cluster_survives_a_server_killed_mid_conference(tmp_path):
    """The same with the stream replicated on three routed servers, one killed halfway."""
    servers = cluster(3)
    try:
        _away_and_back(
            tmp_path,
            {"servers": [s.url for s in servers], "only": True, "stream_replicas": 3},
            midway=servers[1].kill,
        )
    finally:
        for s in servers:
            s.stop()


def test_relay_only_takes_no_direct_connection(world, nats_server):
    async def main():
        only = RelayConfig(servers=(nats_server.url,), only=True)
        a, a_in, a_addr = await member(world, NAMES[0], only, listen=True)
        b, _, _ = await member(
            world,
            NAMES[1],
            RelayConfig(servers=(nats_server.url,)),
            listen=True,
            addresses={NAMES[0]: a_addr},
        )
        try:
            b.send(NAMES[0], GROUP, b"hi")
            await a_in.wait(1, 20)
            assert b.path(NAMES[0]) == "relay" and a.path(NAMES[1]) == "relay"
            assert a.stats["connections_refused"] >= 1  # b's direct attempts
        finally:
            await a.aclose()
            await b.aclose()

    run(main())
