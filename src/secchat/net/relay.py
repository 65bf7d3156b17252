"""An untrusted NATS relay as the thesis's insecure channel: byte pipes between members.

Why this shape: the thesis's point-to-point links are authenticated end to end over a channel
that "neither provides authenticity nor secrecy" (§2.1).  A relay is such a channel, so it gets
no trust and no new cryptography: each pipe here is an :class:`asyncio.Transport` carrying the
*same* TLS 1.3 session, mutual authentication and certificate pins as a direct TCP link
(:mod:`.links` runs ``loop.start_tls`` over it, i.e. ``ssl.MemoryBIO`` / ``SSLObject``).  The
relay only moves opaque TLS records; a dropped, duplicated, reordered, replayed or altered
record fails TLS's record MAC or sequence check, the connection is dropped, and the channel
(:mod:`.channel`) resends on the next one -- delay, never forgery.

Subjects reveal no names and no conference: a member's *token* is a hash of its certificate
(``<prefix>.<token of receiver>.<token of sender>``), so the relay sees which anonymous tokens
talk, and how much and when, but none of the ids in clear.  Anyone holding the certificates
(the members, the directory) can compute the tokens; see docs/deploy.md.

Each message is ``conn id (8) | kind (1) | TLS bytes``; the kind says which side wrote it and
whether it opens or closes the pipe.  A pipe that was never opened gets nothing (counted), an
inbound open is one handshake of the link layer's budget.  Bounded: a pipe's outgoing buffer
has the link's write-buffer water marks (the TLS writer awaits ``drain``), its incoming buffer
while reading is paused at most ``max_buffered`` (then it is aborted), and NATS's own pending
limits drop what a slow subscriber cannot take (TLS then fails and the channel resends).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConnectError

__all__ = ["RelayClient", "RelayConfig", "RelayPipe", "member_token"]

log = logging.getLogger("secchat.net.relay")

# kinds: who wrote it (the side that opened the pipe, or the other) and what it is
OPEN, DATA_FROM_OPENER, DATA_FROM_ACCEPTER, CLOSE_FROM_OPENER, CLOSE_FROM_ACCEPTER = range(1, 6)
_HEADER = 9


@dataclass(frozen=True)
class RelayConfig:
    """Where the relay is and how a member uses it.

    ``servers``: NATS URLs (several for a cluster; the client fails over).  ``only``: never try
    direct links, everything goes through the relay.  ``prefix``: first subject token.
    ``chunk``: bytes of TLS stream per relay message.  ``max_buffered``: incoming bytes a pipe
    holds while its reader is paused.  ``pending_msgs`` / ``pending_bytes``: NATS's bound on
    messages our subscription has not handled yet.  ``max_pipes``: pipes at once, ours and the
    peers' (further opens are dropped and counted: a flood of forged opens costs at most this
    many pipes' state).  ``direct_probe_interval``: while a peer is
    reached through the relay, a direct connection to its known address is tried this often.
    ``stream_*``: the JetStream store of secure multicast frames (:mod:`.store`;
    ``stream_max_age`` seconds, ``stream_max_bytes`` per conference, 0 disables the store;
    ``stream_replicas`` copies in a cluster).
    """

    servers: tuple[str, ...] = ()
    only: bool = False
    prefix: str = "secchat"
    chunk: int = 32 << 10
    max_buffered: int = 32 << 20
    pending_msgs: int = 65536
    pending_bytes: int = 64 << 20
    max_pipes: int = 256
    direct_probe_interval: float = 10.0
    connect_timeout: float = 5.0
    stream_max_age: float = 7 * 24 * 3600.0
    stream_max_bytes: int = 64 << 20
    stream_replicas: int = 1

    def __post_init__(self) -> None:
        for url in self.servers:
            if not url.startswith(("nats://", "tls://")):
                raise ValueError(f"a relay URL starts with nats:// or tls://, got {url!r}")
        if not self.prefix or not all(c.isalnum() or c in "-_" for c in self.prefix):
            raise ValueError("the relay prefix is one subject token of letters, digits, - and _")
        if self.chunk < 1024 or self.max_buffered < self.chunk:
            raise ValueError("need chunk >= 1024 and max_buffered >= chunk")
        if self.pending_msgs < 1 or self.pending_bytes < self.chunk:
            raise ValueError("need pending_msgs >= 1 and pending_bytes >= chunk")
        if self.max_pipes < 2:
            raise ValueError("max_pipes must be at least 2")
        if self.direct_probe_interval <= 0 or self.connect_timeout <= 0:
            raise ValueError("direct_probe_interval and connect_timeout must be positive")
        if self.stream_max_age <= 0 or self.stream_max_bytes < 0:
            raise ValueError("need stream_max_age > 0 and stream_max_bytes >= 0")
        if not 1 <= self.stream_replicas <= 5:
            raise ValueError("stream_replicas must be in 1..5 (JetStream's limit)")

    @property
    def enabled(self) -> bool:
        return bool(self.servers)


def member_token(der: bytes) -> str:
    """The subject token of the member with certificate ``der`` (no name, no conference)."""
    return hashlib.sha256(b"secchat/relay-token/v1\0" + der).hexdigest()[:32]


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buf = memoryview(protocol.get_buffer(len(view)))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]
    elif isinstance(protocol, asyncio.Protocol):
        protocol.data_received(data)


class RelayPipe(asyncio.Transport):
    """One ordered byte pipe to a peer through the relay (what TLS runs over).

    ``opener``: we opened it (the TLS client).  Writes are buffered and published in chunks by
    one task; ``write_buffer`` water marks pause the protocol above it.
    """

    _start_tls_compatible = True

    def __init__(self, client: RelayClient, peer: str, conn_id: bytes, opener: bool) -> None:
        super().__init__()
        self.client = client
        self.peer = peer
        self.conn_id = conn_id
        self.opener = opener
        self._protocol: asyncio.BaseProtocol | None = None
        self._out = bytearray()
        self._in: list[bytes] = []
        self._in_bytes = 0
        self._reading = False
        self._closing = False
        self._lost = False
        self._opened = not opener  # the accepter's first message is plain data
        self._high, self._low = 256 << 10, 64 << 10
        self._paused = False
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._flusher(), name=f"secchat-relay-{peer}"
        )

    # -- asyncio.Transport
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"relay": True, "peername": None}.get(name, default)

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        self._reading = True
        while self._in and self._reading and not self._lost and self._protocol is not None:
            data = self._in.pop(0)
            self._in_bytes -= len(data)
            _feed(self._protocol, data)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = high if high is not None else 256 << 10
        self._low = low if low is not None else self._high // 4

    def get_write_buffer_size(self) -> int:
        return len(self._out)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._lost:
            return
        self._out += data
        self._wake.set()
        if not self._paused and len(self._out) > self._high and self._protocol is not None:
            self._paused = True
            self._protocol.pause_writing()

    def write_eof(self) -> None:
        self.close()

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        """Flush what was written, say so to the peer, end."""
        if not self._closing:
            self._closing = True
            self._wake.set()

    def abort(self) -> None:
        self._force_close(None)

    def _force_close(self, exc: Exception | None) -> None:
        # asyncio's SSLProtocol calls this on a fatal TLS error (e.g. a record the relay altered)
        if self._lost:
            return
        self._closing = True
        self._out.clear()
        self._send_close()
        self._connection_lost(exc)

    # -- from the client
    def received(self, data: bytes) -> None:
        if self._lost:
            return
        if self._reading and self._protocol is not None and not self._in:
            _feed(self._protocol, data)
            return
        if self._in_bytes + len(data) > self.client.config.max_buffered:
            self.client.stats["relay_overflows"] += 1
            self.abort()
            return
        self._in.append(data)
        self._in_bytes += len(data)

    def peer_closed(self) -> None:
        if not self._lost:
            self._out.clear()
            self._closing = True
            self._connection_lost(None)

    # -- internals
    def _send_close(self) -> None:
        kind = CLOSE_FROM_OPENER if self.opener else CLOSE_FROM_ACCEPTER
        self.client.post(self.peer, self.conn_id, kind, b"")

    def _connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._wake.set()
        self.client.forget(self)
        if self._protocol is not None:
            with contextlib.suppress(Exception):
                self._protocol.connection_lost(exc)

    async def _flusher(self) -> None:
        chunk = self.client.config.chunk
        data_kind = DATA_FROM_OPENER if self.opener else DATA_FROM_ACCEPTER
        while not self._lost:
            if not self._out:
                if self._closing:
                    self._send_close()
                    self._connection_lost(None)
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            piece = bytes(self._out[:chunk])
            del self._out[:chunk]
            kind = data_kind if self._opened else OPEN
            self._opened = True
            try:
                await self.client.publish(self.peer, self.conn_id, kind, piece)
            except Exception as exc:  # the relay is gone: this pipe is dead, the channel resends
                self._connection_lost(ConnectionError(f"relay: {exc}"))
                return
            if self._paused and len(self._out) <= self._low and self._protocol is not None:
                self._paused = False
                self._protocol.resume_writing()


#: ``on_open(pipe)`` -- a peer opened a pipe to us (the link layer runs a TLS server over it)
OpenHandler = Callable[[RelayPipe], None]


class RelayClient:
    """Our connection to the relay: one subscription for everything sent to our token."""

    def __init__(
        self, config: RelayConfig, my_der: bytes, on_open: OpenHandler, stats: dict[str, int]
    ) -> None:
        self.config = config
        self.token = member_token(my_der)
        self._on_open = on_open
        self._names: dict[str, str] = {}  # token -> peer name
        self._tokens: dict[str, str] = {}  # peer name -> token
        self._pipes: dict[tuple[str, bytes, bool], RelayPipe] = {}  # (peer, id, we opened)
        self._nc: Any = None
        self.connected = asyncio.Event()
        self.stats = stats  # the link layer's counters
        for key in (
            "relay_messages_in",
            "relay_messages_out",
            "relay_unknown_sender",
            "relay_unknown_pipe",
            "relay_bad_messages",
            "relay_overflows",
            "relay_pipes_opened",
            "relay_pipes_accepted",
            "relay_pipes_refused",
        ):
            stats.setdefault(key, 0)

    def add_peer(self, name: str, der: bytes) -> None:
        token = member_token(der)
        self._names[token] = name
        self._tokens[name] = token

    @property
    def up(self) -> bool:
        return self._nc is not None and bool(self._nc.is_connected)

    async def start(self) -> None:
        """Connect to the relay (retrying in the background: the relay may come up later)."""
        try:
            import nats  # an optional dependency: secchat[relay]
        except ImportError:
            raise ConnectError(
                "the relay needs the nats-py package (pip install 'secchat[relay]')"
            ) from None
        cfg = self.config

        async def on_disconnect() -> None:
            self.connected.clear()
            if self._nc is not None:  # not our own close
                log.info("relay connection lost; reconnecting")

        async def on_reconnect() -> None:
            self.connected.set()
            log.info("relay connection back")

        async def on_error(exc: Exception) -> None:
            log.debug("relay: %s", exc)

        try:
            self._nc = await nats.connect(
                servers=list(cfg.servers),
                connect_timeout=int(max(1, cfg.connect_timeout)),
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,  # type: ignore[arg-type]
                ping_interval=2,
                max_outstanding_pings=2,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                error_cb=on_error,
                name="secchat",
            )
        except Exception as exc:
            raise ConnectError(
                f"cannot reach the relay at {', '.join(cfg.servers)}: {exc}"
            ) from None
        await self._nc.subscribe(
            f"{cfg.prefix}.{self.token}.*",
            cb=self._on_msg,
            pending_msgs_limit=cfg.pending_msgs,
            pending_bytes_limit=cfg.pending_bytes,
        )
        await self._nc.flush()
        self.connected.set()
        log.info(
            "connected to the relay at %s",
            self._nc.connected_url.netloc if self._nc.connected_url else "?",
        )

    @property
    def nats(self) -> Any:
        """The NATS connection (for the JetStream store)."""
        return self._nc

    async def aclose(self) -> None:
        for pipe in list(self._pipes.values()):
            pipe.abort()
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        self.connected.clear()

    def open(self, peer: str) -> RelayPipe:
        """A new pipe to ``peer`` (we will be its TLS client)."""
        if peer not in self._tokens:
            raise ValueError(f"{peer!r} is not a known peer")
        conn_id = secrets.token_bytes(8)
        pipe = RelayPipe(self, peer, conn_id, opener=True)
        self._pipes[(peer, conn_id, True)] = pipe
        self.stats["relay_pipes_opened"] += 1
        return pipe

    def forget(self, pipe: RelayPipe) -> None:
        key = (pipe.peer, pipe.conn_id, pipe.opener)
        if self._pipes.get(key) is pipe:
            del self._pipes[key]

    def _subject(self, peer: str) -> str:
        return f"{self.config.prefix}.{self._tokens[peer]}.{self.token}"

    async def publish(self, peer: str, conn_id: bytes, kind: int, data: bytes) -> None:
        if self._nc is None:
            raise ConnectionError("not connected to the relay")
        await self._nc.publish(self._subject(peer), conn_id + bytes((kind,)) + data)
        self.stats["relay_messages_out"] += 1

    def post(self, peer: str, conn_id: bytes, kind: int, data: bytes) -> None:
        """Publish without waiting (a close marker); lost if the relay is gone."""
        if self._nc is None or peer not in self._tokens:
            return
        task = asyncio.get_running_loop().create_task(self._post(peer, conn_id, kind, data))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _post(self, peer: str, conn_id: bytes, kind: int, data: bytes) -> None:
        with contextlib.suppress(Exception):
            await self.publish(peer, conn_id, kind, data)

    async def _on_msg(self, msg: Any) -> None:
        self.stats["relay_messages_in"] += 1
        sender = msg.subject.rpartition(".")[2]
        peer = self._names.get(sender)
        if peer is None:
            self.stats["relay_unknown_sender"] += 1
            return
        data: bytes = msg.data
        if len(data) < _HEADER or not OPEN <= data[8] <= CLOSE_FROM_ACCEPTER:
            self.stats["relay_bad_messages"] += 1
            return
        conn_id, kind, body = data[:8], data[8], data[_HEADER:]
        from_opener = kind in (OPEN, DATA_FROM_OPENER, CLOSE_FROM_OPENER)
        key = (peer, conn_id, not from_opener)  # the pipe is ours-opened iff the peer accepted it
        pipe = self._pipes.get(key)
        if pipe is None:
            if kind != OPEN:
                self.stats["relay_unknown_pipe"] += 1
                return
            if len(self._pipes) >= self.config.max_pipes:
                self.stats["relay_pipes_refused"] += 1
                return
            pipe = RelayPipe(self, peer, conn_id, opener=False)
            self._pipes[key] = pipe
            self.stats["relay_pipes_accepted"] += 1
            pipe.received(body)
            self._on_open(pipe)
            return
        if kind in (CLOSE_FROM_OPENER, CLOSE_FROM_ACCEPTER):
            pipe.peer_closed()
        elif kind == OPEN:
            self.stats["relay_bad_messages"] += 1  # a second open of a live pipe: replayed
        else:
            pipe.received(body)


async def tls_over(
    pipe: RelayPipe, ctx: Any, *, server_side: bool, timeout: float, limit: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Run TLS over ``pipe`` (``ctx`` as client or server); the streams the links read and write."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport = await loop.start_tls(
        pipe,
        protocol,
        ctx,
        server_side=server_side,
        server_hostname=None,
        ssl_handshake_timeout=timeout,
    )
    if transport is None or pipe.is_closing():  # the pipe closed before the handshake ended
        pipe.abort()
        raise ConnectionResetError("the relay pipe closed during the TLS handshake")
    protocol.connection_made(transport)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
