"""Making text from a peer or from the directory safe to show on a terminal: :func:`safe`.

Why one function: a conference id, a member name, a chat line or an error message that a
directory or a peer chose is hostile until shown (issue 8, SPEC "Standards").  An ESC starts a
CSI or OSC sequence that can clear the screen, retitle the window or forge a line; C1 controls do
the same on some terminals; bidi overrides and isolates reorder what is shown (a name that reads
as another); newlines forge whole lines (a fake "* key established"); zero-width and other format
characters make two different names look alike.  Every interface (the CLI, the chat UI) passes
such text through :func:`safe`, so there is one rule and one place to get it right.

The rule: a character Python does not consider printable (``str.isprintable``: the categories
Cc, Cf, Cs, Co, Cn, Zl, Zp and every space but U+0020) is shown as a visible escape (``\\x1b``,
``\\u202e``, ``\\n``), never passed through and never silently dropped, so the user sees that
something was there.  The result has no character a terminal interprets, and is at most about
``max_len`` characters of the input long.
"""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_LEN", "safe"]

#: Names, ids and error messages are short; callers showing chat text pass a larger limit.
DEFAULT_MAX_LEN = 512

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ELLIPSIS = "\N{HORIZONTAL ELLIPSIS}"


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe(text: object, *, max_len: int = DEFAULT_MAX_LEN) -> str:
    """``text`` (``str()`` of it) as a single terminal-safe line: every character that a terminal
    could interpret or that is invisible shown as an escape, and the input cut at ``max_len``
    characters (marked with an ellipsis)."""
    s = text if isinstance(text, str) else str(text)
    cut = len(s) > max_len
    if cut:
        s = s[:max_len]
    if not s.isprintable():
        s = "".join(c if c.isprintable() else _escape(c) for c in s)
    return s + _ELLIPSIS if cut else s
