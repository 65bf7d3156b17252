"""The exception family of the network layer.

Why: callers of :mod:`secchat.net` catch :class:`LinkError` and its subclasses only.  Foreign
exceptions (``ssl.SSLError``, ``OSError``, ``asyncio.IncompleteReadError``, timeouts) are
translated where they enter, by :func:`map_exceptions`, the way httpcore does it, so no
``ssl``-specific handling leaks into the runtime or the application.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator

__all__ = [
    "AuthenticationError",
    "ConnectError",
    "FrameError",
    "LinkClosed",
    "LinkError",
    "LinkTimeout",
    "map_exceptions",
]


class LinkError(Exception):
    """Something went wrong on an authenticated link; ``code`` names what, for counters and logs."""

    code = "link_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class FrameError(LinkError):
    """The peer sent bytes that are not a valid frame (garbage, oversized, truncated)."""

    code = "bad_frame"


class AuthenticationError(LinkError):
    """The TLS handshake failed or the peer's certificate is not the one pinned for it."""

    code = "refused"


class ConnectError(LinkError):
    """The peer could not be reached (refused, unreachable, reset during connect)."""

    code = "connect_failed"


class LinkClosed(LinkError):
    """The connection ended (EOF, reset, truncated frame at EOF)."""

    code = "closed"


class LinkTimeout(LinkError):
    """A connect or a handshake took longer than configured."""

    code = "timeout"


@contextlib.contextmanager
def map_exceptions(*, connecting: bool = False) -> Iterator[None]:
    """Translate foreign exceptions into :class:`LinkError` subclasses.

    ``connecting`` says whether we are still opening the connection (an ``OSError`` then means
    the peer is unreachable rather than that an established link broke).  The translated error
    is raised outside the handler and the foreign one loses its traceback: its frames hold the
    transport and the futures that hold it, a reference cycle that would keep every refused
    connection in memory until the collector runs.
    """
    error: LinkError | None = None
    try:
        yield
    except LinkError:
        raise
    except (ssl.SSLError, asyncio.IncompleteReadError, OSError) as exc:
        error = _translate(exc, connecting)
        exc.__traceback__ = None
    if error is not None:
        try:
            raise error
        finally:
            error = None  # this frame must not hold the error whose traceback holds the frame


def _translate(exc: BaseException, connecting: bool) -> LinkError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or getattr(exc, "reason", None) or "certificate verification failed"
        return AuthenticationError(f"certificate verification failed: {reason}", code="bad_certificate")
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or exc.__class__.__name__
        if connecting:
            return AuthenticationError(f"TLS handshake failed: {reason}", code="handshake_failed")
        return LinkClosed(f"TLS error: {reason}", code="tls_error")
    if isinstance(exc, asyncio.IncompleteReadError):
        return LinkClosed(f"connection closed after {len(exc.partial)} of {exc.expected} bytes", code="truncated")
    if isinstance(exc, TimeoutError):
        return LinkTimeout("timed out")
    assert isinstance(exc, OSError)
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        if connecting:
            return ConnectError(f"connection failed: {exc.strerror or exc}")
        return LinkClosed(f"connection lost: {exc.strerror or exc}", code="reset")
    if connecting:
        return ConnectError(f"connection failed: {exc.strerror or exc}")
    return LinkClosed(f"connection error: {exc.strerror or exc}", code="os_error")
