"""The directory client: the only way SecChat talks to a directory, and it trusts nothing it gets.

Why: a malicious directory must be able to refuse service and nothing more (SPEC, "Directory
service").  So every certificate it returns is checked against the user's trusted CAs and must
name the member it is listed for; a conference record must carry its creator's signature over the
canonical record (members, time frame and certificate fingerprints included); and each member's
certificate must be the one the user accepted before.  A certificate not seen before is reported
as *unaccepted* (the user decides, as the thesis's GUI asks); a different certificate for an
accepted identity is refused (:class:`CertificateChanged`).

A conference is ``(creator, id)``: asked for an id alone, the client resolves it among every
creator's records of that id and refuses to guess when there are several
(:class:`AmbiguousConference`).  Records are versioned: the :class:`~.versions.VersionMemory`
refuses a record older than one seen (:class:`RolledBack`) or one a verified tombstone deleted
(:class:`ConferenceDeleted`).

Bounds (a hostile directory must not be able to make us wait or work without end): every
operation has one total deadline (:data:`DEFAULT_DEADLINE`, not a per-read timeout), an answer
is read up to :data:`MAX_RESPONSE` bytes, a listing page may not exceed the server's page size,
a listing reads at most :data:`MAX_PAGES` pages and verifies at most :data:`MAX_CERT_CHECKS`
distinct certificates, and what it skipped is reported in one summary, not per entry.

Structure (STYLE.md): each operation is a small generator that yields one HTTP request and
receives its response -- no I/O -- driven by :class:`AsyncDirectoryClient` (asyncio);
:class:`DirectoryClient` is the blocking face of it (a private event loop, so the deadline is
the same real one).  Verification is in plain functions (:func:`verify_conference`,
:func:`verify_participant`) that tests call directly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import ssl
import time
from collections.abc import Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx
import msgspec
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secchat import pki
from secchat.crypto import CryptoError
from secchat.text import safe

from .auth import authority_of, sign_request
from .identities import IdentityError, public_key, verify_chain
from .models import (
    PAGE_SIZE,
    ConferenceOut,
    ConferenceRecord,
    ConferenceTombstone,
    ParticipantOut,
    RotationIn,
    TombstoneOut,
    conference_key,
    contact_message,
)
from .trust import Acceptance, TrustStore, default_trust_path
from .versions import Seen, VersionMemory

__all__ = [
    "DEFAULT_DEADLINE",
    "AmbiguousConference",
    "AsyncDirectoryClient",
    "CertificateChanged",
    "Conference",
    "ConferenceDeleted",
    "Contact",
    "DirectoryClient",
    "DirectoryError",
    "DirectoryUnavailable",
    "Member",
    "Participant",
    "RolledBack",
    "UnacceptedCertificates",
    "UntrustedResponse",
    "directory_tls",
    "verify_conference",
    "verify_participant",
]

log = logging.getLogger("secchat.directory.client")

T = TypeVar("T")
MAX_RESPONSE = 16 << 20
#: Listings are read page by page (at most :data:`~.models.PAGE_SIZE` entries), at most this
#: many pages.
MAX_PAGES = 100
#: Distinct certificates one listing verifies at most (each is verified once, however often
#: it is listed); beyond, the listing stops there and says so.
MAX_CERT_CHECKS = 5000
#: Seconds one directory operation may take in all (every request and answer it needs).
DEFAULT_DEADLINE = 5.0
#: A directory's error code is shown and compared only if it looks like one; its message is cut.
_CODE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_ERROR_MESSAGE = 500


# --------------------------------------------------------------------------- errors


class DirectoryError(Exception):
    """The directory refused a request (``status`` and its ``code``) or could not be used."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class DirectoryUnavailable(DirectoryError):
    """The directory could not be reached, answered with a server error or not within the
    deadline (``code`` ``"deadline"``)."""


class UntrustedResponse(DirectoryError):
    """The directory returned data that fails verification: it is faulty or malicious."""


def directory_tls(ca_file: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """How an ``https://`` directory is verified: its certificate chain against ``ca_file`` (a
    PEM bundle), or the system's trust store when None, and its name against the URL's host.
    ``DirectoryError`` ``no_directory_ca`` if the bundle cannot be read."""
    try:
        return ssl.create_default_context(cafile=os.fspath(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DirectoryError(
            "no_directory_ca", f"cannot read the directory's CA bundle {ca_file}: {reason}"
        ) from None


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a transport error, if one is (httpx wraps it twice)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class RolledBack(UntrustedResponse):
    """The directory served an older version of a conference than one seen before."""

    def __init__(self, creator: str, id: str, version: int, seen: int) -> None:
        super().__init__(
            "rollback",
            f"the directory served version {version} of {id!r} by {creator}, older than version "
            f"{seen} seen before: refused (a rollback)",
        )


class ConferenceDeleted(DirectoryError):
    """The conference was deleted by its creator (a verified tombstone, now or before)."""

    def __init__(self, creator: str, id: str, *, served: bool) -> None:
        super().__init__(
            "deleted",
            f"{creator} deleted the conference {id!r}"
            + ("; the directory served its record anyway: refused" if served else ""),
        )


class AmbiguousConference(DirectoryError):
    """Several creators have a conference of this id: the user must say whose."""

    def __init__(self, id: str, creators: Sequence[str]) -> None:
        shown = ", ".join(creators)
        super().__init__(
            "ambiguous_conference",
            f"{len(creators)} creators have a conference {id!r} ({shown}): say whose, "
            f"e.g. --creator {creators[0]} or {conference_key(creators[0], id)}",
        )
        self.id = id
        self.creators = tuple(creators)


class CertificateChanged(UntrustedResponse):
    """A member's certificate differs from the one the user accepted for that identity."""

    def __init__(self, identity: pki.Identity, fingerprint: str, accepted: str | None) -> None:
        super().__init__(
            "certificate_changed",
            f"the certificate of {identity} ({fingerprint[:16]}...) has another key than the one"
            " you accepted"
            + (f" ({accepted[:16]}...)" if accepted else "")
            + ", and no rotation signed by that key proves it: check it with its owner"
            " (`secchat trust accept NAME FINGERPRINT` accepts it)",
        )
        self.identity = identity
        self.fingerprint = fingerprint


class UnacceptedCertificates(DirectoryError):
    """Some certificates are valid but not accepted yet; ask the user, then ``accept`` them."""

    def __init__(self, members: Sequence[Member | Participant]) -> None:
        names = ", ".join(str(m.identity) for m in members)
        super().__init__("unaccepted_certificates", f"certificates not accepted yet: {names}")
        self.members = tuple(members)


# --------------------------------------------------------------------------- verified views


@dataclass(frozen=True, slots=True)
class Contact:
    host: str
    port: int
    issued_at: int


@dataclass(frozen=True, slots=True)
class Participant:
    identity: pki.Identity
    cert: x509.Certificate
    fingerprint: str
    acceptance: Acceptance
    contact: Contact | None = None
    #: keys a verified chain of rotations says were this identity's before (oldest first)
    earlier_keys: tuple[bytes, ...] = ()

    @property
    def name(self) -> str:
        return self.identity.name


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    identity: pki.Identity
    cert: x509.Certificate
    fingerprint: str
    acceptance: Acceptance
    earlier_keys: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Conference:
    """A conference record whose creator signature and certificates were verified."""

    id: str
    t0: int
    t1: int
    members: tuple[Member, ...]
    creator: str
    signature: bytes
    version: int
    created_at: int

    @property
    def key(self) -> str:
        """``creator/id``: what names this conference (an id alone may be ambiguous)."""
        return conference_key(self.creator, self.id)

    @property
    def digest(self) -> bytes:
        """SHA-256 of the signed record: the conference's identity in the protocols."""
        return self.record.digest()

    @property
    def unaccepted(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.acceptance is Acceptance.NEW)

    @property
    def rotated(self) -> tuple[Member, ...]:
        """Members whose accepted key signed the rotation to the key listed (followed)."""
        return tuple(m for m in self.members if m.acceptance is Acceptance.ROTATED)

    def require_accepted(self) -> Conference:
        """Raise :class:`UnacceptedCertificates` unless every member's certificate is accepted."""
        if self.unaccepted:
            raise UnacceptedCertificates(self.unaccepted)
        return self

    @property
    def record(self) -> ConferenceRecord:
        return ConferenceRecord(
            self.id,
            self.t0,
            self.t1,
            tuple(m.name for m in self.members),
            tuple(m.fingerprint for m in self.members),
            self.creator,
            self.version,
            self.created_at,
        )


# --------------------------------------------------------------------------- verification


class _Trust:
    """What a verification needs: the trusted CAs, the accepted certificates, the user's own."""

    def __init__(
        self, trusted_cas: Sequence[x509.Certificate], store: TrustStore, own: x509.Certificate | None
    ) -> None:
        self.cas = list(trusted_cas)
        self.store = store
        self.own = (pki.identity_of(own), pki.fingerprint(own)) if own is not None else None
        self.own_key = public_key(own) if own is not None else None

    def acceptance(
        self,
        identity: pki.Identity,
        fingerprint: str,
        key: bytes | None = None,
        earlier_keys: Sequence[bytes] = (),
    ) -> Acceptance:
        """How this certificate of ``identity`` stands (its ``key``; ``earlier_keys`` from a
        verified chain of rotations); :class:`CertificateChanged` for a key not accepted."""
        if key is not None:
            self.store.note_key(fingerprint, key)
        if self.own is not None and identity == self.own[0]:
            same = key == self.own_key if key is not None else fingerprint == self.own[1]
            status = Acceptance.ACCEPTED if same else Acceptance.CHANGED
        else:
            status = self.store.status(identity, fingerprint, key, earlier_keys)
        if status is Acceptance.CHANGED:
            if self.own is not None and identity == self.own[0]:
                accepted: str | None = self.own[1]
            else:
                entry = self.store.get(identity)
                accepted = entry.fingerprint if entry else None
            raise CertificateChanged(identity, fingerprint, accepted)
        return status

    def parse_cert(self, pem: str, name: str) -> tuple[x509.Certificate, pki.Identity, str]:
        """A certificate from the directory, verified against the CAs (its name not checked)."""
        try:
            cert = pki.cert_from_pem(pem.encode("utf-8", "replace"))
            identity = pki.verify_certificate(cert, self.cas)
        except pki.PkiError as exc:
            raise UntrustedResponse(
                "invalid_certificate", f"the directory's certificate for {name!r} is invalid: {exc}"
            ) from None
        return cert, identity, pki.fingerprint(cert)

    def check_cert(self, pem: str, name: str) -> tuple[x509.Certificate, pki.Identity, str]:
        """:meth:`parse_cert`, and the certificate must name ``name``."""
        cert, identity, fp = self.parse_cert(pem, name)
        if identity.name != name:
            raise UntrustedResponse(
                "name_mismatch", f"the directory listed a certificate of {identity.name!r} as {name!r}"
            )
        return cert, identity, fp


class ListingLimit(Exception):
    """A listing reached :data:`MAX_CERT_CHECKS` (internal: ends the listing, reported once)."""


class _Checks:
    """The certificate checks of one listing: each distinct certificate verified once, at most
    ``limit`` of them; a check beyond raises :class:`ListingLimit`."""

    def __init__(self, trust: _Trust, limit: int) -> None:
        self.trust, self.limit = trust, limit
        self._done: dict[str, tuple[x509.Certificate, pki.Identity, str] | UntrustedResponse] = {}

    def check_cert(self, pem: str, name: str) -> tuple[x509.Certificate, pki.Identity, str]:
        done = self._done.get(pem)
        if done is None:
            if len(self._done) >= self.limit:
                raise ListingLimit
            try:
                done = self.trust.parse_cert(pem, name)
            except UntrustedResponse as exc:
                done = exc
            self._done[pem] = done
        if isinstance(done, UntrustedResponse):
            raise done
        identity = done[1]
        if identity.name != name:
            raise UntrustedResponse(
                "name_mismatch", f"the directory listed a certificate of {identity.name!r} as {name!r}"
            )
        return done


class _Skipped:
    """What a listing left out, reported in one line at the end (not one line per entry)."""

    def __init__(self, what: str) -> None:
        self.what, self.count, self.first, self.limit = what, 0, "", False

    def add(self, label: str, exc: Exception) -> None:
        self.count += 1
        if not self.first:
            self.first = f"{label}: {exc}"

    def report(self) -> None:
        if self.limit:
            log.warning(
                "the directory's listing of %s was cut after %d certificate checks (a flood?)",
                self.what, MAX_CERT_CHECKS,
            )
        if self.count:
            log.warning(
                "skipped %d %s that failed verification (first: %s)",
                self.count, self.what, safe(self.first, max_len=300),
            )


def _earlier_keys(identity: pki.Identity, rotations: Sequence[Any], cert: x509.Certificate) -> tuple[bytes, ...]:
    try:
        return verify_chain(identity.name, identity.issuer, rotations, public_key(cert))
    except IdentityError as exc:
        raise UntrustedResponse(exc.code, f"the directory's key rotations of {identity}: {exc}") from None


def verify_participant(
    out: ParticipantOut, trust: _Trust, *, name: str | None = None, checks: _Checks | None = None
) -> Participant:
    cert, identity, fp = (checks or trust).check_cert(out.cert_pem, name or out.name)
    earlier = _earlier_keys(identity, out.rotations, cert)
    contact = None
    if out.contact is not None:
        c = out.contact
        try:
            pki.verifier_of(cert).verify(
                contact_message(identity.name, c.host, c.port, c.issued_at), bytes.fromhex(c.signature)
            )
            contact = Contact(c.host, c.port, c.issued_at)
        except (CryptoError, ValueError, pki.PkiError):
            log.warning("ignoring a contact address of %s that it did not sign", safe(identity))
    acceptance = trust.acceptance(identity, fp, public_key(cert), earlier)
    return Participant(identity, cert, fp, acceptance, contact, earlier)


def verify_conference(
    out: ConferenceOut,
    trust: _Trust,
    *,
    expected: tuple[str, str] | None = None,
    checks: _Checks | None = None,
) -> Conference:
    """Check a conference record from the directory; raise :class:`UntrustedResponse` if it
    fails.  ``expected`` is the ``(creator, id)`` asked for."""
    if expected is not None and (out.creator, out.id) != expected:
        raise UntrustedResponse(
            "wrong_conference",
            f"asked for conference {expected[1]!r} by {expected[0]}, got {out.id!r} by {out.creator}",
        )
    if not out.signature:
        raise UntrustedResponse("unsigned_record", f"conference {out.id!r} carries no creator signature")
    try:
        signature = bytes.fromhex(out.signature)
    except ValueError:
        raise UntrustedResponse("bad_record_signature", f"conference {out.id!r} has a malformed signature") from None
    if (
        not out.members
        or len(out.members) != len(out.certs)
        or len(set(out.members)) != len(out.members)
        or out.creator not in out.members
        or out.t1 <= out.t0
        or not 1 <= out.version < 1 << 62
        or not 0 <= out.created_at < 1 << 62
    ):
        raise UntrustedResponse("malformed_record", f"conference {out.id!r} is not a well-formed record")
    checker = checks or trust
    checked = [checker.check_cert(pem, name) for name, pem in zip(out.members, out.certs, strict=True)]
    record = ConferenceRecord(
        out.id, out.t0, out.t1, tuple(out.members), tuple(fp for _, _, fp in checked), out.creator,
        out.version, out.created_at,
    )
    if set(out.rotations) - set(out.members):
        raise UntrustedResponse("malformed_record", f"conference {out.id!r} lists rotations of non-members")
    # each member's key against the one accepted first: a key swapped without proof is said as such
    members = []
    for name, (cert, identity, fp) in zip(out.members, checked, strict=True):
        earlier = _earlier_keys(identity, out.rotations.get(name, ()), cert)
        acceptance = trust.acceptance(identity, fp, public_key(cert), earlier)
        members.append(Member(name, identity, cert, fp, acceptance, earlier))
    creator_cert = checked[out.members.index(out.creator)][0]
    try:
        pki.verifier_of(creator_cert).verify(record.signed_bytes(), signature)
    except (CryptoError, pki.PkiError):
        raise UntrustedResponse(
            "bad_record_signature",
            f"conference {out.id!r} is not signed by its creator {out.creator!r}: the directory altered it",
        ) from None
    return Conference(
        out.id, out.t0, out.t1, tuple(members), out.creator, signature, out.version, out.created_at
    )


def verify_tombstone(out: TombstoneOut, trust: _Trust, expected: tuple[str, str]) -> ConferenceTombstone:
    """A tombstone signed by the conference's creator (a CA-valid certificate of that name that
    is not a *changed* one), or :class:`UntrustedResponse`."""
    if (out.creator, out.id) != expected or not 1 <= out.version < 1 << 62:
        raise UntrustedResponse("wrong_conference", "the directory answered with another conference's tombstone")
    cert, identity, fp = trust.check_cert(out.cert_pem, out.creator)
    trust.acceptance(identity, fp, public_key(cert))  # another key than accepted: CertificateChanged
    tombstone = ConferenceTombstone(out.creator, out.id, out.version, out.deleted_at)
    try:
        pki.verifier_of(cert).verify(tombstone.signed_bytes(), bytes.fromhex(out.signature))
    except (CryptoError, ValueError, pki.PkiError):
        raise UntrustedResponse(
            "bad_tombstone_signature", f"the tombstone of {out.id!r} is not signed by {out.creator}"
        ) from None
    return tombstone


# --------------------------------------------------------------------------- the operations (no I/O)


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    body: bytes = b""
    signed: bool = False


@dataclass(frozen=True, slots=True)
class _Reply:
    """A directory's answer, read completely but never beyond :data:`MAX_RESPONSE` bytes."""

    status_code: int
    content: bytes


def _check_size(size: int) -> None:
    if size > MAX_RESPONSE:
        raise UntrustedResponse(
            "oversized_response", f"the directory's answer exceeds {MAX_RESPONSE} bytes"
        )


_Op = Generator[_Request, _Reply, T]


def _seg(value: str) -> str:
    return quote(value, safe="")


def _advance(after: Any, keys: list[Any]) -> Any:
    """The next page's cursor; a directory whose pages do not move forward is refused."""
    if any(k <= after for k in keys) or keys != sorted(keys):
        raise UntrustedResponse("malformed_response", "the directory's listing is not in order")
    return keys[-1]


class _TombstoneReply(msgspec.Struct):
    tombstone: TombstoneOut


class _Core:
    """State and operations shared by both drivers."""

    def __init__(
        self,
        trusted_cas: Sequence[x509.Certificate],
        signer_key: Ed25519PrivateKey,
        cert: x509.Certificate,
        trust_store: TrustStore,
        versions: VersionMemory,
        authority: str,
        clock: Callable[[], float],
    ) -> None:
        self.trust = _Trust(trusted_cas, trust_store, cert)
        self.trust_store = trust_store
        self.versions = versions
        self.authority = authority
        self.cert = cert
        self.identity = pki.identity_of(cert)
        self.signer = pki.signer_of(signer_key)
        if self.signer.public_bytes != pki.verifier_of(cert).public_bytes:
            raise ValueError("the signing key does not belong to the certificate")
        self.clock = clock

    def headers(self, request: httpx.Request, body: bytes) -> dict[str, str]:
        path = request.url.raw_path.decode("ascii")
        return sign_request(
            self.signer,
            self.identity.name,
            self.authority,
            request.method,
            path,
            body,
            timestamp=int(self.clock()),
            nonce=os.urandom(16).hex(),
        )

    # -- helpers

    @staticmethod
    def check(response: _Reply, *ok: int) -> bytes:
        if response.status_code in ok:
            return response.content
        code, message = "bad_response", f"the directory answered HTTP {response.status_code}"
        try:
            err = msgspec.json.decode(response.content)["error"]
            if isinstance(err["code"], str) and _CODE_RE.match(err["code"]) and isinstance(err["message"], str):
                code, message = err["code"], err["message"][:MAX_ERROR_MESSAGE]
        except Exception:
            pass
        cls = DirectoryUnavailable if response.status_code >= 500 else DirectoryError
        raise cls(code, message, status=response.status_code)

    @staticmethod
    def parse(content: bytes, type_: Any) -> Any:
        try:
            return msgspec.json.decode(content, type=type_)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UntrustedResponse("malformed_response", f"the directory's answer is malformed: {exc}") from None

    def page(self, response: _Reply, type_: Any) -> list[Any]:
        page = self.parse(self.check(response, 200), list[type_])
        if len(page) > PAGE_SIZE:
            raise UntrustedResponse(
                "oversized_page", f"the directory's listing page has {len(page)} entries, more than {PAGE_SIZE}"
            )
        return page

    def seen(self, conference: Conference) -> Conference:
        """Refuse a record older than one seen before, or one its creator deleted."""
        status = self.versions.check(conference.creator, conference.id, conference.version)
        if status is Seen.DELETED:
            raise ConferenceDeleted(conference.creator, conference.id, served=True)
        if status is Seen.ROLLED_BACK:
            entry = self.versions.get(conference.creator, conference.id)
            assert entry is not None
            raise RolledBack(conference.creator, conference.id, conference.version, entry.version)
        return conference

    def remember(self, conferences: Sequence[Conference]) -> None:
        """Note these (verified) records' versions in the version memory (one write)."""
        self.versions.remember((c.creator, c.id, c.version, False) for c in conferences)

    # -- operations

    def register(self, rotation: RotationIn | None = None) -> _Op[Participant]:
        """Register our certificate: new, the same again, a renewal, or -- with ``rotation``, the
        proof signed by the registered key -- a key rotation."""
        fields: dict[str, Any] = {"cert_pem": pki.cert_to_pem(self.cert).decode("ascii")}
        if rotation is not None:
            fields["rotation"] = rotation
        body = msgspec.json.encode(fields)
        response = yield _Request("POST", "/v1/participants", body, signed=True)
        out = self.parse(self.check(response, 200, 201), ParticipantOut)
        participant = verify_participant(out, self.trust, name=self.identity.name)
        if participant.fingerprint != pki.fingerprint(self.cert):
            raise UntrustedResponse("certificate_changed", "the directory registered another certificate for us")
        return participant

    def unregister(self) -> _Op[None]:
        """Remove our entry from the directory (a request signed by our key)."""
        response = yield _Request("DELETE", f"/v1/participants/{_seg(self.identity.name)}", b"", signed=True)
        self.check(response, 204)

    def publish_contact(self, host: str, port: int) -> _Op[None]:
        issued_at = int(self.clock())
        signature = self.signer.sign(contact_message(self.identity.name, host, port, issued_at))
        body = msgspec.json.encode({"host": host, "port": port, "issued_at": issued_at, "signature": signature.hex()})
        response = yield _Request("PUT", f"/v1/participants/{_seg(self.identity.name)}/contact", body, signed=True)
        self.check(response, 200)

    def get_participant(self, name: str) -> _Op[Participant]:
        response = yield _Request("GET", f"/v1/participants/{_seg(name)}")
        return verify_participant(self.parse(self.check(response, 200), ParticipantOut), self.trust, name=name)

    def list_participants(self) -> _Op[list[Participant]]:
        """Participants whose certificates verify; the others are skipped (reported once)."""
        result = []
        after = ""
        skipped = _Skipped("participants")
        checks = _Checks(self.trust, MAX_CERT_CHECKS)
        try:
            for _ in range(MAX_PAGES):
                response = yield _Request("GET", f"/v1/participants?after={_seg(after)}")
                page = self.page(response, ParticipantOut)
                if not page:
                    break
                after = _advance(after, [p.name for p in page])
                for out in page:
                    try:
                        result.append(verify_participant(out, self.trust, checks=checks))
                    except UntrustedResponse as exc:
                        skipped.add(out.name, exc)
        except ListingLimit:
            skipped.limit = True
        skipped.report()
        return result

    def create_conference(
        self, id: str, t0: int, t1: int, members: Sequence[str | Participant], *, accept_new: bool = False
    ) -> _Op[Conference]:
        """Sign and store a conference among ``members``, whose certificates must be accepted --
        or, with ``accept_new``, may be new: the caller accepts them (``Conference.unaccepted``)
        once the conference exists, so that a failed create accepts nothing."""
        resolved: list[Participant] = []
        for m in members:
            if isinstance(m, Participant):
                # re-check acceptance now: the trust store may have changed since it was fetched
                acceptance = self.trust.acceptance(m.identity, m.fingerprint, public_key(m.cert), m.earlier_keys)
                resolved.append(dataclasses.replace(m, acceptance=acceptance))
            elif m == self.identity.name:
                fp = pki.fingerprint(self.cert)
                resolved.append(Participant(self.identity, self.cert, fp, Acceptance.ACCEPTED))
            else:
                resolved.append((yield from self.get_participant(m)))
        unaccepted = [p for p in resolved if p.acceptance is Acceptance.NEW]
        if unaccepted and not accept_new:
            raise UnacceptedCertificates(unaccepted)
        seen = self.versions.get(self.identity.name, id)
        version = seen.version + 1 if seen is not None and seen.deleted else 1
        for attempt in range(2):
            record = ConferenceRecord(
                id, t0, t1, tuple(p.name for p in resolved), tuple(p.fingerprint for p in resolved),
                self.identity.name, version, int(self.clock()),
            )
            body = msgspec.json.encode(
                {
                    "id": id,
                    "t0": t0,
                    "t1": t1,
                    "members": list(record.members),
                    "certs": [pki.cert_to_pem(p.cert).decode("ascii") for p in resolved],
                    "creator": record.creator,
                    "version": record.version,
                    "created_at": record.created_at,
                    "signature": self.signer.sign(record.signed_bytes()).hex(),
                }
            )
            response = yield _Request("POST", "/v1/conferences", body, signed=True)
            if response.status_code == 409 and attempt == 0 and b"stale_version" in response.content:
                # we deleted this id before (elsewhere): our own tombstone says which version
                tombstone = yield from self._tombstone(self.identity.name, id)
                if tombstone is not None:
                    version = tombstone.version + 1
                    continue
            break
        out = self.parse(self.check(response, 201), ConferenceOut)
        conference = verify_conference(out, self.trust, expected=(self.identity.name, id))
        if conference.record != record:
            raise UntrustedResponse("wrong_conference", "the directory stored another record than ours")
        self.remember([conference])
        return conference

    def _tombstone(self, creator: str, id: str) -> _Op[ConferenceTombstone | None]:
        response = yield _Request("GET", f"/v1/conferences/{_seg(creator)}/{_seg(id)}")
        if response.status_code != 410:
            return None
        out = self.parse(response.content, _TombstoneReply).tombstone
        return verify_tombstone(out, self.trust, (creator, id))

    def get_conference(self, id: str, creator: str | None = None) -> _Op[Conference]:
        """The verified record of ``id`` by ``creator`` -- or, without a creator, the one
        conference of that id (:class:`AmbiguousConference` if several creators have one).
        Refused if older than a version seen or deleted (the version memory is not changed,
        except to note a verified tombstone: see :meth:`remember`)."""
        if creator is not None:
            response = yield _Request("GET", f"/v1/conferences/{_seg(creator)}/{_seg(id)}")
            if response.status_code == 410:
                out = self.parse(response.content, _TombstoneReply).tombstone
                tombstone = verify_tombstone(out, self.trust, (creator, id))
                # a verified deletion is a fact to keep: it only ever makes us refuse more
                self.versions.remember([(creator, id, tombstone.version, True)])
                raise ConferenceDeleted(creator, id, served=False)
            out = self.parse(self.check(response, 200), ConferenceOut)
            return self.seen(verify_conference(out, self.trust, expected=(creator, id)))
        response = yield _Request("GET", f"/v1/conferences?id={_seg(id)}")
        found: list[Conference] = []
        first_error: DirectoryError | None = None
        checks = _Checks(self.trust, MAX_CERT_CHECKS)
        try:
            for out in self.page(response, ConferenceOut):
                try:
                    if out.id != id:
                        raise UntrustedResponse("wrong_conference", f"asked for {id!r}, got {out.id!r}")
                    found.append(self.seen(verify_conference(out, self.trust, checks=checks)))
                except (UntrustedResponse, ConferenceDeleted) as exc:
                    first_error = first_error or exc
        except ListingLimit:
            raise UntrustedResponse("oversized_page", "the directory listed too many records of one id") from None
        creators = sorted({c.creator for c in found})
        if len(found) > len(creators):
            raise UntrustedResponse("malformed_response", f"the directory listed one creator's {id!r} twice")
        if len(creators) > 1:
            raise AmbiguousConference(id, creators)
        if found:
            return found[0]
        if first_error is not None:
            raise first_error
        raise DirectoryError("unknown_conference", f"there is no conference {id!r}", status=404)

    def conferences_of(self, name: str | None) -> _Op[list[Conference]]:
        """Verified conferences of ``name`` (default: ours); records that fail verification, and
        older or deleted versions, are skipped (reported once).  Versions seen are remembered."""
        name = name or self.identity.name
        result: list[Conference] = []
        after = ("", "")
        skipped = _Skipped("conference records")
        checks = _Checks(self.trust, MAX_CERT_CHECKS)
        try:
            for _ in range(MAX_PAGES):
                cursor = _seg(conference_key(*after)) if after != ("", "") else ""
                response = yield _Request("GET", f"/v1/participants/{_seg(name)}/conferences?after={cursor}")
                page = self.page(response, ConferenceOut)
                if not page:
                    break
                after = _advance(after, [(c.creator, c.id) for c in page])
                for out in page:
                    try:
                        conference = self.seen(verify_conference(out, self.trust, checks=checks))
                    except (UntrustedResponse, ConferenceDeleted) as exc:
                        skipped.add(f"{out.id!r} by {out.creator}", exc)
                        continue
                    if name in out.members:
                        result.append(conference)
        except ListingLimit:
            skipped.limit = True
        skipped.report()
        self.remember(result)
        return result

    def delete_conference(self, id: str) -> _Op[None]:
        """Delete our conference ``id``: a tombstone we sign over its current version."""
        me = self.identity.name
        conference = yield from self.get_conference(id, me)
        tombstone = ConferenceTombstone(me, id, conference.version, int(self.clock()))
        body = msgspec.json.encode(
            {
                "version": tombstone.version,
                "deleted_at": tombstone.deleted_at,
                "signature": self.signer.sign(tombstone.signed_bytes()).hex(),
            }
        )
        response = yield _Request("DELETE", f"/v1/conferences/{_seg(me)}/{_seg(id)}", body, signed=True)
        self.check(response, 204)
        self.versions.remember([(me, id, tombstone.version, True)])

    def accept(self, who: Member | Participant) -> None:
        """Record the user's acceptance of this member's certificate."""
        self.trust_store.accept(who.identity, who.fingerprint)


# --------------------------------------------------------------------------- drivers


class AsyncDirectoryClient:
    """The directory client (asyncio, httpx): every operation within one total ``deadline``.

    ``directory_name`` is what requests are signed for (see :mod:`.auth`): by default the
    authority of ``base_url``; ``versions`` is the version memory (default: in memory only);
    ``tls_ca`` the PEM bundle an ``https://`` directory's certificate must verify against
    (default: the system's trust store, see :func:`directory_tls`).
    """

    def __init__(
        self,
        base_url: str,
        trusted_cas: Sequence[x509.Certificate],
        signer_key: Ed25519PrivateKey,
        cert: x509.Certificate,
        trust_store: TrustStore,
        *,
        versions: VersionMemory | None = None,
        deadline: float = DEFAULT_DEADLINE,
        directory_name: str | None = None,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
    ) -> None:
        if not deadline > 0:
            raise ValueError("the directory deadline must be positive")
        if tls_ca is not None and not base_url.startswith("https://"):
            raise ValueError(f"a CA bundle for the directory is used only with an https:// URL, not {base_url}")
        verify: ssl.SSLContext | bool = directory_tls(tls_ca) if base_url.startswith("https://") else True
        authority = authority_of(directory_name or base_url)
        self._core = _Core(
            trusted_cas, signer_key, cert, trust_store, versions if versions is not None else VersionMemory(None),
            authority, clock,
        )
        self.deadline = deadline
        self.base_url = base_url
        self._http = httpx.AsyncClient(base_url=base_url, timeout=deadline, transport=transport, verify=verify)

    @classmethod
    def for_identity(
        cls, base_url: str, local: pki.LocalIdentity, trust_store: TrustStore | None = None, **options: Any
    ) -> Self:
        """A client for an identity directory (:func:`secchat.pki.load_identity`); the trust
        store defaults to the user's (:func:`~secchat.directory.trust.default_trust_path`)."""
        store = trust_store if trust_store is not None else TrustStore(default_trust_path())
        return cls(base_url, local.trusted, local.key, local.cert, store, **options)

    @property
    def versions(self) -> VersionMemory:
        return self._core.versions

    @property
    def cert(self) -> x509.Certificate:
        """Our certificate (what requests are signed for)."""
        return self._core.cert

    @property
    def identity(self) -> pki.Identity:
        return self._core.identity

    def _build(self, request: _Request) -> httpx.Request:
        """The HTTP request for one step of an operation, signed.  Every request is: the server
        checks the signature where it must (``request.signed``); on a read it only says who
        asks, which a directory learns from the connection anyway."""
        http_request = self._http.build_request(request.method, request.path, content=request.body)
        http_request.headers.update(self._core.headers(http_request, request.body))
        return http_request

    async def _exchange(self, request: _Request) -> _Reply:
        try:
            response = await self._http.send(self._build(request), stream=True)
            try:
                chunks = bytearray()
                async for chunk in response.aiter_bytes():
                    chunks += chunk
                    _check_size(len(chunks))
                return _Reply(response.status_code, bytes(chunks))
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            tls = _tls_failure(exc)
            if isinstance(tls, ssl.SSLCertVerificationError):
                raise UntrustedResponse(
                    "untrusted_directory",
                    f"the TLS certificate of the directory at {self.base_url} failed verification"
                    f" ({tls.verify_message or tls.reason}): not the directory you configured",
                ) from None
            if tls is not None:
                raise DirectoryUnavailable(
                    "unreachable", f"no TLS connection to the directory at {self.base_url}: {tls.reason or tls}"
                ) from None
            raise DirectoryUnavailable("unreachable", f"the directory is unreachable: {exc}") from None

    async def _run(self, op: _Op[T]) -> T:
        """Drive one operation to its end, all of it within :attr:`deadline` seconds."""
        try:
            async with asyncio.timeout(self.deadline):
                request = next(op)
                while True:
                    request = op.send(await self._exchange(request))
        except StopIteration as done:
            return done.value
        except TimeoutError:
            raise DirectoryUnavailable(
                "deadline", f"the directory did not answer within {self.deadline:g} s"
            ) from None
        finally:
            op.close()

    async def register(self, rotation: RotationIn | None = None) -> Participant:
        return await self._run(self._core.register(rotation))

    async def unregister(self) -> None:
        return await self._run(self._core.unregister())

    async def publish_contact(self, host: str, port: int) -> None:
        return await self._run(self._core.publish_contact(host, port))

    async def get_participant(self, name: str) -> Participant:
        return await self._run(self._core.get_participant(name))

    async def list_participants(self) -> list[Participant]:
        return await self._run(self._core.list_participants())

    async def create_conference(
        self, id: str, t0: int, t1: int, members: Sequence[str | Participant], *, accept_new: bool = False
    ) -> Conference:
        return await self._run(self._core.create_conference(id, t0, t1, members, accept_new=accept_new))

    async def get_conference(self, id: str, creator: str | None = None) -> Conference:
        return await self._run(self._core.get_conference(id, creator))

    async def conferences_of(self, name: str | None = None) -> list[Conference]:
        return await self._run(self._core.conferences_of(name))

    async def delete_conference(self, id: str) -> None:
        return await self._run(self._core.delete_conference(id))

    def accept(self, who: Member | Participant) -> None:
        self._core.accept(who)

    def remember(self, conference: Conference) -> None:
        """Note a record's version as seen (after a join that succeeded: a failed one notes nothing)."""
        self._core.remember([conference])

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncDirectoryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class DirectoryClient:
    """The blocking face of :class:`AsyncDirectoryClient` (same arguments, same operations):
    each call runs on a private event loop, so its deadline is as real as the async one's.
    Not for use inside a running event loop."""

    def __init__(self, *args: Any, **options: Any) -> None:
        self._async = AsyncDirectoryClient(*args, **options)
        self._loop = asyncio.new_event_loop()

    @classmethod
    def for_identity(
        cls, base_url: str, local: pki.LocalIdentity, trust_store: TrustStore | None = None, **options: Any
    ) -> Self:
        store = trust_store if trust_store is not None else TrustStore(default_trust_path())
        return cls(base_url, local.trusted, local.key, local.cert, store, **options)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coro)

    @property
    def cert(self) -> x509.Certificate:
        return self._async.cert

    @property
    def identity(self) -> pki.Identity:
        return self._async.identity

    def register(self, rotation: RotationIn | None = None) -> Participant:
        return self._call(self._async.register(rotation))

    def unregister(self) -> None:
        return self._call(self._async.unregister())

    def publish_contact(self, host: str, port: int) -> None:
        return self._call(self._async.publish_contact(host, port))

    def get_participant(self, name: str) -> Participant:
        return self._call(self._async.get_participant(name))

    def list_participants(self) -> list[Participant]:
        return self._call(self._async.list_participants())

    def create_conference(
        self, id: str, t0: int, t1: int, members: Sequence[str | Participant], *, accept_new: bool = False
    ) -> Conference:
        return self._call(self._async.create_conference(id, t0, t1, members, accept_new=accept_new))

    def get_conference(self, id: str, creator: str | None = None) -> Conference:
        return self._call(self._async.get_conference(id, creator))

    def conferences_of(self, name: str | None = None) -> list[Conference]:
        return self._call(self._async.conferences_of(name))

    def delete_conference(self, id: str) -> None:
        return self._call(self._async.delete_conference(id))

    def accept(self, who: Member | Participant) -> None:
        self._async.accept(who)

    def close(self) -> None:
        if not self._loop.is_closed():
            self._call(self._async.aclose())
            self._loop.close()

    def __enter__(self) -> DirectoryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
