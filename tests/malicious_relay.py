"""A malicious relay of our own: a NATS-speaking proxy in front of a real nats-server.

Members connect to the proxy as if it were the relay.  Every message a member publishes
(``PUB``/``HPUB``) passes through :meth:`MaliciousRelay._tamper`, which -- by the current
``mode``, seeded -- drops it, sends it twice, holds it back behind the next one, replays an
earlier message (of any subject: other pairs, other conferences, earlier runs) on this subject,
flips a bit, or injects forged messages (junk, fake pipe opens, fake data for live pipes).
Everything else (CONNECT, SUB, PING, the server's MSGs) passes unchanged.  ``mode = "honest"``
makes it behave.  ``stats`` counts what it did, so a test can show the attack happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque

MODES = ("honest", "drop", "duplicate", "reorder", "replay", "bitflip", "inject", "all")


class MaliciousRelay:
    def __init__(self, upstream_port: int, *, seed: int = 0, rate: float = 0.2) -> None:
        self.upstream_port = upstream_port
        self.rng = random.Random(seed)
        self.rate = rate
        self.mode = "honest"
        self.stats = dict.fromkeys(
            ("passed", "dropped", "duplicated", "reordered", "replayed", "flipped", "injected"), 0
        )
        self._seen: deque[tuple[bytes, bytes]] = deque(maxlen=4096)  # (subject, payload)
        self._held: dict[int, tuple[bytes, bytes]] = {}
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> MaliciousRelay:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _client(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        sreader, swriter = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._spawn(self._pipe(sreader, cwriter))
        try:
            await self._from_member(creader, swriter, id(cwriter))
        finally:
            swriter.close()
            cwriter.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _from_member(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
            while line := await reader.readline():
                parts = line.split()
                if parts and parts[0].upper() in (b"PUB", b"HPUB"):
                    size = int(parts[-1])
                    body = (await reader.readexactly(size + 2))[:-2]
                    if parts[0].upper() == b"HPUB":  # not ours to tamper with: pass it on
                        writer.write(line + body + b"\r\n")
                    else:
                        for subject, payload in self._tamper(parts[1], body, conn):
                            writer.write(b"PUB %s %d\r\n%s\r\n" % (subject, len(payload), payload))
                else:
                    writer.write(line)
                await writer.drain()

    def _tamper(self, subject: bytes, payload: bytes, conn: int) -> list[tuple[bytes, bytes]]:
        mode = self.mode
        rng = self.rng
        out = [(subject, payload)]
        if mode != "honest" and rng.random() < self.rate:
            kind = rng.choice(MODES[1:-1]) if mode == "all" else mode
            out = self._attack(kind, subject, payload, conn)
        else:
            self.stats["passed"] += 1
        self._seen.append((subject, payload))
        if conn in self._held and (mode == "honest" or out):
            out.append(self._held.pop(conn))  # the held one goes after
        return out

    def _attack(self, kind: str, subject: bytes, payload: bytes, conn: int):
        rng = self.rng
        if kind == "drop":
            self.stats["dropped"] += 1
            return []
        if kind == "duplicate":
            self.stats["duplicated"] += 1
            return [(subject, payload), (subject, payload)]
        if kind == "reorder":
            if conn in self._held:
                return [(subject, payload)]
            self.stats["reordered"] += 1
            self._held[conn] = (subject, payload)
            return []
        if kind == "replay" and self._seen:
            self.stats["replayed"] += 1
            _, old = rng.choice(self._seen)  # of any pair, conference or earlier run
            return [(subject, old), (subject, payload)] if rng.random() < 0.5 else [(subject, old)]
        if kind == "bitflip" and payload:
            self.stats["flipped"] += 1
            data = bytearray(payload)
            bit = rng.randrange(len(data) * 8)
            data[bit // 8] ^= 1 << (bit % 8)
            return [(subject, bytes(data))]
        if kind == "inject":
            self.stats["injected"] += 1
            head = payload[:8] if rng.random() < 0.5 else rng.randbytes(8)  # a live pipe or not
            forged = head + bytes((rng.randrange(0, 8),)) + rng.randbytes(rng.randrange(0, 300))
            return [(subject, forged), (subject, payload)]
        self.stats["passed"] += 1
        return [(subject, payload)]
