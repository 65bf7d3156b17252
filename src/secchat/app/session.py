"""The SecChat application core: profile, directory, network node and conferences, no user interface.

Why: the command line, the terminal UI and the demo all do the same things -- open a profile,
talk to the (untrusted) directory, join conferences, send, receive, re-key, leave -- and must
agree on what each means.  :class:`ChatApp` is that one place; interfaces only render its
:data:`AppEvent` stream and turn :class:`AppError` (one sentence for the user, plus a ``code``)
into messages.

How a conference works here (thesis §4.1, SPEC "SecChat"):

* **join** fetches the record through the verifying directory client (creator signature, every
  certificate against the CA, each certificate the one the user accepted), checks the time frame
  and membership, publishes our signed contact address, and starts the conference:
  :class:`Conference` runs a :class:`~secchat.app.conference.ConferenceCore` (epochs, re-keys,
  the outbox, receipts, rejoin: no I/O) and carries out its actions on the node.  Peers'
  addresses come from the directory (refreshed until each peer is connected); their *identity*
  only from the pinned certificates.
* **leave** keeps the key-exchange state (write-ahead, :mod:`secchat.net.journal`) and the
  core's state and outbox (:mod:`.history`, encrypted); joining again restores them: the same
  key, and what is still unconfirmed is sent again.
* **message states**: our own message is ``sending`` until the key exists and it was encrypted
  and multicast, then ``sent``, then ``delivered`` once every live member confirmed it; a
  message from another member is ``delivered``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import pki
from ..directory.client import (
    AmbiguousConference,
    AsyncDirectoryClient,
    ConferenceDeleted,
    DirectoryError,
    DirectoryUnavailable,
    RolledBack,
    UnacceptedCertificates,
    UntrustedResponse,
)
from ..directory.client import Conference as DirConference
from ..directory.models import conference_key, split_reference
from ..directory.trust import Acceptance, TrustStore, TrustStoreError
from ..directory.versions import VERSIONS_FILE, VersionMemory, VersionMemoryError
from ..net.journal import StateError
from ..net.links import LinkConfig
from ..net.node import Node
from ..net.store import CaughtUp
from ..net.tls import TlsCredentials
from ..protocols.events import (
    ClosedEpochFrame,
    Delivered,
    InstanceSeen,
    KeyEstablished,
    KeyFork,
    Lost,
    RecordMismatch,
    Undelivered,
)
from ..protocols.stack import GroupId, StackConfig, epoch_of
from ..text import safe
from .conference import (
    MAX_TEXT,
    AppEvent,
    ChatMessage,
    CloseEpoch,
    ConferenceCore,
    CoreError,
    JoinEpoch,
    KeyStatus,
    MemberStatus,
    Multicast,
    Notice,
    OtherRecord,
    Persist,
    Show,
    Store,
)
from .history import HistoryError, HistoryStore, StoredMessage
from .profile import (
    HISTORY_FILE,
    IDENTITY_DIR,
    TRUST_FILE,
    ProfileError,
    ProfileLock,
    Settings,
    default_home,
    load_settings,
)

__all__ = [
    "MAX_TEXT",
    "AppError",
    "AppEvent",
    "ChatApp",
    "ChatMessage",
    "Conference",
    "ConferenceView",
    "KeyStatus",
    "MemberStatus",
    "Notice",
    "OtherRecord",
    "UnacceptedCertificate",
]

log = logging.getLogger("secchat.app")



PASSPHRASE_ENV = "SECCHAT_PASSPHRASE"
#: Events kept for a slow reader of :meth:`Conference.events`; beyond, the oldest are dropped.
EVENT_QUEUE = 1000
#: How often member status is sampled and unknown contact addresses are looked up again.
STATUS_PERIOD = 0.25
CONTACT_PERIOD = 1.0
CONTACT_MAX_PERIOD = 15.0
#: Up to this many missing members are looked up one by one; beyond, the listing is read.
CONTACT_LOOKUPS = 4
#: Accepting a certificate by fingerprint takes at least this many hex digits (128 bits).
MIN_FINGERPRINT_HEX = 32


class AppError(Exception):
    """A failure to show the user: ``str(e)`` is one clear sentence, ``code`` is for programs."""

    def __init__(self, message: str, code: str = "error", **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.details = details

    @property
    def certificates(self) -> tuple[UnacceptedCertificate, ...]:
        """For ``code == "untrusted"``: the certificates the user has not accepted yet."""
        return tuple(self.details.get("certificates", ()))


# --------------------------------------------------------------------------- views and events


@dataclass(frozen=True)
class ConferenceView:
    id: str
    t0: datetime
    t1: datetime
    members: tuple[str, ...]
    creator: str
    joinable_now: bool

    @property
    def key(self) -> str:
        """``creator/id``: names the conference (two creators may use one id)."""
        return conference_key(self.creator, self.id)


@dataclass(frozen=True)
class UnacceptedCertificate:
    name: str
    identity: str  # name@issuer
    fingerprint: str  # SHA-256 of the DER certificate, hex


def _ts(t: int | float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _fmt(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _view(c: DirConference, now: float) -> ConferenceView:
    return ConferenceView(
        c.id, _ts(c.t0), _ts(c.t1), tuple(m.name for m in c.members), c.creator, c.t0 <= now <= c.t1
    )


def _record_digest(record: DirConference) -> bytes:
    return record.digest


def _unaccepted(members: Sequence[Any]) -> tuple[UnacceptedCertificate, ...]:
    return tuple(UnacceptedCertificate(m.identity.name, str(m.identity), m.fingerprint) for m in members)


def _untrusted_error(certs: tuple[UnacceptedCertificate, ...], what: str) -> AppError:
    listing = "; ".join(f"{c.identity} {c.fingerprint}" for c in certs)
    return AppError(
        f"{what} needs certificates you have not accepted yet: {listing}", "untrusted", certificates=certs
    )


# --------------------------------------------------------------------------- the application


class ChatApp:
    """One user's SecChat: open with :meth:`open`, close with :meth:`aclose`."""

    def __init__(
        self,
        home: Path,
        settings: Settings,
        local: pki.LocalIdentity,
        trust: TrustStore,
        history: HistoryStore,
        *,
        versions: VersionMemory | None = None,
        stack_config: StackConfig | None = None,
        link_config: LinkConfig | None = None,
    ) -> None:
        self.home = home
        self.settings = settings
        self.local = local
        self.name = local.identity.name
        self.trust = trust
        self.history_store = history
        self.versions = versions if versions is not None else VersionMemory(None)
        self.client = AsyncDirectoryClient.for_identity(
            settings.directory, local, trust, versions=self.versions, deadline=settings.directory_timeout,
            tls_ca=settings.directory_ca_file(home),
        )
        self._stack_config = stack_config
        self._link_config = link_config
        self._node: Node | None = None
        self._lock: ProfileLock | None = None  # held while our node runs (one per profile)
        self._address: tuple[str, int] | None = None
        self._conferences: dict[str, Conference] = {}
        self._join_lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(
        cls,
        home: Path | None = None,
        passphrase: str | None = None,
        *,
        stack_config: StackConfig | None = None,
        link_config: LinkConfig | None = None,
        relay: str | None = None,
        relay_only: bool | None = None,
    ) -> ChatApp:
        """Open the profile in ``home``; the passphrase defaults to ``$SECCHAT_PASSPHRASE``.
        ``relay`` / ``relay_only``: this run's relay instead of the profile's."""
        home = Path(home) if home is not None else default_home()
        try:
            settings = load_settings(home)
            if relay is not None or relay_only is not None:
                settings = replace(settings, relay=settings.relay if relay is None else relay,
                                   relay_only=settings.relay_only if relay_only is None else relay_only)
        except ProfileError as exc:
            raise AppError(str(exc), exc.code) from None
        except ValueError as exc:
            raise AppError(f"bad relay: {exc}", "bad_config") from None
        if passphrase is None:
            passphrase = os.environ.get(PASSPHRASE_ENV) or None
        if not passphrase:
            raise AppError(f"no passphrase given (set {PASSPHRASE_ENV} or pass one)", "no_passphrase")
        try:
            local = await asyncio.to_thread(pki.load_identity, home / IDENTITY_DIR, passphrase)
        except pki.PkiError as exc:
            if exc.code == "wrong_passphrase":
                raise AppError("wrong passphrase for this profile's key store", "wrong_passphrase") from None
            raise AppError(str(exc), exc.code) from None
        try:
            trust = TrustStore(home / TRUST_FILE)
        except TrustStoreError as exc:
            raise AppError(str(exc), "bad_trust_store") from None
        try:
            versions = VersionMemory(home / VERSIONS_FILE)
        except VersionMemoryError as exc:
            raise AppError(str(exc), "bad_version_memory") from None
        try:
            history = await asyncio.to_thread(HistoryStore, home / HISTORY_FILE, passphrase)
        except HistoryError as exc:
            raise AppError(str(exc), exc.code) from None
        try:
            return cls(home, settings, local, trust, history, versions=versions,
                       stack_config=stack_config, link_config=link_config)
        except DirectoryError as exc:  # the directory's CA bundle is unreadable
            history.close()
            raise AppError(str(exc), exc.code) from None

    # ------------------------------------------------------------------ directory operations

    async def _dir(self, coro: Any, *, conference: str | None = None, participant: str | None = None) -> Any:
        """Run a directory call, translating its errors into :class:`AppError`."""
        try:
            return await coro
        except DirectoryUnavailable as exc:  # unreachable, failing, or not answering in time
            raise AppError(
                f"the directory at {self.settings.directory} is unreachable or failing ({exc})", "directory_down"
            ) from None
        except UnacceptedCertificates as exc:
            raise _untrusted_error(_unaccepted(exc.members), "the conference") from None
        except RolledBack as exc:
            raise AppError(str(exc), "rollback") from None
        except UntrustedResponse as exc:
            if exc.code == "untrusted_directory":  # its TLS certificate: there was no answer
                raise AppError(str(exc), exc.code) from None
            raise AppError(f"the directory's answer failed verification: {exc}", "untrusted_directory") from None
        except ConferenceDeleted as exc:
            raise AppError(str(exc), "deleted") from None
        except AmbiguousConference as exc:
            raise AppError(str(exc), "ambiguous_conference", creators=exc.creators) from None
        except DirectoryError as exc:
            if exc.status == 404 and conference is not None:
                raise AppError(f"there is no conference {conference!r} in the directory", "unknown_conference") from None
            if exc.status == 404 and participant is not None:
                raise AppError(f"{participant} is not registered with the directory", "unknown_participant") from None
            # The directory's own code is kept aside, never as ours: a directory answering with
            # a code of ours (say "untrusted") must not make an interface act on it.
            raise AppError(
                f"the directory refused: {exc} ({exc.code})", "directory_refused", directory_code=exc.code
            ) from None

    async def register(self) -> str:
        """Register our certificate with the directory; returns its fingerprint."""
        p = await self._dir(self.client.register())
        return p.fingerprint

    async def participants(self) -> list[str]:
        return [p.name for p in await self._dir(self.client.list_participants())]

    async def participant_details(self) -> list[Any]:
        """Verified participants (``directory.client.Participant``: name, fingerprint, acceptance)."""
        return await self._dir(self.client.list_participants())

    async def conferences(self) -> list[ConferenceView]:
        now = time.time()
        return [_view(c, now) for c in await self._dir(self.client.conferences_of())]

    async def create(
        self, conference_id: str, members: Sequence[str], t0: datetime, t1: datetime, *, accept_new: bool = False
    ) -> ConferenceView:
        """Create and sign a conference among ``members`` (we are added if missing); with
        ``accept_new``, members' certificates not seen before are accepted -- only once the
        conference exists, so a failed create leaves the trust store as it was."""
        names = list(dict.fromkeys(members))
        if self.name not in names:
            names.insert(0, self.name)
        if t1 <= t0:
            raise AppError("the conference must end after it starts", "bad_time_frame")
        try:
            c = await self._dir(
                self.client.create_conference(
                    conference_id, int(t0.timestamp()), int(t1.timestamp()), names, accept_new=accept_new
                )
            )
        except AppError as exc:
            if exc.details.get("directory_code") not in ("not_found", "unknown_participant"):
                raise
            known = set(await self.participants())
            unknown = ", ".join(n for n in names if n not in known)
            raise AppError(f"not registered with the directory: {unknown or '?'}", "unknown_participant") from None
        if c.unaccepted:
            self.trust.accept_all((m.identity, m.fingerprint) for m in c.unaccepted)
        return _view(c, time.time())

    async def delete(self, conference_id: str) -> None:
        """Delete our conference ``conference_id``: the directory keeps our signed tombstone, and
        members who see it refuse the record from then on."""
        await self._dir(self.client.delete_conference(conference_id), conference=conference_id)

    async def unaccepted(self, conference_id: str, *, creator: str | None = None) -> list[UnacceptedCertificate]:
        """Members' certificates of ``conference_id`` the user has not accepted yet."""
        return list(_unaccepted((await self._record(conference_id, creator)).unaccepted))

    async def _record(self, reference: str, creator: str | None) -> DirConference:
        """The verified record that ``reference`` (``id`` or ``creator/id``) and ``creator`` name."""
        try:
            named, conference_id = split_reference(reference)
        except ValueError as exc:
            raise AppError(str(exc), "bad_conference_id") from None
        if named is not None and creator is not None and named != creator:
            raise AppError(f"{reference!r} names the creator {named}, not {creator}", "bad_conference_id")
        return await self._dir(
            self.client.get_conference(conference_id, named or creator), conference=conference_id
        )

    async def unaccepted_participants(self, names: Sequence[str]) -> list[UnacceptedCertificate]:
        out: list[UnacceptedCertificate] = []
        for name in names:
            if name == self.name:
                continue
            p = await self._dir(self.client.get_participant(name), participant=name)
            if p.acceptance is Acceptance.NEW:
                out.extend(_unaccepted([p]))
        return out

    async def accept(self, name: str, fingerprint: str) -> None:
        """The user accepted ``name``'s certificate, which must have this fingerprint (or a
        prefix of at least :data:`MIN_FINGERPRINT_HEX` hex digits: 128 bits)."""
        fp = fingerprint.lower().replace(":", "")
        if len(fp) < MIN_FINGERPRINT_HEX or any(c not in "0123456789abcdef" for c in fp):
            raise AppError(
                f"give at least {MIN_FINGERPRINT_HEX} hex digits of the fingerprint", "bad_fingerprint"
            )
        p = await self._dir(self.client.get_participant(name), participant=name)
        if not p.fingerprint.startswith(fp):
            # Not the directory's fingerprint in reply: a user who mistyped must check it with
            # its owner, not copy whatever the directory says.
            raise AppError(
                f"the certificate of {p.identity} the directory gave does not have the fingerprint "
                "you gave: check it with its owner",
                "fingerprint_mismatch",
            )
        self.trust.accept(p.identity, p.fingerprint)

    def history(self, conference_id: str) -> list[ChatMessage]:
        """Messages of a conference kept locally (across restarts), oldest first; no need to join."""
        return [
            ChatMessage(m.sender, _ts(m.sent_at), m.text, m.state, m.epoch)
            for m in self.history_store.messages(conference_id)
        ]

    def joined(self) -> list[Conference]:
        """The conferences joined in this session."""
        return list(self._conferences.values())

    # ------------------------------------------------------------------ conferences

    def claim_profile(self) -> None:
        """Make this the one process running the profile's node (it publishes the contact
        address); ``AppError(code="profile_in_use")`` naming the process that does.  Joining
        claims it; the chat UI claims it at start."""
        if self._lock is None:
            lock = ProfileLock(self.home)
            try:
                lock.acquire(" ".join(["secchat", *sys.argv[1:2]]))
            except ProfileError as exc:
                raise AppError(str(exc), exc.code) from None
            self._lock = lock

    async def _ensure_node(self) -> Node:
        if self._node is None:
            self.claim_profile()
            creds = TlsCredentials(self.local.key, self.local.cert, self.local.trusted)
            node = Node(creds, self._on_stack_event, stack_config=self._stack_config, link_config=self._link_config,
                        state=self.history_store, relay=self.settings.relay_config())
            try:
                _host, port = await node.start(self.settings.listen_host, self.settings.listen_port)
            except OSError as exc:
                await node.aclose()
                raise AppError(
                    f"cannot listen on {self.settings.listen_host}:{self.settings.listen_port}: {exc.strerror}",
                    "listen_failed",
                ) from None
            self._node = node
            self._address = (self.settings.advertised, port)
        return self._node

    def _on_stack_event(self, group: str, event: Any) -> None:
        conf = self._conferences.get(group)
        if conf is not None:
            conf._on_stack_event(event)

    async def join(
        self, conference_id: str, *, creator: str | None = None, accept_new: bool = False
    ) -> Conference:
        """Join a conference (see the module docstring): ``conference_id`` is an id or
        ``creator/id``; when several creators have a conference of that id, ``creator`` (or the
        ``creator/`` prefix) says whose.  ``accept_new`` accepts certificates not seen before
        instead of raising ``AppError(code="untrusted")`` -- only once the join succeeded: a
        failed join leaves the trust store and the version memory as they were."""
        if self._closed:
            raise AppError("this SecChat session is closed", "closed")
        deadline = self.settings.directory_timeout
        async with self._join_lock:  # one join of a conference at a time (a double click in a UI)
            try:
                # the lock is held for one directory deadline at most, whatever the directory does
                async with asyncio.timeout(deadline):
                    record = await self._record(conference_id, creator)
                    joined = self._conferences.get(record.id)
                    if joined is not None:
                        if joined.creator != record.creator:
                            raise AppError(
                                f"you are in {record.id!r} by {joined.creator} already: leave it first",
                                "already_joined",
                            )
                        return joined
                    return await self._join(record, accept_new)
            except TimeoutError:
                raise AppError(
                    f"the directory at {self.settings.directory} is unreachable or failing "
                    f"(it did not answer within {deadline:g} s)", "directory_down",
                ) from None

    async def _join(self, record: DirConference, accept_new: bool) -> Conference:
        conference_id = record.id
        names = tuple(m.name for m in record.members)
        if self.name not in names:
            raise AppError(f"you ({self.name}) are not a member of conference {conference_id!r}", "not_a_member")
        now = time.time()
        if now > record.t1:
            raise AppError(
                f"conference {conference_id!r} ended at {_fmt(_ts(record.t1))} (it was open from "
                f"{_fmt(_ts(record.t0))}); its history is still yours: secchat join --history",
                "outside_time_frame", ended=True,
            )
        if now < record.t0:
            raise AppError(
                f"conference {conference_id!r} is only open from {_fmt(_ts(record.t0))} to {_fmt(_ts(record.t1))}",
                "outside_time_frame",
            )
        if record.unaccepted and not accept_new:
            raise _untrusted_error(_unaccepted(record.unaccepted), f"conference {conference_id!r}")
        node = await self._ensure_node()
        assert self._address is not None
        if not self.settings.relay_only:  # relay only: peers never connect to us directly
            await self._dir(self.client.publish_contact(*self._address))
        try:
            node.add_conference(
                conference_id,
                [(m.name, m.cert) for m in record.members],
                incarnation=self.history_store.next_incarnation(time.time_ns() // 1000),
                record=_record_digest(record),
                creator=record.creator,
            )
        except (ValueError, pki.PkiError) as exc:
            raise AppError(f"cannot run conference {conference_id!r}: {exc}", "bad_conference") from None
        try:  # the join succeeded: now (and only now) the acceptances and the version are kept
            self.trust.accept_all((m.identity, m.fingerprint) for m in record.unaccepted)
            self.client.remember(record)
        except OSError as exc:
            with contextlib.suppress(ValueError):
                node.remove_conference(conference_id)
            raise AppError(f"cannot save the profile's state: {exc}", "profile_write_failed") from None
        self._migrate_state(conference_id, _record_digest(record))
        conf = Conference(self, record)
        self._conferences[conference_id] = conf
        rotated = list(getattr(record, "rotated", ()))
        if rotated:  # keys that the key we accepted signed over to: accepted from now on, said once
            try:
                self.trust.accept_all((m.identity, m.fingerprint) for m in rotated)
            except OSError as exc:
                log.warning("cannot save the rotated keys of %s: %s", conference_id, exc)
            for m in rotated:
                conf._emit(Notice(f"{safe(m.name)} rotated her key (signed by her old one); "
                                  f"fingerprint now {m.fingerprint}"))
        conf._start()
        return conf

    def _migrate_state(self, conference_id: str, record: bytes) -> None:
        """Profiles of before the record binding kept the key-exchange state under the
        conference id: move it under the record digest, where the node looks (a state of
        another record that had this id is dropped, never reused)."""
        legacy = self.history_store.load_state(conference_id)
        if legacy is None:
            return
        if legacy.record == record and self.history_store.load_state(record.hex()) is None:
            self.history_store.save_state(record.hex(), legacy)
        self.history_store.forget_state(conference_id)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conf in list(self._conferences.values()):
            with contextlib.suppress(Exception):
                await conf.leave()
        if self._node is not None:
            await self._node.aclose()
        if self._lock is not None:
            self._lock.release()
        await self.client.aclose()
        self.history_store.close()

    async def __aenter__(self) -> ChatApp:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Conference:
    """A joined conference: events, send, re-key, leave, history.

    Thin glue: the conference's life is :class:`~secchat.app.conference.ConferenceCore` (no
    I/O); this class feeds it the node's events, the user's calls and its deadlines, and carries
    out its actions on the node, the history file and the event queue."""

    def __init__(self, app: ChatApp, record: DirConference) -> None:
        self._app = app
        self._node: Node = app._node  # type: ignore[assignment]
        self.id = record.id
        self.creator = record.creator
        self.me = app.name
        self.members = tuple(m.name for m in record.members)
        self.t0 = _ts(record.t0)
        self.t1 = _ts(record.t1)
        self._record = _record_digest(record)
        #: the conference as the protocols know it (its tags carry the record digest)
        self.gid = GroupId(self.id, self._record, record.creator)
        self._queue: asyncio.Queue[AppEvent | None] = asyncio.Queue(EVENT_QUEUE)
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._left = False
        store = app.history_store
        state, outbox = store.load_conference(self._record.hex())
        self.core = ConferenceCore(self.id, self.members, self.me, time.time(), state=state, outbox=outbox)

    # ------------------------------------------------------------------ life

    def _start(self) -> None:
        saved = self._node.saved_epoch(self.id)
        if saved is not None and saved > self.core.epoch:
            self.core.epoch = self.core.state.epoch = saved  # a state of before the core kept its own
        if saved is not None:
            self._emit(Notice(f"rejoining {self.id} with the saved key state of epoch {self.core.epoch}"))
        self.core.start()
        self._run_actions()  # a saved decision establishes the key right here
        self._tasks.append(asyncio.create_task(self._timers(), name=f"timers {self.id}"))
        self._tasks.append(asyncio.create_task(self._watch_status(), name=f"status {self.id}"))
        self._tasks.append(asyncio.create_task(self._find_peers(), name=f"contacts {self.id}"))

    def _emit(self, event: AppEvent | None) -> None:
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    self._queue.get_nowait()  # bounded: the oldest event goes

    async def events(self) -> AsyncIterator[AppEvent]:
        """The conference's events, until it is left (one reader)."""
        while True:
            ev = await self._queue.get()
            if ev is None:
                return
            yield ev

    def _run_actions(self) -> None:
        """Carry out what the core asked for (joining may bring the key, and so more actions)."""
        core = self.core
        for _ in range(1000):
            actions = core.take_actions()
            if not actions:
                break
            stored: list[ChatMessage] = []
            for action in actions:
                if isinstance(action, Show):
                    self._emit(action.event)
                elif isinstance(action, Store):
                    stored.append(action.message)
                elif isinstance(action, Persist):
                    self._persist(action, stored)
                    stored = []
                elif isinstance(action, Multicast):
                    try:
                        self._node.send(self.id, action.payload, epoch=action.epoch)
                    except Exception as exc:  # a key fork, a closed epoch, the stack's bounds
                        core.multicast_failed(action.epoch, action.mids, str(exc))
                elif isinstance(action, JoinEpoch):
                    self._join_epoch(action.epoch)
                elif isinstance(action, CloseEpoch):
                    with contextlib.suppress(ValueError):
                        self._node.close_epoch(self.id, action.epoch)
            if stored:
                self._persist(None, stored)
        self._wake.set()

    def _persist(self, action: Persist | None, messages: list[ChatMessage]) -> None:
        if action is not None:  # the stack's marks of the current epoch go with the core's state
            smc = self._node.smc(self.id, self.core.epoch)
            if smc is not None:
                action.state.marks_epoch, action.state.marks = self.core.epoch, smc.high_water()
        rows = [StoredMessage(m.sender, m.sent_at.timestamp(), m.text, m.state, m.epoch, m.mid or 0)
                for m in messages]
        try:
            self._app.history_store.save_conference(
                self.id, self._record.hex(), rows,
                None if action is None else action.state,
                () if action is None else action.outbox_add,
                0 if action is None else action.outbox_drop,
            )
        except Exception:
            log.exception("cannot save the state of %s", self.id)
            self._emit(Notice(f"cannot save the state of {self.id}: see the log"))

    def _join_epoch(self, epoch: int) -> None:
        """Start ``epoch``'s key exchange: the node saves the state needed to rejoin *before*
        the first message (write-ahead, :mod:`secchat.net.journal`), so a member that crashed
        mid-exchange and comes back never votes twice in that exchange's consensus."""
        state = self.core.state
        marks = state.marks if state.marks_epoch == epoch else None
        try:
            try:
                joined = self._node.join(self.id, epoch=epoch, high_water=marks)
            except ValueError as exc:  # saved marks that do not fit this run: start without
                log.warning("%s: saved stream marks of epoch %d unusable (%s)", self.id, epoch, exc)
                joined = self._node.join(self.id, epoch=epoch)
        except StateError as exc:
            self._emit(Notice(f"cannot keep the key-exchange state of {self.id!r}: {exc}"))
            return
        if joined is not None:
            # what the stack kept for epochs we skipped is released (it would fill senders' quotas)
            self._node.release_epochs_below(self.id, min(self.core.open_epochs, default=epoch))
            self.core.on_joined(epoch, abstains=joined.abstains or joined.restored, now=time.time())

    async def _timers(self) -> None:
        """The core's deadlines, in wall-clock time."""
        while not self._left:
            deadline = self.core.next_deadline()
            delay = 3600.0 if deadline is None else max(0.0, deadline - time.time())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            if self._left:
                return
            if deadline is not None and time.time() >= deadline:
                self.core.handle_timer(time.time())
                self._run_actions()

    async def _watch_status(self) -> None:
        ended = False
        while not self._left:
            now = time.time()
            if not ended and datetime.now(UTC) > self.t1:
                ended = True
                self._emit(Notice(f"the time frame of {self.id} ended at {_fmt(self.t1)}"))
            conf = self._node.runtime.conferences.get(self.id)
            if conf is not None:
                member: Any = conf.member
                for i, name in enumerate(self.members):
                    if name != self.me:
                        up = self._node.links.connected(name) and not member.detector.suspects(i)
                        self.core.on_peer(name, up, now, self._node.path(name))
                self._run_actions()
            await asyncio.sleep(STATUS_PERIOD)

    async def _find_peers(self) -> None:
        """Look up contact addresses of members we are not connected to (they may move).

        Few missing: one lookup each; many: one (paged) listing.  The period doubles, up to
        :data:`CONTACT_MAX_PERIOD`, while nothing new turns up, and starts again on news.
        """
        known: dict[str, tuple[str, int]] = {}
        period = CONTACT_PERIOD
        while not self._left:
            missing = [n for n in self.members if n != self.me and not self._node.links.connected(n)]
            found: list[Any] = []
            try:
                if len(missing) > CONTACT_LOOKUPS:
                    wanted = set(missing)
                    found = [p for p in await self._app.client.list_participants() if p.name in wanted]
                else:
                    for name in missing:
                        found.append(await self._app.client.get_participant(name))
            except DirectoryError as exc:
                log.debug("contact lookup for %s failed: %s", self.id, exc)
            news = False
            for p in found:
                if p.contact is not None and known.get(p.name) != (p.contact.host, p.contact.port):
                    known[p.name] = (p.contact.host, p.contact.port)
                    self._node.set_address(p.name, known[p.name])
                    news = True
            period = CONTACT_PERIOD if news else min(period * 2, CONTACT_MAX_PERIOD)
            await asyncio.sleep(period)

    # ------------------------------------------------------------------ API

    @property
    def epoch(self) -> int:
        return self.core.epoch

    @property
    def fingerprint(self) -> str | None:
        return self.core.fingerprint

    @property
    def established(self) -> bool:
        return self.core.established

    @property
    def sent(self) -> int:
        return self.core.sent

    @property
    def delivered(self) -> int:
        return self.core.delivered

    def up(self) -> dict[str, bool]:
        """Last known liveness of the other members."""
        return self.core.up()

    async def send(self, text: str) -> None:
        """Multicast ``text``: kept (saved) until every member confirmed it; state ``sending``
        until the key exists, then ``sent``, then ``delivered``."""
        if self._left:
            raise AppError(f"you left conference {self.id!r}", "left")
        try:
            self.core.send_text(text, time.time())
        except CoreError as exc:
            raise AppError(str(exc), exc.code) from None
        self._run_actions()

    async def rekey(self) -> None:
        """Start a new epoch with a fresh key exchange; every member follows."""
        if self._left:
            raise AppError(f"you left conference {self.id!r}", "left")
        try:
            self.core.rekey(time.time())
        except CoreError as exc:
            raise AppError(str(exc), exc.code) from None
        self._run_actions()

    async def leave(self) -> None:
        """Save the state (encrypted) and stop taking part; :meth:`ChatApp.join` again gets the
        same key and sends what is still unconfirmed."""
        if self._left:
            return
        self.core.leave(time.time())
        self._run_actions()
        self._left = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(ValueError):
            self._node.remove_conference(self.id)
        self._app._conferences.pop(self.id, None)
        self._emit(None)

    def history(self) -> list[ChatMessage]:
        """Messages of this conference kept locally (across restarts), oldest first."""
        return self._app.history(self.id)

    # ------------------------------------------------------------------ stack events

    def _on_stack_event(self, ev: Any) -> None:
        now = time.time()
        core = self.core
        if isinstance(ev, KeyEstablished):
            epoch = epoch_of(ev.tag)
            if epoch is not None:
                core.on_key(epoch, ev.fingerprint, ev.members, now)
        elif isinstance(ev, Delivered):
            epoch = epoch_of(ev.tag)
            if epoch is not None and self.members[ev.sender] != self.me:
                core.on_delivered(epoch, ev.sender, ev.payload, now)
        elif isinstance(ev, InstanceSeen):
            core.on_instance_seen(ev.epoch, ev.sender, now)
        elif isinstance(ev, ClosedEpochFrame):
            core.on_closed_epoch_frame(ev.epoch, ev.sender, now)
        elif isinstance(ev, CaughtUp):
            kept = f"{ev.frames} message{'s' if ev.frames != 1 else ''}"
            self._emit(Notice(f"caught up on {self.id}: {kept} kept by the relay while you were away"))
        elif isinstance(ev, RecordMismatch):
            self._on_other_record(ev)
        elif isinstance(ev, KeyFork):
            self._emit(Notice(
                f"two keys exist for {self.id} epoch {epoch_of(ev.tag)}: ours {ev.ours}, "
                f"{self.members[ev.peer]}'s {safe(ev.fingerprint, max_len=64)}: not sending under ours"
            ))
        elif isinstance(ev, Lost):
            count = f"{ev.count} message{'s' if ev.count != 1 else ''}"
            self._emit(Notice(f"{count} from {self.members[ev.sender]} were lost while you were cut off"))
        elif isinstance(ev, Undelivered):
            count = f"{ev.count} of your messages"
            self._emit(Notice(f"{count} did not reach {self.members[ev.peer]}: it came back too late for them"))
        self._run_actions()

    def _on_other_record(self, ev: RecordMismatch) -> None:
        name = self.members[ev.peer]
        members = f"{ev.members} member{'s' if ev.members != 1 else ''}"
        creator = safe(ev.creator, max_len=64) or "?"  # the peer's word: made terminal-safe here
        text = f"{name} holds another record of {self.id!r} (created by {creator}, {members}): not joining with {name}"
        self._emit(OtherRecord(text, name, ev.creator, ev.members))
