"""All SQL of the directory service: schema, engine factory, one transaction per write.

Why this shape: routes hold no SQL (STYLE.md 9); each write runs in exactly one transaction that
also consumes the request's nonce, so a refused request leaves the domain tables unchanged and an
acknowledged one is durable (SQLite: WAL + ``synchronous=FULL``; PostgreSQL: commit).  Unique
constraints, not read-then-write checks alone, do the deduplication: a race between two writers
ends in an ``IntegrityError`` and the loser's transaction is re-run, where it sees the winner's row.

SQLite write transactions start with ``BEGIN IMMEDIATE`` so that concurrent writers queue on the
busy timeout instead of failing on a lock upgrade; reads use plain deferred transactions.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import platformdirs
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .models import (
    MAX_ROTATIONS,
    ConferenceOut,
    ContactOut,
    ParticipantOut,
    RotationOut,
    TombstoneOut,
)

__all__ = [
    "Rejected",
    "Store",
    "default_database_path",
    "make_engine",
]

T = TypeVar("T")

log = logging.getLogger("secchat.directory")

metadata = MetaData()


def _key(length: int) -> String:
    """A text key compared and ordered by code point on every backend (listings page by it)."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")


participants = Table(
    "participants",
    metadata,
    Column("name", _key(64), primary_key=True),
    Column("issuer", String(64), nullable=False),
    Column("fingerprint", String(64), nullable=False, unique=True),
    Column("cert_pem", Text, nullable=False),
    Column("registered_at", BigInteger, nullable=False),
    # set by a signed unregister: the entry is gone for clients, the name free again; the row
    # stays while conference records name its certificate
    Column("unregistered_at", BigInteger, nullable=True),
    UniqueConstraint("name", "issuer", name="participants_identity"),
)

#: Key rotations of participants, each signed by the key before (identities.py), oldest first.
rotations = Table(
    "participant_rotations",
    metadata,
    Column("name", _key(64), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("old_key", String(64), nullable=False),
    Column("new_key", String(64), nullable=False),
    Column("rotated_at", BigInteger, nullable=False),
    Column("signature", String(128), nullable=False),
    PrimaryKeyConstraint("name", "seq"),
)

contacts = Table(
    "contacts",
    metadata,
    Column("name", _key(64), ForeignKey("participants.name"), primary_key=True),
    Column("host", String(253), nullable=False),
    Column("port", Integer, nullable=False),
    Column("issued_at", BigInteger, nullable=False),
    Column("signature", String(128), nullable=False),
)

# A conference is (creator, id): two creators may use one id.
conferences = Table(
    "conferences",
    metadata,
    Column("creator", _key(64), ForeignKey("participants.name"), nullable=False),
    Column("id", _key(128), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),  # the creator's signed time
    Column("t0", BigInteger, nullable=False),
    Column("t1", BigInteger, nullable=False),
    Column("signature", String(128), nullable=False),
    Column("stored_at", BigInteger, nullable=False),  # the directory's time
    PrimaryKeyConstraint("creator", "id"),
    Index("conferences_by_id", "id", "creator"),
)

conference_members = Table(
    "conference_members",
    metadata,
    Column("creator", _key(64), nullable=False),
    Column("conference_id", _key(128), nullable=False),
    Column("position", Integer, nullable=False),
    Column("name", _key(64), ForeignKey("participants.name"), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    PrimaryKeyConstraint("creator", "conference_id", "position"),
    ForeignKeyConstraint(["creator", "conference_id"], ["conferences.creator", "conferences.id"]),
    UniqueConstraint("creator", "conference_id", "name", name="conference_members_once"),
    Index("conference_members_by_name", "name", "creator", "conference_id"),
)

#: Deleted conferences: the creator's signed tombstone, served instead of the record.
tombstones = Table(
    "conference_tombstones",
    metadata,
    Column("creator", _key(64), ForeignKey("participants.name"), nullable=False),
    Column("id", _key(128), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("deleted_at", BigInteger, nullable=False),
    Column("signature", String(128), nullable=False),
    Column("stored_at", BigInteger, nullable=False),
    PrimaryKeyConstraint("creator", "id"),
)

nonces = Table(
    "nonces",
    metadata,
    Column("nonce", String(32), primary_key=True),
    Column("expires_at", BigInteger, nullable=False, index=True),
)

#: The tables that hold the directory's data (``nonces`` is bookkeeping).
DOMAIN_TABLES = (participants, contacts, conferences, conference_members, tombstones, rotations)


class Rejected(Exception):
    """A write refused for a reason the client caused; nothing was changed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- engine


#: The PostgreSQL advisory lock taken while the schema is checked and created.
SCHEMA_LOCK = 0x5EC_C4A7


def default_database_path() -> Path:
    return Path(platformdirs.user_data_dir("secchat")) / "directory.sqlite3"


def make_engine(url: str | None = None, *, pool_size: int = 20) -> Engine:
    """An engine for ``url``: a SQLite file (default, or a bare path) or ``postgresql://...``."""
    if not url:
        path = default_database_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{path}"
    elif "://" not in url:
        path = Path(url).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{path}"
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            parsed,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=pool_size,
        )
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        # No pre-ping (a round trip per request): after a server restart the pool is
        # invalidated on the first failed statement, which answers 503 once.
        return create_engine(parsed, pool_size=pool_size, max_overflow=pool_size, pool_recycle=3600)
    raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (see "begin" below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("secchat_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


# --------------------------------------------------------------------------- the store


class Store:
    """The directory's data, behind one method per operation."""

    RETRIES = 3

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writes = itertools.count()

    def create_schema(self) -> None:
        with self._write_conn() as conn:
            if conn.dialect.name == "postgresql":
                # several directory processes on one database may start at once: one creates
                # the schema, the others wait and find it (SQLite: BEGIN IMMEDIATE serialises)
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
            columns = {c["name"] for c in inspect(conn).get_columns("conferences")} if inspect(
                conn
            ).has_table("conferences") else set()
            if columns and "version" not in columns:
                # A database of the directory before conferences were (creator, id), versioned
                # records: those records are signed under the old scheme, which no client
                # accepts any more, so they go; participants and contacts stay.
                log.warning("dropping the conference records of an older directory schema")
                conn.exec_driver_sql("DROP TABLE conference_members")
                conn.exec_driver_sql("DROP TABLE conferences")
            if inspect(conn).has_table("participants") and "unregistered_at" not in {
                c["name"] for c in inspect(conn).get_columns("participants")
            }:  # a directory of before signed unregistering: every entry is registered
                conn.exec_driver_sql("ALTER TABLE participants ADD COLUMN unregistered_at BIGINT")
            metadata.create_all(conn)

    def ping(self) -> None:
        """One read of the schema (the readiness check): raises the database's error if the
        database cannot be reached or does not hold the directory's tables."""
        with self._read_conn() as conn:
            conn.execute(select(participants.c.name).limit(1)).first()

    # ---------------------------------------------------------------- transactions

    @contextmanager
    def _write_conn(self) -> Iterator[Connection]:
        with self.engine.connect().execution_options(secchat_write=True) as conn, conn.begin():
            yield conn

    @contextmanager
    def _read_conn(self, *, snapshot: bool = False) -> Iterator[Connection]:
        """A read transaction.  Each record is read by one statement, so READ COMMITTED never
        shows a torn one; ``snapshot`` asks PostgreSQL for one snapshot across statements
        (SQLite's read transactions always have one)."""
        options: dict[str, Any] = {}
        if snapshot and self.engine.dialect.name != "sqlite":
            options["isolation_level"] = "REPEATABLE READ"
        with self.engine.connect().execution_options(**options) as conn, conn.begin():
            yield conn

    def _write(self, nonce: tuple[str, int] | None, now: int, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` and the nonce's insertion in one transaction, re-running it after a race."""
        for attempt in range(self.RETRIES):
            try:
                with self._write_conn() as conn:
                    if nonce is not None:
                        self._use_nonce(conn, nonce, now)
                    return fn(conn)
            except Rejected as exc:
                if nonce is not None and exc.code != "replayed_request":
                    self._burn_nonce(nonce)
                raise
            except IntegrityError:
                if attempt == self.RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _use_nonce(self, conn: Connection, nonce: tuple[str, int], now: int) -> None:
        if next(self._writes) % 256 == 0:
            conn.execute(delete(nonces).where(nonces.c.expires_at < now))
        if conn.execute(select(nonces.c.nonce).where(nonces.c.nonce == nonce[0])).first():
            raise Rejected("replayed_request", "this request was already received once")
        try:
            with conn.begin_nested():
                conn.execute(insert(nonces).values(nonce=nonce[0], expires_at=nonce[1]))
        except IntegrityError:
            raise Rejected("replayed_request", "this request was already received once") from None

    def burn_nonce(self, nonce: tuple[str, int]) -> None:
        """Keep the nonce of a request refused before any write (it cannot be replayed later)."""
        self._burn_nonce(nonce)

    def _burn_nonce(self, nonce: tuple[str, int]) -> None:
        """Keep a refused request's nonce too, so that it cannot be replayed later."""
        try:
            with self._write_conn() as conn:
                conn.execute(insert(nonces).values(nonce=nonce[0], expires_at=nonce[1]))
        except SQLAlchemyError:
            pass  # best effort: the request is refused either way

    # ---------------------------------------------------------------- participants

    def register_participant(
        self,
        *,
        name: str,
        issuer: str,
        fingerprint: str,
        cert_pem: str,
        nonce: tuple[str, int],
        now: int,
    ) -> tuple[ParticipantOut, bool]:
        """Add a participant; the same certificate again is a no-op (``created`` False).  A name
        registered with another certificate is ``identity_taken`` (see :meth:`update_certificate`);
        an unregistered one is free again."""

        def run(conn: Connection) -> tuple[ParticipantOut, bool]:
            row = conn.execute(select(participants).where(participants.c.name == name)).first()
            if row is not None and row.unregistered_at is None:
                if row.fingerprint == fingerprint and row.issuer == issuer:
                    return self._participants(conn, participants.c.name == name, limit=1)[0], False
                raise Rejected(
                    "identity_taken", f"the name {name!r} is already registered with another certificate"
                )
            values = {
                "issuer": issuer, "fingerprint": fingerprint, "cert_pem": cert_pem, "registered_at": now,
                "unregistered_at": None,
            }
            if row is None:
                conn.execute(insert(participants).values(name=name, **values))
            else:  # the name was given up: it starts afresh, without the old one's rotations
                conn.execute(delete(rotations).where(rotations.c.name == name))
                conn.execute(update(participants).where(participants.c.name == name).values(**values))
            return ParticipantOut(name, issuer, fingerprint, cert_pem, now, None), True

        return self._write(nonce, now, run)

    def update_certificate(
        self,
        *,
        name: str,
        expected_fingerprint: str,
        fingerprint: str,
        cert_pem: str,
        rotation: tuple[str, str, int, str] | None,
        nonce: tuple[str, int],
        now: int,
    ) -> ParticipantOut:
        """Replace ``name``'s certificate, registered as ``expected_fingerprint`` (else
        ``identity_changed``: another update came first), by a renewal (``rotation`` None: the
        same key, the contact address stays) or a rotation the caller verified (``(old_key,
        new_key, rotated_at, signature)``, kept with the newest :data:`MAX_ROTATIONS`; the
        contact address, signed by the old key, goes)."""

        def run(conn: Connection) -> ParticipantOut:
            row = conn.execute(
                select(participants.c.fingerprint).where(
                    participants.c.name == name, participants.c.unregistered_at.is_(None)
                )
            ).first()
            if row is None or row.fingerprint != expected_fingerprint:
                raise Rejected("identity_changed", f"the entry of {name!r} changed meanwhile: try again")
            conn.execute(
                update(participants)
                .where(participants.c.name == name)
                .values(fingerprint=fingerprint, cert_pem=cert_pem)
            )
            if rotation is not None:
                old_key, new_key, rotated_at, signature = rotation
                conn.execute(delete(contacts).where(contacts.c.name == name))
                last = conn.execute(
                    select(func.max(rotations.c.seq)).where(rotations.c.name == name)
                ).scalar()
                seq = 0 if last is None else last + 1
                conn.execute(
                    insert(rotations).values(
                        name=name, seq=seq, old_key=old_key, new_key=new_key, rotated_at=rotated_at,
                        signature=signature,
                    )
                )
                conn.execute(
                    delete(rotations).where(rotations.c.name == name, rotations.c.seq <= seq - MAX_ROTATIONS)
                )
            return self._participants(conn, participants.c.name == name, limit=1)[0]

        return self._write(nonce, now, run)

    def unregister_participant(self, *, name: str, nonce: tuple[str, int], now: int) -> None:
        """The participant's signed unregister: its entry, contact and rotations go; the name is
        free again (conference records that name its certificate keep it)."""

        def run(conn: Connection) -> None:
            done = conn.execute(
                update(participants)
                .where(participants.c.name == name, participants.c.unregistered_at.is_(None))
                .values(unregistered_at=now)
            )
            if done.rowcount == 0:
                raise Rejected("unknown_participant", f"no participant is named {name!r}")
            conn.execute(delete(contacts).where(contacts.c.name == name))
            conn.execute(delete(rotations).where(rotations.c.name == name))

        self._write(nonce, now, run)

    def _rotations(self, conn: Connection, names: Iterable[str]) -> dict[str, tuple[RotationOut, ...]]:
        names = list(set(names))
        if not names:
            return {}
        rows = conn.execute(
            select(rotations).where(rotations.c.name.in_(names)).order_by(rotations.c.name, rotations.c.seq)
        ).all()
        return {
            name: tuple(RotationOut(r.old_key, r.new_key, r.rotated_at, r.signature) for r in group)
            for name, group in itertools.groupby(rows, key=lambda r: r.name)
        }

    def _participants(self, conn: Connection, where: Any, *, limit: int) -> list[ParticipantOut]:
        rows = conn.execute(
            select(participants, contacts.c.host, contacts.c.port, contacts.c.issued_at, contacts.c.signature)
            .join(contacts, contacts.c.name == participants.c.name, isouter=True)
            .where(where, participants.c.unregistered_at.is_(None))
            .order_by(participants.c.name)
            .limit(limit)
        ).all()
        chains = self._rotations(conn, [r.name for r in rows])
        return [
            ParticipantOut(
                r.name,
                r.issuer,
                r.fingerprint,
                r.cert_pem,
                r.registered_at,
                None if r.host is None else ContactOut(r.host, r.port, r.issued_at, r.signature),
                chains.get(r.name, ()),
            )
            for r in rows
        ]

    def get_participant(self, name: str) -> ParticipantOut | None:
        with self._read_conn() as conn:
            found = self._participants(conn, participants.c.name == name, limit=1)
        return found[0] if found else None

    def list_participants(self, *, limit: int = 1000, after: str = "") -> list[ParticipantOut]:
        with self._read_conn() as conn:
            return self._participants(conn, participants.c.name > after, limit=limit)

    def publish_contact(
        self, *, name: str, host: str, port: int, issued_at: int, signature: str, nonce: tuple[str, int], now: int
    ) -> None:
        def run(conn: Connection) -> None:
            registered = participants.c.name == name, participants.c.unregistered_at.is_(None)
            if conn.execute(select(participants.c.name).where(*registered)).first() is None:
                raise Rejected("unknown_participant", f"no participant is named {name!r}")
            values = {"host": host, "port": port, "issued_at": issued_at, "signature": signature}
            done = conn.execute(update(contacts).where(contacts.c.name == name).values(**values))
            if done.rowcount == 0:
                conn.execute(insert(contacts).values(name=name, **values))

        self._write(nonce, now, run)

    # ---------------------------------------------------------------- conferences

    def create_conference(
        self,
        *,
        creator: str,
        id: str,
        version: int,
        created_at: int,
        t0: int,
        t1: int,
        members: list[str],
        fingerprints: list[str],
        signature: str,
        nonce: tuple[str, int],
        now: int,
    ) -> ConferenceOut:
        """Store a conference whose members are registered with exactly these certificates; a
        deleted ``(creator, id)`` may be created again with a higher version than its tombstone."""

        def run(conn: Connection) -> ConferenceOut:
            key = and_(conferences.c.creator == creator, conferences.c.id == id)
            if conn.execute(select(conferences.c.id).where(key)).first():
                raise Rejected("duplicate_conference", f"{creator} already has a conference with id {id!r}")
            tomb = conn.execute(
                select(tombstones.c.version).where(tombstones.c.creator == creator, tombstones.c.id == id)
            ).first()
            if tomb is not None and version <= tomb.version:
                raise Rejected(
                    "stale_version",
                    f"{creator}'s conference {id!r} was deleted at version {tomb.version}; "
                    "a new record needs a higher version",
                )
            rows = conn.execute(
                select(participants.c.name, participants.c.fingerprint, participants.c.cert_pem).where(
                    participants.c.name.in_(members), participants.c.unregistered_at.is_(None)
                )
            ).all()
            registered = {r.name: r for r in rows}
            for name, fp in zip(members, fingerprints, strict=True):
                if name not in registered:
                    raise Rejected("unknown_member", f"member {name!r} is not a registered participant")
                if registered[name].fingerprint != fp:
                    raise Rejected(
                        "certificate_mismatch", f"the certificate given for {name!r} is not the registered one"
                    )
            if tomb is not None:
                conn.execute(delete(tombstones).where(tombstones.c.creator == creator, tombstones.c.id == id))
            conn.execute(
                insert(conferences).values(
                    creator=creator, id=id, version=version, created_at=created_at, t0=t0, t1=t1,
                    signature=signature, stored_at=now,
                )
            )
            conn.execute(
                insert(conference_members),
                [
                    {"creator": creator, "conference_id": id, "position": i, "name": name, "fingerprint": fp}
                    for i, (name, fp) in enumerate(zip(members, fingerprints, strict=True))
                ],
            )
            return ConferenceOut(
                id, t0, t1, list(members), [registered[m].cert_pem for m in members], creator, signature,
                version, created_at, self._rotations(conn, members),
            )

        return self._write(nonce, now, run)

    def _load_conferences(self, conn: Connection, keys: Iterable[tuple[str, str]]) -> list[ConferenceOut]:
        """Whole records by (creator, id), each read by one statement (never torn, whatever the
        isolation), in (creator, id) order."""
        keys = list(keys)
        if not keys:
            return []
        rows = conn.execute(
            select(
                conferences,
                conference_members.c.name.label("member"),
                participants.c.cert_pem,
            )
            .join(
                conference_members,
                and_(
                    conference_members.c.creator == conferences.c.creator,
                    conference_members.c.conference_id == conferences.c.id,
                ),
            )
            .join(participants, participants.c.name == conference_members.c.name)
            .where(tuple_(conferences.c.creator, conferences.c.id).in_(keys))
            .order_by(conferences.c.creator, conferences.c.id, conference_members.c.position)
        ).all()
        chains = self._rotations(conn, [r.member for r in rows])
        result: list[ConferenceOut] = []
        for _, grouped in itertools.groupby(rows, key=lambda r: (r.creator, r.id)):
            group = list(grouped)
            h = group[0]
            result.append(
                ConferenceOut(
                    h.id,
                    h.t0,
                    h.t1,
                    [r.member for r in group],
                    [r.cert_pem for r in group],
                    h.creator,
                    h.signature,
                    h.version,
                    h.created_at,
                    {r.member: chains[r.member] for r in group if r.member in chains},
                )
            )
        return result

    def get_conference(self, creator: str, id: str) -> ConferenceOut | TombstoneOut | None:
        """The record of ``(creator, id)``, its tombstone if it was deleted, or None."""
        with self._read_conn(snapshot=True) as conn:
            found = self._load_conferences(conn, [(creator, id)])
            if found:
                return found[0]
            row = conn.execute(
                select(tombstones, participants.c.cert_pem)
                .join(participants, participants.c.name == tombstones.c.creator)
                .where(tombstones.c.creator == creator, tombstones.c.id == id)
            ).first()
        if row is None:
            return None
        return TombstoneOut(row.creator, row.id, row.version, row.deleted_at, row.signature, row.cert_pem)

    def conferences_with_id(self, id: str, *, after: str = "", limit: int = 1000) -> list[ConferenceOut]:
        """The conferences of every creator that use ``id``, by creator, those after ``after``."""
        with self._read_conn() as conn:
            creators = conn.execute(
                select(conferences.c.creator)
                .where(conferences.c.id == id, conferences.c.creator > after)
                .order_by(conferences.c.creator)
                .limit(limit)
            ).scalars()
            return self._load_conferences(conn, [(c, id) for c in creators])

    def conferences_of(
        self, name: str, *, after: tuple[str, str] = ("", ""), limit: int = 1000
    ) -> list[ConferenceOut]:
        """The conferences ``name`` belongs to, by (creator, id), the first ``limit`` after ``after``."""
        m = conference_members.c
        with self._read_conn() as conn:
            keys = conn.execute(
                select(m.creator, m.conference_id)
                .where(
                    m.name == name,
                    or_(m.creator > after[0], and_(m.creator == after[0], m.conference_id > after[1])),
                )
                .order_by(m.creator, m.conference_id)
                .limit(limit)
            ).all()
            return self._load_conferences(conn, [(k.creator, k.conference_id) for k in keys])

    def delete_conference(
        self,
        *,
        creator: str,
        id: str,
        requester: str,
        version: int,
        deleted_at: int,
        signature: str,
        nonce: tuple[str, int],
        now: int,
    ) -> None:
        """Replace the record of ``(creator, id)`` by the creator's tombstone (checked by the
        caller), which must cover the record's version."""

        def run(conn: Connection) -> None:
            row = conn.execute(
                select(conferences.c.version).where(conferences.c.creator == creator, conferences.c.id == id)
            ).first()
            if row is None:
                raise Rejected("unknown_conference", f"{creator} has no conference with id {id!r}")
            if requester != creator:
                raise Rejected("not_creator", "only the creator of a conference may delete it")
            if version < row.version:
                raise Rejected(
                    "stale_version", f"the tombstone is for version {version}, the record is version {row.version}"
                )
            conn.execute(
                delete(conference_members).where(
                    conference_members.c.creator == creator, conference_members.c.conference_id == id
                )
            )
            conn.execute(delete(conferences).where(conferences.c.creator == creator, conferences.c.id == id))
            conn.execute(
                insert(tombstones).values(
                    creator=creator, id=id, version=version, deleted_at=deleted_at, signature=signature,
                    stored_at=now,
                )
            )

        self._write(nonce, now, run)

    # ---------------------------------------------------------------- inspection (tests, tools)

    def dump(self) -> dict[str, list[tuple]]:
        """Every row of the domain tables, in a stable order, from one consistent snapshot."""
        with self._read_conn(snapshot=True) as conn:
            return {
                t.name: sorted(tuple(r) for r in conn.execute(select(t)).all()) for t in DOMAIN_TABLES
            }

    def counts(self) -> dict[str, int]:
        with self._read_conn() as conn:
            return {
                t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (*DOMAIN_TABLES, nonces)
            }
