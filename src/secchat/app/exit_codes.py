"""The exit codes of every ``secchat`` command: one per class of error, the same for all commands.

Why one module: scripts branch on the exit code ("try again later" is not "fix your setup"), so a
code must mean the same thing whichever command returns it.  :func:`exit_code` maps each of our
exception families (and their machine-readable ``code``) to a class; :func:`fail_for` prints the
error's one sentence and returns the :class:`typer.Exit` to raise.  The table is printed by
``secchat --help`` and copied in the README (a test keeps the two equal).
"""

from __future__ import annotations

import enum

import typer

__all__ = ["MEANING", "ExitCode", "epilog", "exit_code", "fail", "fail_for", "table"]


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    SETUP = 3
    PASSPHRASE = 4
    UNREACHABLE = 5
    REFUSED = 6
    UNTRUSTED = 7
    EXISTS = 8
    INTERRUPTED = 130


#: What each code tells a script, in the words of ``secchat --help``.
MEANING: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.FAILURE: "unexpected failure, a bug (SECCHAT_DEBUG=1 shows the traceback)",
    ExitCode.USAGE: "bad command line: unknown option, missing or invalid argument (a time, a name),"
    " not confirmed",
    ExitCode.SETUP: "no profile, identity, key store or CA here, or unreadable files",
    ExitCode.PASSPHRASE: "passphrase wrong, missing, or (a new one) too short",
    ExitCode.UNREACHABLE: "the directory is unreachable or failing: try again later",
    ExitCode.REFUSED: "refused: name taken, no such conference, not a member, not open now",
    ExitCode.UNTRUSTED: "a certificate or answer failed verification, or is not accepted yet",
    ExitCode.EXISTS: "would replace an existing profile, identity or CA",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}

# The ``code`` attribute of our errors, by class (codes not listed fall to the family's default).
_CODES: dict[ExitCode, str] = {
    ExitCode.PASSPHRASE: "wrong_passphrase wrong_ca_passphrase weak_passphrase no_passphrase"
    " empty_passphrase",
    ExitCode.SETUP: "no_profile bad_config no_identity no_key_store no_ca bad_pem corrupt"
    " bad_trust_store no_request listen_failed no_directory_ca",
    ExitCode.UNTRUSTED: "untrusted untrusted_directory bad_signature unknown_ca expired"
    " bad_rotation_signature"
    " not_yet_valid not_a_ca not_a_leaf no_name unsupported_key key_mismatch"
    " fingerprint_mismatch not_accepted certificate_mismatch certificate_changed rollback deleted"
    " bad_record_signature unsigned_record malformed_record malformed_response wrong_conference"
    " oversized_page",
    ExitCode.UNREACHABLE: "directory_down unavailable timeout",
    ExitCode.EXISTS: "exists",
    ExitCode.USAGE: "bad_name bad_fingerprint bad_time_frame too_long ambiguous_conference",
}
_BY_CODE = {code: cls for cls, codes in _CODES.items() for code in codes.split()}


def exit_code(exc: BaseException) -> ExitCode:
    """The class of ``exc``: by its family first where that decides, else by its ``code``."""
    from secchat.directory.client import (
        DirectoryError,
        DirectoryUnavailable,
        UnacceptedCertificates,
        UntrustedResponse,
    )
    from secchat.directory.trust import TrustStoreError

    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if isinstance(exc, DirectoryUnavailable):
        return ExitCode.UNREACHABLE
    if isinstance(exc, UnacceptedCertificates | UntrustedResponse):
        return ExitCode.UNTRUSTED
    if isinstance(exc, TrustStoreError):
        return ExitCode.SETUP
    if isinstance(exc, DirectoryError) and exc.status is not None:
        return ExitCode.REFUSED  # the directory's own refusal: its code is its word, not our class
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code in _BY_CODE:
        return _BY_CODE[code]
    if isinstance(exc, DirectoryError):
        return ExitCode.REFUSED
    return _default_by_family(exc)


def _default_by_family(exc: BaseException) -> ExitCode:
    from secchat import pki
    from secchat.app.history import HistoryError
    from secchat.app.profile import ProfileError
    from secchat.app.session import AppError

    if isinstance(exc, pki.PkiError):
        return ExitCode.UNTRUSTED
    if isinstance(exc, ProfileError | HistoryError):
        return ExitCode.SETUP
    if isinstance(exc, AppError):
        return ExitCode.REFUSED  # the directory's own codes, passed through
    return ExitCode.FAILURE


def fail(message: str, code: ExitCode = ExitCode.FAILURE) -> typer.Exit:
    """Print ``error: message`` on stderr -- terminal-safe: it may quote a peer or the
    directory -- and return the exit to raise."""
    from ..text import safe

    typer.echo(f"error: {safe(message)}", err=True)
    return typer.Exit(int(code))


def fail_for(exc: BaseException, message: str | None = None) -> typer.Exit:
    """Print ``exc``'s sentence (or ``message``) and return the exit its class calls for."""
    return fail(message if message is not None else str(exc), exit_code(exc))


def table() -> list[str]:
    """One line per exit code, as ``secchat --help`` and the README show them."""
    return [f"{int(code):>3}  {MEANING[code]}" for code in ExitCode]


def epilog() -> str:
    """The exit codes for the ``secchat --help`` epilog (paragraphs: Typer rewraps lines)."""
    return "Exit codes:\n\n" + "\n\n".join(table())
