"""Real member processes for the link tests, driven from asyncio: configs, JSON events, commands.

Every port is chosen by the kernel (``127.0.0.1:0``); a process reports its address in its
``ready`` event.  Events are kept with the (monotonic) time the test read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from secchat import pki
from secchat.net.provision import MemberFiles, make_identities, write_identities

PASSPHRASE = "pass phrase"


def world(tmp_path: Path, names: Sequence[str]):
    """A CA and identities for ``names``; returns (ca, identities, ca_path, files by name)."""
    ca, ids = make_identities(list(names))
    ca_path, files = write_identities(tmp_path / "pki", ca, ids, PASSPHRASE)
    return ca, ids, ca_path, {f.name: f for f in files}


def write_config(
    path: Path,
    me: MemberFiles,
    ca_path: Path,
    members: Sequence[MemberFiles],
    *,
    peers: Mapping[str, tuple[str, int]] | None = None,
    links: Mapping[str, Any] | None = None,
    stack: Mapping[str, Any] | None = None,
    mode: str = "signed",
    listen: str = "127.0.0.1:0",
    relay: Mapping[str, Any] | None = None,
) -> Path:
    config: dict[str, Any] = {
        "identity": {
            "name": me.name,
            "key": str(me.key_path),
            "cert": str(me.cert_path),
            "ca": str(ca_path),
            "passphrase_env": "TEST_PASSPHRASE",
        },
        "listen": {"address": listen},
        "peers": {name: f"{host}:{port}" for name, (host, port) in (peers or {}).items()},
        "conference": [
            {
                "id": "room",
                "mode": mode,
                "join": "start",
                "members": [{"name": m.name, "cert": str(m.cert_path)} for m in members],
            }
        ],
    }
    if links:
        config["links"] = dict(links)
    if stack:
        config["stack"] = dict(stack)
    if relay:
        config["relay"] = dict(relay)
    path.write_text(tomli_w.dumps(config))
    return path


class Member:
    """One ``python -m secchat.net.member_process`` child."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.address: tuple[str, int] | None = None

    @classmethod
    async def start(
        cls, name: str, config: Path, log: Path, *, prefix: Sequence[str] = ()
    ) -> Member:
        """Start the member (``prefix``: e.g. ``ip netns exec NS`` to run it elsewhere)."""
        env = dict(
            os.environ,
            TEST_PASSPHRASE=PASSPHRASE,
            PYTHONPATH=str(Path(pki.__file__).resolve().parent.parent),
        )
        with open(log, "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *prefix,
                sys.executable,
                "-m",
                "secchat.net.member_process",
                str(config),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=env,
                limit=1 << 20,
            )
        member = cls(name, proc)
        ready = await member.wait_for(lambda e: e["event"] in ("ready", "error"), 60)
        assert ready["event"] == "ready", ready
        member.address = (ready["address"][0], ready["address"][1])
        return member

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.events.append((time.monotonic(), json.loads(line)))
            self._changed.set()

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        seen = 0
        async with asyncio.timeout(timeout):
            while True:
                for _, event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                self._changed.clear()
                await self._changed.wait()

    def of(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, e) for t, e in self.events if e["event"] == kind]

    def command(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")

    async def stats(self) -> dict[str, Any]:
        count = len(self.of("stats"))
        self.command(cmd="stats")
        await self.wait_for(lambda e: e["event"] == "stats" and len(self.of("stats")) > count, 30)
        return self.of("stats")[-1][1]

    async def stop(self, dump: Path | None = None) -> None:
        """Quit (or kill) the process; ``dump``: write the events it reported there."""
        if dump is not None:
            dump.write_text("".join(f"{t:.6f} {json.dumps(e)}\n" for t, e in self.events))
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                self.command(cmd="quit")
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self._reader, 5)
