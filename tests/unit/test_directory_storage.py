"""The storage module on SQLite and PostgreSQL: engine factory, durability settings, and
deduplication by unique constraints under racing writers."""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text

from secchat import pki
from secchat.directory.storage import Rejected, Store, default_database_path, make_engine
from tests import directory_support
from tests.directory_support import World

db_url = directory_support.db_url
world = directory_support.world


@pytest.fixture
def store(db_url):
    engine = make_engine(db_url, pool_size=8)
    s = Store(engine)
    s.create_schema()
    yield s
    engine.dispose()


def _nonce() -> tuple[str, int]:
    return os.urandom(16).hex(), 1 << 40


def _register(store: Store, world: World, name: str, **issue):
    user = world.user(name, **issue)
    return store.register_participant(
        name=name,
        issuer="Test CA",
        fingerprint=pki.fingerprint(user.cert),
        cert_pem=user.pem,
        nonce=_nonce(),
        now=1,
    )


def test_engine_urls(tmp_path):
    assert make_engine("postgresql://u@h/db").url.drivername == "postgresql+psycopg"
    assert make_engine("postgres://u@h/db").url.drivername == "postgresql+psycopg"
    bare = make_engine(str(tmp_path / "sub" / "d.sqlite3"))
    assert bare.url.drivername == "sqlite" and (tmp_path / "sub").is_dir()
    with pytest.raises(ValueError):
        make_engine("mysql://u@h/db")


def test_default_database_is_in_the_user_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_database_path() == tmp_path / "secchat" / "directory.sqlite3"
    engine = make_engine(None)
    try:
        assert Path(engine.url.database) == tmp_path / "secchat" / "directory.sqlite3"
    finally:
        engine.dispose()


def test_sqlite_is_durable(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'd.sqlite3'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_schema_creation_is_idempotent(store):
    store.create_schema()
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM participants")).scalar() == 0


def test_racing_registrations_of_one_name(store, world):
    # 12 different certificates for "racer" at once: exactly one is stored, the rest refused
    users = [world.user("racer", valid_days=30 + i) for i in range(12)]

    def attempt(u):
        try:
            store.register_participant(
                name="racer", issuer="Test CA", fingerprint=pki.fingerprint(u.cert), cert_pem=u.pem,
                nonce=_nonce(), now=1,
            )
            return "ok"
        except Rejected as exc:
            return exc.code

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(attempt, users))
    assert results.count("ok") == 1 and results.count("identity_taken") == 11
    assert store.counts()["participants"] == 1


def test_racing_conference_ids(store, world):
    _register(store, world, "alice")
    fp = pki.fingerprint(world.user("alice").cert)

    def attempt(k):
        try:
            store.create_conference(
                creator="alice", id="same", version=1, created_at=1, t0=1, t1=2 + k, members=["alice"],
                fingerprints=[fp], signature="00" * 64, nonce=_nonce(), now=1,
            )
            return "ok"
        except Rejected as exc:
            return exc.code

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(attempt, range(12)))
    assert results.count("ok") == 1 and results.count("duplicate_conference") == 11
    counts = store.counts()
    assert (counts["conferences"], counts["conference_members"]) == (1, 1)


def test_same_nonce_twice_at_once(store, world):
    user = world.user("alice")
    nonce = _nonce()

    def attempt(_):
        try:
            store.register_participant(
                name="alice", issuer="Test CA", fingerprint=pki.fingerprint(user.cert), cert_pem=user.pem,
                nonce=nonce, now=1,
            )
            return "ok"
        except Rejected as exc:
            return exc.code

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(8)))
    assert results.count("ok") == 1 and results.count("replayed_request") == 7


def test_expired_nonces_are_pruned(store, world):
    store._burn_nonce(("a" * 32, 0))  # expired before "now" (1)
    store._writes = itertools.count(0)  # the next write prunes
    _register(store, world, "alice")
    with store.engine.connect() as conn:
        remaining = {r[0] for r in conn.execute(text("SELECT nonce FROM nonces"))}
    assert "a" * 32 not in remaining and len(remaining) == 1


def test_refused_write_keeps_its_nonce(store, world):
    _register(store, world, "alice")
    nonce = _nonce()
    with pytest.raises(Rejected):
        store.delete_conference(
            creator="alice", id="missing", requester="alice", version=1, deleted_at=1, signature="00" * 64,
            nonce=nonce, now=1,
        )
    with pytest.raises(Rejected) as err:
        store.delete_conference(
            creator="alice", id="missing", requester="alice", version=1, deleted_at=1, signature="00" * 64,
            nonce=nonce, now=1,
        )
    assert err.value.code == "replayed_request"


def test_an_older_schema_loses_its_conferences_only(tmp_path, world):
    # a database written before conferences were (creator, id) and versioned
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = make_engine(url, pool_size=1)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE participants (name VARCHAR(64) PRIMARY KEY, issuer VARCHAR(64) NOT NULL, "
                             "fingerprint VARCHAR(64) NOT NULL UNIQUE, cert_pem TEXT NOT NULL, "
                             "registered_at BIGINT NOT NULL)")
        conn.exec_driver_sql("CREATE TABLE conferences (id VARCHAR(128) PRIMARY KEY, t0 BIGINT, t1 BIGINT, "
                             "creator VARCHAR(64), signature VARCHAR(128), created_at BIGINT)")
        conn.exec_driver_sql("CREATE TABLE conference_members (conference_id VARCHAR(128), position INTEGER, "
                             "name VARCHAR(64), fingerprint VARCHAR(64))")
        u = world.user("olduser")
        conn.exec_driver_sql("INSERT INTO participants VALUES (?, ?, ?, ?, ?)",
                             ("olduser", "Test CA", pki.fingerprint(u.cert), u.pem, 1))
        conn.exec_driver_sql("INSERT INTO conferences VALUES ('old', 1, 2, 'olduser', '00', 1)")
    store = Store(engine)
    store.create_schema()
    assert store.get_participant("olduser") is not None
    assert store.get_conference("olduser", "old") is None
    assert store.counts()["conferences"] == 0
    engine.dispose()
