"""Node: the assembly of links, runtime and stacks that the member process and the app use."""

from __future__ import annotations

import asyncio

import pytest

from secchat import pki
from secchat.net.journal import MemoryStateStore
from secchat.net.node import Node
from secchat.net.provision import credentials, make_identities
from secchat.protocols.events import Delivered, KeyEstablished


@pytest.fixture(scope="module")
def world():
    return make_identities(["ann", "ben", "cy"])


def test_nodes_establish_and_chat(world):
    ca, ids = world
    members = [(m.name, m.cert) for m in ids]

    async def main():
        seen: list[tuple[str, str, object]] = []
        changed = asyncio.Event()
        nodes = []
        for m in ids:
            def on_event(group, ev, name=m.name):
                seen.append((name, group, ev))
                changed.set()

            node = Node(credentials(m, ca), on_event, state=MemoryStateStore())
            await node.start()
            nodes.append(node)
        try:
            for node in nodes:
                node.add_conference("room", members)
            # one side of each pair knows the other's address: ben knows ann, cy knows both
            addr = {n.name: n.links._server.sockets[0].getsockname() for n in nodes}
            nodes[1].set_address("ann", addr["ann"])
            nodes[2].set_address("ann", addr["ann"])
            nodes[2].set_address("ben", addr["ben"])
            for node in nodes:
                node.join("room")
                assert not node.join("room")
            nodes[2].send("room", b"hello from cy")
            async with asyncio.timeout(20):
                while sum(isinstance(ev, Delivered) for _, _, ev in seen) < 3:
                    changed.clear()
                    await changed.wait()
        finally:
            for node in nodes:
                await node.aclose()
        return seen

    seen = asyncio.run(main())
    keys = {ev.fingerprint for _, _, ev in seen if isinstance(ev, KeyEstablished)}
    assert len(keys) == 1
    assert {(n, ev.payload) for n, _, ev in seen if isinstance(ev, Delivered)} == {
        ("ann", b"hello from cy"), ("ben", b"hello from cy"), ("cy", b"hello from cy")}


def test_bad_conferences_are_refused_and_change_nothing(world):
    ca, ids = world
    ann, ben, cy = ids
    _, [other_ben] = make_identities(["ben"], ca_name="Other CA")

    async def main():
        node = Node(credentials(ann, ca), lambda *e: None, state=MemoryStateStore())
        try:
            with pytest.raises(pki.PkiError):  # a certificate from another CA
                node.add_conference("x", [("ann", ann.cert), ("ben", other_ben.cert)])
            with pytest.raises(ValueError, match="belongs to"):  # a valid certificate, wrong name
                node.add_conference("x", [("ann", ann.cert), ("ben", cy.cert)])
            with pytest.raises(ValueError, match="not a member"):
                node.add_conference("x", [("ben", ben.cert), ("cy", cy.cert)])
            assert node.links.peers() == [] and node.conferences == {}
            node.add_conference("a", [("ann", ann.cert), ("ben", ben.cert)])
            with pytest.raises(ValueError, match="already running"):
                node.add_conference("a", [("ann", ann.cert), ("cy", cy.cert)])
            with pytest.raises(ValueError, match="join"):
                node.send("a", b"too early")
            with pytest.raises(ValueError, match="not a member"):
                node.join("nope")
            assert node.links.peers() == ["ben"]
        finally:
            await node.aclose()

    asyncio.run(main())


def test_a_restarted_member_resumes_where_its_previous_run_stopped(world):
    """cy takes part, goes away, messages flow meanwhile; a fresh cy (resume) gets exactly those."""
    ca, ids = world
    members = [(m.name, m.cert) for m in ids]
    by_name = {m.name: m for m in ids}

    async def main():
        seen: dict[str, list] = {}
        changed = asyncio.Event()

        async def make(name):
            def on_event(group, ev, name=name):
                seen.setdefault(name, []).append(ev)
                changed.set()

            node = Node(credentials(by_name[name], ca), on_event, state=MemoryStateStore())
            addr = await node.start()
            node.add_conference("room", members)
            return node, addr

        async def wait_for(predicate):
            async with asyncio.timeout(20):
                while not predicate():
                    changed.clear()
                    await changed.wait()

        def texts(name):
            return [ev.payload for ev in seen.get(name, []) if isinstance(ev, Delivered)]

        ann, ann_addr = await make("ann")
        ben, ben_addr = await make("ben")
        cy, _ = await make("cy")
        ben.set_address("ann", ann_addr)
        cy.set_address("ann", ann_addr)
        cy.set_address("ben", ben_addr)
        for node in (ann, ben, cy):
            node.join("room")
        try:
            for i in range(3):
                ben.send("room", b"before %d" % i)
            await wait_for(lambda: len(texts("cy")) == 3)
            await cy.aclose()  # cy goes away (its links acknowledge what it got)
            seen["cy"] = []
            for i in range(3):
                ben.send("room", b"while away %d" % i)
            await wait_for(lambda: len(texts("ann")) == 6)
            cy, _ = await make("cy")  # a fresh run: new link session, new incarnation
            cy.set_address("ann", ann_addr)
            cy.set_address("ben", ben_addr)
            cy.join("room", resume=True)
            ben.send("room", b"after")
            await wait_for(lambda: len(texts("cy")) >= 4)
            assert texts("cy") == [b"while away 0", b"while away 1", b"while away 2", b"after"]
        finally:
            for node in (ann, ben, cy):
                await node.aclose()

    asyncio.run(main())
