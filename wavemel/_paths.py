"""How a file's name is shown to people: every name printable, no two names shown alike.

A POSIX file name is bytes. Python hands a name that is not valid UTF-8 over as a string with
lone surrogates (``b"x_\\xff.wav"`` -> ``"x_\\udcff.wav"``): the file opens fine, but printing
that string to a UTF-8 terminal raises, and a newline in a name would split a one-line message.
Every message, report, JSON document and CSV cell that names a file uses :func:`display_path`.
"""

from __future__ import annotations

import os

__all__ = ["display_path"]


def display_path(path: str | bytes | os.PathLike) -> str:
    """The name of ``path`` as one line of printable text, with escapes where needed.

    A name that is printable UTF-8 without a backslash is returned unchanged. Otherwise each
    byte that is not valid UTF-8 becomes ``\\xNN``, each control or other unprintable character
    its Python escape (``\\n``, ``\\t``, ``\\x1b``, ``\\u200b``) and each backslash ``\\\\``, so
    the shown form is unambiguous: two different names never look the same.

    Args:
        path: A file name as ``str`` (possibly holding surrogate escapes), ``bytes`` or path.

    Returns:
        The displayable text, e.g. ``"clips/x_\\xff.wav"`` for the bytes ``clips/x_<0xff>.wav``.
    """
    text = os.fsdecode(os.fsencode(path))
    if text.isprintable() and "\\" not in text:
        return text
    parts = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that surrogateescape could not decode
            parts.append(f"\\x{code - 0xDC00:02x}")
        elif char == "\\":
            parts.append("\\\\")
        elif not char.isprintable():
            parts.append(char.encode("unicode_escape").decode("ascii"))
        else:
            parts.append(char)
    return "".join(parts)
