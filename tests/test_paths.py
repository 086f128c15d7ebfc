"""``display_path``: every file name shown as one printable line, no two names shown alike."""

from __future__ import annotations

import os

import pytest

from wavemel._paths import display_path


@pytest.mark.parametrize(
    "raw,shown",
    [
        (b"clips/dog bark, 2.wav", "clips/dog bark, 2.wav"),  # printable UTF-8: unchanged
        ("clips/caf\u00e9.wav".encode(), "clips/caf\u00e9.wav"),
        (b"x_\xff.wav", "x_\\xff.wav"),  # not UTF-8
        (b"two\nlines.wav", "two\\nlines.wav"),
        (b"tab\there.wav", "tab\\there.wav"),
        (b"esc\x1b.wav", "esc\\x1b.wav"),
        (b"back\\xff.wav", "back\\\\xff.wav"),  # a literal backslash cannot pass for an escape
    ],
)
def test_display_path(raw, shown):
    for given in (raw, os.fsdecode(raw)):
        text = display_path(given)
        assert text == shown
        text.encode("utf-8")  # never a lone surrogate
        assert "\n" not in text


def test_different_names_are_shown_differently():
    names = [b"a\xff.wav", b"a\\xff.wav", b"a\\\\xff.wav", "a\u00ff.wav".encode()]
    assert len({display_path(name) for name in names}) == len(names)
