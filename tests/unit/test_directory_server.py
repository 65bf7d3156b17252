"""The directory server's checks, on SQLite and PostgreSQL: every bad input is a coded 4xx and
leaves the database unchanged.  Requests are made by hand (signed with the shared scheme) so that
each can be wrong in exactly one way."""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import pytest

from secchat import pki
from secchat.directory.models import ConferenceRecord, ConferenceTombstone
from secchat.directory.server import create_app
from secchat.directory.storage import make_engine
from tests import directory_support
from tests.directory_support import TEST_DIRECTORY, User, World, signed

db_url = directory_support.db_url
world = directory_support.world


class Api:
    """Synchronous raw access to the app in-process (httpx over ASGI)."""

    def __init__(self, app) -> None:
        self.app = app
        self.store = app.state.store

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://directory") as client:
                return await client.request(method, path, content=body, headers=headers or {})

        return asyncio.run(go())

    def signed(self, user: User, method: str, path: str, body: bytes = b"", **kw) -> httpx.Response:
        return self.request(method, path, body, signed(user, method, path, body, **kw))

    def register(self, user: User) -> httpx.Response:
        return self.signed(user, "POST", "/v1/participants", json.dumps({"cert_pem": user.pem}).encode())

    def delete(self, user: User, id: str, creator: User | None = None, *, version: int = 1, **kw) -> httpx.Response:
        """DELETE ``(creator, id)`` (default: ``user``'s) with the creator's signed tombstone."""
        owner = creator or user
        return self.signed(user, "DELETE", f"/v1/conferences/{owner.name}/{id}", tombstone_body(owner, id, version), **kw)


def tombstone_body(creator: User, id: str, version: int = 1, deleted_at: int = 3000, *, sign_as: User | None = None) -> bytes:
    tombstone = ConferenceTombstone(creator.name, id, version, deleted_at)
    signature = pki.signer_of((sign_as or creator).key).sign(tombstone.signed_bytes())
    return json.dumps({"version": version, "deleted_at": deleted_at, "signature": signature.hex()}).encode()


@pytest.fixture
def api(db_url, world) -> Api:
    engine = make_engine(db_url, pool_size=5)
    try:
        yield Api(create_app(engine, [world.ca_cert], names=[TEST_DIRECTORY]))
    finally:
        engine.dispose()


@pytest.fixture
def members(api, world) -> tuple[User, User, User]:
    users = world.user("alice"), world.user("bob"), world.user("carol")
    for u in users:
        assert api.register(u).status_code in (200, 201)
    return users


def conference_body(
    creator: User, members: list[User], id: str = "conf-1", t0: int = 1000, t1: int = 2000, *,
    sign_as: User | None = None, version: int = 1, created_at: int = 900,
) -> bytes:
    record = ConferenceRecord(
        id, t0, t1, tuple(m.name for m in members), tuple(pki.fingerprint(m.cert) for m in members), creator.name,
        version, created_at,
    )
    signature = pki.signer_of((sign_as or creator).key).sign(record.signed_bytes())
    return json.dumps(
        {
            "id": id,
            "t0": t0,
            "t1": t1,
            "members": [m.name for m in members],
            "certs": [m.pem for m in members],
            "creator": creator.name,
            "version": version,
            "created_at": created_at,
            "signature": signature.hex(),
        }
    ).encode()


def refused(api: Api, response: httpx.Response, status: int, code: str, before) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"] and "Traceback" not in response.text
    assert api.store.dump() == before, "a refused request changed the database"


# --------------------------------------------------------------------------- happy paths


def test_register_is_idempotent_and_listed(api, world):
    alice = world.user("alice")
    first = api.register(alice)
    assert first.status_code == 201 and first.json()["fingerprint"] == pki.fingerprint(alice.cert)
    assert api.register(alice).status_code == 200
    assert [p["name"] for p in api.request("GET", "/v1/participants").json()] == ["alice"]
    assert api.request("GET", "/v1/participants/alice").json()["issuer"] == "Test CA"
    assert api.store.counts()["participants"] == 1


def test_conference_lifecycle(api, members):
    alice, bob, _ = members
    r = api.signed(alice, "POST", "/v1/conferences", conference_body(alice, [alice, bob]))
    assert r.status_code == 201, r.text
    got = api.request("GET", "/v1/conferences/alice/conf-1").json()
    assert got["members"] == ["alice", "bob"] and got["t1"] == 2000
    assert (got["version"], got["created_at"]) == (1, 900)
    assert [c["id"] for c in api.request("GET", "/v1/participants/bob/conferences").json()] == ["conf-1"]
    assert [c["creator"] for c in api.request("GET", "/v1/conferences?id=conf-1").json()] == ["alice"]
    assert api.request("GET", "/v1/participants/carol/conferences").json() == []
    assert api.delete(alice, "conf-1").status_code == 204
    # deleted: the creator's signed tombstone is served in its place, the listings forget it
    gone = api.request("GET", "/v1/conferences/alice/conf-1")
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "conference_deleted"
    tombstone = gone.json()["tombstone"]
    assert (tombstone["creator"], tombstone["id"], tombstone["version"]) == ("alice", "conf-1", 1)
    assert tombstone["cert_pem"] == alice.pem
    assert api.request("GET", "/v1/participants/bob/conferences").json() == []
    assert api.request("GET", "/v1/conferences?id=conf-1").json() == []
    # the creator may create the id again, with a higher version only
    before = api.store.dump()
    r = api.signed(alice, "POST", "/v1/conferences", conference_body(alice, [alice, bob]))
    refused(api, r, 409, "stale_version", before)
    r = api.signed(alice, "POST", "/v1/conferences", conference_body(alice, [alice], version=2))
    assert r.status_code == 201, r.text
    assert api.request("GET", "/v1/conferences/alice/conf-1").json()["version"] == 2


def test_two_creators_may_use_one_id(api, members):
    alice, bob, carol = members
    assert api.signed(alice, "POST", "/v1/conferences", conference_body(alice, [alice, bob])).status_code == 201
    assert api.signed(bob, "POST", "/v1/conferences", conference_body(bob, [bob, carol])).status_code == 201
    both = api.request("GET", "/v1/conferences?id=conf-1").json()
    assert [(c["creator"], c["members"]) for c in both] == [("alice", ["alice", "bob"]), ("bob", ["bob", "carol"])]
    assert api.request("GET", "/v1/conferences/bob/conf-1").json()["members"] == ["bob", "carol"]
    assert [(c["creator"], c["id"]) for c in api.request("GET", "/v1/participants/bob/conferences").json()] == [
        ("alice", "conf-1"), ("bob", "conf-1")
    ]
    # deleting one leaves the other
    assert api.delete(bob, "conf-1").status_code == 204
    assert api.request("GET", "/v1/conferences/alice/conf-1").status_code == 200


def test_tombstone_must_be_the_creators(api, members):
    alice, bob, _ = members
    assert api.signed(alice, "POST", "/v1/conferences", conference_body(alice, [alice, bob], version=3)).status_code == 201
    before = api.store.dump()
    forged = tombstone_body(alice, "conf-1", 3, sign_as=bob)
    r = api.signed(alice, "DELETE", "/v1/conferences/alice/conf-1", forged)
    refused(api, r, 422, "bad_tombstone_signature", before)
    refused(api, api.delete(alice, "conf-1", version=2), 409, "stale_version", before)
    r = api.signed(alice, "DELETE", "/v1/conferences/alice/conf-1", b'{"version": 3}')
    refused(api, r, 422, "invalid_request", before)


def test_a_request_for_another_directory_is_refused(api, members):
    alice, bob, _ = members
    body = conference_body(alice, [alice, bob])
    before = api.store.dump()
    r = api.signed(alice, "POST", "/v1/conferences", body, directory="http://other-directory:80")
    refused(api, r, 421, "wrong_directory", before)


def test_openapi_and_unknown_routes_are_json(api):
    spec = api.request("GET", "/v1/openapi.json").json()
    assert spec["openapi"].startswith("3.") and "/v1/conferences/{creator}/{id}" in spec["paths"]
    r = api.request("GET", "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = api.request("PATCH", "/v1/conferences/alice/x")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


# --------------------------------------------------------------------------- bad input: registration


def test_malformed_json(api, world):
    alice = world.user("alice")
    before = api.store.dump()
    body = b'{"cert_pem": '
    refused(api, api.signed(alice, "POST", "/v1/participants", body), 400, "malformed_json", before)


def test_malformed_json_conference(api, members):
    alice = members[0]
    before = api.store.dump()
    refused(api, api.signed(alice, "POST", "/v1/conferences", b"[1, 2"), 400, "malformed_json", before)


def test_schema_violation(api, members):
    alice = members[0]
    before = api.store.dump()
    body = json.dumps({"id": "x", "t0": "soon"}).encode()
    refused(api, api.signed(alice, "POST", "/v1/conferences", body), 422, "invalid_request", before)


def test_bad_pem(api, world):
    alice = world.user("alice")
    before = api.store.dump()
    body = json.dumps({"cert_pem": "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"}).encode()
    refused(api, api.signed(alice, "POST", "/v1/participants", body), 400, "bad_pem", before)


def test_unknown_ca(api):
    stranger = World("Other CA").user("alice")
    before = api.store.dump()
    refused(api, api.register(stranger), 422, "unknown_ca", before)


def test_expired_certificate(api, world):
    old = world.user("dave", valid_days=1, now=datetime.now(UTC) - timedelta(days=10))
    before = api.store.dump()
    refused(api, api.register(old), 422, "expired", before)


def test_not_yet_valid_certificate(api, world):
    early = world.user("erin", not_before=datetime.now(UTC) + timedelta(days=1))
    before = api.store.dump()
    refused(api, api.register(early), 422, "not_yet_valid", before)


def test_ca_certificate_as_participant(api, world):
    ca_user = User("Test CA", world.ca_key, world.ca_cert)
    before = api.store.dump()
    refused(api, api.register(ca_user), 422, "not_a_leaf", before)


def test_wrong_signature_no_proof_of_possession(api, world):
    alice, mallory = world.user("alice"), world.user("mallory")
    body = json.dumps({"cert_pem": alice.pem}).encode()
    headers = signed(User("alice", mallory.key, mallory.cert), "POST", "/v1/participants", body)
    before = api.store.dump()
    refused(api, api.request("POST", "/v1/participants", body, headers), 401, "bad_request_signature", before)


def test_body_altered_after_signing(api, members):
    alice, bob, _ = members
    body = conference_body(alice, [alice, bob])
    headers = signed(alice, "POST", "/v1/conferences", body)
    tampered = body.replace(b'"t1": 2000', b'"t1": 3000')
    before = api.store.dump()
    refused(api, api.request("POST", "/v1/conferences", tampered, headers), 401, "bad_request_signature", before)


def test_unsigned_request(api, world):
    alice = world.user("alice")
    before = api.store.dump()
    r = api.request("POST", "/v1/participants", json.dumps({"cert_pem": alice.pem}).encode())
    refused(api, r, 401, "missing_signature", before)


def test_identity_taken_by_another_certificate(api, members, world):
    second_alice = world.user("alice", valid_days=30)  # same CA, same name, another key
    before = api.store.dump()
    refused(api, api.register(second_alice), 409, "identity_taken", before)


def test_stale_request(api, world):
    alice = world.user("alice")
    body = json.dumps({"cert_pem": alice.pem}).encode()
    before = api.store.dump()
    r = api.signed(alice, "POST", "/v1/participants", body, timestamp=int(time.time()) - 121)
    refused(api, r, 401, "stale_request", before)
    r = api.signed(alice, "POST", "/v1/participants", body, timestamp=int(time.time()) + 300)
    refused(api, r, 401, "stale_request", before)


def test_replay(api, members):
    alice, bob, _ = members
    body = conference_body(alice, [alice, bob])
    headers = signed(alice, "POST", "/v1/conferences", body)
    assert api.request("POST", "/v1/conferences", body, headers).status_code == 201
    assert api.delete(alice, "conf-1").status_code == 204
    before = api.store.dump()
    refused(api, api.request("POST", "/v1/conferences", body, headers), 401, "replayed_request", before)


def test_replay_of_a_refused_request(api, members):
    alice, bob, _ = members
    body = conference_body(alice, [alice, bob], t0=5, t1=6)
    assert api.signed(alice, "POST", "/v1/conferences", body).status_code == 201
    headers = signed(alice, "POST", "/v1/conferences", body)  # duplicate id: refused, nonce kept
    before = api.store.dump()
    refused(api, api.request("POST", "/v1/conferences", body, headers), 409, "duplicate_conference", before)
    assert api.delete(alice, "conf-1").status_code == 204
    before = api.store.dump()
    refused(api, api.request("POST", "/v1/conferences", body, headers), 401, "replayed_request", before)


def test_oversized_body(api, world):
    alice = world.user("alice")
    big = json.dumps({"cert_pem": "A" * (600 * 1024)}).encode()
    before = api.store.dump()
    refused(api, api.signed(alice, "POST", "/v1/participants", big), 413, "body_too_large", before)


def test_oversized_body_without_content_length(api, world):
    alice = world.user("alice")

    async def chunks():
        for _ in range(100):
            yield b"x" * 8192

    async def go():
        transport = httpx.ASGITransport(app=api.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://directory") as client:
            return await client.post("/v1/participants", content=chunks(), headers=signed(alice, "POST", "/v1/participants", b""))

    before = api.store.dump()
    refused(api, asyncio.run(go()), 413, "body_too_large", before)


# --------------------------------------------------------------------------- bad input: conferences


def test_unknown_conference(api, members):
    alice = members[0]
    before = api.store.dump()
    refused(api, api.request("GET", "/v1/conferences/alice/nope"), 404, "unknown_conference", before)
    refused(api, api.delete(alice, "nope"), 404, "unknown_conference", before)


def test_duplicate_conference_id(api, members):
    alice, bob, _ = members
    assert api.signed(alice, "POST", "/v1/conferences", conference_body(alice, [alice, bob])).status_code == 201
    before = api.store.dump()
    r = api.signed(alice, "POST", "/v1/conferences", conference_body(alice, [alice], t1=5000))
    refused(api, r, 409, "duplicate_conference", before)


@pytest.mark.parametrize(("t0", "t1"), [(2000, 2000), (2000, 1000)])
def test_time_frame(api, members, t0, t1):
    alice, bob, _ = members
    before = api.store.dump()
    r = api.signed(alice, "POST", "/v1/conferences", conference_body(alice, [alice, bob], t0=t0, t1=t1))
    refused(api, r, 422, "invalid_time_frame", before)


def test_record_not_signed_by_creator(api, members):
    alice, bob, _ = members
    before = api.store.dump()
    r = api.signed(alice, "POST", "/v1/conferences", conference_body(alice, [alice, bob], sign_as=bob))
    refused(api, r, 422, "bad_record_signature", before)


def test_creator_must_sign_the_request(api, members):
    alice, bob, _ = members
    before = api.store.dump()
    r = api.signed(bob, "POST", "/v1/conferences", conference_body(alice, [alice, bob]))
    refused(api, r, 403, "not_creator", before)


def test_creator_must_be_member(api, members):
    alice, bob, carol = members
    before = api.store.dump()
    r = api.signed(alice, "POST", "/v1/conferences", conference_body(alice, [bob, carol]))
    refused(api, r, 422, "creator_not_member", before)


def test_members_must_be_registered(api, members, world):
    alice = members[0]
    zed = world.user("zed")
    before = api.store.dump()
    r = api.signed(alice, "POST", "/v1/conferences", conference_body(alice, [alice, zed]))
    refused(api, r, 422, "unknown_member", before)


def test_member_certificate_must_be_the_registered_one(api, members, world):
    alice = members[0]
    other_bob = world.user("bob", valid_days=30)
    before = api.store.dump()
    r = api.signed(alice, "POST", "/v1/conferences", conference_body(alice, [alice, other_bob]))
    refused(api, r, 422, "certificate_mismatch", before)


def test_member_certificate_must_name_the_member(api, members):
    alice, bob, carol = members
    body = json.loads(conference_body(alice, [alice, bob]))
    body["certs"][1] = carol.pem
    raw = json.dumps(body).encode()
    before = api.store.dump()
    refused(api, api.signed(alice, "POST", "/v1/conferences", raw), 422, "name_mismatch", before)


def test_only_the_creator_deletes(api, members):
    alice, bob, _ = members
    assert api.signed(alice, "POST", "/v1/conferences", conference_body(alice, [alice, bob])).status_code == 201
    before = api.store.dump()
    refused(api, api.delete(bob, "conf-1", creator=alice), 403, "not_creator", before)


def test_unknown_signer(api, world):
    ghost = world.user("ghost")
    before = api.store.dump()
    refused(api, api.delete(ghost, "x"), 401, "unknown_signer", before)


def test_contact_must_be_signed_by_its_owner(api, members):
    alice = members[0]
    body = json.dumps({"host": "10.0.0.1", "port": 7000, "issued_at": 1, "signature": "00" * 64}).encode()
    before = api.store.dump()
    refused(api, api.signed(alice, "PUT", "/v1/participants/alice/contact", body), 422, "bad_contact_signature", before)
    refused(api, api.signed(alice, "PUT", "/v1/participants/bob/contact", body), 403, "not_owner", before)


def test_internal_errors_do_not_leak(api, members, monkeypatch):
    def boom(*_a, **_k):
        raise RuntimeError("secret-internal-detail")

    monkeypatch.setattr(api.store, "get_conference", boom)
    r = api.request("GET", "/v1/conferences/alice/conf-1")
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal", "message": "internal server error"}}
    assert "secret" not in r.text


def test_many_members_fit_the_body_limit(api, world):
    users = [world.user(f"m{i:03d}") for i in range(300)]
    for u in users:
        assert api.register(u).status_code == 201
    body = conference_body(users[0], users, id="big")
    r = api.signed(users[0], "POST", "/v1/conferences", body)
    assert r.status_code == 201, r.text
    assert len(msgspec.json.decode(api.request("GET", "/v1/conferences/m000/big").content)["members"]) == 300


def test_nonce_uniqueness_is_global(api, members):
    # the same nonce under two different signed requests is still a replay
    alice, bob, _ = members
    nonce = os.urandom(16).hex()
    assert api.signed(alice, "POST", "/v1/conferences", conference_body(alice, [alice, bob]), nonce=nonce).status_code == 201
    before = api.store.dump()
    r = api.signed(bob, "POST", "/v1/conferences", conference_body(bob, [bob], id="conf-2"), nonce=nonce)
    refused(api, r, 401, "replayed_request", before)


def test_listings_page_in_code_point_order(api, world, monkeypatch):
    from secchat.directory import client as client_mod
    from secchat.directory import server as server_mod
    from secchat.directory.trust import TrustStore

    monkeypatch.setattr(server_mod, "PAGE", 2)
    names = ["Zoë", "alice", "Émile", "Bob", "zed"]
    users = [world.user(n) for n in names]
    for u in users:
        assert api.register(u).status_code == 201
    for k in range(3):
        body = conference_body(users[0], [users[0]], id=f"p{k}")
        assert api.signed(users[0], "POST", "/v1/conferences", body).status_code == 201

    async def go():
        c = client_mod.AsyncDirectoryClient(
            "http://directory", [world.ca_cert], users[0].key, users[0].cert, TrustStore(None),
            transport=httpx.ASGITransport(app=api.app),
        )
        return [p.name for p in await c.list_participants()], [x.id for x in await c.conferences_of()]

    participants, conferences = asyncio.run(go())
    assert participants == sorted(names)
    assert conferences == ["p0", "p1", "p2"]


def test_database_outage_is_503(api, monkeypatch):
    from sqlalchemy.exc import OperationalError

    def down(*_a, **_k):
        raise OperationalError("SELECT 1", {}, Exception("connection refused to db-host:5432"))

    monkeypatch.setattr(api.store, "get_conference", down)
    r = api.request("GET", "/v1/conferences/alice/x")
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    assert "db-host" not in r.text


# --------------------------------------------------------------------------- readiness


def test_ready_queries_the_database_and_health_does_not(api):
    assert api.request("GET", "/v1/ready").json()["status"] == "ready"
    with api.store.engine.begin() as conn:  # the directory's tables gone: a broken database
        conn.exec_driver_sql("ALTER TABLE participants RENAME TO participants_gone")
    answer = api.request("GET", "/v1/ready")
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "database_unavailable"
    assert error["message"].startswith("the database is unavailable (")
    assert "participants" not in error["message"]  # the driver's words stay in the server's log
    assert api.request("GET", "/v1/health").status_code == 200  # liveness: the process is up


def test_ready_is_bounded_when_the_database_hangs_and_probes_do_not_pile_up(world, tmp_path, monkeypatch):
    import threading

    engine = make_engine(f"sqlite:///{tmp_path / 'd.sqlite3'}", pool_size=2)
    app = create_app(engine, [world.ca_cert], names=[TEST_DIRECTORY], ready_timeout=0.3)
    release, calls = threading.Event(), []

    def hung_ping() -> None:  # a database that accepted the query and never answers
        calls.append(1)
        release.wait(10)

    monkeypatch.setattr(app.state.store, "ping", hung_ping)
    api = Api(app)
    try:
        started = time.monotonic()
        first = api.request("GET", "/v1/ready")
        assert first.status_code == 503 and time.monotonic() - started < 3
        assert "did not answer within 0.3 s" in first.json()["error"]["message"]
        second = api.request("GET", "/v1/ready")  # the first query still holds its thread
        assert second.status_code == 503 and "previous readiness check" in second.json()["error"]["message"]
        assert len(calls) == 1
        release.set()
        deadline = time.monotonic() + 5
        while api.request("GET", "/v1/ready").status_code != 200:
            assert time.monotonic() < deadline, "ready again once the database answers"
            time.sleep(0.05)
    finally:
        release.set()
        engine.dispose()
