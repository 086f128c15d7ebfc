"""Small file helpers every layer uses: atomic writes, safe JSON reading, JSON encoding.

Everything wavemel writes goes through :func:`atomic_write_bytes` (or its text/JSON wrappers), so
a crash or a full disk never leaves a half-written file under the real name, and a failed write
is one :class:`~wavemel.errors.WavemelError` line naming the file instead of a traceback.

:func:`read_json` is the one reader of JSON that a user may have touched (run configs,
checkpoint metadata, study state). It refuses what is not a regular file before opening it (a
FIFO would block forever, ``/dev/zero`` never ends), caps the size, and turns malformed or absurdly
nested documents into one line naming the file.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from wavemel._paths import display_path
from wavemel.errors import WavemelError

__all__ = [
    "MAX_JSON_BYTES",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "json_default",
    "make_folder",
    "os_error_reason",
    "read_json",
    "require_regular_file",
]

#: Larger JSON files than this are refused: wavemel's own are a few hundred KiB at most.
MAX_JSON_BYTES = 64 * 1024 * 1024


def os_error_reason(exc: OSError) -> str:
    """A short reason for an OS error, with the common disk problems spelled out."""
    if exc.errno == errno.ENOSPC:
        return "no space left on the disk"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    return exc.strerror or type(exc).__name__


def make_folder(path: str | os.PathLike, *, error: type = WavemelError) -> Path:
    """Create ``path`` and its parents if needed.

    Raises:
        error: One line naming the folder (permissions, a file in the way, a full disk, ...).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(
            f"{display_path(path)}: cannot create the folder ({os_error_reason(exc)})"
        ) from None
    return path


def json_default(value: Any) -> Any:
    """``json.dumps`` fallback for the values configs and metadata carry (paths, numpy)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"a value of type {type(value).__name__} is not JSON-able")


def temp_name(path: Path) -> Path:
    """The hidden temporary name that :func:`atomic_write_bytes` writes ``path`` under."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, error: type = WavemelError) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it into place.

    Raises:
        error: The write failed (disk full, permissions, ...); the message names ``path`` and
            the temporary file is removed, so nothing is left behind.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise error(f"{path}: cannot write ({os_error_reason(exc)})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str, *, error: type = WavemelError) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"), error=error)


def atomic_write_json(
    path: str | os.PathLike, payload: Any, *, sort_keys: bool = False, error: type = WavemelError
) -> None:
    """Atomically write ``payload`` as indented JSON (paths and numpy values converted)."""
    text = json.dumps(payload, indent=2, sort_keys=sort_keys, default=json_default) + "\n"
    atomic_write_text(path, text, error=error)


def require_regular_file(
    path: str | os.PathLike, *, error: type = WavemelError, what: str = "file"
):
    """``os.stat`` of ``path`` after checking it is a regular file (without opening it).

    Opening a FIFO blocks until a writer appears and a device such as ``/dev/zero`` never ends,
    so both are refused here, as are folders, sockets and missing files.

    Raises:
        error: ``path`` is missing, a broken link, a link loop or not a regular file.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise error(f"{path}: broken symbolic link") from None
        raise error(f"{path}: {what} not found") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{path}: symbolic link loop") from None
        raise error(f"{path}: cannot read ({os_error_reason(exc)})") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{path}: is a folder, expected a {what}")
    if not stat.S_ISREG(info.st_mode):
        kind = "named pipe (FIFO)" if stat.S_ISFIFO(info.st_mode) else "special file"
        raise error(f"{path}: is a {kind}, expected a {what}")
    return info


def read_json(
    path: str | os.PathLike,
    *,
    error: type = WavemelError,
    what: str = "JSON file",
    max_bytes: int = MAX_JSON_BYTES,
) -> dict[str, Any]:
    """Read a JSON object from a regular file, refusing anything that is not one.

    Args:
        path: The file.
        error: The :class:`WavemelError` subclass to raise.
        what: How to call the file in messages ("run config", "checkpoint metadata", ...).
        max_bytes: Files larger than this are refused without being read.

    Returns:
        The parsed object (``NaN`` / ``Infinity`` literals are accepted as floats; callers
        validate their fields).

    Raises:
        error: One line naming ``path``: missing, not a regular file, too large, not UTF-8,
            not JSON, nested too deeply, or not an object.
    """
    info = require_regular_file(path, error=error, what=what)
    if info.st_size > max_bytes:
        raise error(f"{path}: {what} is {info.st_size} bytes, over the {max_bytes}-byte limit")
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read ({os_error_reason(exc)})") from None
    if len(data) > max_bytes:
        raise error(f"{path}: {what} is over the {max_bytes}-byte limit")
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{path}: {what} is not UTF-8 text") from None
    except RecursionError:
        raise error(f"{path}: {what} is nested too deeply") from None
    except ValueError as exc:
        raise error(f"{path}: corrupt JSON ({exc})") from None
    if not isinstance(value, dict):
        raise error(f"{path}: {what} must hold a JSON object, got {type(value).__name__}")
    return value
