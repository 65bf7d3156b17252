"""The directory client trusts nothing: a malicious directory (an ASGI wrapper around the honest
one that rewrites its answers) can refuse service, but every alteration is caught."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from secchat import pki
from secchat.directory.client import (
    AmbiguousConference,
    AsyncDirectoryClient,
    CertificateChanged,
    ConferenceDeleted,
    DirectoryClient,
    DirectoryError,
    DirectoryUnavailable,
    UnacceptedCertificates,
    UntrustedResponse,
)
from secchat.directory.server import create_app
from secchat.directory.storage import make_engine
from secchat.directory.trust import Acceptance, TrustStore, TrustStoreError
from secchat.directory.versions import Seen, VersionMemory, VersionMemoryError
from tests.directory_support import TEST_DIRECTORY, User, World

Tamper = Callable[[str, object], object]


class EvilDirectory:
    """Wraps the honest app and passes each successful GET answer through ``tamper(path, json)``."""

    def __init__(self, app, tamper: Tamper | None = None) -> None:
        self.app, self.tamper = app, tamper
        #: path -> a JSON body served with 200 instead of the honest answer (a replayed record)
        self.serve: dict[str, bytes] = {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] in self.serve:
            body = self.serve[scope["path"]]
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] != "http" or scope["method"] != "GET" or self.tamper is None:
            await self.app(scope, receive, send)
            return
        start: dict = {}
        chunks: list[bytes] = []

        async def capture(message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body = b"".join(chunks)
        if start["status"] == 200:
            body = json.dumps(self.tamper(scope["path"], json.loads(body))).encode()
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": start["status"], "headers": headers})
        await send({"type": "http.response.body", "body": body})


class Setup:
    """A directory with alice, bob, carol registered and conference ``c1`` = (alice, bob) by alice."""

    def __init__(self, tmp_path: Path) -> None:
        self.world = World()
        self.engine = make_engine(f"sqlite:///{tmp_path / 'd.sqlite3'}", pool_size=5)
        self.app = create_app(self.engine, [self.world.ca_cert], names=[TEST_DIRECTORY])
        self.evil = EvilDirectory(self.app)
        self.users = {n: self.world.user(n) for n in ("alice", "bob", "carol", "mallory")}
        self.stores = {n: TrustStore(None) for n in self.users}
        self.versions = {n: VersionMemory(None) for n in self.users}

        async def setup() -> None:
            clients = {n: self.client(n) for n in self.users}
            for c in clients.values():
                await c.register()
            a = clients["alice"]
            for n in ("bob", "carol"):
                a.accept(await a.get_participant(n))
            await a.create_conference("c1", 1000, 2000, ["alice", "bob"])
            b = clients["bob"]
            b.accept(await b.get_participant("alice"))

        asyncio.run(setup())

    def client(self, name: str, tamper: Tamper | None = None) -> AsyncDirectoryClient:
        self.evil.tamper = tamper
        u = self.users[name]
        return AsyncDirectoryClient(
            "http://directory", [self.world.ca_cert], u.key, u.cert, self.stores[name],
            versions=self.versions[name], transport=httpx.ASGITransport(app=self.evil),
        )

    def get_conference(self, name: str, tamper: Tamper | None, id: str = "c1", creator: str = "alice"):
        async def go():
            return await self.client(name, tamper).get_conference(id, creator)

        return asyncio.run(go())

    def refused(self, tamper: Tamper, code: str) -> UntrustedResponse:
        with pytest.raises(UntrustedResponse) as err:
            self.get_conference("bob", tamper)
        assert err.value.code == code, err.value
        assert str(err.value) and "\n" not in str(err.value)
        return err.value


@pytest.fixture
def setup(tmp_path) -> Setup:
    s = Setup(tmp_path)
    yield s
    s.engine.dispose()


def test_honest_directory(setup):
    conference = setup.get_conference("bob", None)
    assert [m.name for m in conference.members] == ["alice", "bob"]
    assert (conference.t0, conference.t1, conference.creator) == (1000, 2000, "alice")
    assert conference.unaccepted == ()
    conference.require_accepted()


def _on_conference(fn):
    def tamper(path: str, data):
        if path.startswith("/v1/conferences/"):
            fn(data)
        return data

    return tamper


def test_directory_adds_a_member(setup):
    mallory = setup.users["mallory"]

    def add(data):
        data["members"].append("mallory")
        data["certs"].append(mallory.pem)

    setup.refused(_on_conference(add), "bad_record_signature")


def test_directory_swaps_a_certificate_for_another_valid_one(setup):
    other_bob = setup.world.user("bob", valid_days=30)  # CA-valid, same name, not the signed one

    def swap(data):
        data["certs"][1] = other_bob.pem

    # bob knows his own key: the swap is said as a key change; to a member who accepted
    # nobody yet, the creator's signature does not cover the swapped certificate
    setup.refused(_on_conference(swap), "certificate_changed")
    with pytest.raises(UntrustedResponse) as err:
        asyncio.run(setup.client("mallory", _on_conference(swap)).get_conference("c1", "alice"))
    assert err.value.code == "bad_record_signature"


def test_directory_swaps_a_certificate_for_another_name(setup):
    def swap(data):
        data["certs"][1] = setup.users["carol"].pem

    setup.refused(_on_conference(swap), "name_mismatch")


def test_directory_swaps_a_certificate_for_a_foreign_one(setup):
    foreign = World("Evil CA").user("bob")

    def swap(data):
        data["certs"][1] = foreign.pem

    setup.refused(_on_conference(swap), "invalid_certificate")


@pytest.mark.parametrize("field", ["t0", "t1"])
def test_directory_alters_the_time_frame(setup, field):
    def shift(data):
        data[field] += 3600 if field == "t1" else -3600

    setup.refused(_on_conference(shift), "bad_record_signature")


def test_directory_strips_the_signature(setup):
    def strip(data):
        data["signature"] = ""

    setup.refused(_on_conference(strip), "unsigned_record")


def test_directory_drops_the_signature_field(setup):
    def drop(data):
        del data["signature"]

    setup.refused(_on_conference(drop), "malformed_response")


def test_directory_changes_the_creator(setup):
    def creator(data):
        data["creator"] = "bob"

    # asked for alice's c1: another creator's is another conference
    setup.refused(_on_conference(creator), "wrong_conference")

    # asked for c1 of whoever: bob's name on alice's record does not verify
    def in_listing(path, data):
        if path == "/v1/conferences":
            for c in data:
                creator(c)
        return data

    async def go():
        return await setup.client("bob", in_listing).get_conference("c1")

    with pytest.raises(UntrustedResponse) as err:
        asyncio.run(go())
    assert err.value.code == "bad_record_signature"


def test_directory_reorders_members(setup):
    def reorder(data):
        data["members"].reverse()
        data["certs"].reverse()

    setup.refused(_on_conference(reorder), "bad_record_signature")


def test_directory_answers_with_another_conference(setup):
    def rename(data):
        data["id"] = "c2"

    setup.refused(_on_conference(rename), "wrong_conference")


def test_directory_swaps_an_accepted_participant_certificate(setup):
    other_bob = setup.world.user("bob", valid_days=30)

    def swap(path, data):
        if path == "/v1/participants/bob":
            data["cert_pem"] = other_bob.pem
        return data

    async def go():
        return await setup.client("alice", swap).get_participant("bob")

    with pytest.raises(CertificateChanged) as err:
        asyncio.run(go())
    assert err.value.code == "certificate_changed" and "bob@Test CA" in str(err.value)


def test_directory_forges_a_contact_address(setup):
    async def publish():
        await setup.client("bob").publish_contact("192.0.2.1", 7001)

    asyncio.run(publish())

    def forge(path, data):
        if path == "/v1/participants/bob" and data.get("contact"):
            data["contact"]["host"] = "203.0.113.66"
        return data

    async def get(tamper):
        return await setup.client("alice", tamper).get_participant("bob")

    assert asyncio.run(get(None)).contact.host == "192.0.2.1"
    assert asyncio.run(get(forge)).contact is None


def test_tampered_conferences_are_left_out_of_listings(setup):
    def shift(path, data):
        if path.endswith("/conferences"):
            for c in data:
                c["t1"] += 1
        return data

    async def listing(tamper):
        return await setup.client("bob", tamper).conferences_of()

    assert [c.id for c in asyncio.run(listing(None))] == ["c1"]
    assert asyncio.run(listing(shift)) == []


def test_new_certificates_are_reported_then_accepted(setup):
    # carol never accepted anyone: alice's and bob's certificates are new to her
    async def create_and_fetch():
        alice = setup.client("alice")
        await alice.create_conference("c3", 1, 2, ["alice", "bob", "carol"])
        return await setup.client("carol").get_conference("c3")

    conference = asyncio.run(create_and_fetch())
    assert {m.name for m in conference.unaccepted} == {"alice", "bob"}
    with pytest.raises(UnacceptedCertificates) as err:
        conference.require_accepted()
    assert {m.name for m in err.value.members} == {"alice", "bob"}
    carol = setup.client("carol")
    for member in conference.unaccepted:
        carol.accept(member)
    again = setup.get_conference("carol", None, "c3")
    assert again.unaccepted == () and all(m.acceptance is Acceptance.ACCEPTED for m in again.members)


def test_changed_certificate_in_a_signed_record_is_refused(setup):
    # bob once accepted another certificate for alice: even a correctly signed record is refused
    setup.stores["bob"].accept(pki.Identity("alice", "Test CA"), "0" * 64)
    with pytest.raises(CertificateChanged):
        setup.get_conference("bob", None)


def test_creator_needs_accepted_certificates(setup):
    async def create():
        await setup.client("bob").create_conference("c4", 1, 2, ["bob", "carol"])

    with pytest.raises(UnacceptedCertificates) as err:
        asyncio.run(create())
    assert [str(m.identity) for m in err.value.members] == ["carol@Test CA"]
    assert setup.app.state.store.get_conference("bob", "c4") is None


def test_server_errors_are_directory_errors(setup):
    async def go():
        return await setup.client("bob").get_conference("missing")

    with pytest.raises(DirectoryError) as err:
        asyncio.run(go())
    assert (err.value.code, err.value.status) == ("unknown_conference", 404)


def test_unreachable_directory(tmp_path):
    world = World()
    u = world.user("alice")
    client = DirectoryClient("http://127.0.0.1:9", [world.ca_cert], u.key, u.cert, TrustStore(None), deadline=2)
    with client, pytest.raises(DirectoryUnavailable) as err:
        client.get_conference("x", "alice")
    assert err.value.code == "unreachable"


def test_client_refuses_a_key_that_is_not_its_certificate():
    world = World()
    a, b = world.user("alice"), world.user("bob")
    with pytest.raises(ValueError):
        DirectoryClient("http://x", [world.ca_cert], a.key, b.cert, TrustStore(None))


# --------------------------------------------------------------------------- the trust store


def test_trust_store_persists(tmp_path):
    path = tmp_path / "trust" / "accepted.json"
    store = TrustStore(path)
    alice = pki.Identity("alice", "CA")
    assert store.status(alice, "aa") is Acceptance.NEW
    store.accept(alice, "aa", now=5)
    assert store.status(alice, "aa") is Acceptance.ACCEPTED
    assert store.status(alice, "bb") is Acceptance.CHANGED
    reloaded = TrustStore(path)
    assert [(e.identity, e.fingerprint, e.accepted_at) for e in reloaded.list()] == [("alice@CA", "aa", 5)]
    assert reloaded.revoke(alice) and not reloaded.revoke(alice)
    assert len(TrustStore(path)) == 0
    assert (path.stat().st_mode & 0o777) == 0o600


def test_trust_store_corrupt(tmp_path):
    path = tmp_path / "accepted.json"
    path.write_text("{not json")
    with pytest.raises(TrustStoreError):
        TrustStore(path)


def test_user_fixture_is_a_user():
    assert isinstance(World().user("x"), User)


def test_names_that_need_percent_encoding(tmp_path):
    # the signed path is the raw, percent-encoded one on both sides
    world = World()
    engine = make_engine(f"sqlite:///{tmp_path / 'd.sqlite3'}")
    app = create_app(engine, [world.ca_cert], names=[TEST_DIRECTORY])
    u = world.user("Zoë Smith+1 ?&")

    async def go():
        c = AsyncDirectoryClient(
            "http://directory", [world.ca_cert], u.key, u.cert, TrustStore(None),
            transport=httpx.ASGITransport(app=app),
        )
        await c.register()
        await c.publish_contact("::1", 7000)
        assert (await c.get_participant(u.name)).contact.port == 7000
        await c.create_conference("a.b~c-d_e", 1, 2, [u.name])
        await c.delete_conference("a.b~c-d_e")
        return await c.conferences_of()

    assert asyncio.run(go()) == []
    engine.dispose()


def test_oversized_answer_is_refused(setup, monkeypatch):
    from secchat.directory import client as client_mod

    monkeypatch.setattr(client_mod, "MAX_RESPONSE", 1000)

    def pad(path, data):
        if isinstance(data, dict):
            data["padding"] = "x" * 5000
        return data

    setup.refused(pad, "oversized_response")


def test_listing_out_of_order_is_refused(setup):
    def shuffle(path, data):
        if path == "/v1/participants":
            data.reverse()
        return data

    async def go():
        return await setup.client("alice", shuffle).list_participants()

    with pytest.raises(UntrustedResponse) as err:
        asyncio.run(go())
    assert err.value.code == "malformed_response"


# --------------------------------------------------------------------------- versions, deletion, creators


def _raw(setup, path: str) -> bytes:
    async def go():
        transport = httpx.ASGITransport(app=setup.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://directory") as http:
            return (await http.get(path)).content

    return asyncio.run(go())


def test_record_digest_is_the_signed_bytes_hash(setup):
    import hashlib

    conference = setup.get_conference("bob", None)
    assert conference.digest == hashlib.sha256(conference.record.signed_bytes()).digest()
    assert len(conference.digest) == 32 and conference.key == "alice/c1"
    assert (conference.version, conference.record.version) == (1, 1) and conference.created_at > 0
    import dataclasses

    assert dataclasses.replace(conference.record, version=2).digest() != conference.digest


def test_rollback_to_an_older_version_is_refused(setup):
    old = _raw(setup, "/v1/conferences/alice/c1")

    async def recreate():
        alice = setup.client("alice")
        await alice.delete_conference("c1")
        return await alice.create_conference("c1", 1000, 3000, ["alice", "bob", "carol"])

    assert asyncio.run(recreate()).version == 2
    bob = setup.client("bob")
    newer = asyncio.run(bob.get_conference("c1", "alice"))
    assert newer.version == 2
    bob.remember(newer)
    setup.evil.serve["/v1/conferences/alice/c1"] = old
    with pytest.raises(UntrustedResponse) as err:
        setup.get_conference("bob", None)
    assert err.value.code == "rollback" and "version 1" in str(err.value) and "version 2" in str(err.value)


def test_a_deleted_record_served_again_is_refused(setup):
    old = _raw(setup, "/v1/conferences/alice/c1")
    asyncio.run(setup.client("alice").delete_conference("c1"))
    with pytest.raises(ConferenceDeleted) as err:  # the directory says so, with alice's tombstone
        setup.get_conference("bob", None)
    assert err.value.code == "deleted"
    assert setup.versions["bob"].get("alice", "c1").deleted
    setup.evil.serve["/v1/conferences/alice/c1"] = old  # now it serves the old record again
    with pytest.raises(ConferenceDeleted) as err:
        setup.get_conference("bob", None)
    assert err.value.code == "deleted" and "served its record anyway" in str(err.value)


def test_a_forged_tombstone_is_not_believed(setup):
    body = json.loads(_raw(setup, "/v1/conferences/alice/c1"))

    def forge(path, data):
        return data

    gone = {"error": {"code": "conference_deleted", "message": "x"},
            "tombstone": {"creator": "alice", "id": "c1", "version": 5, "deleted_at": 1,
                          "signature": "00" * 64, "cert_pem": body["certs"][0]}}

    class Gone:
        async def __call__(self, scope, receive, send):
            raw = json.dumps(gone).encode()
            await send({"type": "http.response.start", "status": 410,
                        "headers": [(b"content-length", str(len(raw)).encode())]})
            await send({"type": "http.response.body", "body": raw})

    u = setup.users["bob"]
    client = AsyncDirectoryClient("http://directory", [setup.world.ca_cert], u.key, u.cert, setup.stores["bob"],
                                  versions=setup.versions["bob"], transport=httpx.ASGITransport(app=Gone()))
    with pytest.raises(UntrustedResponse) as err:
        asyncio.run(client.get_conference("c1", "alice"))
    assert err.value.code == "bad_tombstone_signature"
    assert setup.versions["bob"].get("alice", "c1") is None


def test_two_creators_one_id_must_be_told_apart(setup):
    async def mallory_too():
        mallory = setup.client("mallory")
        return await mallory.create_conference("c1", 1000, 2000, ["mallory", "bob"], accept_new=True)

    theirs = asyncio.run(mallory_too())
    assert theirs.key == "mallory/c1" and [m.name for m in theirs.unaccepted] == ["bob"]
    assert setup.stores["mallory"].get(setup.users["bob"].name) is None  # accept_new accepted nothing itself

    async def resolve(creator=None):
        return await setup.client("bob").get_conference("c1", creator)

    with pytest.raises(AmbiguousConference) as err:
        asyncio.run(resolve())
    assert err.value.code == "ambiguous_conference" and err.value.creators == ("alice", "mallory")
    assert "--creator alice" in str(err.value)
    assert [m.name for m in asyncio.run(resolve("alice")).members] == ["alice", "bob"]
    assert asyncio.run(resolve("mallory")).creator == "mallory"
    listed = asyncio.run(setup.client("bob").conferences_of())
    assert [c.key for c in listed] == ["alice/c1", "mallory/c1"]


def test_a_page_larger_than_the_servers_is_refused(setup, monkeypatch):
    from secchat.directory import client as client_mod

    monkeypatch.setattr(client_mod, "PAGE_SIZE", 2)

    async def go():
        return await setup.client("alice").list_participants()

    with pytest.raises(UntrustedResponse) as err:
        asyncio.run(go())
    assert err.value.code == "oversized_page"


def test_a_listing_flood_is_bounded_and_reported_once(setup, monkeypatch, caplog):
    from secchat.directory import client as client_mod

    monkeypatch.setattr(client_mod, "MAX_CERT_CHECKS", 50)

    def flood(path, data):
        if path == "/v1/participants" and data:
            pem = setup.users["carol"].pem
            return data + [
                {"name": f"zz{i:05d}", "issuer": "Test CA", "fingerprint": "00", "registered_at": 1,
                 "cert_pem": pem.replace("-----END", f"{i}-----END") if i % 2 else pem}
                for i in range(900)
            ]
        return data

    async def go():
        return await setup.client("alice", flood).list_participants()

    with caplog.at_level("WARNING", logger="secchat.directory.client"):
        found = asyncio.run(go())
    assert sorted(p.name for p in found) == ["alice", "bob", "carol", "mallory"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "cut after 50 certificate checks" in lines[0]
    assert lines[1].startswith("skipped ") and "participants" in lines[1]


def test_version_memory_persists_and_refuses(tmp_path):
    path = tmp_path / "versions.json"
    memory = VersionMemory(path)
    assert memory.check("alice", "room", 1) is Seen.CURRENT
    assert memory.remember([("alice", "room", 2, False)], now=5)
    assert not memory.remember([("alice", "room", 1, False)])  # older: no change, no write
    again = VersionMemory(path)
    assert again.check("alice", "room", 1) is Seen.ROLLED_BACK
    assert again.check("alice", "room", 2) is Seen.CURRENT and again.check("alice", "room", 3) is Seen.CURRENT
    assert again.check("bob", "room", 1) is Seen.CURRENT  # another creator's room
    again.remember([("alice", "room", 2, True)])
    assert VersionMemory(path).check("alice", "room", 2) is Seen.DELETED
    assert VersionMemory(path).check("alice", "room", 3) is Seen.CURRENT  # re-created after deletion
    assert (path.stat().st_mode & 0o777) == 0o600
    path.write_text('{"version": 1, "conferences": {"x": {"version": 0}}}')
    with pytest.raises(VersionMemoryError):
        VersionMemory(path)


def test_version_memory_is_bounded(monkeypatch):
    from secchat.directory import versions as versions_mod

    monkeypatch.setattr(versions_mod, "MAX_ENTRIES", 3)
    memory = VersionMemory(None)
    memory.remember([("a", "gone", 1, True)], now=0)
    for i in range(5):
        memory.remember([("a", f"c{i}", 1, False)], now=i + 1)
    assert len(memory) == 3 and memory.get("a", "gone") is not None and memory.get("a", "c4") is not None
