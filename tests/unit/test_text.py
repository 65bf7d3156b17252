"""``secchat.text.safe``: whatever a peer or the directory sends is shown, never obeyed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secchat.text import DEFAULT_MAX_LEN, safe


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text, é, 日本, 😀", "plain text, é, 日本, 😀"),
        ("\x1b[2J\x1b[31mred", "\\x1b[2J\\x1b[31mred"),  # CSI
        ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),  # OSC retitling the window
        ("\x9b31m", "\\x9b31m"),  # C1 CSI
        ("line\nforged * key established\r", "line\\nforged * key established\\r"),
        ("a\tb\x00c\x7f", "a\\tb\\x00c\\x7f"),
        ("alice\u202eecila", "alice\\u202eecila"),  # right-to-left override
        ("\u2066x\u2069\u200e\u061c", "\\u2066x\\u2069\\u200e\\u061c"),  # isolates, marks
        ("bo\u200bb\ufeff\u2060", "bo\\u200bb\\ufeff\\u2060"),  # zero-width
        ("\u2028\u2029", "\\u2028\\u2029"),
        ("\udc80", "\\udc80"),  # a lone surrogate (surrogateescape'd bytes)
        ("\U000e0041", "\\U000e0041"),  # a tag character (invisible)
    ],
)
def test_unsafe_characters_are_shown_as_escapes(raw, shown):
    assert safe(raw) == shown


def test_long_text_is_cut_and_marked():
    assert safe("x" * (DEFAULT_MAX_LEN + 5)) == "x" * DEFAULT_MAX_LEN + "\N{HORIZONTAL ELLIPSIS}"
    assert safe("abcdef", max_len=3) == "abc\N{HORIZONTAL ELLIPSIS}"
    assert safe("abc", max_len=3) == "abc"


def test_non_strings_are_shown_by_str():
    assert safe(42) == "42"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec=None), max_size=200))
def test_output_has_only_printable_characters(text):
    out = safe(text)
    assert out.isprintable()
    assert len(out) <= 10 * len(text) + 1
