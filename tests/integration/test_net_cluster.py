"""Member processes over real TLS on loopback, driven by the cluster launcher.

Each test starts real OS processes (``python -m secchat.net.member_process``) with inherited
listening sockets (no fixed ports) and checks what the thesis promises: a majority suffices,
crashed members do not block the others, late and restarted members get the same key, every
message of a live sender reaches every live member -- and no secret ever reaches a log.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from secchat import pki
from secchat.crypto import derive_group_keys
from secchat.net.cluster import ClusterSpec, run_cluster
from secchat.net.node import members_digest
from secchat.protocols.stack import GroupId, smc_tag


def play(spec: ClusterSpec):
    lines: list[str] = []
    result = asyncio.run(run_cluster(spec, out=lines.append))
    assert result.ok, (result.problems, lines)
    return result


def test_two_of_five_killed_during_the_gke_then_restarted(tmp_path):
    result = play(ClusterSpec(n=5, kill=2, restart_killed=True, messages=3, seed=11, workdir=tmp_path))
    survivors = [m for m in result.members if m.role == "joined"]
    restarted = [m for m in result.members if m.role == "restarted"]
    assert len(survivors) == 3 and len(restarted) == 2
    assert result.killed_mid_gke == 2  # both died before any survivor had the key
    assert len({m.fingerprint for m in result.members}) == 1  # one key, also for the restarted
    for m in result.members:
        assert all(m.delivered[s.name] == 3 for s in result.members)


def test_bare_majority_establishes_and_chats_then_late_members_catch_up(tmp_path):
    # and only one side of each pair knows the other's address: member i knows members 0..i-1
    result = play(ClusterSpec(n=5, join=3, late=2, messages=4, seed=12, workdir=tmp_path, partial_addresses=True))
    first = [m for m in result.members if m.role == "joined"]
    late = [m for m in result.members if m.role == "late"]
    assert [m.name for m in first] == ["m0", "m1", "m2"] and len(late) == 2
    assert len({m.fingerprint for m in result.members}) == 1
    assert set(first[0].members or ()) <= {"m0", "m1", "m2"}  # decided from the three that joined
    for m in result.members:
        assert sum(m.delivered.values()) == 4 * 5
    assert "m1" not in (tmp_path / "m0.toml").read_text().split("[peers]")[1].split("[")[0]


def _forms(secret: bytes) -> set[str]:
    forms = {secret.hex(), base64.b64encode(secret).decode(), base64.urlsafe_b64encode(secret).decode().rstrip("=")}
    if len(secret) >= 16:
        forms.add(str(int.from_bytes(secret, "big")))
        forms.add(str(int.from_bytes(secret, "little")))
    return {f for f in forms if len(f) >= 16}


def test_no_secret_reaches_the_logs_or_stdout(tmp_path):
    passphrase = "correct horse battery staple 2004"
    spec = ClusterSpec(
        n=3, messages=2, seed=13, workdir=tmp_path, log_level="DEBUG", passphrase=passphrase,
        env={"SECCHAT_TEST_RNG_LOG": "{workdir}/{name}.rng"},
    )
    lines: list[str] = []
    result = asyncio.run(run_cluster(spec, out=lines.append))
    assert result.ok, result.problems

    secrets: dict[str, set[str]] = {"passphrase": {passphrase}}
    # long-term private keys, as the test itself can read them back
    for key_file in sorted((tmp_path / "pki").glob("*.key")):
        key = pki.load_private_key(key_file, passphrase)
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        secrets[f"private key {key_file.stem}"] = _forms(raw) | {base64.b64encode(der).decode()[:40]}
    # every random draw of every member: contributions, ephemeral keys, nonces
    draws: dict[str, list[bytes]] = {}
    for m in result.members:
        rng_file = tmp_path / f"{m.name}.rng"
        draws[m.name] = [bytes.fromhex(x) for x in rng_file.read_text().split()]
        secrets[f"random draws of {m.name}"] = set().union(*(_forms(d) for d in draws[m.name] if len(d) >= 16))
    # the group key: rebuild it from the contributions and check it against the fingerprint
    fingerprint = result.members[0].fingerprint
    decided = result.members[0].members or []
    index = {m.name: i for i, m in enumerate(result.members)}
    members = tuple(index[n] for n in decided)
    ders = [(m.name, pki.cert_from_pem((tmp_path / "pki" / f"{m.name}.pem").read_bytes()).public_bytes(serialization.Encoding.DER))
            for m in result.members]
    tag = smc_tag(GroupId(spec.group, members_digest(spec.group, ders)))
    found = None
    candidates = [[d for d in draws[n] if len(d) == 32] for n in decided]
    for combo in itertools.product(*candidates):
        secret = sum(int.from_bytes(y, "big") for y in combo) % (1 << 256)
        keys = derive_group_keys(secret, tag, members)
        if keys.fingerprint == fingerprint:
            found = (secret, keys)
            break
    assert found is not None, "could not rebuild the group key from the recorded contributions"
    secret, keys = found
    secrets["group secret"] = _forms(secret.to_bytes(32, "big")) | {str(secret), hex(secret)[2:]}
    secrets["group keys"] = _forms(keys.encryption) | _forms(keys.mac) | _forms(keys.confirmation)

    texts = {p.name: p.read_text(errors="replace") for p in tmp_path.iterdir() if p.suffix in (".log", ".out")}
    texts["launcher"] = "\n".join(lines)
    assert sum(len(t) for t in texts.values()) > 2000  # the logs are not empty: DEBUG level, all members
    assert any(fingerprint in t for t in texts.values())  # the fingerprint, and only it, is shown
    leaks = [(what, name) for what, forms in secrets.items() for name, text in texts.items()
             for form in forms if form in text]
    assert leaks == []


def test_member_process_refuses_a_bad_config_clearly(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(pki.__file__).resolve().parent.parent))
    (tmp_path / "m.toml").write_text('[identity]\nname = "m0"\n')
    proc = subprocess.run([sys.executable, "-m", "secchat.net.member_process", str(tmp_path / "m.toml")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert '"event":"error"' in proc.stdout and "passphrase" in proc.stdout


def test_cluster_command_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(pki.__file__).resolve().parent.parent))
    cmd = [sys.executable, "-c", "from secchat.app.cli import main; main()", "cluster", "--n", "3",
           "--messages", "2", "--seed", "5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("cluster n=3") and summary.endswith("-> OK")
    bad = subprocess.run([*cmd[:4], "--n", "5", "--kill", "3"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "majority" in bad.stderr


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.parametrize("whole_group", [True, False], ids=["ctrl-c", "sigint-to-launcher-only"])
def test_interrupt_cleans_up_processes_and_files(tmp_path, whole_group):
    env = dict(os.environ, PYTHONPATH=str(Path(pki.__file__).resolve().parent.parent), TMPDIR=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-c", "from secchat.app.cli import main; main()", "cluster", "--n", "3",
         "--messages", "100000", "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    try:
        for line in proc.stderr:  # wait until the members run
            if "ready" in line:
                break
        # keep draining both pipes: a launcher blocked writing to a full pipe could not exit
        for stream in (proc.stdout, proc.stderr):
            threading.Thread(target=stream.read, daemon=True).start()
        pids = _children(proc.pid)
        assert len(pids) == 3
        if whole_group:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        else:
            os.kill(proc.pid, signal.SIGINT)  # the members must be stopped by the launcher
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not list(tmp_path.glob("secchat-cluster-*"))


def test_memory_stays_bounded_when_a_member_stops_reading(tmp_path):
    """One member is SIGSTOPped; the others multicast 18 MB each at it: their queues stay at the bound."""
    queue_bytes = 2 << 20
    spec = ClusterSpec(n=4, stall=1, messages=300, message_size=60_000, seed=14, workdir=tmp_path,
                       links={"queue_max_bytes": queue_bytes, "queue_max_frames": 256})
    result = play(spec)
    live = result.live
    assert len(live) == 3
    for m in live:
        links = m.stats["links"]
        print(f"{m.name}: peak queue {links['queue_peak_bytes']} B, dropped {links['frames_dropped_queue_full']},"
              f" RSS {m.stats['rss_kb']} KiB")
        assert links["queue_peak_bytes"] <= queue_bytes
        assert links["frames_dropped_queue_full"] > 0  # the stalled member's frames, tail-dropped
        assert all(q[1] <= queue_bytes for q in m.stats["queues"].values())
        assert m.stats["rss_kb"] < 150 << 10
        assert all(m.delivered[s.name] == 300 for s in live)  # the others were not held back


def test_a_crashed_member_restarts_reconnects_and_gets_the_queued_messages(tmp_path):
    """SIGKILL after the key; the others multicast while it is down; its fresh process gets them all."""
    result = play(ClusterSpec(n=5, crash=1, messages=5, seed=15, workdir=tmp_path))
    [recovered] = [m for m in result.members if m.role == "recovered"]
    others = [m for m in result.members if m.role == "joined"]
    assert len({m.fingerprint for m in result.members}) == 1
    assert all(recovered.delivered[s.name] == 5 for s in others)  # multicast while it was down
    assert all(m.delivered[recovered.name] == 5 for m in others)  # and its new incarnation is heard
    assert sum(m.stats["links"]["connections_opened"] + m.stats["links"]["connections_accepted"]
               for m in others) >= 2 * len(others)  # the links were re-established


@pytest.mark.parametrize(
    "args",
    [["--n", "7", "--kill", "3"], ["--n", "9", "--join", "5", "--late", "4", "--messages", "20"]],
    ids=["n7-kill3", "n9-join5-late4-messages20"],
)
def test_acceptance_commands(args):
    """The two command lines of issue 3's acceptance, verbatim (plus a seed)."""
    env = dict(os.environ, PYTHONPATH=str(Path(pki.__file__).resolve().parent.parent))
    proc = subprocess.run(
        [sys.executable, "-c", "from secchat.app.cli import main; main()", "cluster", *args, "--seed", "2004"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.endswith("-> OK") and "MISMATCH" not in summary
