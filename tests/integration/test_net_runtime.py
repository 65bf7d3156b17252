"""The real protocol stack driven by the asyncio runtime over real TLS links, in one process.

Three identities share one link manager each and run two conferences at once (one of all three,
one of two), showing the envelope's group id at work and the runtime's per-conference index maps.
"""

from __future__ import annotations

import asyncio

from secchat import pki
from secchat.crypto import SystemRng
from secchat.net.links import LinkConfig, LinkManager
from secchat.net.provision import credentials, make_identities, pins
from secchat.net.runtime import Runtime
from secchat.protocols.events import Delivered, KeyEstablished
from secchat.protocols.stack import Member, smc_tag

CONFERENCES = {"trio": ("a", "b", "c"), "duo": ("c", "a")}  # note: different orders and indices


def test_two_conferences_over_one_set_of_links():
    ca, ids = make_identities(["a", "b", "c"])
    by_name = {m.name: m for m in ids}

    async def main():
        events: dict[str, list] = {n: [] for n in by_name}
        changed = asyncio.Event()
        nodes = {}
        for name, ident in by_name.items():
            def on_event(group, ev, name=name):
                events[name].append((group, ev))
                changed.set()

            rt = Runtime(on_event)
            lm = LinkManager(name, credentials(ident, ca), pins(ids), rt.on_message,
                             config=LinkConfig(retry_initial=0.02, retry_max=0.2))
            rt.attach(lm)
            nodes[name] = (rt, lm, await lm.start())
        for name, (_rt, lm, _) in nodes.items():
            for other, (_, _, addr) in nodes.items():
                if other < name:  # only the larger name knows the smaller's address
                    lm.set_address(other, addr)
        loop = asyncio.get_running_loop()
        for group, names in CONFERENCES.items():
            verifiers = [pki.verifier_of(by_name[n].cert) for n in names]
            for i, name in enumerate(names):
                rt = nodes[name][0]
                member = Member(group, i, len(names), pki.signer_of(by_name[name].key), verifiers,
                                SystemRng(), loop.time())
                rt.add_conference(group, names, i, member)
                rt.smc_init(group, smc_tag(group))

        def keys():
            return {(n, g): ev.fingerprint for n, evs in events.items() for g, ev in evs
                    if isinstance(ev, KeyEstablished)}

        try:
            async with asyncio.timeout(20):
                while len(keys()) < 5:
                    changed.clear()
                    await changed.wait()
            for group, names in CONFERENCES.items():
                for name in names:
                    nodes[name][0].multicast(group, smc_tag(group), f"{name} in {group}".encode())
            async with asyncio.timeout(20):
                while sum(isinstance(ev, Delivered) for evs in events.values() for _, ev in evs) < 9 + 4:
                    changed.clear()
                    await changed.wait()
        finally:
            for rt, lm, _ in nodes.values():
                rt.close()
                await lm.aclose()
        return keys(), events

    fingerprints, events = asyncio.run(main())
    assert len({fingerprints[(n, "trio")] for n in "abc"}) == 1
    assert fingerprints[("a", "duo")] == fingerprints[("c", "duo")] != fingerprints[("a", "trio")]
    got = {(n, g, ev.payload.decode()) for n, evs in events.items() for g, ev in evs if isinstance(ev, Delivered)}
    for group, names in CONFERENCES.items():
        for receiver in names:
            for sender in names:
                assert (receiver, group, f"{sender} in {group}") in got
    assert not any(g == "duo" for g, _ in events["b"])  # b is not in duo and heard nothing of it
