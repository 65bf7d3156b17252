"""TLS 1.3 contexts with mutual authentication, and certificate pinning.

Why: the thesis authenticates every point-to-point link with the peers' certificates (§2.1,
PT2PTLink in §4.2).  Each context trusts only the conference CA(s), requires a client
certificate, and speaks TLS 1.3 only (Ed25519 certificates work with OpenSSL 3).  Chain
validation alone is not enough: a valid certificate of *another* member, or of a member of
another conference under the same CA, must not be able to stand in for the peer we mean.  So
after the handshake :class:`PinSet` compares the peer's certificate, byte for byte (DER), with
the one the member list names for that peer.  Host names play no role (``check_hostname`` is
off); the pin is stricter than any name check.

The private key never touches disk in the clear: :mod:`ssl` only loads keys from files, so it is
written to a private temporary file encrypted under a one-time random password, loaded, and
deleted at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import ssl
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from .errors import AuthenticationError

__all__ = ["PinSet", "TlsCredentials", "client_context", "describe_certificate", "server_context"]

log = logging.getLogger("secchat.net.tls")

#: Plaintext read at once from a TLS connection, by asyncio's TLS transport.  asyncio allocates
#: a buffer of ``SSLProtocol.max_size`` (256 KiB) for each connection, ~290 KiB resident per
#: connection as measured here, and a member holds two connections per peer: ~115 MiB per
#: member in a group of 201, and 201 members on one machine would not fit in 24 GiB.  32 KiB
#: (two full TLS records per read) leaves ~65 KiB per connection.  The attribute is asyncio's
#: own (no public knob); if a later Python drops it, setting it does nothing.
TLS_READ_BUFFER = 32 << 10


def _bound_tls_read_buffers() -> None:
    from asyncio import sslproto

    if getattr(sslproto.SSLProtocol, "max_size", 0) > TLS_READ_BUFFER:
        sslproto.SSLProtocol.max_size = TLS_READ_BUFFER  # type: ignore[attr-defined]


_bound_tls_read_buffers()


@dataclass(frozen=True)
class TlsCredentials:
    """Our own key and certificate, and the CA certificates we trust for peers."""

    key: object = field(repr=False)  # an Ed25519 (or EC) private key from ``cryptography``
    cert: x509.Certificate
    ca_certs: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        if not self.ca_certs:
            raise ValueError("at least one trusted CA certificate is needed")


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _base_context(creds: TlsCredentials, purpose: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=b"".join(_pem(c) for c in creds.ca_certs).decode("ascii"))
    _load_identity(ctx, creds)
    return ctx


def _load_identity(ctx: ssl.SSLContext, creds: TlsCredentials) -> None:
    password = secrets.token_bytes(32).hex().encode("ascii")
    key_pem = creds.key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    with tempfile.TemporaryDirectory(prefix="secchat-tls-") as tmp:
        os.chmod(tmp, 0o700)
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        with open(cert_path, "wb") as f:
            f.write(_pem(creds.cert))
        try:
            ctx.load_cert_chain(cert_path, key_path, password=password)
        except ssl.SSLError as exc:
            raise ValueError(f"cannot load our key and certificate into TLS: {exc.reason}") from None


def server_context(creds: TlsCredentials) -> ssl.SSLContext:
    """Context for accepted connections: TLS 1.3, client certificate required."""
    return _base_context(creds, ssl.PROTOCOL_TLS_SERVER)


def client_context(creds: TlsCredentials) -> ssl.SSLContext:
    """Context for outbound connections: TLS 1.3, server certificate required."""
    return _base_context(creds, ssl.PROTOCOL_TLS_CLIENT)


def describe_certificate(der: bytes | None) -> str:
    """A printable, secret-free description of a peer certificate for log lines."""
    if not der:
        return "no certificate"
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return "unparsable certificate"

    def cn(name: x509.Name) -> str:
        attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
        value = attrs[0].value if attrs else "?"
        return str(value)[:64].encode("ascii", "backslashreplace").decode("ascii")

    return f"CN={cn(cert.subject)!r} issuer={cn(cert.issuer)!r}"


class PinSet:
    """Which certificate (DER bytes) belongs to which peer name."""

    def __init__(self, pins: Mapping[str, bytes] | Iterable[tuple[str, bytes]] = ()) -> None:
        self._by_name: dict[str, bytes] = {}
        self._by_der: dict[bytes, str] = {}
        items = pins.items() if isinstance(pins, Mapping) else pins
        for name, der in items:
            self.add(name, der)

    def add(self, name: str, der: bytes) -> None:
        """Pin ``der`` to ``name``; a name or certificate pinned twice differently is refused."""
        der = bytes(der)
        if self._by_name.get(name, der) != der:
            raise ValueError(f"peer {name!r} is already pinned to another certificate")
        if self._by_der.get(der, name) != name:
            raise ValueError(f"this certificate is already pinned to {self._by_der[der]!r}")
        self._by_name[name] = der
        self._by_der[der] = name

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def names(self) -> list[str]:
        return list(self._by_name)

    def der(self, name: str) -> bytes:
        """The certificate pinned for ``name`` (``KeyError`` if none)."""
        return self._by_name[name]

    def identify(self, der: bytes | None) -> str:
        """The peer name pinned to this certificate, for an accepted connection."""
        name = self._by_der.get(bytes(der or b""))
        if name is None:
            raise AuthenticationError(
                f"certificate is not pinned for any member ({describe_certificate(der)})",
                code="not_pinned",
            )
        return name

    def check(self, name: str, der: bytes | None) -> None:
        """Refuse unless ``der`` is exactly the certificate pinned for ``name``."""
        expected = self._by_name.get(name)
        if expected is None or expected != bytes(der or b""):
            raise AuthenticationError(
                f"peer at the address of {name!r} presented {describe_certificate(der)},"
                " not the certificate pinned for it",
                code="pin_mismatch",
            )


def peer_certificate(ssl_object: object) -> bytes | None:
    """The DER certificate of the peer of an established TLS connection."""
    with contextlib.suppress(AttributeError, ValueError):
        return ssl_object.getpeercert(binary_form=True)  # type: ignore[attr-defined]
    return None
