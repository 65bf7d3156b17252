"""Two records of one conference id, over real member processes: never one key, always said.

m0 and m1 run conference ``room`` = (m0, m1, m2); m2 was given another record of ``room``,
(m0, m3, m2) -- the accomplice m3 at m1's index, as a malicious directory could serve it.
m0 and m2 list each other, so their links connect: each must report, within seconds, that the
other holds another record, and m2 must never get a key (its record has no majority of
holders) nor deliver anything.  m0 and m1, holding the same record, are unaffected: one key,
messages delivered.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import tomli_w

from secchat import pki
from secchat.net.provision import make_identities, write_identities

PASSPHRASE = "pass phrase for records"


class _Process:
    def __init__(self, tmp: Path, name: str, config: dict) -> None:
        path = tmp / f"{name}.toml"
        path.write_text(tomli_w.dumps(config))
        env = dict(os.environ, TEST_PASSPHRASE=PASSPHRASE,
                   PYTHONPATH=str(Path(pki.__file__).resolve().parent.parent))
        self.log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([sys.executable, "-m", "secchat.net.member_process", str(path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env)
        self.events: queue.Queue[tuple[float, dict]] = queue.Queue()
        self.seen: list[tuple[float, dict]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.events.put((time.monotonic(), json.loads(raw)))

    def wait_for(self, pred, timeout: float = 30.0) -> tuple[float, dict]:
        deadline = time.monotonic() + timeout
        for when, event in self.seen:
            if pred(event):
                return when, event
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; events so far: {[e for _, e in self.seen]}"
            try:
                when, event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append((when, event))
            if pred(event):
                return when, event

    def command(self, cmd: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.command({"cmd": "quit"})
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def test_members_holding_different_records_say_so_and_never_share_a_key(tmp_path):
    ca, ids = make_identities(["m0", "m1", "m2", "m3"])
    ca_path, files = write_identities(tmp_path / "pki", ca, ids, PASSPHRASE)
    f = {x.name: x for x in files}

    def config(name: str, roster: list[str], peers: dict[str, str]) -> dict:
        return {
            "identity": {"name": name, "key": str(f[name].key_path), "cert": str(f[name].cert_path),
                         "ca": str(ca_path), "passphrase_env": "TEST_PASSPHRASE"},
            "listen": {"address": "127.0.0.1:0"},
            "peers": peers,
            "conference": [{"id": "room", "members": [{"name": n, "cert": str(f[n].cert_path)} for n in roster]}],
            "links": {"retry_initial": 0.05, "retry_max": 0.5},
        }

    honest, other = ["m0", "m1", "m2"], ["m0", "m3", "m2"]
    procs: dict[str, _Process] = {}
    try:
        procs["m0"] = _Process(tmp_path, "m0", config("m0", honest, {}))
        _, ready = procs["m0"].wait_for(lambda e: e["event"] == "ready")
        m0_at = "{}:{}".format(*ready["address"])
        procs["m1"] = _Process(tmp_path, "m1", config("m1", honest, {"m0": m0_at}))
        procs["m2"] = _Process(tmp_path, "m2", config("m2", other, {"m0": m0_at}))
        joined = {n: procs[n].wait_for(lambda e: e["event"] == "joined") for n in procs}
        assert joined["m0"][1]["record"] == joined["m1"][1]["record"] != joined["m2"][1]["record"]

        started = max(when for when, _ in joined.values())
        t0, said0 = procs["m0"].wait_for(lambda e: e["event"] == "other_record", timeout=20)
        t2, said2 = procs["m2"].wait_for(lambda e: e["event"] == "other_record", timeout=20)
        assert said0["peer"] == "m2" and said0["record"] == joined["m2"][1]["record"] and said0["members"] == 3
        assert said2["peer"] == "m0" and said2["record"] == joined["m0"][1]["record"]
        print(f"mismatch reported after {t0 - started:.2f} s (m0) and {t2 - started:.2f} s (m2)")
        assert max(t0, t2) - started < 10.0

        # the members holding one record are unaffected: one key, and their messages flow
        _, key0 = procs["m0"].wait_for(lambda e: e["event"] == "established")
        _, key1 = procs["m1"].wait_for(lambda e: e["event"] == "established")
        assert key0["fingerprint"] == key1["fingerprint"] and set(key0["members"]) == {"m0", "m1"}
        procs["m1"].command({"cmd": "send", "group": "room", "text": "only for the real room"})
        procs["m0"].wait_for(lambda e: e["event"] == "delivered" and e["text"] == "only for the real room")
        time.sleep(1.0)
        for p in procs.values():
            p.command({"cmd": "stats"})
        _, stats2 = procs["m2"].wait_for(lambda e: e["event"] == "stats")
        _, stats0 = procs["m0"].wait_for(lambda e: e["event"] == "stats")
        assert stats0["stack"].get("member.other_record") == 1 == stats2["stack"].get("member.other_record")
        assert not any(e["event"] in ("established", "delivered") for _, e in procs["m2"].seen)
    finally:
        for p in procs.values():
            p.stop()
    assert not any(e["event"] in ("established", "delivered") for _, e in procs["m2"].seen)
