"""Identities that last (issue 12): renewal, key rotation and a signed unregister at the
directory (SQLite and PostgreSQL), and how a peer's client follows them -- a renewal silently, a
rotation signed by the accepted key as such, a new key without proof refused."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import update

from secchat import pki
from secchat.directory.client import AsyncDirectoryClient, CertificateChanged, UntrustedResponse
from secchat.directory.identities import IdentityError, public_key, verify_chain
from secchat.directory.models import IdentityRotation, RotationOut
from secchat.directory.server import create_app
from secchat.directory.storage import make_engine, participants
from secchat.directory.trust import Acceptance, TrustStore, split_identity
from tests import directory_support
from tests.directory_support import TEST_DIRECTORY, User, World
from tests.unit.test_directory_server import Api, refused

db_url = directory_support.db_url


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def api(db_url, world):
    engine = make_engine(db_url, pool_size=5)
    try:
        yield Api(create_app(engine, [world.ca_cert], names=[TEST_DIRECTORY]))
    finally:
        engine.dispose()


def renewed(world: World, user: User) -> User:
    """A newer certificate for the same key (issued as if a second later)."""
    later = datetime.now(UTC) + timedelta(seconds=1)
    cert = pki.issue_certificate(world.ca_key, world.ca_cert, user.name, user.key.public_key(), now=later)
    return User(user.name, user.key, cert)


def new_key(world: World, user: User) -> User:
    key = pki.generate_key()
    return User(user.name, key, pki.issue_certificate(world.ca_key, world.ca_cert, user.name, key.public_key()))


def proof(old: User, new: User, *, sign_as: User | None = None, rotated_at: int = 5000) -> dict:
    rotation = IdentityRotation(old.name, "Test CA", public_key(old.cert), public_key(new.cert), rotated_at)
    signature = pki.signer_of((sign_as or old).key).sign(rotation.signed_bytes())
    return {"old_key": rotation.old_key.hex(), "rotated_at": rotated_at, "signature": signature.hex()}


def register(api: Api, user: User, rotation: dict | None = None) -> httpx.Response:
    body: dict = {"cert_pem": user.pem}
    if rotation is not None:
        body["rotation"] = rotation
    return api.signed(user, "POST", "/v1/participants", json.dumps(body).encode())


# --------------------------------------------------------------------------- the directory


def test_renewal_is_accepted_and_keeps_the_contact(api, world):
    alice = world.user("alice")
    assert register(api, alice).status_code == 201
    contact = {"host": "127.0.0.1", "port": 4000, "issued_at": 100}
    from secchat.directory.models import contact_message

    sig = pki.signer_of(alice.key).sign(contact_message("alice", "127.0.0.1", 4000, 100)).hex()
    body = json.dumps({**contact, "signature": sig}).encode()
    assert api.signed(alice, "PUT", "/v1/participants/alice/contact", body).status_code == 200

    newer = renewed(world, alice)
    answer = register(api, newer)
    assert answer.status_code == 200, answer.text
    entry = api.request("GET", "/v1/participants/alice").json()
    assert entry["fingerprint"] == pki.fingerprint(newer.cert) != pki.fingerprint(alice.cert)
    assert entry["contact"]["port"] == 4000 and entry["rotations"] == []

    # the older certificate again is not a renewal
    before = api.store.dump()
    refused(api, register(api, alice), 409, "stale_certificate", before)


def test_a_new_key_needs_a_rotation_signed_by_the_registered_one(api, world):
    alice = world.user("alice")
    assert register(api, alice).status_code == 201
    thief = new_key(world, alice)
    before = api.store.dump()
    refused(api, register(api, thief), 409, "identity_taken", before)
    # a proof signed by the new key itself, or naming another old key, proves nothing
    refused(api, register(api, thief, proof(alice, thief, sign_as=thief)), 422, "bad_rotation_signature", before)
    mallory = world.user("mallory")
    refused(api, register(api, thief, proof(mallory, thief)), 422, "bad_rotation_signature", before)
    # another CA's certificate for the name: refused too
    other = World("Other CA")
    foreign = other.user("alice")
    api2 = Api(create_app(api.store.engine, [world.ca_cert, other.ca_cert], names=[TEST_DIRECTORY]))
    refused(api2, register(api2, foreign), 409, "identity_taken", before)

    rotated = register(api, thief, proof(alice, thief))
    assert rotated.status_code == 200, rotated.text
    entry = api.request("GET", "/v1/participants/alice").json()
    assert entry["fingerprint"] == pki.fingerprint(thief.cert)
    assert [r["old_key"] for r in entry["rotations"]] == [public_key(alice.cert).hex()]
    assert entry["rotations"][0]["new_key"] == public_key(thief.cert).hex()
    # the old key signs nothing any more
    refused(api, register(api, alice), 409, "identity_taken", api.store.dump())


def test_unregister_is_signed_by_the_owner_and_frees_the_name(api, world):
    alice, bob = world.user("alice"), world.user("bob")
    for u in (alice, bob):
        assert register(api, u).status_code == 201
    before = api.store.dump()
    refused(api, api.signed(bob, "DELETE", "/v1/participants/alice"), 403, "not_owner", before)
    refused(api, api.request("DELETE", "/v1/participants/alice"), 401, "missing_signature", before)

    assert api.signed(alice, "DELETE", "/v1/participants/alice").status_code == 204
    assert api.request("GET", "/v1/participants/alice").status_code == 404
    assert [p["name"] for p in api.request("GET", "/v1/participants").json()] == ["bob"]
    # gone for good: its key signs nothing, and the name is free for a new key
    refused(api, api.signed(alice, "DELETE", "/v1/participants/alice"), 401, "unknown_signer", api.store.dump())
    fresh = new_key(world, alice)
    assert register(api, fresh).status_code == 201
    assert api.request("GET", "/v1/participants/alice").json()["fingerprint"] == pki.fingerprint(fresh.cert)


# --------------------------------------------------------------------------- the peers' clients


class Peers:
    """alice and bob registered on one directory; bob accepted alice's key."""

    def __init__(self, api: Api, world: World) -> None:
        self.api, self.world = api, world
        self.alice, self.bob = world.user("alice"), world.user("bob")
        self.bob_trust = TrustStore(None)
        for u in (self.alice, self.bob):
            assert register(api, u).status_code == 201
        bob = self.client(self.bob, self.bob_trust)
        participant = self.run(bob.get_participant("alice"))
        assert participant.acceptance is Acceptance.NEW
        bob.accept(participant)

    def client(self, user: User, trust: TrustStore) -> AsyncDirectoryClient:
        return AsyncDirectoryClient(
            "http://directory", [self.world.ca_cert], user.key, user.cert, trust,
            transport=httpx.ASGITransport(app=self.api.app),
        )

    @staticmethod
    def run(coro):
        return asyncio.run(coro)

    def bob_sees_alice(self):
        return self.run(self.client(self.bob, self.bob_trust).get_participant("alice"))


@pytest.fixture
def peers(api, world) -> Peers:
    return Peers(api, world)


def test_a_renewal_is_silent_for_peers(peers):
    newer = renewed(peers.world, peers.alice)
    assert peers.run(peers.client(newer, TrustStore(None)).register()).fingerprint == pki.fingerprint(newer.cert)
    seen = peers.bob_sees_alice()
    assert seen.acceptance is Acceptance.ACCEPTED and seen.fingerprint == pki.fingerprint(newer.cert)


def test_a_proven_rotation_is_followed_and_shown_in_conference_records(peers):
    from secchat.directory.models import RotationIn

    alice2 = new_key(peers.world, peers.alice)
    p = proof(peers.alice, alice2)
    peers.run(peers.client(alice2, TrustStore(None)).register(RotationIn(**p)))
    seen = peers.bob_sees_alice()
    assert seen.acceptance is Acceptance.ROTATED and seen.earlier_keys == (public_key(peers.alice.cert),)

    # a conference alice creates with her new key: bob's member entry for her is ROTATED, not new
    alice_trust = TrustStore(None)
    alice = peers.client(alice2, alice_trust)
    alice.accept(peers.run(alice.get_participant("bob")))
    peers.run(alice.create_conference("after", 1000, 2000, ["alice", "bob"]))
    record = peers.run(peers.client(peers.bob, peers.bob_trust).get_conference("after", "alice"))
    assert [m.name for m in record.rotated] == ["alice"] and record.unaccepted == ()
    # once bob keeps the new key, it is simply accepted
    peers.bob_trust.accept_all((m.identity, m.fingerprint) for m in record.rotated)
    assert peers.bob_trust.get("alice@Test CA").key == public_key(alice2.cert).hex()
    assert peers.bob_sees_alice().acceptance is Acceptance.ACCEPTED


def test_a_new_key_without_proof_is_flagged_by_the_peer(peers):
    """A directory that swaps alice's certificate (here: written into its database) cannot make
    bob use it: no rotation signed by the key he accepted."""
    thief = new_key(peers.world, peers.alice)
    with peers.api.store.engine.begin() as conn:
        conn.execute(
            update(participants)
            .where(participants.c.name == "alice")
            .values(cert_pem=thief.pem, fingerprint=pki.fingerprint(thief.cert))
        )
    with pytest.raises(CertificateChanged, match="no rotation signed by that key"):
        peers.bob_sees_alice()


def test_a_forged_chain_of_rotations_is_refused(peers, world):
    thief = new_key(world, peers.alice)
    forged = proof(peers.alice, thief, sign_as=thief)
    chain = [RotationOut(forged["old_key"], public_key(thief.cert).hex(), 5000, forged["signature"])]
    with pytest.raises(IdentityError) as info:
        verify_chain("alice", "Test CA", chain, public_key(thief.cert))
    assert info.value.code == "bad_rotation_signature"
    good = proof(peers.alice, thief)
    chain = [RotationOut(good["old_key"], public_key(thief.cert).hex(), 5000, good["signature"])]
    assert verify_chain("alice", "Test CA", chain, public_key(thief.cert)) == (public_key(peers.alice.cert),)
    # a chain that ends elsewhere than the certificate's key proves nothing about it
    assert verify_chain("alice", "Test CA", chain, public_key(peers.bob.cert)) == ()
    with pytest.raises(IdentityError):  # signed for another name
        verify_chain("alicia", "Test CA", chain, public_key(thief.cert))

    def serve_forged(path, body):
        if path == "/v1/participants/alice":
            body = {**body, "rotations": [{"old_key": forged["old_key"], "new_key": public_key(thief.cert).hex(),
                                           "rotated_at": 5000, "signature": forged["signature"]}]}
        return body

    from tests.unit.test_directory_client import EvilDirectory

    evil = EvilDirectory(peers.api.app, serve_forged)
    bob = AsyncDirectoryClient(
        "http://directory", [world.ca_cert], peers.bob.key, peers.bob.cert, peers.bob_trust,
        transport=httpx.ASGITransport(app=evil),
    )
    with pytest.raises(UntrustedResponse) as refusal:
        asyncio.run(bob.get_participant("alice"))
    assert refusal.value.code == "bad_rotation_signature"


# --------------------------------------------------------------------------- the trust store


def test_trust_store_pins_the_key_and_upgrades_old_entries(tmp_path, world):
    alice = world.user("alice")
    path = tmp_path / "accepted.json"
    fp = pki.fingerprint(alice.cert)
    path.write_text(json.dumps({"version": 1, "accepted": {"alice@Test CA": {"fingerprint": fp, "accepted_at": 1}}}))
    store = TrustStore(path)
    key = public_key(alice.cert)
    # an entry of before key pins matches by fingerprint only
    assert store.status("alice@Test CA", fp, key) is Acceptance.ACCEPTED
    assert store.status("alice@Test CA", "00" * 32, key) is Acceptance.CHANGED
    store.note_key(fp, key)
    store.accept("bob@Test CA", "11" * 32)  # any write fills in the keys known by then
    assert TrustStore(path).get("alice@Test CA").key == key.hex()
    assert TrustStore(path).status("alice@Test CA", "22" * 32, key) is Acceptance.ACCEPTED  # renewed
    assert store.resolve("alice") == "alice@Test CA" and store.resolve("carol") is None
    path.write_text(json.dumps({"version": 1, "accepted": {"a@X": {"fingerprint": fp, "accepted_at": 1, "key": "zz"}}}))
    with pytest.raises(Exception, match="unreadable"):
        TrustStore(path)


def test_names_are_accepted_as_name_and_name_at_issuer():
    assert split_identity("carol@SecChat CA", ["SecChat CA"]) == ("carol", "SecChat CA")
    assert split_identity("carol", ["SecChat CA"]) == ("carol", None)
    assert split_identity("me@home", ["SecChat CA"]) == ("me@home", None)  # '@' in a plain name
    assert split_identity("@SecChat CA", ["SecChat CA"]) == ("@SecChat CA", None)


def test_a_directory_database_of_before_gets_the_new_column_and_table(tmp_path, world):
    """A participants table without ``unregistered_at`` (an older directory) is upgraded in
    place; its entries stay registered."""
    import sqlite3

    from secchat.directory.storage import Store

    path = tmp_path / "old.sqlite3"
    alice = world.user("alice")
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE participants (name VARCHAR(64) PRIMARY KEY, issuer VARCHAR(64) NOT NULL,"
            " fingerprint VARCHAR(64) NOT NULL UNIQUE, cert_pem TEXT NOT NULL, registered_at BIGINT NOT NULL)"
        )
        conn.execute("INSERT INTO participants VALUES ('alice', 'Test CA', ?, ?, 1)",
                     (pki.fingerprint(alice.cert), alice.pem))
    engine = make_engine(f"sqlite:///{path}", pool_size=2)
    try:
        store = Store(engine)
        store.create_schema()
        assert [p.name for p in store.list_participants()] == ["alice"]
        store.unregister_participant(name="alice", nonce=("0" * 32, 10**9), now=5)
        assert store.list_participants() == [] and store.get_participant("alice") is None
    finally:
        engine.dispose()


def test_trust_list_json_and_revoke_by_name(tmp_path):
    from typer.testing import CliRunner

    from secchat.app.cli import app

    home = tmp_path / "bob"
    home.mkdir()
    store = TrustStore(home / "accepted-certificates.json")
    store.accept("carol@SecChat CA", "ab" * 32, now=7)
    runner = CliRunner()
    listed = runner.invoke(app, ["trust", "list", "--json", "--home", str(home)])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == [
        {"identity": "carol@SecChat CA", "fingerprint": "ab" * 32, "key": None, "accepted_at": 7}
    ]
    missing = runner.invoke(app, ["trust", "revoke", "dave", "--home", str(home)])
    assert missing.exit_code == 6 and len(TrustStore(home / "accepted-certificates.json")) == 1
    done = runner.invoke(app, ["trust", "revoke", "carol", "--home", str(home)])
    assert done.exit_code == 0 and "revoked carol@SecChat CA" in done.stdout
    assert len(TrustStore(home / "accepted-certificates.json")) == 0
