"""Authenticated links over real TLS on loopback, in one process (ports are always 0 or inherited).

Covers: one-sided address knowledge, pinning (certificate of another CA, valid certificate of
another member or of a non-member), junk frames, queue-and-retry while a peer is down, reconnection
after a restart, and bounded memory when a peer stops reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import struct
from collections.abc import Callable

import pytest

from secchat.net.framing import encode_data, encode_hello
from secchat.net.links import LinkConfig, LinkManager
from secchat.net.provision import credentials, make_identities, pins
from secchat.net.tls import PinSet, TlsCredentials, client_context

FAST = LinkConfig(retry_initial=0.02, retry_factor=2.0, retry_max=0.2, connect_timeout=2.0, hello_timeout=2.0)


class Inbox:
    def __init__(self) -> None:
        self.items: list[tuple[str, str, bytes]] = []
        self._changed = asyncio.Event()

    def __call__(self, peer: str, group: str, payload: bytes) -> None:
        self.items.append((peer, group, payload))
        self._changed.set()

    async def wait(self, count: int, timeout: float = 10.0) -> list[tuple[str, str, bytes]]:
        async with asyncio.timeout(timeout):
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.items


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture(scope="module")
def world():
    return make_identities(["a", "b", "c"])


async def node(world, name, *, member_names=("a", "b", "c"), config=FAST, sock=None, addresses=None):
    ca, ids = world
    me = next(m for m in ids if m.name == name)
    inbox = Inbox()
    lm = LinkManager(name, credentials(me, ca), pins([m for m in ids if m.name in member_names]), inbox,
                     addresses=addresses, config=config)
    addr = await lm.start(sock=sock) if sock is not None else await lm.start()
    return lm, inbox, addr


def test_one_side_knowing_the_address_is_enough(world):
    async def main():
        a, a_in, a_addr = await node(world, "a")
        b, b_in, _ = await node(world, "b", addresses={"a": a_addr})
        try:
            b.send("a", "g", b"hello a")
            await a_in.wait(1)
            a.send("b", "g", b"hello b")  # a never learned b's address from us: it reuses the link
            assert await b_in.wait(1) == [("a", "g", b"hello b")]
            assert a_in.items == [("b", "g", b"hello a")]
            assert a.stats["connections_accepted"] == 1 and a.stats["connections_opened"] == 0
        finally:
            await a.aclose()
            await b.aclose()

    run(main())


def test_simultaneous_connects_settle_on_one_connection_and_lose_nothing(world):
    async def once():
        sa, sb = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
        addr = {"a": sa.getsockname(), "b": sb.getsockname()}
        a, a_in, _ = await node(world, "a", sock=sa, addresses={"b": addr["b"]})
        b, b_in, _ = await node(world, "b", sock=sb, addresses={"a": addr["a"]})
        try:
            for i in range(300):  # both connect at once, and keep sending while the links settle
                a.send("b", "g", b"%d" % i)
                b.send("a", "g", b"%d" % i)
                if i % 10 == 0:
                    await asyncio.sleep(0)
            await a_in.wait(300)
            await b_in.wait(300)
            await until(lambda: len(a._peers["b"].conns) == 1 and len(b._peers["a"].conns) == 1)
            # both use the connection opened by the smaller name; the other was retired
            assert a._peers["b"].sending.outbound and not b._peers["a"].sending.outbound
            for inbox in (a_in, b_in):
                assert sorted(int(p) for _, _, p in inbox.items) == list(range(300))
        finally:
            await a.aclose()
            await b.aclose()

    async def main():
        for _ in range(5):
            await once()

    run(main())


def test_certificate_from_another_ca_is_refused(world, caplog):
    caplog.set_level(logging.INFO, logger="secchat.net")
    ca, ids = world
    evil_ca, [evil_b] = make_identities(["b"], ca_name="Evil CA")
    a_id = next(m for m in ids if m.name == "a")

    async def main():
        a, a_in, a_addr = await node(world, "a")
        # the impostor trusts our CA (so it accepts a's certificate) but holds an Evil-CA "b"
        evil = LinkManager("b", TlsCredentials(evil_b.key, evil_b.cert, (ca, evil_ca)),
                           PinSet({"a": a_id.der}), lambda *m: None, addresses={"a": a_addr}, config=FAST)
        await evil.start()
        try:
            evil.send("a", "g", b"let me in")
            await until(lambda: a.stats["connections_refused"] >= 1)
            await until(lambda: evil.stats["connect_failures"] >= 1)
            assert a_in.items == []
            # and the other way round: a, told that b lives at the impostor's address
            evil_addr = evil._server.sockets[0].getsockname()
            a.set_address("b", evil_addr)
            a.send("b", "g", b"for b only")
            await until(lambda: a.stats["connect_failures"] >= 1)
            assert not a.connected("b")
        finally:
            await evil.aclose()
            await a.aclose()

    run(main())
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any("inbound" in m and "certificate verif" in m for m in refusals), refusals
    assert any("connection to b" in m for m in refusals), refusals


def test_valid_certificate_of_someone_else_is_refused(world, caplog):
    caplog.set_level(logging.INFO, logger="secchat.net")

    async def main():
        # a's conference is {a, b}; c holds a perfectly valid certificate of the same CA
        a, a_in, a_addr = await node(world, "a", member_names=("a", "b"))
        c, c_in, c_addr = await node(world, "c", addresses={"a": a_addr})
        try:
            c.send("a", "g", b"I am not a member")
            await until(lambda: a.stats["connections_refused"] >= 1)
            assert a_in.items == []
            # a believes b listens where c does: c's certificate is valid but not b's
            a.set_address("b", c_addr)
            a.send("b", "g", b"secret for b")
            await until(lambda: a.stats["connections_refused"] >= 2)
            await asyncio.sleep(0.2)
            assert c_in.items == []
            assert not a.connected("b")
        finally:
            await a.aclose()
            await c.aclose()

    run(main())
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("secchat.net")]
    assert any("refused inbound" in m and "CN='c'" in m and "not pinned" in m for m in messages), messages
    assert any("refused connection to b" in m and "CN='c'" in m for m in messages), messages


async def raw_client(world, name, address):
    """A TLS client holding member ``name``'s real credentials but speaking raw bytes."""
    ca, ids = world
    me = next(m for m in ids if m.name == name)
    return await asyncio.open_connection(*address, ssl=client_context(credentials(me, ca)), server_hostname=None)


@pytest.mark.parametrize(
    ("junk", "code"),
    [
        (struct.pack(">I", 5) + b"hello", "envelope"),  # a frame, but not an envelope
        (b"\xff\xff\xff\xff", "oversized"),  # a length far beyond the limit
        (b"\x00\x00\x00\x00", "empty"),
        (struct.pack(">I", 100) + b"0123456789", "truncated"),  # then EOF
        (encode_data("g", b"data before hello"), "hello"),
    ],
)
def test_junk_drops_the_connection_and_harms_nothing(world, junk, code, caplog):
    caplog.set_level(logging.INFO, logger="secchat.net")

    async def main():
        a, a_in, a_addr = await node(world, "a")
        b, _b_in, _ = await node(world, "b", addresses={"a": a_addr})
        try:
            reader, writer = await raw_client(world, "c", a_addr)
            if code != "hello":
                writer.write(encode_hello(0))
            writer.write(junk)
            await writer.drain()
            if code == "truncated":
                writer.write_eof() if writer.can_write_eof() else writer.close()
            async with asyncio.timeout(10):
                while await reader.read(65536):
                    pass  # a closes the connection on us
            writer.close()
            await until(lambda: a.stats["bad_frames"] == 1)
            assert a_in.items == []
            b.send("a", "g", b"still alive?")  # the member carries on
            assert await a_in.wait(1) == [("b", "g", b"still alive?")]
        finally:
            await a.aclose()
            await b.aclose()

    run(main())
    assert any("dropping connection from c" in r.getMessage() for r in caplog.records)


def test_plain_tcp_garbage_is_refused(world, caplog):
    caplog.set_level(logging.INFO, logger="secchat.net")

    async def main():
        a, a_in, a_addr = await node(world, "a")
        try:
            reader, writer = await asyncio.open_connection(*a_addr)
            writer.write(os.urandom(2048))
            await writer.drain()
            async with asyncio.timeout(10):
                with contextlib.suppress(ConnectionError):
                    while await reader.read(65536):
                        pass
            writer.close()
            await until(lambda: a.stats["connections_refused"] == 1)
            assert a_in.items == []
        finally:
            await a.aclose()

    run(main())
    assert any("refused inbound" in r.getMessage() for r in caplog.records)


def test_frames_wait_while_the_peer_is_down_and_after_a_restart(world):
    async def main():
        # b's port is reserved but not listening: connections are refused until b starts
        reserved = socket.socket()
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserved.bind(("127.0.0.1", 0))
        b_addr = reserved.getsockname()
        a, a_in, _ = await node(world, "a", addresses={"b": b_addr})
        b = None
        try:
            for i in range(5):
                a.send("b", "g", b"early %d" % i)
            await until(lambda: a.stats["connect_failures"] >= 3)  # retrying with backoff
            assert a.queue_sizes()["b"][0] == 5
            reserved.listen(16)
            b, b_in, _ = await node(world, "b", sock=reserved.dup())
            got = await b_in.wait(5)
            assert [p for _, _, p in got] == [b"early %d" % i for i in range(5)]  # in order

            # b restarts: it goes away, frames queue at a, the new b gets them
            await b.aclose()
            await until(lambda: not a.connected("b"))
            for i in range(5):
                a.send("b", "g", b"while down %d" % i)
            await asyncio.sleep(0.1)
            b, b_in, _ = await node(world, "b", sock=reserved.dup())
            got = await b_in.wait(5)
            assert [p for _, _, p in got] == [b"while down %d" % i for i in range(5)]
            b.send("a", "g", b"back")
            assert (await a_in.wait(1))[-1] == ("b", "g", b"back")
        finally:
            await a.aclose()
            if b is not None:
                await b.aclose()
            reserved.close()

    run(main())


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def test_memory_stays_bounded_when_a_peer_stops_reading(world, caplog):
    caplog.set_level(logging.WARNING, logger="secchat.net")
    config = LinkConfig(queue_max_frames=64, queue_max_bytes=1 << 20, write_buffer_high=64 << 10,
                        write_buffer_low=16 << 10, retry_initial=0.02, retry_max=0.2)

    async def main():
        a, _a_in, a_addr = await node(world, "a", config=config)
        _reader, writer = await raw_client(world, "b", a_addr)  # authenticates as b, then never reads
        writer.write(encode_hello(0))
        await writer.drain()
        try:
            await until(lambda: a.connected("b"))
            payload = os.urandom(64 << 10)
            before = _rss_kb()
            peak_queue = peak_buffer = 0
            for _ in range(50):  # offer 50 x 40 x 64 KiB = 125 MiB
                for _ in range(40):
                    a.send("b", "g", payload)
                await asyncio.sleep(0.005)
                frames, queued = a.queue_sizes()["b"]
                peak_queue = max(peak_queue, queued)
                peak_buffer = max(peak_buffer, a.write_buffer_sizes()["b"])
                assert frames <= 64 and queued <= 1 << 20
            grown = _rss_kb() - before
            print(f"offered 125 MiB; peak queue {peak_queue} B, peak write buffer {peak_buffer} B, "
                  f"dropped {a.stats['frames_dropped_queue_full']} frames, RSS +{grown} KiB")
            assert peak_buffer <= (64 << 10) + (64 << 10) + 512  # high-water mark + one frame
            assert a.stats["frames_dropped_queue_full"] > 1500
            assert grown < 40 << 10
        finally:
            writer.transport.abort()
            await a.aclose()

    run(main())
    # one warning per overflow episode (the kernel's socket buffers absorb a few MiB first), not per drop
    warnings = sum("queue for b is full" in r.getMessage() for r in caplog.records)
    assert 1 <= warnings <= 20


async def _b_gets_through(world, a_in, text: bytes, timeout: float, **kwargs) -> None:
    """A genuine member b starts, sends ``text`` to a, and a gets it."""
    b, _b_in, _ = await node(world, "b", **kwargs)
    try:
        b.send("a", "g", text)
        assert await a_in.wait(1, timeout=timeout) == [("b", "g", text)]
    finally:
        await b.aclose()


async def _close_flood(a, idle) -> None:
    for _, w in idle:
        w.close()
    await a.aclose()


def test_half_open_connections_cost_bounded_resources(world, caplog):
    caplog.set_level(logging.WARNING, logger="secchat.net")
    config = LinkConfig(max_pending_handshakes=4, connect_timeout=1.0, retry_initial=0.02, retry_max=0.2)

    async def main():
        a, a_in, a_addr = await node(world, "a", config=config)
        idle = [await asyncio.open_connection(*a_addr) for _ in range(10)]  # TCP only, never a handshake
        try:
            await until(lambda: a.stats["connections_refused"] >= 6)  # beyond the 4 pending handshakes
            # once the idle ones time out, a real member gets through
            await _b_gets_through(world, a_in, b"after the flood", 15, addresses={"a": a_addr}, config=config)
        finally:
            await _close_flood(a, idle)

    run(main())
    assert any("too many handshakes" in r.getMessage() for r in caplog.records)


def test_frames_survive_broken_connections_exactly_once_and_in_order(world):
    """Connections are cut (from either side) while 2000 frames stream: all arrive once, in order."""

    async def main():
        a, a_in, a_addr = await node(world, "a")
        b, _b_in, _ = await node(world, "b", addresses={"a": a_addr})
        try:
            payload = os.urandom(8000)
            for i in range(2000):
                await b.wait_for_room()  # paced: queue overflow (tail drop) is not what this tests
                assert b.send("a", "g", b"%06d" % i + payload)
                if i % 100 == 99:
                    await asyncio.sleep(0.002)
                if i in (500, 1100, 1600):  # cut b's sending connection, then a's end of it
                    conn = b._peers["a"].sending
                    if conn is not None:
                        conn.writer.transport.abort()
                if i == 1300:
                    for conn in list(a._peers["b"].conns):
                        conn.writer.transport.abort()
            got = await a_in.wait(2000, timeout=30)
            await asyncio.sleep(0.2)  # nothing more may arrive
            seqs = [int(p[:6]) for _, _, p in got]
            assert seqs == list(range(2000))  # each exactly once, in order
            assert b.stats["frames_resent"] > 0
            await until(lambda: b._peers["a"].channel.unacked[0] == 0)  # and all of it acknowledged
        finally:
            await a.aclose()
            await b.aclose()

    run(main())


_REFUSED_CLIENT = r"""
import asyncio, ssl, sys
async def main(port, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.load_cert_chain(cert, key)
    for _ in range(100):
        for tls in (ctx, None):  # a valid certificate of a non-member; plain-TCP garbage
            try:
                r, w = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
                if tls is None:
                    w.write(b"GET / HTTP/1.0\r\n\r\n")
                await r.read(100)
                w.close()
            except (OSError, ssl.SSLError):
                pass
asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
"""


def test_refused_connections_leave_no_reference_cycles(world, tmp_path, caplog):
    """Memory of refused connections returns at once, not when the collector runs (which a
    flood can outpace): with the collector off, 200 refusals leave almost nothing in cycles."""
    import gc
    import sys

    from cryptography.hazmat.primitives import serialization

    caplog.set_level(logging.ERROR, logger="secchat.net")
    _ca, ids = world
    outsider = next(m for m in ids if m.name == "c")
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    cert.write_bytes(outsider.cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(outsider.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))

    async def main():
        a, _a_in, a_addr = await node(world, "a", member_names=("a", "b"))
        gc.collect()
        gc.disable()
        try:
            client = await asyncio.create_subprocess_exec(sys.executable, "-c", _REFUSED_CLIENT,
                                                          str(a_addr[1]), str(cert), str(key))
            await client.wait()
            await until(lambda: a.stats["connections_refused"] >= 200)
            await asyncio.sleep(0.2)
            in_cycles = gc.collect()
        finally:
            gc.enable()
            await a.aclose()
        print(f"{a.stats['connections_refused']} refusals left {in_cycles} objects in reference cycles")
        # CPython's socket transport keeps a bound method of itself (a few objects each); the
        # exceptions, frames, TLS objects and buffers of each refusal (~47 objects) are gone
        assert in_cycles <= 10 * a.stats["connections_refused"]

    run(main())


def test_a_handshake_flood_from_many_sources_leaves_a_slot_for_known_peers(world, caplog):
    """Half-open connections from several source addresses fill every handshake slot open to
    strangers (at most two per source); a member whose address we know still gets in, while a
    genuine member connecting from an unknown address has to wait for the flood to time out."""
    caplog.set_level(logging.WARNING, logger="secchat.net")
    config = LinkConfig(max_pending_handshakes=8, reserved_handshakes=2, max_handshakes_per_source=2,
                        handshake_timeout=20.0, retry_initial=0.02, retry_max=0.2)

    async def main():
        b_sock = socket.create_server(("127.0.0.1", 0))
        a, a_in, a_addr = await node(world, "a", config=config, addresses={"b": b_sock.getsockname()})
        idle = []
        for source in range(10, 15):  # 5 sources x 3 tries: 2 each admitted until 6 are pending
            for _ in range(3):
                idle.append(await asyncio.open_connection(*a_addr, local_addr=(f"127.0.0.{source}", 0)))
        try:
            await until(lambda: a._handshakes == 6 and a.stats["connections_refused"] == 9)
            # c, from an address a does not know, is refused: the slots left are reserved
            ca, ids = world
            c = next(m for m in ids if m.name == "c")
            with pytest.raises((OSError, ssl.SSLError)):
                await asyncio.open_connection(*a_addr, ssl=client_context(credentials(c, ca)),
                                              server_hostname=None, local_addr=("127.0.0.20", 0))
            await until(lambda: a.stats["connections_refused"] == 10)
            # b connects from 127.0.0.1, the host a knows b at: a reserved slot takes it
            await _b_gets_through(world, a_in, b"through the flood", 10, sock=b_sock,
                                  addresses={"a": a_addr}, config=config)
        finally:
            await _close_flood(a, idle)

    run(main())
    busy = [r.getMessage() for r in caplog.records if "too many handshakes" in r.getMessage()]
    assert len(busy) == 6  # 10 refusals, logged once per source (6 of them)


def test_handshakes_are_paced_one_at_a_time_and_never_stacked_on_a_slow_peer(world):
    """Listeners that accept TCP and then say nothing (busy peers, or a partition's middlebox):
    with one outbound handshake at a time, we connect to one of them and send it a ClientHello;
    the other is not even connected until the first turn ends (its deadline would otherwise run
    while it waits); and no attempt is stacked on a peer whose handshake holds its turn
    (unpaced, members on one busy machine start more handshakes than it can finish)."""
    config = LinkConfig(retry_initial=0.02, retry_max=0.5, connect_timeout=2.0, max_outbound_handshakes=1)

    async def main():
        conns: list[tuple[str, asyncio.StreamReader, asyncio.StreamWriter]] = []

        def listener(name):
            async def accept(reader, writer):
                conns.append((name, reader, writer))
            return accept

        servers = {n: await asyncio.start_server(listener(n), "127.0.0.1", 0) for n in ("b", "c")}
        addresses = {n: s.sockets[0].getsockname()[:2] for n, s in servers.items()}
        a, _, _ = await node(world, "a", config=config, addresses=addresses)
        try:
            a.send("b", "g", b"x")
            a.send("c", "g", b"y")
            # within the first turn (min(2 × retry_max, connect_timeout / 2) = 1 s); retries
            # are due every 0.5 s
            await asyncio.sleep(0.8)
            assert len(conns) == 1
            first = conns[0][0]
            assert await asyncio.wait_for(conns[0][1].read(1), 1.0)  # it got a ClientHello
            # the turn given back, the other peer gets one; the hanging handshakes never get a
            # second attempt stacked on them before their turn ends
            await until(lambda: {name for name, _, _ in conns} == {"b", "c"}, timeout=1.0)
            await asyncio.sleep(1.2)
            count = {n: sum(1 for name, _, _ in conns if name == n) for n in ("b", "c")}
            # ~3 s, one turn of 1 s at a time: at most 3 or 4 attempts in all
            assert sum(count.values()) <= 4 and count[first] <= 2, count
            assert a.stats["handshakes_busy"] == 0  # they hung: no sign of a busy peer
        finally:
            await a.aclose()
            for _, _, writer in conns:
                writer.transport.abort()
            for s in servers.values():
                s.close()

    run(main())


def test_a_peer_that_turns_handshakes_away_is_retried_less_and_less_often(world):
    """A listener that closes every connection at once (a member too busy to handshake): the
    attempts back off from retry_max doubling to busy_retry_max, instead of coming back every
    retry_max -- each attempt costs the busy peer an accept and a ClientHello."""
    config = LinkConfig(retry_initial=0.02, retry_max=0.1, busy_retry_max=0.8, connect_timeout=2.0)

    async def main():
        accepted = 0

        async def accept(reader, writer):
            nonlocal accepted
            accepted += 1
            writer.transport.abort()

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        a, _, _ = await node(world, "a", config=config, addresses={"b": server.sockets[0].getsockname()[:2]})
        try:
            a.send("b", "g", b"x")
            await asyncio.sleep(3.0)
            # every 0.1 s would be ~30; backing off 0.1, 0.2, 0.4, 0.8, 0.8 ... (jittered to
            # half or more) is at most ~11
            assert 3 <= accepted <= 12, accepted
            assert a.stats["handshakes_busy"] >= 3
        finally:
            await a.aclose()
            server.close()

    run(main())
