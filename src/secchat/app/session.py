"""The SecChat application core: profile, directory, network node and conferences, no user interface.

Why: the command line, the terminal UI and the demo all do the same things -- open a profile,
talk to the (untrusted) directory, join conferences, send, receive, re-key, leave -- and must
agree on what each means.  :class:`ChatApp` is that one place; interfaces only render its
:data:`AppEvent` stream and turn :class:`AppError` (one sentence for the user, plus a ``code``)
into messages.

How a conference works here (thesis §4.1, SPEC "SecChat"):

* **join** fetches the record through the verifying directory client (creator signature, every
  certificate against the CA, each certificate the one the user accepted), checks the time frame
  and membership, publishes our signed contact address, and starts secure multicast epoch ``e``
  (tag ``(id, "smc", e)``).  Peers' addresses come from the directory (refreshed until each peer
  is connected); their *identity* only from the pinned certificates.
* **payloads** on the SMC channel are msgpack structures: a chat :class:`_Text`, or a
  :class:`_Rekey` control message.
* **re-key**: the initiator multicasts ``_Rekey(e+1)`` over epoch ``e`` and starts epoch ``e+1``
  (a fresh GKE, new tag).  Every member that delivers it does the same.  When epoch ``e+1``'s
  key is established, older epochs are closed: their keys leave memory and their frames are
  refused.
* **leave** saves (contribution, session seed, epoch) -- encrypted, :mod:`.history` -- and stops
  the conference's stack; joining again restores them, so the key is the same, and the member
  takes each sender's messages up from the first it receives.
* **message states**: our own message is ``sending`` until the key exists and it was encrypted
  and multicast, then ``sent``; a message from another member is ``delivered``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec

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
from ..net.tls import TlsCredentials
from ..protocols.events import (
    Delivered,
    KeyEstablished,
    KeyFork,
    Lost,
    PeerRestored,
    PeerSuspected,
    RecordMismatch,
    Undelivered,
)
from ..protocols.stack import GroupId, StackConfig, epoch_of, smc_tag
from ..text import safe
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
MAX_TEXT = 64 * 1024
#: Accepting a certificate by fingerprint takes at least this many hex digits (128 bits).
MIN_FINGERPRINT_HEX = 32
#: Receipts (our messages' ``seen_by``, state ``delivered``) are sent in conferences up to this
#: size, at most once per period per member: each costs a multicast to n - 1 members.
RECEIPT_MAX_MEMBERS = 32
RECEIPT_PERIOD = 0.3
#: Our own recent messages whose receipts are tracked.
MAX_TRACKED = 1000


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


@dataclass(frozen=True)
class MemberStatus:
    name: str
    up: bool


@dataclass(frozen=True)
class KeyStatus:
    established: bool
    epoch: int
    fingerprint: str | None
    contributors: tuple[str, ...]


@dataclass(frozen=True)
class ChatMessage:
    sender: str
    sent_at: datetime
    text: str
    state: str  # "sending" | "sent" | "delivered"
    epoch: int
    #: our own messages: a number that stays the same from "sending" to "delivered" (None for others')
    local_id: int | None = None
    #: our own messages: the members that confirmed they got it (receipts; small conferences only)
    seen_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Notice:
    text: str


@dataclass(frozen=True)
class OtherRecord(Notice):
    """``member`` holds another record of this conference (same id, another creator, member
    list or version): the two never share a key, and the member counts as crashed here.
    ``creator`` and ``members`` are what that member says of its record."""

    member: str = ""
    creator: str = ""
    members: int = 0


AppEvent = MemberStatus | KeyStatus | ChatMessage | Notice


# --------------------------------------------------------------------------- payloads


#: Epochs are tag parts (``codec.check_tag``: below 2**63); a peer's payload may not go near that.
Epoch = Annotated[int, msgspec.Meta(ge=0, lt=1 << 48)]
#: Seconds since 1970, within what ``datetime`` can show.
Timestamp = Annotated[float, msgspec.Meta(ge=0, le=253402300799)]


class _Text(msgspec.Struct, tag="text", frozen=True):
    text: Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
    sent_at: Timestamp


class _Rekey(msgspec.Struct, tag="rekey", frozen=True):
    epoch: Epoch


class _Seen(msgspec.Struct, tag="seen", frozen=True):
    """Receipts: for each (epoch, sender index, incarnation), the highest seq delivered here."""

    upto: Annotated[list[tuple[Epoch, Annotated[int, msgspec.Meta(ge=0, lt=1 << 16)], int, int]],
                    msgspec.Meta(max_length=1 << 16)]


class _Epoch(msgspec.Struct, tag="epoch", frozen=True):
    """Sent over the current epoch when a member comes up, so one that missed a re-key notices
    frames of a newer epoch and follows."""

    epoch: Epoch


_payload_decoder = msgspec.msgpack.Decoder(_Text | _Rekey | _Epoch | _Seen)


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
            settings.directory, local, trust, versions=self.versions, deadline=settings.directory_timeout
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
        return cls(home, settings, local, trust, history, versions=versions, stack_config=stack_config,
                   link_config=link_config)

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
    """A joined conference: events, send, re-key, leave, history."""

    def __init__(self, app: ChatApp, record: DirConference) -> None:
        self._app = app
        self._node: Node = app._node  # type: ignore[assignment]
        self.id = record.id
        self.creator = record.creator
        self.me = app.name
        self.members = tuple(m.name for m in record.members)
        self.t0 = _ts(record.t0)
        self.t1 = _ts(record.t1)
        self.epoch = 0
        self.fingerprint: str | None = None
        self._record = _record_digest(record)
        #: the conference as the protocols know it (its tags carry the record digest)
        self.gid = GroupId(self.id, self._record, record.creator)
        self._queue: asyncio.Queue[AppEvent | None] = asyncio.Queue(EVENT_QUEUE)
        self._pending: dict[int, deque[ChatMessage | None]] = {}  # epoch -> own sends in order
        self._local_ids = 0
        self._up: dict[str, bool] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._epochs: set[int] = set()  # epochs whose stack instance is running
        # receipts: what we delivered and must confirm; our messages awaiting confirmations
        self._ack_due: dict[tuple[int, int, int], int] = {}
        self._tracked: dict[tuple[int, int, int], tuple[ChatMessage, set[str]]] = {}
        self._left = False
        self.sent = 0
        self.delivered = 0

    # ------------------------------------------------------------------ life

    def _start(self) -> None:
        saved = self._node.saved_epoch(self.id)
        if saved is not None:
            self.epoch = saved
            self._emit(Notice(f"rejoining {self.id} with the saved key state of epoch {saved}"))
        self._emit(KeyStatus(False, self.epoch, None, ()))
        self._join_epoch(self.epoch)  # a saved decision establishes the key right here
        self._tasks.append(asyncio.create_task(self._watch_status(), name=f"status {self.id}"))
        self._tasks.append(asyncio.create_task(self._find_peers(), name=f"contacts {self.id}"))
        if len(self.members) <= RECEIPT_MAX_MEMBERS:
            self._tasks.append(asyncio.create_task(self._send_receipts(), name=f"receipts {self.id}"))

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

    async def _watch_status(self) -> None:
        last_hint = -1e9
        last_refused = 0
        hint_due = False
        ended = False
        while not self._left:
            if not ended and datetime.now(UTC) > self.t1:
                ended = True
                self._emit(Notice(f"the time frame of {self.id} ended at {_fmt(self.t1)}"))
            conf = self._node.runtime.conferences.get(self.id)
            came_up = False
            if conf is not None:
                detector = conf.member.detector  # type: ignore[attr-defined]
                for i, name in enumerate(self.members):
                    if name == self.me:
                        continue
                    up = self._node.links.connected(name) and not detector.suspects(i)
                    if self._up.get(name) != up:
                        self._up[name] = up
                        self._emit(MemberStatus(name, up))
                        if up:
                            came_up = True
                self._follow_newer_epoch(conf.member)  # type: ignore[arg-type]
                # a member behind us speaks in an epoch we closed: tell it where we are
                refused = conf.member.stats["demux.dropped.closed_instance"]  # type: ignore[attr-defined]
                hint_due = hint_due or came_up or refused > last_refused
                last_refused = refused
                if hint_due and self.epoch > 0 and time.monotonic() - last_hint > 1.0:
                    last_hint = time.monotonic()
                    hint_due = False
                    with contextlib.suppress(AppError):
                        self._multicast(msgspec.msgpack.encode(_Epoch(self.epoch)), None)
            await asyncio.sleep(STATUS_PERIOD)

    async def _send_receipts(self) -> None:
        while not self._left:
            await asyncio.sleep(RECEIPT_PERIOD)
            if self._ack_due and self.established:
                upto = [(e, i, inc, seq) for (e, i, inc), seq in self._ack_due.items()]
                self._ack_due.clear()
                with contextlib.suppress(AppError):
                    self._multicast(msgspec.msgpack.encode(_Seen(upto)), None)

    def _on_receipt(self, sender: str, seen: _Seen) -> None:
        me = self.members.index(self.me)
        for epoch, index, incarnation, seq in seen.upto:
            if index != me:
                continue
            for key in [k for k in self._tracked if k[0] == epoch and k[1] == incarnation and k[2] <= seq]:
                msg, by = self._tracked[key]
                if sender in by:
                    continue
                by.add(sender)
                others = {n for n in self.members if n != self.me}
                live = {n for n in others if self._up.get(n)} | by
                done = by >= live
                update = ChatMessage(msg.sender, msg.sent_at, msg.text, "delivered" if done else "sent", msg.epoch,
                                     msg.local_id, tuple(sorted(by)))
                if by >= others:
                    del self._tracked[key]
                else:
                    self._tracked[key] = (update, by)
                self._emit(update)

    def _follow_newer_epoch(self, member: Any) -> None:
        """Frames of a newer epoch of ours are waiting: we missed a re-key, so follow it."""
        newest = self.epoch
        ours = smc_tag(self.gid, 0)[:3]
        for protocol, tag in member.demux.pending_tags():
            epoch = epoch_of(tag)
            if protocol in ("smc", "gke") and tag[:3] == ours and epoch is not None and newest < epoch < 1 << 48:
                newest = epoch
        if newest > self.epoch:
            self._switch(newest, f"the others are at epoch {newest} of {self.id}: following")

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
    def established(self) -> bool:
        return self.fingerprint is not None

    def up(self) -> dict[str, bool]:
        """Last known liveness of the other members."""
        return dict(self._up)

    async def send(self, text: str) -> None:
        """Multicast ``text``; before the key exists it is queued (state ``sending``)."""
        if self._left:
            raise AppError(f"you left conference {self.id!r}", "left")
        if len(text.encode("utf-8")) > MAX_TEXT:
            raise AppError(f"a message is at most {MAX_TEXT} bytes", "too_long")
        sent_at = time.time()
        self._local_ids += 1
        msg = ChatMessage(self.me, _ts(sent_at), text, "sending", self.epoch, self._local_ids)
        self._multicast(msgspec.msgpack.encode(_Text(text, sent_at)), msg)
        if not self.established:
            self._emit(msg)

    def _multicast(self, payload: bytes, msg: ChatMessage | None) -> None:
        queue = self._pending.setdefault(self.epoch, deque())
        queue.append(msg)
        try:
            self._node.send(self.id, payload, epoch=self.epoch)
        except Exception as exc:  # the stack's bounds (too many queued before the key, ...)
            queue.pop()
            raise AppError(f"cannot send now: {exc}", "send_failed") from None

    async def rekey(self) -> None:
        """Start a new epoch with a fresh key exchange; every member follows."""
        if self._left:
            raise AppError(f"you left conference {self.id!r}", "left")
        new = self.epoch + 1
        self._multicast(msgspec.msgpack.encode(_Rekey(new)), None)
        self._switch(new, f"re-keying {self.id}: epoch {new}")

    def _join_epoch(self, epoch: int) -> None:
        """Start ``epoch``'s key exchange: the node saves the state needed to rejoin *before*
        the first message (write-ahead, :mod:`secchat.net.journal`), so a member that crashed
        mid-exchange and comes back never votes twice in that exchange's consensus."""
        try:
            self._node.join(self.id, epoch=epoch)
        except StateError as exc:
            raise AppError(f"cannot keep the key-exchange state of {self.id!r}: {exc}", "state_failed") from None
        self._epochs.add(epoch)

    def _switch(self, epoch: int, why: str) -> None:
        self.epoch = epoch
        self.fingerprint = None
        self._emit(Notice(why))
        self._emit(KeyStatus(False, epoch, None, ()))
        self._join_epoch(epoch)

    async def leave(self) -> None:
        """Save the key-exchange state (encrypted) and stop taking part; :meth:`ChatApp.join`
        again gets the same key."""
        if self._left:
            return
        self._left = True  # the node saved the key-exchange state when the key came
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(ValueError):
            self._node.remove_conference(self.id)
        self._app._conferences.pop(self.id, None)
        self._emit(Notice(f"left {self.id}"))
        self._emit(None)

    def history(self) -> list[ChatMessage]:
        """Messages of this conference kept locally (across restarts), oldest first."""
        return self._app.history(self.id)

    # ------------------------------------------------------------------ stack events

    def _on_stack_event(self, ev: Any) -> None:
        if isinstance(ev, KeyEstablished):
            epoch = epoch_of(ev.tag)
            if epoch != self.epoch:
                return
            self.fingerprint = ev.fingerprint
            for old in sorted(e for e in self._pending if e < epoch):
                self._pending.pop(old, None)
            for e in sorted(e for e in self._epochs if e < epoch):
                self._epochs.discard(e)
                self._node.close_epoch(self.id, e)
                self._emit(Notice(f"keys of epoch {e} erased"))
            self._emit(KeyStatus(True, epoch, ev.fingerprint, tuple(self.members[i] for i in ev.members)))
        elif isinstance(ev, Delivered):
            self._on_delivered(ev)
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
        elif isinstance(ev, PeerSuspected | PeerRestored):
            pass  # sampled by _watch_status together with the link state

    def _on_other_record(self, ev: RecordMismatch) -> None:
        name = self.members[ev.peer]
        members = f"{ev.members} member{'s' if ev.members != 1 else ''}"
        creator = safe(ev.creator, max_len=64) or "?"  # the peer's word: made terminal-safe here
        text = f"{name} holds another record of {self.id!r} (created by {creator}, {members}): not joining with {name}"
        self._emit(OtherRecord(text, name, ev.creator, ev.members))

    def _on_delivered(self, ev: Delivered) -> None:
        epoch = epoch_of(ev.tag)
        assert epoch is not None
        sender = self.members[ev.sender]
        if sender == self.me:  # the runtime drops frames claiming to be ours: this is our own send
            queue = self._pending.get(epoch)
            own = queue.popleft() if queue else None
            if own is not None:
                msg = ChatMessage(own.sender, own.sent_at, own.text, "sent", epoch, own.local_id)
                self.sent += 1
                self._store(msg)
                self._emit(msg)
                if len(self.members) <= RECEIPT_MAX_MEMBERS:
                    self._tracked[(epoch, ev.incarnation, ev.seq)] = (msg, set())
                    while len(self._tracked) > MAX_TRACKED:
                        del self._tracked[next(iter(self._tracked))]
            return
        try:
            payload = _payload_decoder.decode(ev.payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("undecodable payload from %s in %s", sender, self.id)
            return
        if isinstance(payload, _Text):
            msg = ChatMessage(sender, _ts(payload.sent_at), payload.text, "delivered", epoch)
            self.delivered += 1
            self._store(msg)
            self._emit(msg)
            key = (epoch, ev.sender, ev.incarnation)
            self._ack_due[key] = max(self._ack_due.get(key, -1), ev.seq)
        elif isinstance(payload, _Seen):
            self._on_receipt(sender, payload)
        elif isinstance(payload, _Rekey) and payload.epoch > self.epoch:
            self._switch(payload.epoch, f"{sender} re-keyed {self.id}: epoch {payload.epoch}")

    def _store(self, msg: ChatMessage) -> None:
        try:
            self._app.history_store.add_message(
                self.id, StoredMessage(msg.sender, msg.sent_at.timestamp(), msg.text, msg.state, msg.epoch)
            )
        except Exception:
            log.exception("cannot store a message of %s", self.id)
