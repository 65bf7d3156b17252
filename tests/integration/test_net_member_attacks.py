"""A real member process under attack: junk and impostors are refused and logged; it carries on.

One member process (m0, conference {m0, m1}) is hit by: plain-TCP garbage, a TLS client with a
certificate from another CA, a valid certificate of a non-member (same CA), and a genuine member
sending an oversized frame, a garbage envelope and a truncated frame.  Afterwards the genuine m1
(an in-process :class:`Node`) establishes the key with it and chats; only that message is
delivered, and the process's log names every refusal.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import struct
import subprocess
import sys
import threading
from pathlib import Path

import tomli_w

from secchat import pki
from secchat.net.framing import encode_hello
from secchat.net.journal import MemoryStateStore
from secchat.net.node import Node
from secchat.net.provision import credentials, make_identities, write_identities
from secchat.net.tls import TlsCredentials, client_context
from secchat.protocols.events import KeyEstablished


def test_member_process_survives_junk_and_impostors(tmp_path):
    ca, ids = make_identities(["m0", "m1", "m2"])
    m0, m1, m2 = ids
    evil_ca, [evil_m1] = make_identities(["m1"], ca_name="Evil CA")
    ca_path, files = write_identities(tmp_path / "pki", ca, [m0, m1], "pass phrase")
    config = {
        "identity": {"name": "m0", "key": str(files[0].key_path), "cert": str(files[0].cert_path),
                     "ca": str(ca_path), "passphrase_env": "TEST_PASSPHRASE"},
        "listen": {"address": "127.0.0.1:0"},
        "conference": [{"id": "room", "members": [{"name": f.name, "cert": str(f.cert_path)} for f in files]}],
    }
    (tmp_path / "m0.toml").write_text(tomli_w.dumps(config))
    env = dict(os.environ, TEST_PASSPHRASE="pass phrase", PYTHONPATH=str(Path(pki.__file__).resolve().parent.parent))
    log_path = tmp_path / "m0.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "secchat.net.member_process", str(tmp_path / "m0.toml")],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env)
    try:
        lines: list[dict] = []
        delivered: queue.Queue = queue.Queue()

        def read_stdout():
            for raw in proc.stdout:
                event = json.loads(raw)
                lines.append(event)
                if event["event"] in ("ready", "delivered"):
                    delivered.put(event)

        reader = threading.Thread(target=read_stdout, daemon=True)
        reader.start()
        ready = delivered.get(timeout=30)
        assert ready["event"] == "ready"
        address = tuple(ready["address"])
        asyncio.run(asyncio.wait_for(attack_then_chat(address, ca, evil_ca, m0, m1, m2, evil_m1, delivered), 90))
        proc.stdin.write(b'{"cmd": "stats"}\n{"cmd": "quit"}\n')
        proc.stdin.flush()
        proc.wait(timeout=30)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    delivered = [e for e in lines if e["event"] == "delivered"]
    assert [(e["sender"], e["text"]) for e in delivered] == [("m1", "hello from the real m1")]
    stats = [e for e in lines if e["event"] == "stats"][-1]  # the last: at exit
    assert stats["links"]["connections_refused"] >= 3
    assert stats["links"]["bad_frames"] == 3
    assert proc.returncode == 0
    log = log_path.read_text()
    assert "refused inbound connection" in log and "certificate verif" in log  # other CA
    assert "CN='m2'" in log and "not pinned" in log  # valid certificate, not a member
    assert log.count("dropping connection from m1") == 3  # oversized, garbage, truncated


async def raw_tls(address, creds: TlsCredentials):
    return await asyncio.open_connection(*address, ssl=client_context(creds), server_hostname=None)


async def until_closed(reader) -> None:
    try:
        while await reader.read(65536):
            pass
    except (ConnectionError, OSError):
        pass


async def attack_then_chat(address, ca, evil_ca, m0, m1, m2, evil_m1, delivered: queue.Queue):
    # plain TCP garbage
    reader, writer = await asyncio.open_connection(*address)
    writer.write(os.urandom(1000))
    await until_closed(reader)
    writer.close()
    # a certificate from another CA (the impostor trusts our CA, so the refusal is m0's)
    try:
        reader, writer = await raw_tls(address, TlsCredentials(evil_m1.key, evil_m1.cert, (ca, evil_ca)))
        writer.write(encode_hello(0))
        await until_closed(reader)
        writer.close()
    except (ConnectionError, OSError):
        pass
    # a valid certificate of the same CA for someone who is not a member
    reader, writer = await raw_tls(address, credentials(m2, ca))
    await until_closed(reader)
    writer.close()
    # the genuine m1, sending junk of three kinds
    for junk in (b"\xff\xff\xff\xff", struct.pack(">I", 3) + b"abc", struct.pack(">I", 50) + b"short"):
        reader, writer = await raw_tls(address, credentials(m1, ca))
        writer.write(encode_hello(0) + junk)
        if junk.endswith(b"short"):
            await writer.drain()
            writer.close()
        await until_closed(reader)
        writer.close()
    # the member is unharmed: the genuine m1 gets the key with it and chats
    got_key = asyncio.Event()
    node = Node(credentials(m1, ca), lambda g, ev: got_key.set() if isinstance(ev, KeyEstablished) else None,
                state=MemoryStateStore())
    await node.start()
    try:
        node.add_conference("room", [("m0", m0.cert), ("m1", m1.cert)])
        node.set_address("m0", address)
        node.join("room")
        await got_key.wait()
        node.send("room", b"hello from the real m1")
        # m0 reports the delivery on stdout (read by a thread); wait for it without blocking the loop
        event = await asyncio.to_thread(delivered.get, True, 30)
        assert event["sender"] == "m1"
    finally:
        await node.aclose()


