"""The request-signing scheme of the directory API, shared by client and server.

A signed request carries four headers: the signer's participant name, a unix timestamp, a random
128-bit nonce and an Ed25519 signature over :func:`request_message`, which binds the method, the
path (with query), the timestamp, the nonce and the SHA-256 of the body.  The server refuses a
timestamp more than :data:`MAX_SKEW` seconds away from its clock and a nonce it has seen
(nonces are kept in the database until their timestamp leaves the window).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from secchat.codec import canonical
from secchat.crypto import CryptoError, Signer, Verifier, digest

__all__ = [
    "HEADER_NAME",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "MAX_SKEW",
    "AuthError",
    "SignedRequest",
    "check_request",
    "parse_auth_headers",
    "request_message",
    "sign_request",
]

MAX_SKEW = 120
HEADER_NAME = "x-secchat-name"
HEADER_TIMESTAMP = "x-secchat-timestamp"
HEADER_NONCE = "x-secchat-nonce"
HEADER_SIGNATURE = "x-secchat-signature"
_NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
_SIG_RE = re.compile(r"^[0-9a-f]{128}$")
_TS_RE = re.compile(r"^[0-9]{1,15}$")


class AuthError(Exception):
    """A signed request failed a check; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def request_message(method: str, path: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    """The bytes a request signature covers (the one definition of the scheme)."""
    return canonical(
        "secchat-directory-request/v1", method.upper(), path, timestamp, nonce, digest(body)
    )


def sign_request(
    signer: Signer, name: str, method: str, path: str, body: bytes, *, timestamp: int, nonce: str
) -> dict[str, str]:
    """The headers that authenticate one request."""
    signature = signer.sign(request_message(method, path, timestamp, nonce, body))
    return {
        HEADER_NAME: quote(name, safe=""),
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: signature.hex(),
    }


@dataclass(frozen=True, slots=True)
class SignedRequest:
    name: str
    timestamp: int
    nonce: str
    signature: bytes


def parse_auth_headers(headers) -> SignedRequest:
    """The authentication headers of a request, or ``AuthError("missing_signature")``."""
    values = [headers.get(h) for h in (HEADER_NAME, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)]
    if any(v is None for v in values):
        raise AuthError("missing_signature", "this request must be signed by a registered participant")
    name, ts, nonce, sig = values
    if not _TS_RE.match(ts) or not _NONCE_RE.match(nonce) or not _SIG_RE.match(sig):
        raise AuthError("bad_request_signature", "the request's authentication headers are malformed")
    return SignedRequest(unquote(name), int(ts), nonce, bytes.fromhex(sig))


def check_request(
    verifier: Verifier, auth: SignedRequest, method: str, path: str, body: bytes, *, now: float
) -> None:
    """Refuse a stale timestamp or a bad signature (replays are refused by the nonce store)."""
    if abs(now - auth.timestamp) > MAX_SKEW:
        raise AuthError(
            "stale_request",
            f"the request's timestamp is more than {MAX_SKEW} seconds from the server's clock",
        )
    try:
        verifier.verify(request_message(method, path, auth.timestamp, auth.nonce, body), auth.signature)
    except CryptoError:
        raise AuthError("bad_request_signature", "the request's signature is not valid") from None
