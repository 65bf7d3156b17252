"""What the directory stores and sends: request (``*In``) and public (``*Out``) models, signed records.

Why: the directory is untrusted, so everything a peer must be able to check later is a *signed
record* with one canonical encoding (:mod:`secchat.codec`): the conference record signed by its
creator, the contact address signed by its participant.  The JSON models carry these records
between client and server; size and shape limits live here, in the types, so that the server
refuses junk before it touches the database.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Annotated

import msgspec

from secchat.codec import canonical

__all__ = [
    "CONFERENCE_ID_PATTERN",
    "MAX_CERT_PEM",
    "MAX_MEMBERS",
    "MAX_ROTATIONS",
    "NAME_PATTERN",
    "PAGE_SIZE",
    "ConferenceIn",
    "ConferenceOut",
    "ConferenceRecord",
    "ConferenceTombstone",
    "ContactIn",
    "ContactOut",
    "IdentityRotation",
    "ParticipantIn",
    "ParticipantOut",
    "RotationIn",
    "RotationOut",
    "TombstoneIn",
    "TombstoneOut",
    "conference_key",
    "contact_message",
    "split_reference",
]

#: Conference ids are URL-safe, and short enough to be a part of a protocol tag.
CONFERENCE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$"
#: Participant names are certificate common names: 1..64 printable characters, no slash.
NAME_PATTERN = r"^[^\x00-\x1f\x7f/]{1,64}$"
MAX_MEMBERS = 500
#: Entries per page of a listing (``?after=<last key>`` gives the next page); clients refuse more.
PAGE_SIZE = 1000
MAX_CERT_PEM = 8192
#: Key rotations kept (and served) per participant, newest last; a client refuses more.
MAX_ROTATIONS = 16
_SIG_HEX = r"^[0-9a-f]{128}$"
_KEY_HEX = r"^[0-9a-f]{64}$"

Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
ConferenceId = Annotated[str, msgspec.Meta(pattern=CONFERENCE_ID_PATTERN)]
CertPem = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CERT_PEM)]
SignatureHex = Annotated[str, msgspec.Meta(pattern=_SIG_HEX)]
KeyHex = Annotated[str, msgspec.Meta(pattern=_KEY_HEX)]
UnixTime = Annotated[int, msgspec.Meta(ge=0, lt=1 << 62)]
Host = Annotated[str, msgspec.Meta(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:\[\]_-]+$")]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
#: Record versions start at 1; a creator re-creating a deleted id signs a higher one.
Version = Annotated[int, msgspec.Meta(ge=1, lt=1 << 62)]
_CONFERENCE_ID_RE = re.compile(CONFERENCE_ID_PATTERN)
_NAME_RE = re.compile(NAME_PATTERN)


# --------------------------------------------------------------------------- signed records


@dataclass(frozen=True, slots=True)
class ConferenceRecord:
    """The conference as its creator signs it: certificates enter by SHA-256 fingerprint.

    A conference is identified by ``(creator, id)``: two creators may use one id.  ``version``
    and ``created_at`` (the creator's clock) let a client refuse an older record than one it
    saw (a rollback); a deletion is a :class:`ConferenceTombstone` of the same creator."""

    id: str
    t0: int
    t1: int
    members: tuple[str, ...]
    fingerprints: tuple[str, ...]
    creator: str
    version: int
    created_at: int

    def signed_bytes(self) -> bytes:
        return canonical(
            "conference-record/v2",
            self.creator,
            self.id,
            self.version,
            self.created_at,
            self.t0,
            self.t1,
            tuple(self.members),
            tuple(self.fingerprints),
        )

    def digest(self) -> bytes:
        """SHA-256 of :meth:`signed_bytes` (32 bytes): the conference's identity in the protocols."""
        return hashlib.sha256(self.signed_bytes()).digest()


@dataclass(frozen=True, slots=True)
class ConferenceTombstone:
    """The creator's signed statement that ``(creator, id)`` is deleted, up to ``version``."""

    creator: str
    id: str
    version: int
    deleted_at: int

    def signed_bytes(self) -> bytes:
        return canonical("conference-tombstone/v1", self.creator, self.id, self.version, self.deleted_at)


@dataclass(frozen=True, slots=True)
class IdentityRotation:
    """A participant's statement, signed by its *old* key, that ``name@issuer`` now has the key
    ``new_key`` (raw Ed25519 public keys).  The directory accepts a certificate with another key
    for a registered name only with this proof; peers who accepted the old key follow it."""

    name: str
    issuer: str
    old_key: bytes
    new_key: bytes
    rotated_at: int

    def signed_bytes(self) -> bytes:
        return canonical(
            "identity-rotation/v1", self.name, self.issuer, self.old_key, self.new_key, self.rotated_at
        )


def conference_key(creator: str, id: str) -> str:
    """``creator/id``: one string naming a conference (neither a name nor an id has a slash)."""
    return f"{creator}/{id}"


def split_reference(text: str) -> tuple[str | None, str]:
    """``"alice/room"`` -> ``("alice", "room")``; ``"room"`` -> ``(None, "room")``.  Raises
    ``ValueError`` when either part is not a valid participant name or conference id."""
    creator, slash, id = text.rpartition("/")
    if not _CONFERENCE_ID_RE.match(id) or (slash and not _NAME_RE.match(creator)):
        raise ValueError(f"not a conference id or creator/id: {text!r}")
    return (creator if slash else None), id


def contact_message(name: str, host: str, port: int, issued_at: int) -> bytes:
    """What a participant signs to publish its contact address."""
    return canonical("contact-address/v1", name, host, port, issued_at)


# --------------------------------------------------------------------------- requests


class RotationIn(msgspec.Struct, forbid_unknown_fields=True):
    """The proof of a key rotation: :class:`IdentityRotation` signed by the registered key."""

    old_key: KeyHex
    rotated_at: UnixTime
    signature: SignatureHex


class ParticipantIn(msgspec.Struct, forbid_unknown_fields=True):
    cert_pem: CertPem
    rotation: RotationIn | None = None


class ContactIn(msgspec.Struct, forbid_unknown_fields=True):
    host: Host
    port: Port
    issued_at: UnixTime
    signature: SignatureHex


class ConferenceIn(msgspec.Struct, forbid_unknown_fields=True):
    id: ConferenceId
    t0: UnixTime
    t1: UnixTime
    members: Annotated[list[Name], msgspec.Meta(min_length=1, max_length=MAX_MEMBERS)]
    certs: Annotated[list[CertPem], msgspec.Meta(min_length=1, max_length=MAX_MEMBERS)]
    creator: Name
    version: Version
    created_at: UnixTime
    signature: SignatureHex


class TombstoneIn(msgspec.Struct, forbid_unknown_fields=True):
    """The body of a DELETE: the creator's signed tombstone of the conference."""

    version: Version
    deleted_at: UnixTime
    signature: SignatureHex


# --------------------------------------------------------------------------- public views


class ContactOut(msgspec.Struct, frozen=True):
    host: str
    port: int
    issued_at: int
    signature: str


class RotationOut(msgspec.Struct, frozen=True):
    """One key rotation of a participant (clients check the signature by ``old_key``)."""

    old_key: str
    new_key: str
    rotated_at: int
    signature: str


class ParticipantOut(msgspec.Struct, frozen=True):
    name: str
    issuer: str
    fingerprint: str
    cert_pem: str
    registered_at: int
    contact: ContactOut | None = None
    #: the participant's key rotations, oldest first (at most :data:`MAX_ROTATIONS`)
    rotations: tuple[RotationOut, ...] = ()


class ConferenceOut(msgspec.Struct, frozen=True):
    """A conference as the directory returns it; clients re-verify every field (see ``client``)."""

    id: str
    t0: int
    t1: int
    members: list[str]
    certs: list[str]
    creator: str
    signature: str
    version: int
    created_at: int
    #: members' key rotations (name -> oldest first), so that a peer who accepted a member's
    #: old key can follow it to the certificate listed
    rotations: dict[str, tuple[RotationOut, ...]] = msgspec.field(default_factory=dict)


class TombstoneOut(msgspec.Struct, frozen=True):
    """A deleted conference as the directory returns it (with the creator's certificate, to check
    the signature by); served with HTTP 410 under ``"tombstone"``."""

    creator: str
    id: str
    version: int
    deleted_at: int
    signature: str
    cert_pem: str
