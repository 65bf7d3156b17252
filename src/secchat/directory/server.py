"""The directory's HTTP API: a Starlette app, routes thin, every check before any write.

Why: the directory is untrusted by its clients, but it must still protect itself and its honest
users: it admits only certificates of the configured CAs (with proof of possession of the key),
one entry per identity, writes signed by their author within a short time window and never twice,
and conference records whose creator signed them.  Every refusal is a 4xx JSON
``{"error": {"code": ..., "message": ...}}``; an unexpected failure is a generic 500 and never a
stack trace.  The body limit is enforced while reading, before anything is parsed.  SQL lives in
:mod:`.storage`; blocking database calls run in the thread pool.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio
import msgspec
from cryptography import x509
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from secchat import pki
from secchat.crypto import CryptoError

from .auth import (
    MAX_SKEW,
    AuthError,
    SignedRequest,
    authority_of,
    check_request,
    parse_auth_headers,
)
from .identities import IdentityError, Update, classify, public_key
from .models import (
    NAME_PATTERN,
    PAGE_SIZE,
    ConferenceIn,
    ConferenceRecord,
    ConferenceTombstone,
    ContactIn,
    ParticipantIn,
    TombstoneIn,
    TombstoneOut,
    contact_message,
)
from .openapi import OPENAPI
from .storage import Rejected, Store

__all__ = ["DEFAULT_MAX_BODY", "STATUS", "ApiError", "create_app"]

log = logging.getLogger("secchat.directory")

T = TypeVar("T")

DEFAULT_MAX_BODY = 512 * 1024
#: Seconds the readiness check (``GET /v1/ready``) waits for the database before it says 503.
READY_TIMEOUT = 3.0
#: Entries per page of a listing (``?after=<last key>`` gives the next page).
PAGE = PAGE_SIZE
_NAME_RE = re.compile(NAME_PATTERN)

#: HTTP status of each machine-readable error code.
STATUS: dict[str, int] = {
    "malformed_json": 400,
    "bad_pem": 400,
    "missing_signature": 401,
    "bad_request_signature": 401,
    "stale_request": 401,
    "replayed_request": 401,
    "unknown_signer": 401,
    "wrong_directory": 421,
    "signer_mismatch": 403,
    "not_creator": 403,
    "not_owner": 403,
    "not_found": 404,
    "unknown_participant": 404,
    "unknown_conference": 404,
    "method_not_allowed": 405,
    "identity_taken": 409,
    "identity_changed": 409,
    "stale_certificate": 409,
    "bad_rotation_signature": 422,
    "duplicate_conference": 409,
    "stale_version": 409,
    "conference_deleted": 410,
    "body_too_large": 413,
    "invalid_request": 422,
    "invalid_time_frame": 422,
    "creator_not_member": 422,
    "duplicate_member": 422,
    "unknown_member": 422,
    "certificate_mismatch": 422,
    "name_mismatch": 422,
    "bad_record_signature": 422,
    "bad_contact_signature": 422,
    "bad_tombstone_signature": 422,
    # certificate verification (secchat.pki codes)
    "unknown_ca": 422,
    "expired": 422,
    "not_yet_valid": 422,
    "bad_signature": 422,
    "not_a_ca": 422,
    "not_a_leaf": 422,
    "no_name": 422,
    "unsupported_key": 422,
    "unavailable": 503,
    "database_unavailable": 503,
    "internal": 500,
}


class ApiError(Exception):
    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status or STATUS.get(code, 400)


def _json(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


def _error(code: str, message: str, status: int) -> Response:
    return _json({"error": {"code": code, "message": message}}, status)


def _decode(body: bytes, type_: type[T]) -> T:
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        try:  # a typed decode may stop at the first wrong type: report broken JSON as such
            msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise ApiError("malformed_json", "the request body is not valid JSON") from None
        raise ApiError("invalid_request", f"the request body is invalid: {exc}") from None
    except msgspec.DecodeError:
        raise ApiError("malformed_json", "the request body is not valid JSON") from None


def _signed_path(request: Request) -> str:
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    query = request.scope.get("query_string") or b""
    return (raw + (b"?" + query if query else b"")).decode("latin-1")


def create_app(
    engine: Engine,
    trusted_cas: Sequence[x509.Certificate],
    *,
    names: Sequence[str],
    max_body: int = DEFAULT_MAX_BODY,
    clock: Callable[[], float] = time.time,
    db_threads: int = 8,
    ready_timeout: float = READY_TIMEOUT,
) -> Starlette:
    """The directory app on ``engine`` (schema created now), admitting certificates of
    ``trusted_cas``, answering signed requests made for one of ``names`` (its URLs as clients
    use them, or configured directory names; see :mod:`.auth`)."""
    if not trusted_cas:
        raise ValueError("the directory needs at least one trusted CA certificate")
    authorities = tuple(dict.fromkeys(authority_of(n) for n in names))
    if not authorities:
        raise ValueError("the directory needs at least one name (its URL or a configured name)")
    store = Store(engine)
    store.create_schema()
    cas = list(trusted_cas)
    # A few database threads, not anyio's default 40: more threads than connections only
    # contend for the GIL and the pool (measured: c=50 throughput fell by two thirds).
    # Made on first use, inside the event loop: older anyio (4.1, our floor) cannot make one
    # outside it (AsyncLibraryNotFoundError).
    limiters: list[anyio.CapacityLimiter] = []

    def db_limiter() -> anyio.CapacityLimiter:
        if not limiters:
            limiters.append(anyio.CapacityLimiter(db_threads))
        return limiters[0]

    async def run_in_threadpool(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=db_limiter())

    # ------------------------------------------------------------ helpers

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_body):
            raise ApiError("body_too_large", f"the request body exceeds {max_body} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise ApiError("body_too_large", f"the request body exceeds {max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def verify_cert(cert: x509.Certificate) -> pki.Identity:
        try:
            return pki.verify_certificate(cert, cas)
        except pki.PkiError as exc:
            raise ApiError(exc.code, str(exc)) from None

    def parse_cert(pem: str) -> x509.Certificate:
        try:
            return pki.cert_from_pem(pem.encode("utf-8", "replace"))
        except pki.PkiError as exc:
            raise ApiError(exc.code, str(exc)) from None

    async def authenticate(
        request: Request, body: bytes, cert: x509.Certificate | None = None
    ) -> tuple[SignedRequest, x509.Certificate, tuple[str, int]]:
        """Check a signed request; returns it, the signer's certificate and the nonce to consume."""
        try:
            auth = parse_auth_headers(request.headers)
        except AuthError as exc:
            raise ApiError(exc.code, str(exc)) from None
        if cert is None:
            signer = await run_in_threadpool(store.get_participant, auth.name)
            if signer is None:
                raise ApiError("unknown_signer", "the request is signed by no registered participant")
            cert = parse_cert(signer.cert_pem)
        verify_cert(cert)
        try:
            verifier = pki.verifier_of(cert)
            check_request(
                verifier, auth, authorities, request.method, _signed_path(request), body, now=clock()
            )
        except (AuthError, pki.PkiError) as exc:
            raise ApiError(exc.code, str(exc)) from None
        return auth, cert, (auth.nonce, auth.timestamp + MAX_SKEW + 1)

    async def write(fn: Callable[..., T], **kwargs: Any) -> T:
        try:
            return await run_in_threadpool(fn, **kwargs)
        except Rejected as exc:
            raise ApiError(exc.code, str(exc)) from None

    # ------------------------------------------------------------ routes

    async def health(_request: Request) -> Response:
        return _json({"status": "ok"})

    # At most one readiness query at a time: a probe abandoned after ``ready_timeout`` may still
    # hold a database thread, and probes repeated against a hung database must not pile up.
    probe = {"busy": False, "started": False}

    def ping() -> None:
        probe["started"] = True
        try:
            store.ping()
        finally:
            probe["busy"] = False

    async def ready(_request: Request) -> Response:
        """Readiness, not liveness: 200 only when a query of the directory's tables succeeds."""
        if probe["busy"]:
            return _error("database_unavailable", "the database has not answered the previous readiness check yet", 503)
        probe["busy"], probe["started"] = True, False
        try:
            with anyio.fail_after(ready_timeout):
                await anyio.to_thread.run_sync(ping, limiter=db_limiter(), abandon_on_cancel=True)
        except TimeoutError:
            if not probe["started"]:  # timed out waiting for a database thread: none will run it
                probe["busy"] = False
            log.warning("not ready: the database did not answer within %g s", ready_timeout)
            return _error("database_unavailable", f"the database did not answer within {ready_timeout:g} s", 503)
        except SQLAlchemyError as exc:
            # the driver's message (hosts, ports, roles) goes to the log, not to any caller
            log.warning("not ready: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return _error("database_unavailable", f"the database is unavailable ({type(exc).__name__})", 503)
        return _json({"status": "ready", "database": engine.dialect.name})

    async def openapi(_request: Request) -> Response:
        return _json(OPENAPI)

    async def register(request: Request) -> Response:
        body = await read_body(request)
        data = _decode(body, ParticipantIn)
        cert = parse_cert(data.cert_pem)
        identity = verify_cert(cert)
        auth, _, nonce = await authenticate(request, body, cert)
        if auth.name != identity.name:
            raise ApiError("signer_mismatch", "the request is not signed in the certificate's name")
        if not _NAME_RE.match(identity.name):
            raise ApiError("invalid_request", "the certificate's common name is not a valid participant name")
        fingerprint = pki.fingerprint(cert)
        cert_pem = pki.cert_to_pem(cert).decode("ascii")
        current = await run_in_threadpool(store.get_participant, identity.name)
        if current is not None and current.fingerprint != fingerprint:
            return await update_certificate(current, cert, data, nonce)
        participant, created = await write(
            store.register_participant,
            name=identity.name,
            issuer=identity.issuer,
            fingerprint=fingerprint,
            cert_pem=cert_pem,
            nonce=nonce,
            now=int(clock()),
        )
        return _json(participant, 201 if created else 200)

    async def update_certificate(
        current: Any, cert: x509.Certificate, data: ParticipantIn, nonce: tuple[str, int]
    ) -> Response:
        """A new certificate for a registered name: a renewal or a proven rotation (identities.py)."""
        proof = None
        if data.rotation is not None:
            proof = (bytes.fromhex(data.rotation.old_key), data.rotation.rotated_at,
                     bytes.fromhex(data.rotation.signature))
        try:
            kind = classify(parse_cert(current.cert_pem), cert, proof)
        except IdentityError as exc:
            await run_in_threadpool(store.burn_nonce, nonce)
            raise ApiError(exc.code, str(exc)) from None
        rotation = None
        if kind is Update.ROTATION:
            assert data.rotation is not None
            rotation = (data.rotation.old_key, public_key(cert).hex(), data.rotation.rotated_at,
                        data.rotation.signature)
        participant = await write(
            store.update_certificate,
            name=current.name,
            expected_fingerprint=current.fingerprint,
            fingerprint=pki.fingerprint(cert),
            cert_pem=pki.cert_to_pem(cert).decode("ascii"),
            rotation=rotation,
            nonce=nonce,
            now=int(clock()),
        )
        return _json(participant, 200)

    async def by_owner(request: Request, what: str) -> tuple[str, bytes, x509.Certificate, tuple[str, int]]:
        """A request on ``/v1/participants/{name}/...`` that only ``name`` may sign: the name,
        the body, the signer's certificate and the nonce to consume."""
        name = request.path_params["name"]
        body = await read_body(request)
        auth, cert, nonce = await authenticate(request, body)
        if auth.name != name:
            raise ApiError("not_owner", f"only a participant may {what}")
        return name, body, cert, nonce

    async def unregister(request: Request) -> Response:
        name, _, _, nonce = await by_owner(request, "unregister itself")
        await write(store.unregister_participant, name=name, nonce=nonce, now=int(clock()))
        return Response(status_code=204)

    async def list_participants(request: Request) -> Response:
        after = request.query_params.get("after", "")
        return _json(await run_in_threadpool(store.list_participants, after=after, limit=PAGE))

    async def get_participant(request: Request) -> Response:
        name = request.path_params["name"]
        found = await run_in_threadpool(store.get_participant, name)
        if found is None:
            raise ApiError("unknown_participant", f"no participant is named {name!r}")
        return _json(found)

    async def publish_contact(request: Request) -> Response:
        name, body, cert, nonce = await by_owner(request, "publish its own contact address")
        data = _decode(body, ContactIn)
        try:
            pki.verifier_of(cert).verify(
                contact_message(name, data.host, data.port, data.issued_at), bytes.fromhex(data.signature)
            )
        except CryptoError:
            raise ApiError("bad_contact_signature", "the contact address is not signed by its participant") from None
        await write(
            store.publish_contact,
            name=name,
            host=data.host,
            port=data.port,
            issued_at=data.issued_at,
            signature=data.signature,
            nonce=nonce,
            now=int(clock()),
        )
        return _json(await run_in_threadpool(store.get_participant, name))

    async def conferences_of(request: Request) -> Response:
        name = request.path_params["name"]
        creator, _, id_ = request.query_params.get("after", "").partition("/")
        return _json(
            await run_in_threadpool(store.conferences_of, name, after=(creator, id_), limit=PAGE)
        )

    async def conferences_with_id(request: Request) -> Response:
        id_ = request.query_params.get("id")
        if not id_:
            raise ApiError("invalid_request", "give the conference id: /v1/conferences?id=...")
        after = request.query_params.get("after", "")
        return _json(await run_in_threadpool(store.conferences_with_id, id_, after=after, limit=PAGE))

    async def create_conference(request: Request) -> Response:
        body = await read_body(request)
        auth, creator_cert, nonce = await authenticate(request, body)
        data = _decode(body, ConferenceIn)
        if data.t1 <= data.t0:
            raise ApiError("invalid_time_frame", "the conference must end after it starts (t1 > t0)")
        if len(data.members) != len(data.certs):
            raise ApiError("invalid_request", "members and certs must have the same length")
        if len(set(data.members)) != len(data.members):
            raise ApiError("duplicate_member", "a member is listed twice")
        if data.creator not in data.members:
            raise ApiError("creator_not_member", "the creator must be a member of the conference")
        if auth.name != data.creator:
            raise ApiError("not_creator", "a conference is created by its creator's signed request")
        fingerprints = []
        for name, pem in zip(data.members, data.certs, strict=True):
            cert = parse_cert(pem)
            identity = verify_cert(cert)
            if identity.name != name:
                raise ApiError("name_mismatch", f"the certificate given for {name!r} names {identity.name!r}")
            fingerprints.append(pki.fingerprint(cert))
        record = ConferenceRecord(
            data.id, data.t0, data.t1, tuple(data.members), tuple(fingerprints), data.creator,
            data.version, data.created_at,
        )
        try:
            pki.verifier_of(creator_cert).verify(record.signed_bytes(), bytes.fromhex(data.signature))
        except CryptoError:
            raise ApiError("bad_record_signature", "the conference record is not signed by its creator") from None
        conference = await write(
            store.create_conference,
            creator=data.creator,
            id=data.id,
            version=data.version,
            created_at=data.created_at,
            t0=data.t0,
            t1=data.t1,
            members=data.members,
            fingerprints=fingerprints,
            signature=data.signature,
            nonce=nonce,
            now=int(clock()),
        )
        return _json(conference, 201)

    async def get_conference(request: Request) -> Response:
        creator, id_ = request.path_params["creator"], request.path_params["id"]
        found = await run_in_threadpool(store.get_conference, creator, id_)
        if found is None:
            raise ApiError("unknown_conference", f"{creator} has no conference with id {id_!r}")
        if isinstance(found, TombstoneOut):
            message = f"{creator}'s conference {id_!r} was deleted by its creator"
            error = {"code": "conference_deleted", "message": message}
            return _json({"error": error, "tombstone": found}, STATUS["conference_deleted"])
        return _json(found)

    async def delete_conference(request: Request) -> Response:
        creator, id_ = request.path_params["creator"], request.path_params["id"]
        body = await read_body(request)
        auth, cert, nonce = await authenticate(request, body)
        if auth.name != creator:
            raise ApiError("not_creator", "only the creator of a conference may delete it")
        data = _decode(body, TombstoneIn)
        tombstone = ConferenceTombstone(creator, id_, data.version, data.deleted_at)
        try:
            pki.verifier_of(cert).verify(tombstone.signed_bytes(), bytes.fromhex(data.signature))
        except CryptoError:
            raise ApiError("bad_tombstone_signature", "the tombstone is not signed by the creator") from None
        await write(
            store.delete_conference,
            creator=creator,
            id=id_,
            requester=auth.name,
            version=data.version,
            deleted_at=data.deleted_at,
            signature=data.signature,
            nonce=nonce,
            now=int(clock()),
        )
        return Response(status_code=204)

    # ------------------------------------------------------------ errors

    async def on_api_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(exc.code, str(exc), exc.status)

    async def on_http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return _error("not_found", "no such resource", 404)
        if exc.status_code == 405:
            return _error("method_not_allowed", "this method is not allowed on this resource", 405)
        return _error("http_error", str(exc.detail), exc.status_code if exc.status_code < 500 else 400)

    async def on_unexpected(_request: Request, exc: Exception) -> Response:
        if isinstance(exc, OperationalError):
            log.warning("database unavailable: %s", type(exc).__name__)
            return _error("unavailable", "the directory's database is unavailable, try again", 503)
        if isinstance(exc, SQLAlchemyError):
            log.error("database error: %s", type(exc).__name__)
        else:
            log.exception("unexpected error")
        return _error("internal", "internal server error", 500)

    routes = [
        Route("/v1/health", health, methods=["GET"]),
        Route("/v1/ready", ready, methods=["GET"]),
        Route("/v1/openapi.json", openapi, methods=["GET"]),
        Route("/v1/participants", register, methods=["POST"]),
        Route("/v1/participants", list_participants, methods=["GET"]),
        Route("/v1/participants/{name}", get_participant, methods=["GET"]),
        Route("/v1/participants/{name}", unregister, methods=["DELETE"]),
        Route("/v1/participants/{name}/contact", publish_contact, methods=["PUT"]),
        Route("/v1/participants/{name}/conferences", conferences_of, methods=["GET"]),
        Route("/v1/conferences", create_conference, methods=["POST"]),
        Route("/v1/conferences", conferences_with_id, methods=["GET"]),
        Route("/v1/conferences/{creator}/{id}", get_conference, methods=["GET"]),
        Route("/v1/conferences/{creator}/{id}", delete_conference, methods=["DELETE"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            ApiError: on_api_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
    )
    app.state.store = store
    return app
