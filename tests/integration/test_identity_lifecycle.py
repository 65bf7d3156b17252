"""Issue 12's acceptance, over real processes: ``secchat`` commands as subprocesses, a real
directory server process on a SQLite file, ``secchat join`` processes over mutual TLS.

Three users on three profiles go init -> request -> the CA operator signs -> install -> register
-> create -> join -> chat, and nobody but the operator has the CA's directory or passphrase.  Then
alice rotates her key: bob's next join says "alice rotated her key (signed by her old one)" and
the conference goes on; a certificate for alice's name with another key and no rotation signed
by hers is refused by the directory, and -- written into the directory's database behind its
back -- flagged by bob's client.  Finally carol's signed unregister removes her from the listing.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from secchat import pki
from secchat.app.exit_codes import ExitCode
from tests.directory_support import ServerProcess
from tests.integration.test_app_cli import Member
from tests.integration.test_cli_conventions import CA_PASSPHRASE, CMD, PASSPHRASE, _env, failed, ok

USERS = ("alice", "bob", "carol")


def test_lifecycle_chat_rotation_and_unregister(tmp_path: Path):
    operator = _env(SECCHAT_CA_PASSPHRASE=CA_PASSPHRASE)
    user = _env(SECCHAT_PASSPHRASE=PASSPHRASE)  # never the CA's passphrase nor its directory
    ca = tmp_path / "ca"
    ok("ca", "init", "--dir", str(ca), env=operator)
    db = tmp_path / "directory.sqlite3"
    server = ServerProcess(ca / "ca.pem", f"sqlite:///{db}").start()
    homes = {n: tmp_path / n for n in USERS}
    joins: list[Member] = []

    def sign(home: Path, out: Path) -> None:
        ok("ca", "sign", str(home / "identity" / "request.pem"), "--dir", str(ca), "--out", str(out), env=operator)

    def join(name: str, conference: str, *extra: str) -> Member:
        m = Member(homes[name], conference, *extra, env=user)
        joins.append(m)
        return m

    try:
        # ---------------------------------------------------------------- init .. register
        for name, home in homes.items():
            ok("init", name, "--home", str(home), "--directory", server.url, env=user)
            sign(home, tmp_path / f"{name}.pem")
            ok("identity", "install", str(tmp_path / f"{name}.pem"), "--home", str(home), env=user)
            assert f"registered {name}@SecChat CA" in ok("register", "--home", str(home), env=user).stdout

        # participants --json | python -m json.tool
        piped = subprocess.run(
            f"{' '.join(CMD)} participants --json --home {homes['bob']} | {sys.executable} -m json.tool",
            shell=True, env=user, capture_output=True, text=True, timeout=120, check=False,
        )
        assert piped.returncode == 0, piped.stderr
        listing = json.loads(piped.stdout)
        assert [p["identity"] for p in listing] == [f"{n}@SecChat CA" for n in USERS]
        alice_fp = next(p["fingerprint"] for p in listing if p["name"] == "alice")

        # bob accepts alice by name@issuer; a mistyped fingerprint is not answered with hers
        wrong = ("0" if alice_fp[0] != "0" else "1") + alice_fp[1:32]
        err = failed(ExitCode.UNTRUSTED, "trust", "accept", "alice@SecChat CA", wrong, "--home", str(homes["bob"]),
                     env=user)
        assert alice_fp[:32] not in err and "check it with its owner" in err
        ok("trust", "accept", "alice@SecChat CA", alice_fp, "--home", str(homes["bob"]), env=user)
        trusted = json.loads(ok("trust", "list", "--json", "--home", str(homes["bob"]), env=user).stdout)
        assert [(t["identity"], t["fingerprint"]) for t in trusted] == [("alice@SecChat CA", alice_fp)]

        # a conference entirely in the past is refused; one from now for 1h30m is created
        failed(ExitCode.USAGE, "create", "old", "-m", "bob", "--from", "2020-01-01T00:00", "--to", "2020-01-02T00:00",
               "--home", str(homes["alice"]), env=user)
        out = ok("create", "room", "-m", "bob", "-m", "carol@SecChat CA", "--to", "+1h30m", "--accept-new",
                 "--home", str(homes["alice"]), env=user).stdout
        assert "accepted bob@SecChat CA" in out and "created room by alice: alice, bob, carol" in out
        listed = json.loads(ok("conferences", "--json", "--home", str(homes["carol"]), env=user).stdout)
        assert [(c["id"], c["creator"], c["open_now"]) for c in listed] == [("room", "alice", True)]

        # ---------------------------------------------------------------- join and chat
        alice = join("alice", "room")
        bob = join("bob", "room", "--accept-new")  # carol's certificate is new to bob
        carol = join("carol", "room", "--accept-new", "--json-input")
        fp = alice.key(0)
        assert bob.key(0) == fp and carol.key(0) == fp
        accepted = bob.wait(lambda e: e["event"] == "accepted", "what --accept-new accepted")
        assert accepted["identity"] == "carol@SecChat CA" and accepted["conference"] == "room"
        alice.say("hello from alice")
        for m in (bob, carol):
            got = m.received("hello from alice")
            assert got["conference"] == "room" and got["creator"] == "alice" and got["id"].startswith("alice/0/")
        ids = {m.received("hello from alice")["id"] for m in (bob, carol)}
        assert len(ids) == 1  # the same message id at every member
        carol.say(json.dumps({"cmd": "send", "text": "carol, by a script"}))
        carol.say("not json")
        carol.wait(lambda e: e["event"] == "error" and e["code"] == "bad_command", "a refused command")
        alice.received("carol, by a script")
        bob.received("carol, by a script")
        carol.say(json.dumps({"cmd": "leave"}))
        for m in list(joins):
            assert m.close() == 0
        joins.clear()

        # ---------------------------------------------------------------- alice rotates her key
        old_key = (homes["alice"] / "identity" / "identity.key").read_bytes()
        out = ok("identity", "rotate", "--home", str(homes["alice"]), env=user).stdout
        assert "signed by your current key" in out
        sign(homes["alice"], tmp_path / "alice-2.pem")
        ok("identity", "install", str(tmp_path / "alice-2.pem"), "--home", str(homes["alice"]), env=user)
        assert (homes["alice"] / "identity" / "identity.key").read_bytes() != old_key
        assert any(p.read_bytes() == old_key for p in homes["alice"].glob("replaced-*/identity.key"))  # kept
        out = ok("register", "--home", str(homes["alice"]), env=user).stdout
        assert "key rotation, signed by your old key" in out
        new_fp = json.loads(ok("identity", "show", "--json", "--home", str(homes["alice"]), env=user).stdout)[
            "fingerprint"
        ]
        assert new_fp != alice_fp

        # bob's client follows the rotation: listed as such, then his next join says so and goes on
        listing = json.loads(ok("participants", "--json", "--home", str(homes["bob"]), env=user).stdout)
        assert next(p for p in listing if p["name"] == "alice")["acceptance"] == "rotated"
        ok("create", "after", "-m", "bob", "-m", "carol", "--home", str(homes["alice"]), env=user)
        alice = join("alice", "after")
        bob = join("bob", "after")
        note = bob.wait(lambda e: e["event"] == "notice" and "rotated" in e["text"], "the rotation line")
        assert note["text"].startswith("alice rotated her key (signed by her old one)"), note
        fp = alice.key(0)
        assert bob.key(0) == fp
        alice.say("with my new key")
        bob.received("with my new key")
        for m in list(joins):
            assert m.close() == 0
        joins.clear()
        trusted = json.loads(ok("trust", "list", "--json", "--home", str(homes["bob"]), env=user).stdout)
        assert next(t for t in trusted if t["identity"] == "alice@SecChat CA")["fingerprint"] == new_fp

        # ---------------------------------------------------------------- a new key without proof
        mallory = tmp_path / "mallory"  # a profile for alice's name, signed by the CA (a mistake)
        ok("init", "alice", "--home", str(mallory), "--directory", server.url, env=user)
        sign(mallory, tmp_path / "mallory.pem")
        ok("identity", "install", str(tmp_path / "mallory.pem"), "--home", str(mallory), env=user)
        assert "identity_taken" in failed(ExitCode.REFUSED, "register", "--home", str(mallory), env=user)
        # a directory that takes it anyway (written into its database): bob's client flags it
        cert = pki.cert_from_pem((tmp_path / "mallory.pem").read_bytes())
        with sqlite3.connect(db) as conn:
            conn.execute(
                "UPDATE participants SET cert_pem = ?, fingerprint = ? WHERE name = 'alice'",
                (pki.cert_to_pem(cert).decode(), pki.fingerprint(cert)),
            )
        err = failed(ExitCode.UNTRUSTED, "join", "after", "--home", str(homes["bob"]), env=user, input="")
        assert "no rotation signed by that key" in err and "alice@SecChat CA" in err
        proc = subprocess.run([*CMD, "participants", "--json", "--home", str(homes["bob"])], env=user,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0 and "alice" not in [p["name"] for p in json.loads(proc.stdout)]
        assert "no rotation signed by that key" in proc.stderr  # skipped, and said

        # ---------------------------------------------------------------- carol unregisters
        failed(ExitCode.USAGE, "unregister", "--home", str(homes["carol"]), env=user, input="")  # not confirmed
        out = ok("unregister", "--yes", "--home", str(homes["carol"]), env=user).stdout
        assert "unregistered carol@SecChat CA" in out
        listing = json.loads(ok("participants", "--json", "--home", str(homes["bob"]), env=user).stdout)
        assert "carol" not in [p["name"] for p in listing]
        assert "unknown_signer" in failed(ExitCode.REFUSED, "unregister", "--yes", "--home", str(homes["carol"]),
                                          env=user)
    finally:
        for m in joins:
            m.close()
        server.close()
