"""One identity on the network: its TLS links, the runtime, and a protocol stack per conference.

Why: the member process, the cluster and the chat application all need the same assembly --
load credentials, pin the certificates a conference names, create a sans-I/O
:class:`~secchat.protocols.stack.Member` per conference, run them over one
:class:`~secchat.net.links.LinkManager`.  :class:`Node` is that assembly and nothing more; it
prints nothing and reads no files (callers load keys and certificates with :mod:`secchat.pki`).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .. import pki
from ..codec import canonical
from ..crypto import Rng, SystemRng, digest
from ..protocols.auth import authenticator_class
from ..protocols.events import KeyEstablished
from ..protocols.stack import GroupId, Member, epoch_of, smc_tag
from .errors import AuthenticationError
from .journal import UNREADABLE, StateError, StateStore, established_state, plan_join
from .links import Address, LinkConfig, LinkManager
from .relay import RelayConfig
from .runtime import Runtime
from .store import FrameStore
from .tls import PinSet, TlsCredentials

__all__ = ["ConferenceInfo", "Joined", "Node", "members_digest"]

log = logging.getLogger("secchat.node")

#: ``on_event(conference_id, event)`` -- the stack's output events (KeyEstablished, Delivered, ...)
EventHandler = Callable[[str, Any], None]


@dataclass(frozen=True)
class ConferenceInfo:
    group: str
    names: tuple[str, ...]
    me: int
    #: the SMC authentication mode (:data:`secchat.protocols.auth.MODES`)
    mode: str
    #: the conference as the protocols know it: id and record digest (part of every tag)
    gid: GroupId


@dataclass(frozen=True)
class Joined:
    """What :meth:`Node.join` did: the ``epoch`` joined; ``restored`` from saved state (the same
    contribution; it does not vote again); ``abstains`` without state it could restore."""

    epoch: int
    restored: bool
    abstains: bool


def members_digest(group: str, members: Sequence[tuple[str, bytes]]) -> bytes:
    """The record digest of a conference defined by a configuration rather than a signed
    directory record: its id and its ordered (name, certificate DER) list."""
    return digest(canonical("secchat/configured-conference/v1", group, tuple(members)))


class Node:
    """The links, runtime and conferences of one identity (``credentials.cert``'s CN)."""

    def __init__(
        self,
        credentials: TlsCredentials,
        on_event: EventHandler,
        *,
        link_config: LinkConfig | None = None,
        stack_config: Any = None,
        rng: Rng | None = None,
        incarnation: int | None = None,
        state: StateStore | None = None,
        relay: RelayConfig | None = None,
    ) -> None:
        self.credentials = credentials
        self.name = pki.verify_certificate(credentials.cert, list(credentials.ca_certs)).name
        self._on_event = on_event
        #: where the write-ahead key-exchange state goes (:mod:`secchat.net.journal`); without
        #: one the node refuses to start a key exchange
        self.state = state
        self.runtime = Runtime(self._stack_event)
        self.links = LinkManager(self.name, credentials, PinSet(), self.runtime.on_message,
                                 config=link_config, relay=relay)
        self.runtime.attach(self.links)
        #: the relay's store of SMC frames for members who were away (:mod:`.store`), if any
        self.store: FrameStore | None = None
        if self.links.relay is not None and self.links.relay.config.stream_max_bytes > 0:
            self.store = FrameStore(self.links.relay, self.links.stats)
            self.runtime.store_sink = self.store.publish
        self.stack_config = stack_config
        self.rng = rng or SystemRng()
        # separates the sequence numbers of successive runs of this identity
        self.incarnation = incarnation if incarnation is not None else time.time_ns() // 1000
        self.conferences: dict[str, ConferenceInfo] = {}
        self._signer = pki.signer_of(credentials.key)  # type: ignore[arg-type]
        self._joined: set[tuple[str, int]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None) -> Address:
        """Listen for peers; returns the bound address."""
        if sock is not None:
            return await self.links.start(sock=sock)
        return await self.links.start(host, port)

    def set_address(self, name: str, address: Address) -> None:
        self.links.set_address(name, address)

    def path(self, name: str) -> str | None:
        """How we reach ``name`` now: ``"direct"`` (TLS over TCP), ``"relay"``, or None."""
        return self.links.path(name)

    def add_conference(
        self,
        group: str,
        members: Sequence[tuple[str, x509.Certificate]],
        *,
        mode: str = "signed",
        incarnation: int | None = None,
        record: bytes | None = None,
        creator: str = "",
    ) -> ConferenceInfo:
        """Take part in conference ``group`` among ``members`` (ordered names and certificates).

        ``record`` is the digest of the signed record that defines the conference (the
        directory's, :meth:`secchat.directory.models.ConferenceRecord.digest`); it binds every
        key and message of the conference to that record.  Without one, the conference is
        defined by its id and member list (:func:`members_digest`), as in a configuration file.

        Every certificate is verified against our trusted CAs and must carry the name it is
        listed under; ours must be our own.  ``mode`` is the SMC authentication mode.  ``incarnation`` (default: the node's) must grow
        when the same conference is added again after :meth:`remove_conference`.  Raises :class:`secchat.pki.PkiError` or
        ``ValueError`` and changes nothing when a check fails.
        """
        if group in self.conferences:
            raise ValueError(f"conference {group!r} is already running here")
        authenticator_class(mode)  # ValueError for an unknown mode, before anything changes
        names = tuple(name for name, _ in members)
        if self.name not in names:
            raise ValueError(f"we ({self.name}) are not a member of {group!r}")
        cas = list(self.credentials.ca_certs)
        ders = {}
        for name, cert in members:
            identity = pki.verify_certificate(cert, cas)
            if identity.name != name:
                raise ValueError(f"the certificate listed for {name!r} belongs to {identity.name!r}")
            ders[name] = cert.public_bytes(serialization.Encoding.DER)
        own = self.credentials.cert.public_bytes(serialization.Encoding.DER)
        if ders[self.name] != own:
            raise ValueError(f"conference {group!r} lists another certificate for us")
        for name, der in ders.items():  # check every pin before adding any
            if name != self.name:
                _check_pin(self.links.pins, name, der)
        for name, der in ders.items():
            if name != self.name:
                self.links.add_peer(name, der)
        me = names.index(self.name)
        verifiers = [pki.verifier_of(cert) for _, cert in members]
        if record is None:
            record = members_digest(group, [(name, ders[name]) for name in names])
        gid = GroupId(group, record, creator)
        member = Member(gid, me, len(names), self._signer, verifiers, self.rng, self.runtime.now(),
                        self.stack_config,
                        incarnation=self.incarnation if incarnation is None else incarnation)
        if self.store is not None:
            member.store_out = []  # our broadcast frames go to the relay's store as well
        self.runtime.add_conference(group, names, me, member)
        info = ConferenceInfo(group, names, me, mode, gid)
        self.conferences[group] = info
        return info

    def join(
        self, group: str, *, epoch: int | None = None, resume: bool = False,
        high_water: dict[int, tuple[int, int]] | None = None,
    ) -> Joined | None:
        """Start the conference's secure multicast of ``epoch`` (default: the epoch of the saved
        state, else 0), and so its key exchange, following the write-ahead rule of
        :mod:`secchat.net.journal`: a saved state of this record and epoch is restored (no second
        vote; the same key), a new one is made durable *before* anything is sent.  ``resume``:
        we may have run this epoch before without keeping state (abstain; take each sender's
        stream up where we find it).  ``high_water``: the secure multicast marks saved in an
        earlier run of this epoch (:meth:`SecureMulticast.high_water`), given back on a rejoin
        of it: nothing at or below them is accepted again.  None if that epoch runs already.  Raises ``ValueError``
        without a state store, and
        :class:`~secchat.net.journal.StateError` if the state cannot be written."""
        info = self._info(group)
        if self.state is None:
            raise ValueError("no state store: a restart could vote twice in the key exchange")
        key = info.gid.record.hex()
        try:
            saved: Any = self.state.load_state(key)
        except StateError as exc:
            log.warning("%s: saved key-exchange state unusable (%s): this member abstains", group, exc)
            saved = UNREADABLE
        plan = plan_join(saved, info.gid.record, epoch, self.rng, resume=resume)
        if (group, plan.epoch) in self._joined:
            return None
        if plan.save_first is not None:
            self.state.save_state(key, plan.save_first)  # durable before the first message
        restore = dict(plan.restore)
        if high_water and plan.restored:
            restore["high_water"] = high_water
        self.runtime.smc_init(group, smc_tag(info.gid, plan.epoch), auth=info.mode, **restore)
        self._joined.add((group, plan.epoch))
        if self.store is not None:  # what was sent while we were away, then what others send
            self.store.add(group, info.gid.record, lambda data: self.runtime.on_stored(group, data),
                           lambda event: self._on_event(group, event))
        return Joined(plan.epoch, plan.restored, plan.abstains)

    def saved_epoch(self, group: str) -> int | None:
        """The epoch of ``group``'s saved key-exchange state (None: none, or unreadable)."""
        info = self._info(group)
        if self.state is None:
            return None
        try:
            saved = self.state.load_state(info.gid.record.hex())
        except StateError:
            return None
        return saved.epoch if saved is not None and saved.record in (b"", info.gid.record) else None

    def _stack_event(self, group: str, event: Any) -> None:
        """Events of every stack: the key's decision is saved (a rejoin gets the same key at
        once), then the caller's handler sees the event."""
        if isinstance(event, KeyEstablished) and self.state is not None:
            info = self.conferences.get(group)
            epoch = epoch_of(event.tag)
            smc = self.smc(group, epoch) if info is not None and epoch is not None else None
            if smc is not None and info is not None and epoch is not None:
                key = info.gid.record.hex()
                try:
                    current = self.state.load_state(key)
                except StateError:
                    current = None
                if current is None or current.epoch <= epoch:
                    try:
                        self.state.save_state(key, established_state(epoch, info.gid.record, smc))
                    except StateError as exc:
                        log.error("%s: cannot save the key-exchange decision: %s", group, exc)
        self._on_event(group, event)

    def joined(self, group: str) -> bool:
        return any(g == group for g, _ in self._joined)

    def send(self, group: str, payload: bytes, *, epoch: int = 0) -> None:
        """Multicast ``payload`` to the conference (held until the key exists)."""
        info = self._info(group)
        if (group, epoch) not in self._joined:
            raise ValueError(f"join {group!r} before sending")
        self.runtime.multicast(group, smc_tag(info.gid, epoch), payload)

    def smc(self, group: str, epoch: int = 0) -> Any:
        """The running :class:`~secchat.protocols.smc.SecureMulticast` of ``epoch``, or None."""
        conf = self.runtime.conferences.get(group)
        info = self.conferences.get(group)
        if conf is None or info is None:
            return None
        return conf.member.smc(smc_tag(info.gid, epoch))  # type: ignore[attr-defined]

    def close_epoch(self, group: str, epoch: int) -> None:
        """Erase ``epoch``'s keys (after a re-key); its frames are refused from now on."""
        info = self._info(group)
        self.runtime.close_instance(group, smc_tag(info.gid, epoch))
        self._joined.discard((group, epoch))

    def release_epochs_below(self, group: str, epoch: int) -> None:
        """Epochs below ``epoch`` not running here are closed for good: what the stack kept
        for them (epochs skipped by a re-key) is released."""
        self._info(group)
        conf = self.runtime.conferences.get(group)
        if conf is not None:
            conf.member.release_epochs_below(epoch)  # type: ignore[attr-defined]

    def remove_conference(self, group: str) -> None:
        """Leave ``group``: erase every epoch's keys and stop its stack (pins stay)."""
        info = self._info(group)
        for g, epoch in list(self._joined):
            if g == group:
                self.runtime.close_instance(group, smc_tag(info.gid, epoch))
                self._joined.discard((g, epoch))
        self.runtime.remove_conference(group)
        del self.conferences[group]

    def names(self, group: str) -> tuple[str, ...]:
        return self._info(group).names

    def stack_stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for conf in self.runtime.conferences.values():
            for key, value in dict(getattr(conf.member, "stats", {})).items():
                out[key] = out.get(key, 0) + int(value)
        return out

    async def aclose(self) -> None:
        self.runtime.close()
        if self.store is not None:
            await self.store.aclose()
        await self.links.aclose()

    def _info(self, group: str) -> ConferenceInfo:
        try:
            return self.conferences[group]
        except KeyError:
            raise ValueError(f"not a member of conference {group!r}") from None


def _check_pin(pins: PinSet, name: str, der: bytes) -> None:
    """Would ``pins.add(name, der)`` succeed?  Raise ``ValueError`` if not."""
    try:
        owner = pins.identify(der)
    except AuthenticationError:
        owner = None
    if owner is not None and owner != name:
        raise ValueError(f"the certificate listed for {name!r} is pinned to {owner!r}")
    if owner is None and name in pins:
        raise ValueError(f"{name!r} is already pinned to another certificate")
