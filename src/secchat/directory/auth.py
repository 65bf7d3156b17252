"""The request-signing scheme of the directory API, shared by client and server.

A signed request carries five headers: the signer's participant name, the directory it is meant
for, a unix timestamp, a random 128-bit nonce and an Ed25519 signature over :func:`request_message`, which binds the directory's
*authority* (below), the method, the path (with query), the timestamp, the nonce and the SHA-256
of the body.  The server refuses a timestamp more than :data:`MAX_SKEW` seconds away from its
clock and a nonce it has seen (nonces are kept in the database until their timestamp leaves the
window).

The authority names the directory the request is meant for: ``scheme://host:port`` of the URL
the client uses (:func:`authority_of`, normalized: lower case, the default port written out), or
a directory name configured on both sides.  The server checks it against the names it answers to
(its own configuration, never the request's ``Host`` header, which the sender chooses), so a
request captured at one directory and replayed at another is refused (``wrong_directory``).  The
header only says which name was signed, so that this refusal has its own code; the signature is
what binds it.

Why our own scheme and not RFC 9421 (HTTP Message Signatures): no maintained Python library of
it is available here, and what we need -- one Ed25519 signature over a canonical encoding of a
few fixed fields, plus replay protection -- is what this module already does in a hundred lines;
RFC 9421 would add structured-field parsing and a Content-Digest header for no gain in what is
checked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from secchat.codec import canonical
from secchat.crypto import CryptoError, Signer, Verifier, digest

__all__ = [
    "HEADER_DIRECTORY",
    "HEADER_NAME",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "MAX_SKEW",
    "AuthError",
    "SignedRequest",
    "authority_of",
    "check_request",
    "parse_auth_headers",
    "request_message",
    "sign_request",
]

MAX_SKEW = 120
HEADER_NAME = "x-secchat-name"
HEADER_DIRECTORY = "x-secchat-directory"
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


_DEFAULT_PORTS = {"http": 80, "https": 443}


def authority_of(url_or_name: str) -> str:
    """The authority a request to this directory signs: ``scheme://host:port`` of a URL (lower
    case, default port explicit, no path), or a configured directory name as it is."""
    if "://" not in url_or_name:
        name = url_or_name.strip()
        if not name:
            raise ValueError("a directory name is not empty")
        return name
    parts = urlsplit(url_or_name)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"not a valid directory URL: {url_or_name!r}") from None
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        raise ValueError(f"not a valid directory URL: {url_or_name!r}")
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port or _DEFAULT_PORTS[scheme]}"


def request_message(
    authority: str, method: str, path: str, timestamp: int, nonce: str, body: bytes
) -> bytes:
    """The bytes a request signature covers (the one definition of the scheme)."""
    return canonical(
        "secchat-directory-request/v2", authority, method.upper(), path, timestamp, nonce, digest(body)
    )


def sign_request(
    signer: Signer,
    name: str,
    authority: str,
    method: str,
    path: str,
    body: bytes,
    *,
    timestamp: int,
    nonce: str,
) -> dict[str, str]:
    """The headers that authenticate one request to the directory ``authority``."""
    signature = signer.sign(request_message(authority, method, path, timestamp, nonce, body))
    return {
        HEADER_NAME: quote(name, safe=""),
        HEADER_DIRECTORY: quote(authority, safe=""),
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: signature.hex(),
    }


@dataclass(frozen=True, slots=True)
class SignedRequest:
    name: str
    authority: str
    timestamp: int
    nonce: str
    signature: bytes


def parse_auth_headers(headers) -> SignedRequest:
    """The authentication headers of a request, or ``AuthError("missing_signature")``."""
    fields = (HEADER_NAME, HEADER_DIRECTORY, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)
    values = [headers.get(h) for h in fields]
    if any(v is None for v in values):
        raise AuthError("missing_signature", "this request must be signed by a registered participant")
    name, authority, ts, nonce, sig = values
    if not _TS_RE.match(ts) or not _NONCE_RE.match(nonce) or not _SIG_RE.match(sig):
        raise AuthError("bad_request_signature", "the request's authentication headers are malformed")
    return SignedRequest(unquote(name), unquote(authority), int(ts), nonce, bytes.fromhex(sig))


def check_request(
    verifier: Verifier,
    auth: SignedRequest,
    authorities: Sequence[str],
    method: str,
    path: str,
    body: bytes,
    *,
    now: float,
) -> None:
    """Refuse a request meant for another directory than one of ``authorities`` (the names this
    directory answers to), a stale timestamp or a bad signature (replays are refused by the
    nonce store)."""
    if auth.authority not in authorities:
        raise AuthError(
            "wrong_directory",
            "the request is signed for another directory; this one is " + ", ".join(authorities),
        )
    if abs(now - auth.timestamp) > MAX_SKEW:
        raise AuthError(
            "stale_request",
            f"the request's timestamp is more than {MAX_SKEW} seconds from the server's clock",
        )
    message = request_message(auth.authority, method, path, auth.timestamp, auth.nonce, body)
    try:
        verifier.verify(message, auth.signature)
    except CryptoError:
        raise AuthError("bad_request_signature", "the request's signature is not valid") from None
