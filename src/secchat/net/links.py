"""Authenticated point-to-point links between members: the PT2PTLink of the thesis (§4.2).

Why this shape:

* **One TLS port per member, connect on demand.**  A frame for a peer without a usable
  connection is queued and the peer's sender task opens one.  An accepted connection is used for
  sending as well, so it is enough that one side of each pair knows the other's address; the
  :class:`~secchat.net.framing.Hello` that opens every connection also teaches the listening port.
* **Authentication is TLS 1.3 plus a pin** (:mod:`secchat.net.tls`): a connection carries data
  only after both sides checked the other's certificate against the member list *and* received
  the other's ``Hello``.  Waiting for the ``Hello`` matters with TLS 1.3, where a client learns
  only after its handshake that the server refused its certificate: no frame is ever written
  into a connection the peer has not accepted.
* **At most one connection per pair carries our frames.**  If both sides connect at once, both
  keep the one opened by the lexicographically smaller name.  A connection we stop sending on
  is *retired*: we write a ``Goodbye`` after our last frame on it, keep reading it, and close it
  once the peer said goodbye too -- so switching connections loses no frame in flight.
* **Everything is bounded.**  Each peer has one queue bounded in frames and bytes.  When it is
  full, the *newest* frame is dropped (tail drop) and counted, with one warning per overflow
  episode: the queue then holds a gap-free prefix of what we sent, which is what the protocols
  above need (a later consensus or SMC message is useless without the earlier ones, while the
  newest frames of a long outage are mostly heartbeats).  Each connection's write buffer is
  bounded by the transport's high-water mark and the sender awaits ``drain()``, so a peer that
  stops reading stalls only its own queue.  Reads are bounded by the frame limit.
* **Reliable across reconnections.**  TCP loses what sat in a connection that broke.  So each
  side numbers its frames to a peer (``Data.seq``, per *session* -- a random id of this run of
  the link layer), keeps what it wrote until the peer acknowledges it (``Data.ack``
  piggybacked, or an explicit ``Ack`` every ``ack_every_frames`` / ``ack_every_bytes``), and
  on every new connection resends what the peer's ``Hello`` says it has not received.  The
  receiver drops duplicates and puts frames that overtook others (two connections during a
  switch) back in order, in a window bounded like the sender's unacknowledged frames; a frame
  outside it drops the connection, which the resend after reconnecting repairs.  A restarted
  peer (new session) starts from the oldest frame still held for it.  Unacknowledged frames are
  bounded by ``unacked_max_bytes``; beyond it the sender waits (and the queue tail-drops).
* **Retries** back off from ``retry_initial`` by ``retry_factor`` up to ``retry_max``; the
  delay resets once a connection is up.
* **Foreign exceptions stop here**: everything is translated into :class:`LinkError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .errors import (
    AuthenticationError,
    FrameError,
    LinkClosed,
    LinkError,
    LinkTimeout,
    map_exceptions,
)
from .framing import (
    MAX_FRAME_BODY,
    Ack,
    Data,
    FrameDecoder,
    Goodbye,
    Hello,
    check_data,
    decode_message,
    encode_ack,
    encode_data,
    encode_goodbye,
    encode_hello,
)
from .tls import (
    PinSet,
    TlsCredentials,
    client_context,
    describe_certificate,
    peer_certificate,
    server_context,
)

__all__ = ["Address", "LinkConfig", "LinkManager"]

log = logging.getLogger("secchat.net.links")

Address = tuple[str, int]
#: ``on_message(peer_name, group, payload)``
MessageHandler = Callable[[str, str, bytes], None]


@dataclass(frozen=True)
class LinkConfig:
    """Tunables of the link layer; every buffer has a bound here.

    ``queue_max_frames`` / ``queue_max_bytes``: per-peer queue of frames not yet handed to a
    connection (tail drop beyond).  ``write_buffer_high`` / ``write_buffer_low``: per-connection
    transport buffer water marks.  ``retry_*``: reconnection backoff (seconds).
    ``unacked_max_bytes``: frames written but not yet acknowledged, kept for resending (and the
    receiver's reorder window); ``ack_every_*``: when a receiver acknowledges explicitly; ``ack_delay``:
    how long a received frame may wait for a reply to carry its acknowledgement.
    ``connect_timeout`` covers TCP connect and TLS handshake; ``hello_timeout`` the peer's first
    frame.  ``max_connections_per_peer`` caps connections a single authenticated peer may hold,
    ``max_pending_handshakes`` the accepted connections still in their TLS handshake (beyond it,
    new ones are closed at once, so a flood of half-open connections costs bounded memory).
    """

    queue_max_frames: int = 4096
    queue_max_bytes: int = 8 << 20
    write_buffer_high: int = 256 << 10
    write_buffer_low: int = 64 << 10
    retry_initial: float = 0.05
    retry_factor: float = 2.0
    retry_max: float = 2.0
    connect_timeout: float = 5.0
    hello_timeout: float = 5.0
    read_chunk: int = 64 << 10
    max_connections_per_peer: int = 4
    max_pending_handshakes: int = 64
    unacked_max_bytes: int = 8 << 20
    ack_every_frames: int = 64
    ack_every_bytes: int = 256 << 10
    ack_delay: float = 0.05

    def __post_init__(self) -> None:
        if self.queue_max_frames < 1 or self.queue_max_bytes < 1:
            raise ValueError("queue bounds must be positive")
        if not 0 < self.write_buffer_low <= self.write_buffer_high:
            raise ValueError("need 0 < write_buffer_low <= write_buffer_high")
        if self.retry_initial <= 0 or self.retry_factor < 1 or self.retry_max < self.retry_initial:
            raise ValueError("need retry_initial > 0, retry_factor >= 1, retry_max >= retry_initial")
        if self.connect_timeout <= 0 or self.hello_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_pending_handshakes < 1:
            raise ValueError("max_pending_handshakes must be positive")
        if self.unacked_max_bytes < MAX_FRAME_BODY:
            raise ValueError("unacked_max_bytes must hold at least one maximal frame")
        if self.ack_delay <= 0:
            raise ValueError("ack_delay must be positive")
        if self.ack_every_frames < 1 or not 0 < self.ack_every_bytes < self.unacked_max_bytes:
            raise ValueError("need ack_every_frames >= 1 and 0 < ack_every_bytes < unacked_max_bytes")
        if self.max_connections_per_peer < 2:
            raise ValueError("max_connections_per_peer must be at least 2 (simultaneous connects)")


class _Conn:
    __slots__ = (
        "closed",
        "got_goodbye",
        "outbound",
        "peer",
        "peer_session",
        "reader",
        "ready",
        "remote",
        "said_goodbye",
        "writer",
    )

    def __init__(self, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, outbound: bool) -> None:
        self.peer = peer
        self.reader = reader
        self.writer = writer
        self.outbound = outbound
        self.ready = asyncio.Event()  # the peer's Hello arrived
        self.closed = False
        self.said_goodbye = False  # we send nothing more on it
        self.got_goodbye = False  # the peer sends nothing more on it
        self.peer_session = 0  # from the peer's Hello
        remote = writer.get_extra_info("peername")
        self.remote: Address | None = (remote[0], remote[1]) if remote else None

    def __repr__(self) -> str:
        return f"<conn {'to' if self.outbound else 'from'} {self.peer} {self.remote}>"


_Item = tuple[int, str, bytes]


def _size(item: _Item) -> int:
    return len(item[2]) + len(item[1]) + 32  # payload, group id, envelope


class _Peer:
    __slots__ = (
        "ack_timer",
        "acked",
        "address",
        "conns",
        "dropped",
        "last_progress",
        "name",
        "next_seq",
        "overflowing",
        "queue",
        "queued_bytes",
        "reorder",
        "reorder_bytes",
        "retry_delay",
        "rx_next",
        "rx_session",
        "rx_unacked_bytes",
        "rx_unacked_frames",
        "sending",
        "task",
        "unacked",
        "unacked_bytes",
        "wakeup",
    )

    def __init__(self, name: str, address: Address | None, retry_initial: float) -> None:
        self.name = name
        self.address = address
        # sending: (seq, group, payload) not yet written / written but not yet acknowledged
        self.queue: deque[_Item] = deque()
        self.queued_bytes = 0
        self.unacked: deque[_Item] = deque()
        self.unacked_bytes = 0
        self.next_seq = 0
        self.acked = 0  # every seq below this was received by the peer (this session of ours)
        # receiving: the peer's session, the next seq expected of it, frames that came early
        self.rx_session = 0
        self.rx_next = 0
        self.reorder: dict[int, tuple[str, bytes]] = {}
        self.reorder_bytes = 0
        self.rx_unacked_frames = 0
        self.rx_unacked_bytes = 0
        self.ack_timer: asyncio.TimerHandle | None = None
        self.conns: list[_Conn] = []
        self.sending: _Conn | None = None
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.retry_delay = retry_initial
        self.dropped = 0
        self.overflowing = False
        self.last_progress = 0.0  # loop time a frame last left the queue


class LinkManager:
    """All authenticated links of one member (one identity, any number of conferences).

    ``pins`` names every peer we may talk to and its certificate; ``addresses`` the peers whose
    listening address we know.  ``on_message(peer, group, payload)`` is called for each data frame
    that arrives on an authenticated connection.
    """

    def __init__(
        self,
        me: str,
        credentials: TlsCredentials,
        pins: PinSet,
        on_message: MessageHandler,
        *,
        addresses: Mapping[str, Address] | None = None,
        config: LinkConfig | None = None,
    ) -> None:
        self.me = me
        self.config = config or LinkConfig()
        self.pins = pins
        self._on_message = on_message
        self._server_ctx = server_context(credentials)
        self._client_ctx = client_context(credentials)
        self._peers: dict[str, _Peer] = {}
        for name in pins.names():
            if name != me:
                self._peers[name] = _Peer(name, None, self.config.retry_initial)
        for name, addr in (addresses or {}).items():
            self.set_address(name, addr)
        self._server: asyncio.base_events.Server | None = None
        self._listen_port = 0
        self._handshakes = 0
        self._room = asyncio.Event()  # set whenever a sender took a frame off a queue
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        #: this run of our link layer; peers number our frames per session
        self.session = secrets.randbits(62) + 1
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "frames_sent",
                "frames_received",
                "bytes_sent",
                "bytes_received",
                "frames_dropped_queue_full",
                "frames_dropped_unknown_peer",
                "connections_accepted",
                "connections_opened",
                "connections_refused",
                "connect_failures",
                "bad_frames",
                "connections_closed",
                "queue_peak_bytes",
                "frames_resent",
                "frames_duplicate",
                "frames_reordered",
                "frames_stale_session",
                "acks_sent",
            ),
            0,
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None) -> Address:
        """Listen for peers (on ``sock`` if given, e.g. inherited from a launcher); return the address."""
        if sock is not None:
            self._server = await asyncio.start_server(self._accept, sock=sock, limit=self.config.read_chunk)
        else:
            self._server = await asyncio.start_server(self._accept, host, port, limit=self.config.read_chunk)
        addr = self._server.sockets[0].getsockname()
        self._listen_port = addr[1]
        log.info("%s listening on %s:%d", self.me, addr[0], addr[1])
        return (addr[0], addr[1])

    async def aclose(self) -> None:
        """Stop listening, stop every sender, close every connection."""
        for peer in self._peers.values():
            if peer.rx_unacked_frames:
                self._send_ack(peer)  # so that our successor is not sent what we already got
        self._closing = True
        if self._server is not None:
            self._server.close()
        for peer in self._peers.values():
            if peer.ack_timer is not None:
                peer.ack_timer.cancel()
                peer.ack_timer = None
            peer.wakeup.set()
            if peer.task is not None:
                peer.task.cancel()
            for conn in list(peer.conns):
                self._drop(conn, None)
        tasks = [t for t in self._tasks if not t.done()] + [p.task for p in self._peers.values() if p.task]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t

    # ------------------------------------------------------------------ public API

    def add_peer(self, name: str, der: bytes, address: Address | None = None) -> None:
        """Pin ``name`` to certificate ``der`` (e.g. a member of a newly joined conference).

        Adding a known peer again with the same certificate is a no-op; a different certificate
        for a pinned name (or a pinned certificate under another name) raises ``ValueError``.
        """
        if name == self.me:
            raise ValueError("we do not link to ourselves")
        self.pins.add(name, der)
        if name not in self._peers:
            self._peers[name] = _Peer(name, None, self.config.retry_initial)
        if address is not None:
            self.set_address(name, address)

    def set_address(self, name: str, address: Address) -> None:
        """Tell the links where ``name`` listens."""
        peer = self._peer(name)
        peer.address = (str(address[0]), int(address[1]))
        peer.wakeup.set()

    def peers(self) -> list[str]:
        return list(self._peers)

    def send(self, name: str, group: str, payload: bytes) -> bool:
        """Queue one message for ``name``; ``False`` if it was dropped because the queue is full."""
        peer = self._peer(name)
        check_data(group, payload)
        return self._enqueue(peer, group, bytes(payload))

    def send_many(self, names: Iterable[str], group: str, payload: bytes) -> int:
        """Queue one message for several peers (encoded once); return how many took it.

        An unknown name or an oversized message raises ``ValueError`` before anything is queued.
        """
        peers = [self._peer(n) for n in names]
        check_data(group, payload)
        payload = bytes(payload)
        return sum(self._enqueue(p, group, payload) for p in peers)

    def queue_sizes(self) -> dict[str, tuple[int, int]]:
        """Per peer: (frames, bytes) queued and not yet handed to a connection."""
        return {n: (len(p.queue), p.queued_bytes) for n, p in self._peers.items()}

    def write_buffer_sizes(self) -> dict[str, int]:
        """Per peer: bytes in the transport buffer of the connection we send on."""
        out = {}
        for n, p in self._peers.items():
            conn = p.sending
            transport = conn.writer.transport if conn is not None else None
            out[n] = transport.get_write_buffer_size() if transport is not None and not transport.is_closing() else 0
        return out

    async def wait_for_room(self, fraction: float = 0.5, *, stalled_after: float = 2.0) -> None:
        """Wait until the queues of the peers that keep up are at most ``fraction`` full.

        Application back-pressure for bulk senders.  Peers that do not keep up are ignored, so
        they cannot hold everyone back: those whose queue overflowed, and those whose queue has
        not moved for ``stalled_after`` seconds (down, or not reading).  A slow peer that still
        reads, or one that is reconnecting, is waited for.
        """
        cfg = self.config
        loop = asyncio.get_running_loop()

        def blocking(p: _Peer, now: float) -> bool:
            if p.overflowing:
                return False
            if len(p.queue) <= cfg.queue_max_frames * fraction and p.queued_bytes <= cfg.queue_max_bytes * fraction:
                return False
            return now - p.last_progress < stalled_after

        while True:
            now = loop.time()
            waiting = [p for p in self._peers.values() if blocking(p, now)]
            if not waiting:
                return
            self._room.clear()
            wake = min(p.last_progress for p in waiting) + stalled_after
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), max(0.001, wake - now))

    def connected(self, name: str) -> bool:
        peer = self._peers.get(name)
        return peer is not None and peer.sending is not None

    # ------------------------------------------------------------------ queueing

    def _peer(self, name: str) -> _Peer:
        try:
            return self._peers[name]
        except KeyError:
            raise ValueError(f"{name!r} is not a known peer") from None

    def _enqueue(self, peer: _Peer, group: str, payload: bytes) -> bool:
        cfg = self.config
        item = (peer.next_seq, group, payload)
        size = _size(item)
        if len(peer.queue) >= cfg.queue_max_frames or peer.queued_bytes + size > cfg.queue_max_bytes:
            peer.dropped += 1
            self.stats["frames_dropped_queue_full"] += 1
            if not peer.overflowing:
                peer.overflowing = True
                log.warning(
                    "queue for %s is full (%d frames, %d bytes): dropping new frames until it drains",
                    peer.name, len(peer.queue), peer.queued_bytes,
                )
            return False
        peer.next_seq += 1  # only a frame that is kept gets a number: the peer never waits for a gap
        peer.queue.append(item)
        peer.queued_bytes += size
        if peer.queued_bytes > self.stats["queue_peak_bytes"]:
            self.stats["queue_peak_bytes"] = peer.queued_bytes
        peer.wakeup.set()
        if peer.task is None and not self._closing:
            peer.task = asyncio.get_running_loop().create_task(self._sender(peer), name=f"secchat-send-{peer.name}")
        return True

    async def _sender(self, peer: _Peer) -> None:
        """Hand the peer's queue to its connection, (re)connecting with backoff when needed."""
        cfg = self.config
        while not self._closing:
            disconnected = peer.sending is None or peer.sending.closed
            if not peer.queue and not (peer.unacked and disconnected):
                peer.wakeup.clear()
                await peer.wakeup.wait()
                continue
            conn = peer.sending
            if conn is None or conn.closed:
                if peer.address is None:
                    peer.wakeup.clear()
                    await peer.wakeup.wait()  # until an inbound connection or an address arrives
                    continue
                try:
                    conn = await self._connect(peer)
                except LinkError as exc:
                    self.stats["connect_failures"] += 1
                    # the first failure of an outage at INFO, the retries at DEBUG
                    level = logging.INFO if peer.retry_delay == cfg.retry_initial else logging.DEBUG
                    log.log(level, "cannot reach %s at %s:%d (%s); retrying in %.2fs",
                            peer.name, *peer.address, exc, peer.retry_delay)
                    await asyncio.sleep(peer.retry_delay)
                    peer.retry_delay = min(peer.retry_delay * cfg.retry_factor, cfg.retry_max)
                    continue
                if peer.sending is None or peer.sending.closed or not peer.queue:
                    continue
                conn = peer.sending
            if peer.unacked_bytes >= cfg.unacked_max_bytes:
                peer.wakeup.clear()
                await peer.wakeup.wait()  # until the peer acknowledges (or the connection changes)
                continue
            item = peer.queue.popleft()
            size = _size(item)
            peer.queued_bytes -= size
            if item[0] < peer.acked:
                continue  # requeued for resending, then acknowledged after all
            peer.last_progress = asyncio.get_running_loop().time()
            self._room.set()
            if peer.overflowing and peer.queued_bytes <= cfg.queue_max_bytes // 2 and len(peer.queue) <= cfg.queue_max_frames // 2:
                peer.overflowing = False
                log.warning("queue for %s drained; %d frames were dropped so far", peer.name, peer.dropped)
            frame = encode_data(item[1], item[2], item[0], peer.rx_next)
            peer.unacked.append(item)
            peer.unacked_bytes += size
            peer.rx_unacked_frames = peer.rx_unacked_bytes = 0  # the frame carries our ack
            try:
                with map_exceptions():
                    conn.writer.write(frame)
                    self.stats["frames_sent"] += 1
                    self.stats["bytes_sent"] += len(frame)
                    await conn.writer.drain()
            except LinkError as exc:
                self._drop(conn, exc)

    async def _connect(self, peer: _Peer) -> _Conn:
        assert peer.address is not None
        host, port = peer.address
        cfg = self.config
        try:
            with map_exceptions(connecting=True):
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        host, port, ssl=self._client_ctx, server_hostname=None,
                        ssl_handshake_timeout=cfg.connect_timeout, limit=cfg.read_chunk,
                    ),
                    cfg.connect_timeout * 2,
                )
        except AuthenticationError as exc:
            self.stats["connections_refused"] += 1
            log.warning("refused connection to %s at %s:%d: %s", peer.name, host, port, exc)
            raise
        der = peer_certificate(writer.get_extra_info("ssl_object"))
        try:
            self.pins.check(peer.name, der)
        except AuthenticationError as exc:
            self.stats["connections_refused"] += 1
            log.warning("refused connection to %s at %s:%d: %s", peer.name, host, port, exc)
            writer.transport.abort()
            raise
        conn = self._open(peer.name, reader, writer, outbound=True)
        if conn is None:
            raise LinkClosed("too many connections to this peer")
        self.stats["connections_opened"] += 1
        ready = asyncio.ensure_future(conn.ready.wait())
        try:
            done, _ = await asyncio.wait({ready}, timeout=cfg.hello_timeout)
        finally:
            ready.cancel()
        if not done or conn.closed:
            self._drop(conn, LinkTimeout("no hello from the peer") if not done else None)
            raise LinkClosed(f"{peer.name} did not accept the connection")
        return conn

    # ------------------------------------------------------------------ connections

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        remote = writer.get_extra_info("peername")
        where = f"{remote[0]}:{remote[1]}" if remote else "?"
        if self._handshakes >= self.config.max_pending_handshakes:
            self.stats["connections_refused"] += 1
            log.warning("refused inbound connection from %s: too many handshakes in progress", where)
            writer.transport.abort()
            return
        self._handshakes += 1
        try:
            with map_exceptions(connecting=True):
                # no wait_for here: running start_tls in another task breaks it (CPython 3.11);
                # the handshake timeout bounds it instead
                await writer.start_tls(self._server_ctx, ssl_handshake_timeout=self.config.connect_timeout)
            der = peer_certificate(writer.get_extra_info("ssl_object"))
            name = self.pins.identify(der)
            if name == self.me or name not in self._peers:
                raise AuthenticationError(f"certificate of {describe_certificate(der)} is our own", code="self")
        except LinkError as exc:
            self.stats["connections_refused"] += 1
            log.warning("refused inbound connection from %s: %s", where, exc)
            writer.transport.abort()
            return
        finally:
            self._handshakes -= 1
        conn = self._open(name, reader, writer, outbound=False)
        if conn is not None:
            self.stats["connections_accepted"] += 1

    def _open(self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, outbound: bool) -> _Conn | None:
        peer = self._peers[name]
        if self._closing or len(peer.conns) >= self.config.max_connections_per_peer:
            log.warning("refusing another connection %s %s: limit reached", "to" if outbound else "from", name)
            writer.transport.abort()
            return None
        writer.transport.set_write_buffer_limits(high=self.config.write_buffer_high, low=self.config.write_buffer_low)
        conn = _Conn(name, reader, writer, outbound)
        peer.conns.append(conn)
        writer.write(encode_hello(self._listen_port, self.session, peer.rx_session, peer.rx_next,
                                  self._resend_from(peer)))
        task = asyncio.get_running_loop().create_task(self._read_loop(conn), name=f"secchat-read-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return conn

    def _preferred(self, conn: _Conn) -> bool:
        """Was ``conn`` opened by the smaller name of the pair (the one both sides keep)?"""
        return conn.outbound == (self.me < conn.peer)

    def _on_ready(self, conn: _Conn, hello: Hello) -> None:
        peer = self._peers[conn.peer]
        if not conn.outbound and hello.listen_port and conn.remote is not None:
            learned = (conn.remote[0], hello.listen_port)
            if peer.address != learned:
                log.info("learned address of %s: %s:%d", peer.name, *learned)
                peer.address = learned
        peer.retry_delay = self.config.retry_initial
        peer.last_progress = asyncio.get_running_loop().time()
        conn.peer_session = hello.session
        if hello.session != peer.rx_session:  # a new run of the peer: start where it starts
            peer.rx_session = hello.session
            peer.rx_next = hello.resend_from
            peer.reorder.clear()
            peer.reorder_bytes = 0
        if hello.ack_session == self.session:
            self._acked(peer, hello.ack_next)
        current = peer.sending
        # a connection to an earlier run of the peer is dead even if we have not noticed yet
        stale = current is not None and current.peer_session != hello.session
        if current is None or current.closed or stale or (self._preferred(conn) and not self._preferred(current)):
            peer.sending = conn
            log.info("link to %s up (%s)", peer.name, "outbound" if conn.outbound else "inbound")
            if current is not None and not current.closed:
                self._retire(current)
            self._requeue_unacked(peer)  # what a lost connection swallowed goes again
        else:
            self._retire(conn)  # redundant: the peer's choice and ours is the other one
        conn.ready.set()
        peer.wakeup.set()

    def _resend_from(self, peer: _Peer) -> int:
        """The lowest sequence number we may still send to ``peer``."""
        if peer.unacked:
            return peer.unacked[0][0]
        if peer.queue:
            return peer.queue[0][0]
        return peer.next_seq

    def _requeue_unacked(self, peer: _Peer) -> None:
        if peer.unacked:
            self.stats["frames_resent"] += len(peer.unacked)
            peer.queue.extendleft(reversed(peer.unacked))
            peer.queued_bytes += peer.unacked_bytes
            peer.unacked.clear()
            peer.unacked_bytes = 0
            peer.wakeup.set()

    def _acked(self, peer: _Peer, upto: int) -> None:
        """The peer received every frame of ours below ``upto``."""
        upto = min(upto, peer.next_seq)  # a peer cannot acknowledge what we never numbered
        if upto <= peer.acked:
            return
        peer.acked = upto
        while peer.unacked and peer.unacked[0][0] < upto:
            peer.unacked_bytes -= _size(peer.unacked.popleft())
        peer.wakeup.set()

    def _on_data(self, conn: _Conn, message: Data) -> None:
        peer = self._peers[conn.peer]
        if conn.peer_session != peer.rx_session:
            self.stats["frames_stale_session"] += 1  # left over from a previous run of the peer
            return
        self._acked(peer, message.ack)
        seq = message.seq
        if seq < peer.rx_next or seq in peer.reorder:
            self.stats["frames_duplicate"] += 1
            return
        cfg = self.config
        if seq > peer.rx_next:  # overtook a frame still in flight on another connection
            size = len(message.payload) + len(message.group) + 32
            if peer.reorder_bytes + size > cfg.unacked_max_bytes or len(peer.reorder) >= 4 * cfg.queue_max_frames:
                raise FrameError("frames far out of order", code="reorder_overflow")
            peer.reorder[seq] = (message.group, message.payload)
            peer.reorder_bytes += size
            self.stats["frames_reordered"] += 1
            return
        self._accept_in_order(peer, message.group, message.payload)
        while peer.rx_next in peer.reorder:
            group, payload = peer.reorder.pop(peer.rx_next)
            peer.reorder_bytes -= len(payload) + len(group) + 32
            self._accept_in_order(peer, group, payload)
        if peer.rx_unacked_frames >= cfg.ack_every_frames or peer.rx_unacked_bytes >= cfg.ack_every_bytes:
            self._send_ack(peer)

    def _accept_in_order(self, peer: _Peer, group: str, payload: bytes) -> None:
        peer.rx_next += 1
        peer.rx_unacked_frames += 1
        peer.rx_unacked_bytes += len(payload)
        if peer.ack_timer is None:  # delayed ack, unless a reply carries it first
            peer.ack_timer = asyncio.get_running_loop().call_later(self.config.ack_delay, self._delayed_ack, peer)
        self.stats["frames_received"] += 1
        self._deliver(peer.name, group, payload)

    def _delayed_ack(self, peer: _Peer) -> None:
        peer.ack_timer = None
        if peer.rx_unacked_frames and not self._closing:
            self._send_ack(peer)

    def _send_ack(self, peer: _Peer) -> None:
        conn = peer.sending
        if conn is None or conn.closed:
            return  # the next Hello or data frame carries it
        transport = conn.writer.transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size() >= self.config.write_buffer_high:
            return  # never grow a buffer the peer does not drain
        conn.writer.write(encode_ack(peer.rx_next))
        peer.rx_unacked_frames = peer.rx_unacked_bytes = 0
        self.stats["acks_sent"] += 1

    def _retire(self, conn: _Conn) -> None:
        """Stop sending on ``conn``: say goodbye after our last frame; close once both did."""
        peer = self._peers[conn.peer]
        if peer.sending is conn:
            peer.sending = None
        if not conn.said_goodbye and not conn.closed:
            conn.said_goodbye = True
            with contextlib.suppress(RuntimeError, OSError):
                conn.writer.write(encode_goodbye())
        if conn.got_goodbye:
            self._drop(conn, None)  # graceful: what was written is flushed, then the stream ends

    async def _read_loop(self, conn: _Conn) -> None:
        decoder = FrameDecoder()
        chunk = self.config.read_chunk
        error: LinkError | None = None
        try:
            got_hello = False
            while True:
                with map_exceptions():
                    if got_hello:
                        data = await conn.reader.read(chunk)
                    else:
                        data = await asyncio.wait_for(conn.reader.read(chunk), self.config.hello_timeout)
                if not data:
                    decoder.eof()
                    break
                self.stats["bytes_received"] += len(data)
                for body in decoder.feed(data):
                    message = decode_message(body)
                    if isinstance(message, Hello):
                        if not got_hello:
                            got_hello = True
                            self._on_ready(conn, message)
                        continue
                    if isinstance(message, Goodbye):
                        conn.got_goodbye = True
                        if conn.said_goodbye:
                            self._drop(conn, None)
                            return
                        continue
                    if not got_hello:
                        raise AuthenticationError("data before hello", code="no_hello")
                    if isinstance(message, Ack):
                        self._acked(self._peers[conn.peer], message.next)
                        continue
                    assert isinstance(message, Data)
                    self._on_data(conn, message)
                await asyncio.sleep(0)  # a flooding peer must not starve the others
        except LinkError as exc:
            error = exc
            if isinstance(exc, FrameError) or exc.code == "no_hello":
                self.stats["bad_frames"] += 1
                log.warning("dropping connection %s %s: %s", "to" if conn.outbound else "from", conn.peer, exc)
        finally:
            self._drop(conn, error)

    def _deliver(self, peer: str, group: str, payload: bytes) -> None:
        try:
            self._on_message(peer, group, payload)
        except Exception:  # a bug above us must not kill the link
            log.exception("message handler failed on a message from %s", peer)

    def _drop(self, conn: _Conn, error: LinkError | None) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.stats["connections_closed"] += 1
        peer = self._peers[conn.peer]
        if conn in peer.conns:
            peer.conns.remove(conn)
        if peer.sending is conn:
            others = [c for c in peer.conns if c.ready.is_set() and not c.closed and not c.said_goodbye]
            others.sort(key=self._preferred, reverse=True)
            peer.sending = others[0] if others else None
            if error is not None and not self._closing:
                log.info("link to %s lost (%s)", peer.name, error)
            if peer.sending is not None:
                self._requeue_unacked(peer)  # may have died with the connection: send again
        conn.ready.set()  # wake a connect() waiting for the hello
        if error is None:
            conn.writer.close()
        else:
            conn.writer.transport.abort()
        peer.wakeup.set()
