"""The directory client: the only way SecChat talks to a directory, and it trusts nothing it gets.

Why: a malicious directory must be able to refuse service and nothing more (SPEC, "Directory
service").  So every certificate it returns is checked against the user's trusted CAs and must
name the member it is listed for; a conference record must carry its creator's signature over the
canonical record (members, time frame and certificate fingerprints included); and each member's
certificate must be the one the user accepted before.  A certificate not seen before is reported
as *unaccepted* (the user decides, as the thesis's GUI asks); a different certificate for an
accepted identity is refused (:class:`CertificateChanged`).

Structure (STYLE.md): each operation is a small generator that yields one HTTP request and
receives its response -- no I/O -- driven by :class:`DirectoryClient` (blocking) or
:class:`AsyncDirectoryClient` (asyncio).  Verification is in plain functions
(:func:`verify_conference`, :func:`verify_participant`) that tests call directly.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx
import msgspec
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secchat import pki
from secchat.crypto import CryptoError

from .auth import sign_request
from .models import (
    ConferenceOut,
    ConferenceRecord,
    ParticipantOut,
    contact_message,
)
from .trust import Acceptance, TrustStore, default_trust_path

__all__ = [
    "AsyncDirectoryClient",
    "CertificateChanged",
    "Conference",
    "Contact",
    "DirectoryClient",
    "DirectoryError",
    "DirectoryUnavailable",
    "Member",
    "Participant",
    "UnacceptedCertificates",
    "UntrustedResponse",
    "verify_conference",
    "verify_participant",
]

log = logging.getLogger("secchat.directory.client")

T = TypeVar("T")
MAX_RESPONSE = 16 << 20
#: Listings are read page by page (the server's page is 1000 entries), at most this many pages.
MAX_PAGES = 100


# --------------------------------------------------------------------------- errors


class DirectoryError(Exception):
    """The directory refused a request (``status`` and its ``code``) or could not be used."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class DirectoryUnavailable(DirectoryError):
    """The directory could not be reached or answered with a server error."""


class UntrustedResponse(DirectoryError):
    """The directory returned data that fails verification: it is faulty or malicious."""


class CertificateChanged(UntrustedResponse):
    """A member's certificate differs from the one the user accepted for that identity."""

    def __init__(self, identity: pki.Identity, fingerprint: str, accepted: str | None) -> None:
        super().__init__(
            "certificate_changed",
            f"the certificate of {identity} ({fingerprint[:16]}...) is not the one you accepted"
            + (f" ({accepted[:16]}...)" if accepted else ""),
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


@dataclass(frozen=True, slots=True)
class Conference:
    """A conference record whose creator signature and certificates were verified."""

    id: str
    t0: int
    t1: int
    members: tuple[Member, ...]
    creator: str
    signature: bytes

    @property
    def unaccepted(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.acceptance is Acceptance.NEW)

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

    def acceptance(self, identity: pki.Identity, fingerprint: str) -> Acceptance:
        if self.own is not None and identity == self.own[0]:
            status = Acceptance.ACCEPTED if fingerprint == self.own[1] else Acceptance.CHANGED
        else:
            status = self.store.status(identity, fingerprint)
        if status is Acceptance.CHANGED:
            if self.own is not None and identity == self.own[0]:
                accepted: str | None = self.own[1]
            else:
                entry = self.store.get(identity)
                accepted = entry.fingerprint if entry else None
            raise CertificateChanged(identity, fingerprint, accepted)
        return status

    def check_cert(self, pem: str, name: str, *, now: Any = None) -> tuple[x509.Certificate, pki.Identity, str]:
        try:
            cert = pki.cert_from_pem(pem.encode("utf-8", "replace"))
            identity = pki.verify_certificate(cert, self.cas, now=now)
        except pki.PkiError as exc:
            raise UntrustedResponse(
                "invalid_certificate", f"the directory's certificate for {name!r} is invalid: {exc}"
            ) from None
        if identity.name != name:
            raise UntrustedResponse(
                "name_mismatch", f"the directory listed a certificate of {identity.name!r} as {name!r}"
            )
        return cert, identity, pki.fingerprint(cert)


def verify_participant(out: ParticipantOut, trust: _Trust, *, name: str | None = None) -> Participant:
    cert, identity, fp = trust.check_cert(out.cert_pem, name or out.name)
    contact = None
    if out.contact is not None:
        c = out.contact
        try:
            pki.verifier_of(cert).verify(
                contact_message(identity.name, c.host, c.port, c.issued_at), bytes.fromhex(c.signature)
            )
            contact = Contact(c.host, c.port, c.issued_at)
        except (CryptoError, ValueError, pki.PkiError):
            log.warning("ignoring a contact address of %s that it did not sign", identity)
    return Participant(identity, cert, fp, trust.acceptance(identity, fp), contact)


def verify_conference(out: ConferenceOut, trust: _Trust, *, expected_id: str | None = None) -> Conference:
    """Check a conference record from the directory; raise :class:`UntrustedResponse` if it fails."""
    if expected_id is not None and out.id != expected_id:
        raise UntrustedResponse("wrong_conference", f"asked for conference {expected_id!r}, got {out.id!r}")
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
    ):
        raise UntrustedResponse("malformed_record", f"conference {out.id!r} is not a well-formed record")
    checked = [trust.check_cert(pem, name) for name, pem in zip(out.members, out.certs, strict=True)]
    record = ConferenceRecord(
        out.id, out.t0, out.t1, tuple(out.members), tuple(fp for _, _, fp in checked), out.creator
    )
    creator_cert = checked[out.members.index(out.creator)][0]
    try:
        pki.verifier_of(creator_cert).verify(record.signed_bytes(), signature)
    except (CryptoError, pki.PkiError):
        raise UntrustedResponse(
            "bad_record_signature",
            f"conference {out.id!r} is not signed by its creator {out.creator!r}: the directory altered it",
        ) from None
    members = tuple(
        Member(name, identity, cert, fp, trust.acceptance(identity, fp))
        for name, (cert, identity, fp) in zip(out.members, checked, strict=True)
    )
    return Conference(out.id, out.t0, out.t1, members, out.creator, signature)


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


def _bounded(chunks) -> bytes:
    data = bytearray()
    for chunk in chunks:
        data += chunk
        _check_size(len(data))
    return bytes(data)


_Op = Generator[_Request, _Reply, T]


def _seg(value: str) -> str:
    return quote(value, safe="")


def _advance(after: str, keys: list[str]) -> str:
    """The next page's cursor; a directory whose pages do not move forward is refused."""
    if any(k <= after for k in keys) or keys != sorted(keys):
        raise UntrustedResponse("malformed_response", "the directory's listing is not in order")
    return keys[-1]


class _Core:
    """State and operations shared by both drivers."""

    def __init__(
        self,
        trusted_cas: Sequence[x509.Certificate],
        signer_key: Ed25519PrivateKey,
        cert: x509.Certificate,
        trust_store: TrustStore,
        clock: Callable[[], float],
    ) -> None:
        self.trust = _Trust(trusted_cas, trust_store, cert)
        self.trust_store = trust_store
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
            code, message = str(err["code"]), str(err["message"])
        except Exception:
            pass
        cls = DirectoryUnavailable if response.status_code >= 500 else DirectoryError
        raise cls(code, message, status=response.status_code)

    @staticmethod
    def parse(content: bytes, type_: type[T]) -> T:
        try:
            return msgspec.json.decode(content, type=type_)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UntrustedResponse("malformed_response", f"the directory's answer is malformed: {exc}") from None

    # -- operations

    def register(self) -> _Op[Participant]:
        body = msgspec.json.encode({"cert_pem": pki.cert_to_pem(self.cert).decode("ascii")})
        response = yield _Request("POST", "/v1/participants", body, signed=True)
        out = self.parse(self.check(response, 200, 201), ParticipantOut)
        participant = verify_participant(out, self.trust, name=self.identity.name)
        if participant.fingerprint != pki.fingerprint(self.cert):
            raise UntrustedResponse("certificate_changed", "the directory registered another certificate for us")
        return participant

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
        """Participants whose certificates verify; others are skipped (and logged)."""
        result = []
        after = ""
        for _ in range(MAX_PAGES):
            response = yield _Request("GET", f"/v1/participants?after={_seg(after)}")
            page = self.parse(self.check(response, 200), list[ParticipantOut])
            if not page:
                break
            for out in page:
                try:
                    result.append(verify_participant(out, self.trust))
                except UntrustedResponse as exc:
                    log.warning("skipping participant %r: %s", out.name, exc)
            after = _advance(after, [p.name for p in page])
        return result

    def create_conference(
        self, id: str, t0: int, t1: int, members: Sequence[str | Participant]
    ) -> _Op[Conference]:
        """Sign and store a conference among ``members`` (whose certificates must be accepted)."""
        resolved: list[Participant] = []
        for m in members:
            if isinstance(m, Participant):
                # re-check acceptance now: the trust store may have changed since it was fetched
                acceptance = self.trust.acceptance(m.identity, m.fingerprint)
                resolved.append(dataclasses.replace(m, acceptance=acceptance))
            elif m == self.identity.name:
                fp = pki.fingerprint(self.cert)
                resolved.append(Participant(self.identity, self.cert, fp, Acceptance.ACCEPTED))
            else:
                resolved.append((yield from self.get_participant(m)))
        unaccepted = [p for p in resolved if p.acceptance is Acceptance.NEW]
        if unaccepted:
            raise UnacceptedCertificates(unaccepted)
        record = ConferenceRecord(
            id, t0, t1, tuple(p.name for p in resolved), tuple(p.fingerprint for p in resolved), self.identity.name
        )
        signature = self.signer.sign(record.signed_bytes())
        body = msgspec.json.encode(
            {
                "id": id,
                "t0": t0,
                "t1": t1,
                "members": list(record.members),
                "certs": [pki.cert_to_pem(p.cert).decode("ascii") for p in resolved],
                "creator": record.creator,
                "signature": signature.hex(),
            }
        )
        response = yield _Request("POST", "/v1/conferences", body, signed=True)
        conference = verify_conference(self.parse(self.check(response, 201), ConferenceOut), self.trust, expected_id=id)
        if conference.record != record:
            raise UntrustedResponse("wrong_conference", "the directory stored another record than ours")
        return conference

    def get_conference(self, id: str) -> _Op[Conference]:
        response = yield _Request("GET", f"/v1/conferences/{_seg(id)}")
        return verify_conference(self.parse(self.check(response, 200), ConferenceOut), self.trust, expected_id=id)

    def conferences_of(self, name: str | None) -> _Op[list[Conference]]:
        """Verified conferences of ``name`` (default: ours); records that fail are skipped and logged."""
        name = name or self.identity.name
        result = []
        after = ""
        for _ in range(MAX_PAGES):
            response = yield _Request(
                "GET", f"/v1/participants/{_seg(name)}/conferences?after={_seg(after)}"
            )
            page = self.parse(self.check(response, 200), list[ConferenceOut])
            if not page:
                break
            for out in page:
                try:
                    conference = verify_conference(out, self.trust)
                except UntrustedResponse as exc:
                    log.warning("skipping conference %r: %s", out.id, exc)
                    continue
                if name in out.members:
                    result.append(conference)
            after = _advance(after, [c.id for c in page])
        return result

    def delete_conference(self, id: str) -> _Op[None]:
        response = yield _Request("DELETE", f"/v1/conferences/{_seg(id)}", signed=True)
        self.check(response, 204)

    def accept(self, who: Member | Participant) -> None:
        """Record the user's acceptance of this member's certificate."""
        self.trust_store.accept(who.identity, who.fingerprint)


# --------------------------------------------------------------------------- drivers


class _Driver:
    """What both drivers share: the I/O-free operations (``_Core``) and an httpx client."""

    _http_class: Any = None

    def __init__(
        self,
        base_url: str,
        trusted_cas: Sequence[x509.Certificate],
        signer_key: Ed25519PrivateKey,
        cert: x509.Certificate,
        trust_store: TrustStore,
        *,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._core = _Core(trusted_cas, signer_key, cert, trust_store, clock)
        self._http = self._http_class(base_url=base_url, timeout=timeout, transport=transport)

    def _build(self, request) -> httpx.Request:
        """The HTTP request for one step of an operation, signed when it must be."""
        http_request = self._http.build_request(request.method, request.path, content=request.body)
        if request.signed:
            http_request.headers.update(self._core.headers(http_request, request.body))
        return http_request

    @classmethod
    def for_identity(
        cls, base_url: str, local: pki.LocalIdentity, trust_store: TrustStore | None = None, **options: Any
    ) -> Self:
        """A client for an identity directory (:func:`secchat.pki.load_identity`); the trust
        store defaults to the user's (:func:`~secchat.directory.trust.default_trust_path`)."""
        store = trust_store if trust_store is not None else TrustStore(default_trust_path())
        return cls(base_url, local.trusted, local.key, local.cert, store, **options)


class DirectoryClient(_Driver):
    """Blocking client (httpx)."""

    _http_class = httpx.Client

    def _run(self, op: _Op[T]) -> T:
        try:
            request = next(op)
            while True:
                http_request = self._build(request)
                try:
                    response = self._http.send(http_request, stream=True)
                    try:
                        reply = _Reply(response.status_code, _bounded(response.iter_bytes()))
                    finally:
                        response.close()
                except httpx.TransportError as exc:
                    raise DirectoryUnavailable("unreachable", f"the directory is unreachable: {exc}") from None
                request = op.send(reply)
        except StopIteration as done:
            return done.value

    def register(self) -> Participant:
        return self._run(self._core.register())

    def publish_contact(self, host: str, port: int) -> None:
        return self._run(self._core.publish_contact(host, port))

    def get_participant(self, name: str) -> Participant:
        return self._run(self._core.get_participant(name))

    def list_participants(self) -> list[Participant]:
        return self._run(self._core.list_participants())

    def create_conference(self, id: str, t0: int, t1: int, members: Sequence[str | Participant]) -> Conference:
        return self._run(self._core.create_conference(id, t0, t1, members))

    def get_conference(self, id: str) -> Conference:
        return self._run(self._core.get_conference(id))

    def conferences_of(self, name: str | None = None) -> list[Conference]:
        return self._run(self._core.conferences_of(name))

    def delete_conference(self, id: str) -> None:
        return self._run(self._core.delete_conference(id))

    def accept(self, who: Member | Participant) -> None:
        self._core.accept(who)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DirectoryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncDirectoryClient(_Driver):
    """Asyncio client (httpx); the same operations as :class:`DirectoryClient`."""

    _http_class = httpx.AsyncClient

    async def _run(self, op: _Op[T]) -> T:
        try:
            request = next(op)
            while True:
                http_request = self._build(request)
                try:
                    response = await self._http.send(http_request, stream=True)
                    try:
                        chunks = bytearray()
                        async for chunk in response.aiter_bytes():
                            chunks += chunk
                            _check_size(len(chunks))
                        reply = _Reply(response.status_code, bytes(chunks))
                    finally:
                        await response.aclose()
                except httpx.TransportError as exc:
                    raise DirectoryUnavailable("unreachable", f"the directory is unreachable: {exc}") from None
                request = op.send(reply)
        except StopIteration as done:
            return done.value

    async def register(self) -> Participant:
        return await self._run(self._core.register())

    async def publish_contact(self, host: str, port: int) -> None:
        return await self._run(self._core.publish_contact(host, port))

    async def get_participant(self, name: str) -> Participant:
        return await self._run(self._core.get_participant(name))

    async def list_participants(self) -> list[Participant]:
        return await self._run(self._core.list_participants())

    async def create_conference(
        self, id: str, t0: int, t1: int, members: Sequence[str | Participant]
    ) -> Conference:
        return await self._run(self._core.create_conference(id, t0, t1, members))

    async def get_conference(self, id: str) -> Conference:
        return await self._run(self._core.get_conference(id))

    async def conferences_of(self, name: str | None = None) -> list[Conference]:
        return await self._run(self._core.conferences_of(name))

    async def delete_conference(self, id: str) -> None:
        return await self._run(self._core.delete_conference(id))

    def accept(self, who: Member | Participant) -> None:
        self._core.accept(who)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncDirectoryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
