"""Type checks of dataclass fields from their annotations, for values read from JSON.

Run configs (``RUN/config.json``) and model configs (inside a checkpoint's JSON) are plain JSON
that a user may have edited. A field of the wrong type must be refused with one line naming it,
before any arithmetic or tensor allocation trips over it: ``"16"`` channels, ``NaN`` seconds or a
``1e400`` learning rate (JSON's ``1e400`` parses as infinity).

Understood annotations: ``int``, ``float`` (an integer is accepted; the value must be finite),
``str``, ``bool``, ``X | None`` and ``tuple[X, ...]`` / ``list[X]`` (a JSON list). Python's
``bool`` is an ``int``, so ``true`` is refused explicitly where a number is wanted, as ``1`` is
where a boolean is.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

__all__ = ["check_field_types", "describe", "fits"]

_NAMES = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}


def describe(hint: Any) -> str:
    """What a value of annotation ``hint`` must be, in words ("an integer or null", ...)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [describe(arg) for arg in args if arg is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin in (tuple, list):
        return f"a list of {_plural(describe(args[0]))}" if args else "a list"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _plural(words: str) -> str:
    return {
        "an integer": "integers",
        "a finite number": "finite numbers",
        "a string": "strings",
        "true or false": "booleans",
    }.get(words, words)


def fits(hint: Any, value: Any) -> bool:
    """Whether ``value`` (parsed JSON) is of the type annotation ``hint`` describes."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits(arg, value) for arg in args)
    if hint is type(None):
        return value is None
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        return all(fits(args[0], item) for item in value) if args else True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    return True  # an annotation this module does not know: left to the caller's checks


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_field_types(
    classes: type | tuple[type, ...], values: dict[str, Any], *, error: type, source: str
) -> None:
    """Raise ``error("SOURCE: field 'X' must be ..., got ...")`` for the first ill-typed field.

    Args:
        classes: A dataclass, or several: then a value is accepted when it fits the field's
            annotation in any of them that has the field (a file that may belong to either).
        values: Parsed JSON. Keys that are no field are ignored (callers report unknown keys).
        error: The exception type to raise.
        source: What to name first in the message: the file, or the JSON key it came from.
    """
    hints: dict[str, list[Any]] = {}
    for cls in classes if isinstance(classes, tuple) else (classes,):
        resolved = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            hints.setdefault(field.name, []).append(resolved[field.name])
    for name, value in values.items():
        options = hints.get(name)
        if options and not any(fits(hint, value) for hint in options):
            raise error(
                f"{source}: field {name!r} must be {describe(options[0])}, got {_shown(value)}"
            )
