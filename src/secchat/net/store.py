"""Secure multicast frames kept by the relay (JetStream) for members who were away.

Why: a member that was offline gets what was said meanwhile from the senders' retransmission
stores only while a sender is online and still keeps it.  An SMC frame needs no pairwise
session to be checked -- it is AEAD-encrypted under the group key and (in signed mode) signed,
bound to its sender, incarnation and sequence number -- so it can be stored by anyone untrusted.
Each member publishes its own broadcast frames to a per-conference JetStream subject
(``<prefix>.store.<hash of the record digest>``: no conference id in clear) and, once it joined,
reads the stream from its durable consumer's position (its high-water mark, kept by the
server) and feeds every frame to :meth:`~secchat.protocols.stack.Member.receive_stored`, which
accepts only authentic SMC frames of the record.  SMC puts them in per-sender order, drops
duplicates and still asks senders for gaps.  When the consumer has nothing pending the member
is told (:class:`CaughtUp`).

The relay keeps ciphertext only, for ``stream_max_age`` seconds and ``stream_max_bytes`` per
conference (the oldest frames go first).  Our publishing is bounded too: at most
``_MAX_QUEUE`` frames / ``_MAX_QUEUE_BYTES`` wait for the relay (the oldest are dropped and
counted; the links still carry them to online members).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .relay import RelayClient

__all__ = ["CaughtUp", "FrameStore"]

log = logging.getLogger("secchat.net.store")

_MAX_QUEUE = 4096
_MAX_QUEUE_BYTES = 8 << 20


@dataclass(frozen=True)
class CaughtUp:
    """The relay's store of a conference has nothing more for us: ``frames`` came from it."""

    frames: int


def _hash(label: bytes, *parts: bytes) -> str:
    h = hashlib.sha256(label)
    for p in parts:
        h.update(len(p).to_bytes(4, "big") + p)
    return h.hexdigest()[:32]


class _Conference:
    def __init__(self, record: bytes) -> None:
        self.record = record
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.sub: Any = None
        self.received = 0


class FrameStore:
    """Publishes our SMC frames to the relay's JetStream and replays the others' to us."""

    def __init__(self, relay: RelayClient, stats: dict[str, int]) -> None:
        self.relay = relay
        self.config = relay.config
        self.stats = stats
        for key in ("store_published", "store_received", "store_dropped", "store_errors"):
            stats.setdefault(key, 0)
        self._confs: dict[str, _Conference] = {}

    def names(self, record: bytes) -> tuple[str, str, str]:
        """(stream, subject, our durable consumer) of the conference with this record."""
        h = _hash(b"secchat/relay-store/v1", record)
        me = _hash(b"secchat/relay-store-reader/v1", record, self.relay.token.encode())
        return f"secchat_{h}", f"{self.config.prefix}.store.{h}", f"r{me}"

    def add(
        self,
        group: str,
        record: bytes,
        on_frame: Callable[[bytes], None],
        on_caught_up: Callable[[CaughtUp], None],
    ) -> None:
        """Start storing and replaying conference ``group`` (idempotent)."""
        if group in self._confs:
            return
        conf = self._confs[group] = _Conference(record)
        conf.task = asyncio.get_running_loop().create_task(
            self._run(conf, on_frame, on_caught_up), name=f"secchat-store-{group}"
        )

    def publish(self, group: str, data: bytes) -> None:
        """Keep one of our SMC frames of ``group`` in the relay (queued; bounded)."""
        conf = self._confs.get(group)
        if conf is None:
            return
        conf.queue.append(data)
        conf.queued_bytes += len(data)
        while len(conf.queue) > _MAX_QUEUE or conf.queued_bytes > _MAX_QUEUE_BYTES:
            conf.queued_bytes -= len(conf.queue.popleft())
            self.stats["store_dropped"] += 1
        conf.wake.set()

    async def aclose(self, flush: float = 2.0) -> None:
        """Stop; what still waits to be stored gets up to ``flush`` seconds to get there."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(flush):
                while any(c.queue and c.sub is not None for c in self._confs.values()):
                    await asyncio.sleep(0.02)
        tasks = [c.task for c in self._confs.values() if c.task is not None]
        for conf in self._confs.values():
            if conf.sub is not None:
                with contextlib.suppress(Exception):
                    await conf.sub.unsubscribe()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        self._confs.clear()

    async def _run(
        self,
        conf: _Conference,
        on_frame: Callable[[bytes], None],
        on_caught_up: Callable[[CaughtUp], None],
    ) -> None:
        from nats.js import api

        stream, subject, durable = self.names(conf.record)
        cfg = self.config
        while True:  # until the stream and our consumer exist
            await self.relay.connected.wait()
            try:
                js = self.relay.nats.jetstream()
                with contextlib.suppress(Exception):  # exists already (perhaps configured else)
                    await js.add_stream(
                        api.StreamConfig(
                            name=stream,
                            subjects=[subject],
                            max_age=cfg.stream_max_age,
                            max_bytes=cfg.stream_max_bytes,
                            discard=api.DiscardPolicy.OLD,
                            storage=api.StorageType.FILE,
                            num_replicas=cfg.stream_replicas,
                        )
                    )

                async def deliver(msg: Any) -> None:
                    conf.received += 1
                    self.stats["store_received"] += 1
                    on_frame(msg.data)

                conf.sub = await js.subscribe(
                    subject,
                    stream=stream,
                    durable=durable,
                    cb=deliver,
                    pending_msgs_limit=cfg.pending_msgs,
                    pending_bytes_limit=cfg.pending_bytes,
                    config=api.ConsumerConfig(
                        deliver_policy=api.DeliverPolicy.ALL,
                        ack_policy=api.AckPolicy.EXPLICIT,
                        max_ack_pending=_MAX_QUEUE,
                        inactive_threshold=cfg.stream_max_age,
                    ),
                )
                break
            except Exception as exc:
                self.stats["store_errors"] += 1
                log.warning("relay store not available yet (%s); retrying", exc)
                await asyncio.sleep(1.0)
        caught_up = asyncio.get_running_loop().create_task(self._catch_up(conf, on_caught_up))
        try:
            await self._publisher(conf, js, subject, stream)
        finally:
            caught_up.cancel()

    async def _catch_up(self, conf: _Conference, on_caught_up: Callable[[CaughtUp], None]) -> None:
        while True:
            try:
                info = await conf.sub.consumer_info()
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    on_caught_up(CaughtUp(conf.received))
                    return
            except Exception as exc:
                log.debug("relay store: %s", exc)
            await asyncio.sleep(0.2)

    async def _publisher(self, conf: _Conference, js: Any, subject: str, stream: str) -> None:
        while True:
            if not conf.queue:
                conf.wake.clear()
                await conf.wake.wait()
                continue
            data = conf.queue[0]
            try:
                await js.publish(subject, data, stream=stream, timeout=self.config.connect_timeout)
            except Exception as exc:  # the relay is away: keep it, try again
                self.stats["store_errors"] += 1
                log.debug("relay store: publishing failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            if conf.queue and conf.queue[0] is data:
                conf.queue.popleft()
                conf.queued_bytes -= len(data)
            self.stats["store_published"] += 1
