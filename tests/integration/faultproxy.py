"""A fault-injecting TCP proxy of our own, for partitions between real member processes.

``FaultProxy(target)`` listens on a kernel-chosen loopback port and forwards each connection to
``target``.  :meth:`partition` turns every connection into a black hole -- bytes are read and
discarded both ways, nothing is closed, nothing is refused -- which is what a network partition
looks like to TCP: no RST, no FIN, just silence.  New connections during the partition are
accepted and swallowed the same way (their handshakes hang).  :meth:`heal` lets *new*
connections through again; those that lived through the partition stay black holes, as after a
real one that outlasted TCP's retransmissions.  So after a heal a member gets through only by
noticing the dead connection and opening another.  :meth:`refuse` is the other failure, a
server that is down: every connection is reset and new ones are refused until :meth:`heal`.

The upstream side connects from ``source`` (another loopback address), so that the member
behind the proxy learns no usable address of the one in front of it (one side of each pair is
enough for a link).
"""

from __future__ import annotations

import asyncio
import contextlib


class FaultProxy:
    def __init__(self, target: tuple[str, int], *, source: str = "127.0.0.2") -> None:
        self.target = target
        self.source = source
        self.partitioned = self.refusing = False
        self._server: asyncio.base_events.Server | None = None
        self._live: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] | None = None
        self.connections = 0

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = (host, port)
        return self.address

    def partition(self) -> None:
        self.partitioned = True
        for pair in list(self._live):
            self._live.discard(pair)  # its pumps see it gone and swallow from now on

    def refuse(self) -> None:
        self.refusing = True
        for pair in list(self._live):
            self._live.discard(pair)
            for writer in pair:
                writer.transport.abort()

    def heal(self) -> None:
        self.partitioned = self.refusing = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.refusing:
            writer.transport.abort()
            return
        if self.partitioned:
            self._spawn(self._swallow(reader, writer))
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(
                *self.target, local_addr=(self.source, 0)
            )
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._live.add(pair)
        self._spawn(self._pump(reader, up_writer, pair))
        self._spawn(self._pump(up_reader, writer, pair))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pair) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            while data := await reader.read(65536):
                if pair not in self._live:
                    continue  # a black hole now, for good
                writer.write(data)
                await writer.drain()
            if pair in self._live:
                writer.close()  # an orderly end passes through while the network is up

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(65536):
                pass
        writer.transport.abort()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
