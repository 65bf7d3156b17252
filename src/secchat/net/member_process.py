"""One conference member as its own OS process: ``python -m secchat.net.member_process CONFIG``.

Why: the thesis runs each peer as a separate program; so do the cluster launcher, the benchmark
and the integration tests.  The process speaks JSON lines, one object per line:

stdout (events), always with ``"event"`` and the member ``"name"``::

    {"event": "ready", "address": ["127.0.0.1", 40001], ...}
    {"event": "joined", "group": "conf-1", "record": "5be1.."}   (the record digest in every tag)
    {"event": "established", "group": ..., "fingerprint": "9f..", "elapsed": 0.41, "members": ["m0", ...]}
    {"event": "delivered", "group": ..., "sender": "m3", "incarnation": .., "seq": 0, "text": "hello"}
    {"event": "suspected" | "restored", "group": ..., "peer": "m2"}
    {"event": "other_record", "group": ..., "peer": "m2", "creator": .., "members": 3}  (never a key with it)
    {"event": "lost", "group": ..., "sender": "m1", "incarnation": .., "first": 40, "end": 52, "count": 12}
    {"event": "undelivered", "group": ..., "peer": "m2", "first": 40, "end": 52, "count": 12}
    {"event": "fork", "group": ..., "peer": "m2", "ours": "9f..", "fingerprint": "48.."}  (two keys: we stop sending)
    {"event": "path", "peer": "m2", "path": "direct" | "relay" | null}  (how we reach the peer now)
    {"event": "caught_up", "group": ..., "frames": 20}  (the relay's store had nothing more for us)
    {"event": "stats", "links": {...}, "runtime": {...}, "stack": {...}, "queues": {...}, "rss_kb": ..}
    {"event": "error", "message": "..."}

stdin (commands)::

    {"cmd": "join"[, "group": G][, "resume": true]}
                                             start SMC (if the config says join = "command");
                                             resume: a restarted member rejoining
    {"cmd": "send", "text": T[, "group": G]} multicast one message
    {"cmd": "send", "count": M[, "size": S][, "group": G]}
                                             multicast M numbered messages (padded to S bytes),
                                             paced to the peers that keep reading
    {"cmd": "stats"}  /  {"cmd": "quit"}

Logs go to stderr through :mod:`logging` (loggers under ``secchat.net``); neither stream ever
carries key material: the group key appears only as its one-way fingerprint.

Test hook: if ``SECCHAT_TEST_RNG_LOG`` names a file, every random byte string the stack draws is
appended to it (hex), so a test can check that none of it leaks into logs.  It exists for that
test only and says so on stderr when active.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import socket
import sys
from typing import Any

from .. import pki
from ..crypto import SystemRng
from .config import ConfigError, MemberConfig, load_config
from .errors import LinkError
from .journal import StateDir, StateError
from .node import Node
from .store import CaughtUp
from .tls import TlsCredentials

__all__ = ["MemberProcess", "main"]

log = logging.getLogger("secchat.net.member")

#: Longest command line accepted on stdin.
MAX_COMMAND = 64 << 10
#: Largest ``count`` of one send command.
MAX_SEND_COUNT = 100_000
#: Largest padded message of a bulk send.
MAX_MESSAGE_SIZE = 256 << 10


class RecordingRng:
    """Test hook only: the system CSPRNG, with every draw appended (hex) to a file."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="ascii")  # noqa: SIM115 - lives as long as the process

    def randbytes(self, n: int, /) -> bytes:
        data = os.urandom(n)
        self._file.write(data.hex() + "\n")
        self._file.flush()
        return data


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def rss_kb() -> int:
    """Current resident set size (Linux), else the peak."""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _stack_config(table: dict[str, Any]):
    from ..protocols.failure_detector import DetectorConfig
    from ..protocols.smc import SmcLimits
    from ..protocols.stack import StackConfig

    table = dict(table)
    try:
        detector = DetectorConfig(**table.pop("detector", {}))
        smc = SmcLimits(**table.pop("smc", {}))
        return StackConfig(detector=detector, smc=smc, **table)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[stack]: {exc}") from None


class MemberProcess:
    """Loads the identity and conferences of a config, runs a :class:`Node`, speaks JSON lines."""

    def __init__(self, config: MemberConfig, *, messages: int = 0) -> None:
        self.config = config
        self.name = config.identity.name
        self.messages = messages
        self.node: Node | None = None
        self._join_time: dict[str, float] = {}
        self._established: set[str] = set()
        self._stop = asyncio.Event()
        self._sent: dict[str, int] = {}
        self._bulk: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ setup

    def _load(self) -> tuple[TlsCredentials, dict[str, list[tuple[str, Any]]]]:
        ident = self.config.identity
        try:
            key = pki.load_private_key(ident.key, ident.passphrase())
            cert = pki.cert_from_pem(ident.cert.read_bytes())
            cas = pki.certs_from_pem(ident.ca.read_bytes())
            own = pki.verify_certificate(cert, cas)
        except OSError as exc:
            raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from None
        except pki.PkiError as exc:
            raise ConfigError(str(exc)) from None
        if own.name != self.name:
            raise ConfigError(f"our certificate names {own.name!r}, the config says {self.name!r}")
        members: dict[str, list[tuple[str, Any]]] = {}
        for conf in self.config.conferences:
            members[conf.id] = []
            for name, path in conf.members:
                try:
                    members[conf.id].append((name, pki.cert_from_pem(path.read_bytes())))
                except OSError as exc:
                    raise ConfigError(f"cannot read the certificate of {name}: {exc.strerror}") from None
                except pki.PkiError as exc:
                    raise ConfigError(f"the certificate of member {name} is not acceptable: {exc}") from None
        return TlsCredentials(key, cert, tuple(cas)), members

    @property
    def runtime(self):
        assert self.node is not None
        return self.node.runtime

    async def run(self) -> int:
        try:
            creds, members = self._load()
            stack_config = _stack_config(self.config.stack)
        except ConfigError as exc:
            return self._fail(str(exc))
        rng_log = os.environ.get("SECCHAT_TEST_RNG_LOG")
        rng = RecordingRng(rng_log) if rng_log else SystemRng()
        if rng_log:
            log.warning("test hook SECCHAT_TEST_RNG_LOG is active: random draws are recorded")
        try:  # the write-ahead state: without it, a restart could vote twice (no key exchange)
            state = StateDir.for_key(self.config.state_dir, creds.key)
        except StateError as exc:
            return self._fail(f"cannot keep key-exchange state: {exc}")
        node = self.node = Node(creds, self._on_event, link_config=self.config.links,
                                stack_config=stack_config, rng=rng, state=state,
                                relay=self.config.relay)
        node.links.on_path = self._on_path
        try:
            if self.config.listen_fd is not None:
                address = await node.start(sock=socket.socket(fileno=self.config.listen_fd))
            else:
                assert self.config.listen_address is not None
                address = await node.start(*self.config.listen_address)
        except (OSError, LinkError) as exc:
            return self._fail(f"cannot listen: {exc}")
        try:
            for conf in self.config.conferences:
                node.add_conference(conf.id, members[conf.id], mode=conf.mode)
        except (ValueError, pki.PkiError) as exc:
            await node.aclose()
            return self._fail(f"conference refused: {exc}")
        for name, addr in self.config.peers.items():
            if name in node.links.peers():
                node.set_address(name, addr)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        emit({"event": "ready", "name": self.name, "address": list(address), "pid": os.getpid(),
              "conferences": [c.id for c in self.config.conferences],
              "relay": node.links.relay is not None and node.links.relay.up})
        for conf in self.config.conferences:
            if conf.join == "start":
                self.join(conf.id)
        stdin_task = loop.create_task(self._commands())
        try:
            await self._stop.wait()
        finally:
            stdin_task.cancel()
            with contextlib.suppress(BaseException):
                await stdin_task
            self.emit_stats()
            await node.aclose()
        return 0

    def _on_path(self, peer: str, path: str | None) -> None:
        emit({"event": "path", "name": self.name, "peer": peer, "path": path})

    def _fail(self, message: str) -> int:
        emit({"event": "error", "name": self.name, "message": message})
        log.error("cannot start: %s", message)
        return 2

    # ------------------------------------------------------------------ commands

    def _group(self, cmd: dict[str, Any]) -> str:
        group = cmd.get("group")
        if group is None:
            return self.config.conferences[0].id
        if not isinstance(group, str) or group not in self.runtime.conferences:
            raise ValueError(f"unknown conference {group!r}")
        return group

    def join(self, group: str, *, resume: bool = False) -> None:
        assert self.node is not None
        if group in self._join_time:
            return
        try:
            # resume: we may have run before without our state (abstain; take streams up midway)
            joined = self.node.join(group, resume=resume)
        except StateError as exc:  # no durable state, no key exchange (it could vote twice)
            emit({"event": "error", "name": self.name, "message": f"not joining {group}: {exc}"})
            log.error("not joining %s: cannot keep key-exchange state: %s", group, exc)
            return
        if joined is None:
            return
        self._join_time[group] = self.runtime.now()
        emit({"event": "joined", "name": self.name, "group": group, "epoch": joined.epoch,
              "restored": joined.restored, "abstains": joined.abstains,
              "record": self.node.conferences[group].gid.record.hex()})

    def send(self, group: str, text: str) -> None:
        assert self.node is not None
        self.node.send(group, text.encode("utf-8"))
        self._sent[group] = self._sent.get(group, 0) + 1

    async def _send_many(self, group: str, count: int, size: int) -> None:
        """Multicast ``count`` numbered messages (padded to ``size`` bytes), paced by the links."""
        assert self.node is not None
        batch = max(1, (64 << 10) // max(size, 1))
        for i in range(count):
            await self.node.links.wait_for_room()
            text = f"{self.name} #{self._sent.get(group, 0)}"
            try:
                self.send(group, text.ljust(size, "."))
            except (ValueError, RuntimeError) as exc:  # e.g. too many messages waiting for the key
                emit({"event": "error", "name": self.name, "message": f"send stopped after {i}: {exc}"})
                return
            if (i + 1) % batch == 0:
                await asyncio.sleep(0)  # about 64 KiB at a time: the links write them in one go
        emit({"event": "sent", "name": self.name, "group": group, "count": count})

    def handle_command(self, line: bytes) -> None:
        try:
            cmd = json.loads(line)
            if not isinstance(cmd, dict) or not isinstance(cmd.get("cmd"), str):
                raise ValueError("a command is an object with a 'cmd' string")
            kind = cmd["cmd"]
            if kind == "join":
                resume = cmd.get("resume", False)
                if not isinstance(resume, bool):
                    raise ValueError("resume must be true or false")
                self.join(self._group(cmd), resume=resume)
            elif kind == "send":
                group = self._group(cmd)
                if "count" in cmd:
                    count = cmd["count"]
                    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_SEND_COUNT:
                        raise ValueError(f"count must be an integer in 0..{MAX_SEND_COUNT}")
                    size = cmd.get("size", 0)
                    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_MESSAGE_SIZE:
                        raise ValueError(f"size must be an integer in 0..{MAX_MESSAGE_SIZE}")
                    if self._bulk is not None and not self._bulk.done():
                        raise ValueError("a bulk send is still running")
                    self._bulk = asyncio.get_running_loop().create_task(self._send_many(group, count, size))
                else:
                    text = cmd.get("text")
                    if not isinstance(text, str):
                        raise ValueError("send needs 'text' (a string) or 'count'")
                    self.send(group, text)
            elif kind == "stats":
                self.emit_stats()
            elif kind == "quit":
                self._stop.set()
            else:
                raise ValueError(f"unknown command {kind!r}")
        except (ValueError, KeyError, RuntimeError) as exc:  # json.JSONDecodeError is a ValueError
            emit({"event": "error", "name": self.name, "message": f"bad command: {exc}"})

    async def _commands(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_COMMAND)
        try:
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        except (OSError, ValueError):
            return  # no usable stdin (e.g. /dev/null as a file): commands come from the config only
        while True:
            try:
                line = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                emit({"event": "error", "name": self.name, "message": "command line too long"})
                continue
            if not line:
                return  # stdin closed: keep running until a signal
            if line.strip():
                self.handle_command(line)

    # ------------------------------------------------------------------ events

    def _names(self, group: str) -> tuple[str, ...]:
        return self.runtime.conferences[group].names

    def _on_event(self, group: str, event: Any) -> None:
        from ..protocols.events import (
            Delivered,
            KeyEstablished,
            KeyFork,
            Lost,
            PeerRestored,
            PeerSuspected,
            RecordMismatch,
            Undelivered,
        )

        names = self._names(group)
        if isinstance(event, KeyEstablished):
            if group in self._established:
                return
            self._established.add(group)
            elapsed = self.runtime.now() - self._join_time.get(group, self.runtime.now())
            emit({"event": "established", "name": self.name, "group": group,
                  "fingerprint": event.fingerprint, "elapsed": round(elapsed, 6),
                  "members": [names[i] for i in event.members]})
            log.info("%s: group key established (fingerprint %s) after %.3fs", group, event.fingerprint, elapsed)
            if self.messages:
                self._bulk = asyncio.get_running_loop().create_task(self._send_many(group, self.messages, 0))
        elif isinstance(event, Delivered):
            emit({"event": "delivered", "name": self.name, "group": group, "sender": names[event.sender],
                  "incarnation": event.incarnation, "seq": event.seq,
                  "text": event.payload.decode("utf-8", "replace")})
        elif isinstance(event, PeerSuspected):
            emit({"event": "suspected", "name": self.name, "group": group, "peer": names[event.peer]})
        elif isinstance(event, PeerRestored):
            emit({"event": "restored", "name": self.name, "group": group, "peer": names[event.peer]})
        elif isinstance(event, RecordMismatch):
            # the peer's words (creator) go out as JSON strings: escaped, never raw on a terminal
            emit({"event": "other_record", "name": self.name, "group": group, "peer": names[event.peer],
                  "record": event.record, "creator": event.creator, "members": event.members})
            log.warning("%s: %s holds another record of this conference: not joining with it",
                        group, names[event.peer])
        elif isinstance(event, Lost):  # what no retransmission can bring back: said, never silent
            emit({"event": "lost", "name": self.name, "group": group, "sender": names[event.sender],
                  "incarnation": event.incarnation, "first": event.first, "end": event.end,
                  "count": event.count})
        elif isinstance(event, Undelivered):
            emit({"event": "undelivered", "name": self.name, "group": group, "peer": names[event.peer],
                  "first": event.first, "end": event.end, "count": event.count})
        elif isinstance(event, CaughtUp):
            emit({"event": "caught_up", "name": self.name, "group": group, "frames": event.frames})
        elif isinstance(event, KeyFork):
            emit({"event": "fork", "name": self.name, "group": group, "peer": names[event.peer],
                  "ours": event.ours, "fingerprint": event.fingerprint})

    def emit_stats(self) -> None:
        if self.node is None:
            return
        stack = self.node.stack_stats()
        links = self.node.links
        emit({
            "event": "stats", "name": self.name,
            "links": dict(links.stats) if links else {},
            "runtime": dict(self.runtime.stats),
            "stack": stack,
            "queues": {k: list(v) for k, v in links.queue_sizes().items()} if links else {},
            "write_buffers": links.write_buffer_sizes() if links else {},
            "rss_kb": rss_kb(),
        })


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="secchat-member", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="the member's TOML configuration")
    parser.add_argument("--messages", type=int, default=0, help="multicast M messages once the key exists")
    parser.add_argument("--log-level", default=os.environ.get("SECCHAT_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        emit({"event": "error", "message": str(exc)})
        print(f"secchat-member: {exc}", file=sys.stderr)
        return 2
    if not 0 <= args.messages <= MAX_SEND_COUNT:
        print("secchat-member: --messages out of range", file=sys.stderr)
        return 2
    return asyncio.run(MemberProcess(config, messages=args.messages).run())


if __name__ == "__main__":
    sys.exit(main())
