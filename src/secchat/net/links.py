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
* **Reliability is the channel's** (:mod:`.channel`, no I/O): each peer has one
  :class:`~secchat.net.channel.Channel` -- sequence numbers per session, cumulative acks,
  resend from the oldest unacknowledged frame on every new connection (the peer's ``Hello``
  says where it is), duplicates dropped, early frames reordered, tail drop when its queue is
  full (the queue then holds a gap-free prefix of what we sent, which is what the protocols
  above need).  This module only moves its frames: a connection (:class:`_Conn`) is a
  :class:`~secchat.net.channel.Transport`, the seam where another transport can plug in.  The
  channel's deadlines (a delayed ack, a stalled connection) are armed with ``call_at``; a
  connection whose data goes unacknowledged for ``stall_timeout`` is dropped and replaced, so
  a partition that left it silently dead costs one reconnect after the heal, not TCP's
  retransmission backoff.
* **Everything is bounded.**  Besides the channel's bounds, each connection's write buffer is
  bounded by the transport's high-water mark and the sender awaits ``drain()``, so a peer that
  stops reading stalls only its own channel.  Reads are bounded by the frame limit.
* **Fair under abuse.**  A sender writes at most ``send_burst`` bytes and a reader handles at
  most ``read_burst_frames`` frames before yielding, so one peer's resend or flood is
  interleaved with everyone else's traffic.  A new connection may carry only the channel's
  ``initial_window`` before the peer acknowledges, and inbound connections per peer are a token
  bucket (``session_burst``, ``session_rate``): a member that reconnects over and over without
  acknowledging costs little.  Inbound handshakes are budgeted: ``max_pending_handshakes`` at
  once, ``max_handshakes_per_source`` per source address, ``reserved_handshakes`` kept for the
  addresses of known peers, ``handshake_timeout`` to authenticate.  Refusals are logged once
  per source and kind per ``refusal_log_interval``, with a count; refused connections leave no
  reference cycles of ours (errors are kept without their tracebacks).
* **Retries**: while a peer with pending frames is unreachable an attempt starts every
  ``retry_delay`` (from ``retry_initial`` by ``retry_factor`` up to ``retry_max``), up to
  ``max_connect_attempts`` at once, so a TCP connect hanging in a partition does not hold up the
  one that will succeed after the heal; the delay resets once a connection is up.
* **Handshakes are paced.**  At most ``max_outbound_handshakes`` of our TLS handshakes run at
  once.  A peer whose last TCP connect succeeded is reachable: an attempt to it waits for its
  turn *before* connecting (its handshake deadline then runs only while we handshake), its TCP
  connect may take ``retry_max`` at most, and no further attempt to it starts while it waits
  or holds the turn.  A turn lasts min(2·``retry_max``, ``connect_timeout``/2) at most; a
  handshake still hanging then (a partition that swallows it) goes on without it, and the
  peer may get another attempt.  A peer that did not answer is unreachable: its attempts
  connect first and wait for a turn after, so connects hanging in a partition hold no turn.  A
  handshake the peer turns away (reset, closed, refused: it is busy) backs off from
  ``retry_max`` doubling to ``busy_retry_max``, jittered; one that merely hangs till our
  deadline does not (a middlebox swallowing it in a partition looks the same).  Why: every
  member dials every other when a conference starts; unpaced, n members on one machine run
  n(n−1) handshakes at once, each takes longer than its deadline, and each failure starts
  more (members of 51 here waited minutes for links that kept failing; at 101 none came up in
  15 minutes).
* **Sessions grow from run to run** (:func:`new_session`: the clock's microseconds and random
  bits), so a late connection of a peer's previous run is recognised and closed.  A restarted
  peer whose clock stepped back by more than the time between its runs is refused until its
  clock passes the old run's (or we restart).
* **Foreign exceptions stop here**: everything is translated into :class:`LinkError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization

from .channel import Channel, ChannelConfig, Transport
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
    FrameDecoder,
    Goodbye,
    Hello,
    check_data,
    decode_message,
    encode_goodbye,
    encode_hello,
)
from .relay import RelayClient, RelayConfig, RelayPipe, tls_over
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
class LinkConfig(ChannelConfig):
    """Tunables of the link layer; every buffer has a bound here.

    Per peer (its :class:`~secchat.net.channel.Channel`, whose config this extends): ``queue_max_frames`` /
    ``queue_max_bytes`` bound frames not yet sent (tail drop beyond); ``unacked_max_bytes``
    frames sent and not yet acknowledged, kept for resending (and the receiver's reorder
    window); ``initial_window`` what a new connection may carry before the peer acknowledges;
    ``ack_every_*`` / ``ack_delay`` when a receiver acknowledges; ``stall_timeout`` how long data
    may go unacknowledged before the connection counts as dead.

    Per connection: ``write_buffer_high`` / ``write_buffer_low`` transport buffer water marks;
    ``send_burst`` bytes a sender writes, ``read_burst_frames`` frames a reader handles, before
    it lets the other peers' senders and readers run; ``read_chunk`` bytes read at once.

    Connecting: ``retry_*`` reconnection backoff (seconds; an attempt starts every
    ``retry_delay`` while the peer is unreachable, at most ``max_connect_attempts`` at once, so
    one hanging TCP connect does not hold up the next, and none while a TLS handshake to it
    waits or runs); ``max_outbound_handshakes`` our TLS handshakes at once (the others wait,
    connected); ``connect_timeout`` bounds our TCP connect and, once it has its turn, our TLS
    handshake; ``hello_timeout`` the peer's first frame.

    Accepting (fairness against floods): ``handshake_timeout`` the short deadline for an inbound
    connection to authenticate; ``max_pending_handshakes`` inbound handshakes in progress, of
    which ``reserved_handshakes`` (at most all but one) only for the addresses of known peers,
    and at most
    ``max_handshakes_per_source`` from one source address; ``session_burst`` /
    ``session_rate`` a token bucket of inbound connections per authenticated peer (each one is a
    path switch and a resend); ``max_connections_per_peer`` connections a peer may hold at once;
    ``refusal_log_interval`` at most one log line per source per interval, with a count.
    """

    write_buffer_high: int = 256 << 10
    write_buffer_low: int = 64 << 10
    send_burst: int = 64 << 10
    retry_initial: float = 0.05
    retry_factor: float = 2.0
    retry_max: float = 1.0
    max_connect_attempts: int = 6
    max_outbound_handshakes: int = 4
    busy_retry_max: float = 8.0
    connect_timeout: float = 5.0
    hello_timeout: float = 5.0
    handshake_timeout: float = 3.0
    read_chunk: int = 64 << 10
    read_burst_frames: int = 128
    max_connections_per_peer: int = 4
    max_pending_handshakes: int = 64
    reserved_handshakes: int = 8
    max_handshakes_per_source: int = 8
    session_burst: int = 4
    session_rate: float = 1.0
    refusal_log_interval: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.write_buffer_low <= self.write_buffer_high:
            raise ValueError("need 0 < write_buffer_low <= write_buffer_high")
        if self.send_burst < 1 or self.read_chunk < 1 or self.read_burst_frames < 1:
            raise ValueError("send_burst, read_chunk and read_burst_frames must be positive")
        if self.retry_initial <= 0 or self.retry_factor < 1 or self.retry_max < self.retry_initial:
            raise ValueError(
                "need retry_initial > 0, retry_factor >= 1, retry_max >= retry_initial"
            )
        if self.connect_timeout <= 0 or self.hello_timeout <= 0 or self.handshake_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.busy_retry_max < self.retry_max:
            raise ValueError("need busy_retry_max >= retry_max")
        if self.max_connect_attempts < 1 or self.max_outbound_handshakes < 1:
            raise ValueError("max_connect_attempts and max_outbound_handshakes must be positive")
        if self.max_pending_handshakes < 1 or self.reserved_handshakes < 0:
            raise ValueError("need max_pending_handshakes >= 1 and reserved_handshakes >= 0")
        if self.max_handshakes_per_source < 1:
            raise ValueError("max_handshakes_per_source must be positive")
        if self.session_burst < 1 or self.session_rate <= 0:
            raise ValueError("need session_burst >= 1 and session_rate > 0")
        if self.refusal_log_interval <= 0:
            raise ValueError("refusal_log_interval must be positive")
        if self.unacked_max_bytes < MAX_FRAME_BODY:
            raise ValueError("unacked_max_bytes must hold at least one maximal frame")
        if self.max_connections_per_peer < 2:
            raise ValueError("max_connections_per_peer must be at least 2 (simultaneous connects)")


def new_session() -> int:
    """A session id that grows from run to run: microseconds of the clock, 10 random bits."""
    return (time.time_ns() // 1000) << 10 | secrets.randbits(10)


class _Conn:
    """One TLS connection to a peer: a :class:`~secchat.net.channel.Transport`."""

    __slots__ = (
        "closed",
        "got_goodbye",
        "outbound",
        "peer",
        "peer_session",
        "reader",
        "ready",
        "relay",
        "remote",
        "said_goodbye",
        "writer",
    )

    def __init__(
        self, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, outbound: bool
    ) -> None:
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
        self.relay = bool(writer.get_extra_info("relay"))  # a pipe through the relay, not TCP

    def write(self, frames: Sequence[bytes]) -> None:
        self.writer.writelines(frames)  # one TLS write (and usually one send) for all of them

    async def drain(self) -> None:
        await self.writer.drain()

    def buffered(self) -> int:
        transport = self.writer.transport
        return (
            0 if transport is None or transport.is_closing() else transport.get_write_buffer_size()
        )

    def abort(self) -> None:
        self.writer.transport.abort()

    def __repr__(self) -> str:
        where = "relay" if self.relay else self.remote
        return f"<conn {'to' if self.outbound else 'from'} {self.peer} {where}>"


if TYPE_CHECKING:
    _TRANSPORT: type[Transport] = _Conn  # checked by mypy: a connection is a channel Transport


class _Peer:
    __slots__ = (
        "address",
        "attempts",
        "busy_delay",
        "channel",
        "conns",
        "handshaking",
        "name",
        "next_attempt",
        "next_probe",
        "next_relay_attempt",
        "path",
        "reachable",
        "relay_attempt",
        "retry_delay",
        "sending",
        "task",
        "timer",
        "timer_at",
        "tokens",
        "tokens_at",
        "wakeup",
    )

    def __init__(self, name: str, channel: Channel, config: LinkConfig) -> None:
        self.name = name
        self.address: Address | None = None
        self.channel = channel
        self.conns: list[_Conn] = []
        self.sending: _Conn | None = None
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at: float | None = None
        self.attempts: set[asyncio.Task[None]] = set()
        self.handshaking = 0  # attempts waiting for their turn, or in their TLS handshake
        self.reachable = True  # its last TCP connect succeeded (or none was tried yet)
        self.busy_delay = 0.0  # backoff after handshakes that failed with the peer reachable
        self.retry_delay = config.retry_initial
        self.next_attempt = 0.0
        self.relay_attempt: asyncio.Task[None] | None = None
        self.next_relay_attempt = 0.0
        self.next_probe = 0.0  # while on the relay: when to try a direct connection again
        self.path: str | None = None  # last reported to on_path
        self.tokens = float(config.session_burst)  # inbound connections we still accept now
        self.tokens_at = 0.0


class _Turn:
    """One connection attempt's turn among our outbound handshakes (see "Handshakes are paced"
    in the module docstring).  While the attempt waits for it or holds it, no other attempt to
    the peer starts.  It is held ``patience`` seconds at most: then given back, the attempt going
    on without it and the peer open to another attempt, so that a handshake hanging in a
    partition (a middlebox that swallows it) neither holds up our handshakes to others nor the
    attempt that will succeed after the heal."""

    __slots__ = ("_held", "_peer", "_timer", "_turns", "taken")

    def __init__(self, turns: asyncio.Semaphore, peer: _Peer) -> None:
        self._turns = turns
        self._peer = peer
        self._held = False
        self._timer: asyncio.TimerHandle | None = None
        self.taken = False

    async def take(self, patience: float) -> None:
        self.taken = True
        self._peer.handshaking += 1
        try:
            await self._turns.acquire()
        except BaseException:
            self._peer.handshaking -= 1
            raise
        self._held = True
        self._timer = asyncio.get_running_loop().call_later(patience, self.give_back)

    def give_back(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._timer is not None:
            self._timer.cancel()
        self._turns.release()
        self._peer.handshaking -= 1
        self._peer.wakeup.set()  # another attempt may be due


class _RefusalLog:
    """At most one log line per source (and kind of refusal) per interval, with a count."""

    MAX_SOURCES = 256

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._seen: OrderedDict[str, tuple[float, int]] = (
            OrderedDict()
        )  # source -> (logged at, since)

    def note(self, source: str, now: float) -> int | None:
        """Record a refusal; the count to log (1 + those suppressed), or None to stay quiet."""
        logged_at, suppressed = self._seen.get(source, (None, 0))
        if logged_at is not None and now - logged_at < self.interval:
            self._seen[source] = (logged_at, suppressed + 1)
            return None
        self._seen[source] = (now, 0)
        self._seen.move_to_end(source)
        while len(self._seen) > self.MAX_SOURCES:
            self._seen.popitem(last=False)
        return suppressed + 1


class LinkManager:
    """All authenticated links of one member (one identity, any number of conferences).

    ``pins`` names every peer we may talk to and its certificate; ``addresses`` the peers whose
    listening address we know.  ``on_message(peer, group, payload)`` is called for each data frame
    that arrives on an authenticated connection.  ``session`` names this run (it must grow from
    run to run of the same identity; default: from the clock).  With a ``relay``
    (:mod:`.relay`), peers are also reached through it: a pipe is opened alongside every
    direct attempt (or alone: ``relay.only``), a direct connection is preferred whenever both
    exist, and while on the relay a direct one is tried every ``relay.direct_probe_interval``.
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
        session: int | None = None,
        relay: RelayConfig | None = None,
    ) -> None:
        self.me = me
        self.config = config or LinkConfig()
        self.pins = pins
        self._on_message = on_message
        self._server_ctx = server_context(credentials)
        self._client_ctx = client_context(credentials)
        #: this run of our link layer; peers number our frames per session
        self.session = session if session is not None else new_session()
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "frames_sent",
                "frames_received",
                "bytes_sent",
                "bytes_received",
                "frames_dropped_unknown_peer",
                "connections_accepted",
                "connections_opened",
                "connections_refused",
                "connections_rate_limited",
                "connect_failures",
                "handshakes_busy",
                "bad_frames",
                "connections_closed",
                "stalls",
            ),
            0,
        )
        self.relay: RelayClient | None = None
        if relay is not None and relay.enabled:
            own = credentials.cert.public_bytes(serialization.Encoding.DER)
            self.relay = RelayClient(relay, own, self._on_relay_open, self.stats)
        self._relay_task: asyncio.Task[None] | None = None
        #: ``on_path(peer, path)`` when the path to a peer changes ("direct", "relay" or None)
        self.on_path: Callable[[str, str | None], None] | None = None
        self._peers: dict[str, _Peer] = {}
        for name in pins.names():
            if name != me:
                self._new_peer(name)
        self._known_hosts: set[str] = set()
        for name, addr in (addresses or {}).items():
            self.set_address(name, addr)
        self._server: asyncio.base_events.Server | None = None
        self._listen_port = 0
        self._handshakes = 0
        self._handshakes_from: dict[str, int] = {}
        self._outbound_handshakes = asyncio.Semaphore(self.config.max_outbound_handshakes)
        self._refusals = _RefusalLog(self.config.refusal_log_interval)
        self._room = asyncio.Event()  # set whenever a sender took a frame off a queue
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()

    def _new_peer(self, name: str) -> _Peer:
        peer = self._peers[name] = _Peer(
            name, Channel(self.session, self.config, self.stats), self.config
        )
        if self.relay is not None:
            self.relay.add_peer(name, self.pins.der(name))
        return peer

    # ------------------------------------------------------------------ lifecycle

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None
    ) -> Address:
        """Listen for peers (on ``sock`` if given, e.g. inherited from a launcher); return the address."""
        if sock is not None:
            self._server = await asyncio.start_server(
                self._accept, sock=sock, limit=self.config.read_chunk
            )
        else:
            self._server = await asyncio.start_server(
                self._accept, host, port, limit=self.config.read_chunk
            )
        addr = self._server.sockets[0].getsockname()
        self._listen_port = addr[1]
        log.info("%s listening on %s:%d", self.me, addr[0], addr[1])
        await self.start_relay()
        return (addr[0], addr[1])

    async def start_relay(self) -> None:
        """Connect to the relay, if one is configured (without listening: a member behind NAT).

        Waits up to the relay's connect timeout; if it is not reachable yet, keeps trying in
        the background (peers are reached directly meanwhile).
        """
        if self.relay is None or self._relay_task is not None:
            return
        self._relay_task = asyncio.get_running_loop().create_task(
            self._relay_loop(self.relay), name="secchat-relay"
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.shield(self.relay.connected.wait()), self.relay.config.connect_timeout
            )

    async def _relay_loop(self, relay: RelayClient) -> None:
        delay = self.config.retry_initial
        while not self._closing:
            try:
                await relay.start()
            except LinkError as exc:
                log.warning("%s; retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * self.config.retry_factor, 5.0)
                continue
            for peer in self._peers.values():
                peer.wakeup.set()
            return

    async def aclose(self) -> None:
        """Stop listening, stop every sender, close every connection."""
        loop = asyncio.get_running_loop()
        for peer in self._peers.values():
            ch = peer.channel
            ch.handle_timer(loop.time() + self.config.ack_delay)  # acks due now: so that our
            conn = peer.sending  # successor is not sent what we already got
            if (
                conn is not None
                and not conn.closed
                and ch.wants_to_send()
                and conn.buffered() < self.config.write_buffer_high
            ):
                with contextlib.suppress(RuntimeError, OSError):
                    conn.write(ch.frames_to_send(loop.time(), 0))
        self._closing = True
        if self._server is not None:
            self._server.close()
        tasks = [t for t in self._tasks if not t.done()]
        if self._relay_task is not None:
            tasks.append(self._relay_task)
        for peer in self._peers.values():
            if peer.timer is not None:
                peer.timer.cancel()
                peer.timer = None
            peer.wakeup.set()
            if peer.task is not None:
                tasks.append(peer.task)
            tasks.extend(peer.attempts)
            if peer.relay_attempt is not None:
                tasks.append(peer.relay_attempt)
            for conn in list(peer.conns):
                self._drop(conn, None)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        if self.relay is not None:
            await asyncio.sleep(0)  # let the pipes' flushers write what the closes left
            await self.relay.aclose()

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
            self._new_peer(name)
        if address is not None:
            self.set_address(name, address)

    def set_address(self, name: str, address: Address) -> None:
        """Tell the links where ``name`` listens."""
        peer = self._peer(name)
        peer.address = (str(address[0]), int(address[1]))
        self._known_hosts.add(peer.address[0])
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
        return {n: p.channel.queued for n, p in self._peers.items()}

    def write_buffer_sizes(self) -> dict[str, int]:
        """Per peer: bytes in the transport buffer of the connection we send on."""
        return {
            n: p.sending.buffered() if p.sending is not None else 0 for n, p in self._peers.items()
        }

    async def wait_for_room(self, fraction: float = 0.5, *, stalled_after: float = 2.0) -> None:
        """Wait until the queues of the peers that keep up are at most ``fraction`` full.

        Application back-pressure for bulk senders.  Peers that do not keep up are ignored, so
        they cannot hold everyone back: those whose queue has not moved for ``stalled_after``
        seconds (down, paused, or not reading).  A slow peer that still reads, or one that is
        reconnecting, is waited for -- also one whose queue overflowed while it was stalled and
        that reads again: not pacing it while it drains would tail-drop every burst again, and
        its SMC layer could not keep up with the holes (issue 9: a reader resumed after SIGSTOP
        lost 2 of every 32 frames sent after it was back).
        """
        cfg = self.config
        loop = asyncio.get_running_loop()

        def blocking(p: _Peer, now: float) -> bool:
            ch = p.channel
            frames, nbytes = ch.queued
            if (
                frames <= cfg.queue_max_frames * fraction
                and nbytes <= cfg.queue_max_bytes * fraction
            ):
                return False
            return now - ch.last_progress < stalled_after

        while True:
            now = loop.time()
            waiting = [p for p in self._peers.values() if blocking(p, now)]
            if not waiting:
                return
            self._room.clear()
            wake = min(p.channel.last_progress for p in waiting) + stalled_after
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), max(0.001, wake - now))

    def connected(self, name: str) -> bool:
        peer = self._peers.get(name)
        return peer is not None and peer.sending is not None

    def path(self, name: str) -> str | None:
        """How frames to ``name`` go now: ``"direct"``, ``"relay"``, or None (no link)."""
        peer = self._peers.get(name)
        conn = peer.sending if peer is not None else None
        if conn is None:
            return None
        return "relay" if conn.relay else "direct"

    def _path_changed(self, peer: _Peer) -> None:
        path = self.path(peer.name)
        if path != peer.path and not self._closing:
            peer.path = path
            if self.on_path is not None:
                try:
                    self.on_path(peer.name, path)
                except Exception:  # a bug above us must not kill the link
                    log.exception("path handler failed")

    # ------------------------------------------------------------------ sending

    def _peer(self, name: str) -> _Peer:
        try:
            return self._peers[name]
        except KeyError:
            raise ValueError(f"{name!r} is not a known peer") from None

    def _enqueue(self, peer: _Peer, group: str, payload: bytes) -> bool:
        ch = peer.channel
        overflowing = ch.overflowing
        if not ch.send(group, payload):
            if not overflowing:
                frames, nbytes = ch.queued
                log.warning(
                    "queue for %s is full (%d frames, %d bytes): dropping new frames until it drains",
                    peer.name,
                    frames,
                    nbytes,
                )
            return False
        self._poke(peer, True)
        return True

    def _poke(self, peer: _Peer, send: bool = False) -> None:
        """The channel may have something to send (``send``) or an earlier deadline: wake its sender."""
        if self._closing:
            return
        if peer.task is None:
            peer.task = asyncio.get_running_loop().create_task(
                self._sender(peer), name=f"secchat-send-{peer.name}"
            )
        if send:
            peer.wakeup.set()
            return
        ch = peer.channel
        deadline = ch.get_timer()
        if ch.wants_to_send() or (
            deadline is not None and (peer.timer_at is None or deadline < peer.timer_at)
        ):
            peer.wakeup.set()

    async def _sleep(self, peer: _Peer, until: float | None) -> None:
        """Wait for a poke, or until loop time ``until``."""
        if until != peer.timer_at:
            if peer.timer is not None:
                peer.timer.cancel()
            peer.timer = (
                asyncio.get_running_loop().call_at(until, self._timer_fired, peer)
                if until is not None
                else None
            )
            peer.timer_at = until
        peer.wakeup.clear()
        await peer.wakeup.wait()

    @staticmethod
    def _timer_fired(peer: _Peer) -> None:
        # forget the deadline: the loop may fire a little early, and the same deadline must
        # then be armed again rather than taken as still pending
        peer.timer = None
        peer.timer_at = None
        peer.wakeup.set()

    async def _sender(self, peer: _Peer) -> None:
        """Move the channel's frames to its connection; (re)connect while it has none.

        Each turn writes at most ``send_burst`` bytes and then yields, so a peer with a long
        resend cannot hold up the frames of the others.
        """
        cfg = self.config
        ch = peer.channel
        loop = asyncio.get_running_loop()
        while not self._closing:
            now = loop.time()
            deadline = ch.get_timer()
            if deadline is not None and deadline <= now:
                ch.handle_timer(now)
                if ch.stalled and peer.sending is not None:
                    self.stats["stalls"] += 1
                    self._drop(
                        peer.sending,
                        LinkTimeout(
                            f"nothing acknowledged for {cfg.stall_timeout}s", code="stalled"
                        ),
                    )
            conn = peer.sending
            if conn is None:
                wake = ch.get_timer()
                if ch.has_pending():
                    for attempt in (self._maybe_connect(peer, now), self._maybe_relay(peer, now)):
                        if attempt is not None:
                            wake = attempt if wake is None else min(wake, attempt)
                await self._sleep(peer, wake)
                continue
            probe = self._maybe_probe(peer, conn, now)
            if not ch.wants_to_send():
                wake = ch.get_timer()
                if probe is not None:
                    wake = probe if wake is None else min(wake, probe)
                await self._sleep(peer, wake)
                continue
            overflowing = ch.overflowing
            frames = ch.frames_to_send(now, cfg.send_burst)
            self._room.set()
            if overflowing and not ch.overflowing:
                log.warning(
                    "queue for %s drained; %d frames were dropped so far", peer.name, ch.dropped
                )
            try:
                with map_exceptions():
                    conn.write(frames)
                    self.stats["frames_sent"] += len(frames)
                    self.stats["bytes_sent"] += sum(map(len, frames))
                    await conn.drain()
            except LinkError as exc:
                self._drop(conn, exc)
            await asyncio.sleep(0)  # let the other peers' senders and readers run

    def _direct(self, peer: _Peer) -> bool:
        return peer.address is not None and not (self.relay is not None and self.relay.config.only)

    def _maybe_probe(self, peer: _Peer, conn: _Conn, now: float) -> float | None:
        """On the relay with a known address: try a direct connection now and then."""
        if not conn.relay or not self._direct(peer) or self.relay is None:
            return None
        if now >= peer.next_probe:
            if peer.next_probe:  # not on the first turn: the relay came up alongside a try
                self._maybe_connect(peer, now)
            peer.next_probe = now + self.relay.config.direct_probe_interval
        return peer.next_probe

    def _maybe_relay(self, peer: _Peer, now: float) -> float | None:
        """Open a pipe through the relay if one is due; when the next may start."""
        relay = self.relay
        if relay is None or not relay.up or peer.relay_attempt is not None:
            return None
        if now < peer.next_relay_attempt:
            return peer.next_relay_attempt
        task = asyncio.get_running_loop().create_task(
            self._attempt(peer, relay=True), name=f"secchat-relay-connect-{peer.name}"
        )
        peer.relay_attempt = task
        peer.next_relay_attempt = now + self.config.retry_max
        return None

    def _maybe_connect(self, peer: _Peer, now: float) -> float | None:
        """Start a connection attempt if one is due; when the next may start (None: when one ends)."""
        cfg = self.config
        if not self._direct(peer):
            return None
        if len(peer.attempts) >= cfg.max_connect_attempts or peer.handshaking:
            return None  # (an attempt ending wakes the sender)
        if now < peer.next_attempt:
            return peer.next_attempt
        task = asyncio.get_running_loop().create_task(
            self._attempt(peer), name=f"secchat-connect-{peer.name}"
        )
        peer.attempts.add(task)
        task.add_done_callback(peer.attempts.discard)
        peer.next_attempt = now + peer.retry_delay
        peer.retry_delay = min(peer.retry_delay * cfg.retry_factor, cfg.retry_max)
        return peer.next_attempt if len(peer.attempts) < cfg.max_connect_attempts else None

    async def _attempt(self, peer: _Peer, *, relay: bool = False) -> None:
        try:
            if relay:
                await self._connect_relay(peer)
            else:
                await self._connect(peer)
        except LinkError as exc:
            self.stats["connect_failures"] += 1
            if relay:
                log.info("cannot reach %s through the relay (%s); retrying", peer.name, exc)
                return
            assert peer.address is not None
            # the first failure of an outage at INFO, the retries at DEBUG
            level = (
                logging.INFO
                if self.stats["connect_failures"] == 1
                or peer.retry_delay <= 2 * self.config.retry_initial
                else logging.DEBUG
            )
            log.log(level, "cannot reach %s at %s:%d (%s); retrying", peer.name, *peer.address, exc)
        finally:
            if relay:
                peer.relay_attempt = None
            peer.wakeup.set()

    async def _connect_relay(self, peer: _Peer) -> _Conn:
        assert self.relay is not None
        pipe = self.relay.open(peer.name)
        cfg = self.config
        try:
            with map_exceptions(connecting=True):
                reader, writer = await asyncio.wait_for(
                    tls_over(
                        pipe,
                        self._client_ctx,
                        server_side=False,
                        timeout=cfg.connect_timeout,
                        limit=cfg.read_chunk,
                    ),
                    cfg.connect_timeout * 2,
                )
        except LinkError as exc:
            pipe.abort()
            if isinstance(exc, AuthenticationError):
                self.stats["connections_refused"] += 1
                log.warning("refused relay connection to %s: %s", peer.name, exc)
            raise
        return await self._established(peer, reader, writer, "through the relay")

    async def _connect(self, peer: _Peer) -> _Conn:
        assert peer.address is not None
        host, port = peer.address
        cfg = self.config
        turn = _Turn(self._outbound_handshakes, peer)
        # how long a handshake holds its turn (and keeps the peer from another attempt)
        patience = min(2 * cfg.retry_max, cfg.connect_timeout / 2)
        try:
            if peer.reachable:  # our turn first, then connect (see "Handshakes are paced")
                await turn.take(patience)
            with map_exceptions(connecting=True):
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(host, port, limit=cfg.read_chunk),
                        min(cfg.connect_timeout, cfg.retry_max) if turn.taken else cfg.connect_timeout,
                    )
                except OSError:
                    peer.reachable = False
                    raise
            peer.reachable = True
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                if not turn.taken:
                    await turn.take(patience)
                    started = loop.time()
                with map_exceptions(connecting=True):
                    # no wait_for: running start_tls in another task breaks it (CPython 3.11);
                    # the handshake timeout bounds it instead
                    await writer.start_tls(
                        self._client_ctx, server_hostname=None, ssl_handshake_timeout=cfg.connect_timeout
                    )
            except BaseException as exc:
                writer.transport.abort()
                # turned away (reset, closed, refused) rather than timed out: it is busy.  A
                # handshake that hangs till our deadline is a partition as likely (a middlebox
                # swallows it): no backoff then, so the heal is found at the usual pace
                if isinstance(exc, LinkError) and loop.time() - started < cfg.connect_timeout:
                    self._busy(peer)
                raise
        except AuthenticationError as exc:
            self.stats["connections_refused"] += 1
            log.warning("refused connection to %s at %s:%d: %s", peer.name, host, port, exc)
            raise
        finally:
            turn.give_back()
        return await self._established(peer, reader, writer, f"at {host}:{port}")

    def _busy(self, peer: _Peer) -> None:
        """Our handshake to a reachable ``peer`` failed: it is busy (or refused us).  Back off,
        doubling from ``retry_max`` to ``busy_retry_max``, jittered so that the members a busy
        peer turned away do not all come back at once."""
        cfg = self.config
        peer.busy_delay = min(max(peer.busy_delay * 2, cfg.retry_max), cfg.busy_retry_max)
        now = asyncio.get_running_loop().time()
        wait = peer.busy_delay * (0.5 + secrets.randbelow(1 << 16) / (1 << 17))
        peer.next_attempt = max(peer.next_attempt, now + wait)
        self.stats["handshakes_busy"] += 1

    async def _established(
        self, peer: _Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str
    ) -> _Conn:
        """Our TLS handshake to ``peer`` is done: check the pin, open, wait for its Hello."""
        cfg = self.config
        der = peer_certificate(writer.get_extra_info("ssl_object"))
        try:
            self.pins.check(peer.name, der)
        except AuthenticationError as exc:
            self.stats["connections_refused"] += 1
            log.warning("refused connection to %s %s: %s", peer.name, where, exc)
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

    def _refuse(self, where: str, source: str, reason: object, code: str) -> None:
        """Count a refused inbound connection; log it once per source, kind and interval."""
        self.stats["connections_refused"] += 1
        count = self._refusals.note(f"{source} {code}", asyncio.get_running_loop().time())
        if count is not None:
            more = (
                f" ({count - 1} more from this source since the last report)" if count > 1 else ""
            )
            log.warning("refused inbound connection from %s: %s%s", where, reason, more)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        remote = writer.get_extra_info("peername")
        host = str(remote[0]) if remote else "?"
        where = f"{remote[0]}:{remote[1]}" if remote else "?"
        if self.relay is not None and self.relay.config.only:
            writer.transport.abort()  # everything through the relay, as configured
            self._refuse(where, host, "only the relay is used here", "relay_only")
            return
        cfg = self.config
        known = host in self._known_hosts
        reserved = min(cfg.reserved_handshakes, cfg.max_pending_handshakes - 1)
        room = cfg.max_pending_handshakes - (0 if known else reserved)
        if (
            self._handshakes >= room
            or self._handshakes_from.get(host, 0) >= cfg.max_handshakes_per_source
        ):
            writer.transport.abort()
            self._refuse(where, host, "too many handshakes in progress", "busy")
            return
        self._handshakes += 1
        self._handshakes_from[host] = self._handshakes_from.get(host, 0) + 1
        error: LinkError | None = None
        try:
            with map_exceptions(connecting=True):
                # no wait_for here: running start_tls in another task breaks it (CPython 3.11);
                # the handshake timeout bounds it instead
                await writer.start_tls(
                    self._server_ctx, ssl_handshake_timeout=cfg.handshake_timeout
                )
            name = self._inbound_identity(writer)
        except LinkError as exc:
            error = exc.with_traceback(None)  # no frame -> error -> traceback -> frame cycle
        finally:
            self._handshakes -= 1
            left = self._handshakes_from.pop(host) - 1
            if left:
                self._handshakes_from[host] = left
        if error is not None:
            writer.transport.abort()
            self._refuse(where, host, error, error.code)
            return
        peer = self._peers[name]
        if not self._take_token(peer):
            writer.transport.abort()
            self.stats["connections_rate_limited"] += 1
            self._refuse(
                where, host, f"{name} reconnects too often (at most {cfg.session_rate:g}/s)", "rate"
            )
            return
        conn = self._open(name, reader, writer, outbound=False)
        if conn is not None:
            self.stats["connections_accepted"] += 1

    def _inbound_identity(self, writer: asyncio.StreamWriter, claimed: str | None = None) -> str:
        """The pinned member behind an inbound TLS connection (``claimed``: the relay's word)."""
        der = peer_certificate(writer.get_extra_info("ssl_object"))
        name = self.pins.identify(der)
        if name == self.me or name not in self._peers:
            raise AuthenticationError(
                f"certificate of {describe_certificate(der)} is our own", code="self"
            )
        if claimed is not None and claimed != name:
            raise AuthenticationError(
                f"{name} wrote on the relay subject of {claimed}", code="wrong_subject"
            )
        return name

    def _on_relay_open(self, pipe: RelayPipe) -> None:
        """A peer opened a pipe to us through the relay: run the TLS server side over it."""
        if self._closing:
            pipe.abort()
            return
        task = asyncio.get_running_loop().create_task(
            self._accept_relay(pipe), name=f"secchat-relay-accept-{pipe.peer}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_relay(self, pipe: RelayPipe) -> None:
        cfg = self.config
        source = "relay"  # one source for the budget: the relay can name any token
        if (
            self._handshakes >= cfg.max_pending_handshakes
            or self._handshakes_from.get(source, 0) >= cfg.max_handshakes_per_source
        ):
            pipe.abort()
            self._refuse(f"the relay (as {pipe.peer})", source, "too many handshakes", "busy")
            return
        self._handshakes += 1
        self._handshakes_from[source] = self._handshakes_from.get(source, 0) + 1
        try:
            with map_exceptions(connecting=True):
                reader, writer = await tls_over(
                    pipe,
                    self._server_ctx,
                    server_side=True,
                    timeout=cfg.handshake_timeout,
                    limit=cfg.read_chunk,
                )
            name = self._inbound_identity(writer, pipe.peer)
        except LinkError as exc:
            pipe.abort()
            self._refuse(f"the relay (as {pipe.peer})", source, exc.with_traceback(None), exc.code)
            return
        finally:
            self._handshakes -= 1
            left = self._handshakes_from.pop(source) - 1
            if left:
                self._handshakes_from[source] = left
        peer = self._peers[name]
        if not self._take_token(peer):
            writer.transport.abort()
            self.stats["connections_rate_limited"] += 1
            self._refuse("the relay", source, f"{name} reconnects too often", "rate")
            return
        if self._open(name, reader, writer, outbound=False) is not None:
            self.stats["connections_accepted"] += 1

    def _take_token(self, peer: _Peer) -> bool:
        """One inbound connection of ``peer`` from its token bucket (a path switch costs a resend)."""
        cfg = self.config
        now = asyncio.get_running_loop().time()
        peer.tokens = min(
            float(cfg.session_burst), peer.tokens + (now - peer.tokens_at) * cfg.session_rate
        )
        peer.tokens_at = now
        if peer.tokens < 1:
            return False
        peer.tokens -= 1
        return True

    def _open(
        self,
        name: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        outbound: bool,
    ) -> _Conn | None:
        peer = self._peers[name]
        if self._closing or len(peer.conns) >= self.config.max_connections_per_peer:
            log.warning(
                "refusing another connection %s %s: limit reached",
                "to" if outbound else "from",
                name,
            )
            writer.transport.abort()
            return None
        writer.transport.set_write_buffer_limits(
            high=self.config.write_buffer_high, low=self.config.write_buffer_low
        )
        conn = _Conn(name, reader, writer, outbound)
        peer.conns.append(conn)
        conn.write((encode_hello(self._listen_port, *peer.channel.hello_fields()),))
        task = asyncio.get_running_loop().create_task(
            self._read_loop(conn), name=f"secchat-read-{name}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return conn

    def _rank(self, conn: _Conn) -> tuple[bool, bool]:
        """Which connection both sides keep: a direct one over the relay, then the one opened
        by the smaller name of the pair."""
        return (not conn.relay, conn.outbound == (self.me < conn.peer))

    def _on_ready(self, conn: _Conn, hello: Hello) -> None:
        peer = self._peers[conn.peer]
        now = asyncio.get_running_loop().time()
        if not conn.outbound and hello.listen_port and conn.remote is not None:
            learned = (conn.remote[0], hello.listen_port)
            if peer.address != learned:
                log.info("learned address of %s: %s:%d", peer.name, *learned)
                peer.address = learned
                self._known_hosts.add(learned[0])
        ch = peer.channel
        if not ch.on_session(
            hello.session, hello.ack_session, hello.ack_next, hello.resend_from, now
        ):
            self._drop(
                conn, LinkClosed("a connection of an earlier run of the peer", code="stale_session")
            )
            return
        conn.peer_session = hello.session
        peer.retry_delay = self.config.retry_initial
        peer.busy_delay = 0.0
        peer.next_attempt = 0.0
        current = peer.sending
        # a connection to an earlier run of the peer is dead even if we have not noticed yet
        stale = current is not None and current.peer_session != hello.session
        if current is None or current.closed or stale or self._rank(conn) > self._rank(current):
            peer.sending = conn
            log.info(
                "link to %s up (%s%s)",
                peer.name,
                "outbound" if conn.outbound else "inbound",
                ", through the relay" if conn.relay else "",
            )
            if current is not None and not current.closed:
                self._retire(current)
            ch.new_path(now)  # what a lost connection swallowed goes again, at once
        else:
            self._retire(conn)  # redundant: the peer's choice and ours is the other one
        conn.ready.set()
        self._path_changed(peer)
        self._poke(peer, True)

    def _retire(self, conn: _Conn) -> None:
        """Stop sending on ``conn``: say goodbye after our last frame; close once both did."""
        peer = self._peers[conn.peer]
        if peer.sending is conn:
            peer.sending = None
        if not conn.said_goodbye and not conn.closed:
            conn.said_goodbye = True
            with contextlib.suppress(RuntimeError, OSError):
                conn.write((encode_goodbye(),))
        if conn.got_goodbye:
            self._drop(conn, None)  # graceful: what was written is flushed, then the stream ends

    async def _read_loop(self, conn: _Conn) -> None:
        decoder = FrameDecoder()
        chunk = self.config.read_chunk
        burst = self.config.read_burst_frames
        peer = self._peers[conn.peer]
        ch = peer.channel
        loop = asyncio.get_running_loop()
        error: LinkError | None = None
        try:
            got_hello = False
            while not conn.closed:
                with map_exceptions():
                    if got_hello:
                        data = await conn.reader.read(chunk)
                    else:
                        data = await asyncio.wait_for(
                            conn.reader.read(chunk), self.config.hello_timeout
                        )
                if not data:
                    decoder.eof()
                    break
                self.stats["bytes_received"] += len(data)
                for turn, body in enumerate(decoder.feed(data), 1):
                    if turn % burst == 0:
                        self._poke(peer)
                        await asyncio.sleep(0)  # a flooding peer must not starve the others
                        if conn.closed:
                            return
                    now = loop.time()
                    message = decode_message(body)
                    if isinstance(message, Hello):
                        if not got_hello:
                            got_hello = True
                            self._on_ready(conn, message)
                            if conn.closed:
                                return
                        continue
                    if isinstance(message, Goodbye):
                        conn.got_goodbye = True
                        if conn.said_goodbye:
                            self._drop(conn, None)
                            return
                        continue
                    if not got_hello:
                        raise AuthenticationError("data before hello", code="no_hello")
                    for group, payload in ch.receive(message, conn.peer_session, now):
                        self.stats["frames_received"] += 1
                        self._deliver(peer.name, group, payload)
                self._poke(peer)  # an ack may be due, or its deadline earlier
                await asyncio.sleep(0)
        except LinkError as exc:
            error = exc.with_traceback(None)  # no frame -> error -> traceback -> frame cycle
            if isinstance(exc, FrameError) or exc.code == "no_hello":
                self.stats["bad_frames"] += 1
                log.warning(
                    "dropping connection %s %s: %s",
                    "to" if conn.outbound else "from",
                    conn.peer,
                    exc,
                )
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
            others = [
                c
                for c in peer.conns
                if c.ready.is_set()
                and not c.closed
                and not c.said_goodbye
                and c.peer_session == conn.peer_session
            ]
            others.sort(key=self._rank, reverse=True)
            peer.sending = others[0] if others else None
            if error is not None and not self._closing:
                log.info("link to %s lost (%s)", peer.name, error)
            if peer.sending is not None:
                peer.channel.new_path(asyncio.get_running_loop().time())  # may have died with it
        conn.ready.set()  # wake a connect() waiting for the hello
        self._path_changed(peer)
        if error is None:
            conn.writer.close()
        else:
            conn.abort()
        peer.wakeup.set()
