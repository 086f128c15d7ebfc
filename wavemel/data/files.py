"""Finding audio files: the one walk over given paths and folders that every command uses.

``wavemel predict`` (files and folders given on the command line), the folder-per-class and
file-name-pattern adapters, and so ``wavemel data inspect`` and ``wavemel train``, all find their
files here, so they agree on what counts as an audio file and report the same entries:

- A file given by name is taken whatever its extension; inside folders, only names with an
  extension of :data:`~wavemel.audio.AUDIO_EXTENSIONS` are, and hidden entries (a leading ``.``)
  are skipped.
- Nothing is opened. An audio-named entry that is not a regular file (a FIFO, a device, a
  folder named ``x.wav`` given as a file) is a :class:`~wavemel.data.records.Problem`, and so is
  any link that cannot be followed (broken, or a loop), whatever its name: it may have been a
  folder of clips. The other entries of the folder are still found.
- Linked folders are followed, each real folder once, so a link back up cannot loop forever.
- A file reached twice (given twice, or two names of one file) is listed once, at the first.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from wavemel._io import os_error_reason
from wavemel._paths import display_path
from wavemel.audio import AUDIO_EXTENSIONS, check_audio_path
from wavemel.data.records import Problem
from wavemel.errors import AudioError

__all__ = [
    "file_problem",
    "find_audio_files",
    "is_audio_name",
    "iter_audio_files",
    "walk_audio_files",
]

_FileKey = tuple[int, int]  # (st_dev, st_ino): one file however it is spelled


def is_audio_name(path: str | os.PathLike) -> bool:
    """Whether a file name has one of :data:`~wavemel.audio.AUDIO_EXTENSIONS` (any case)."""
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def file_problem(path: str | os.PathLike) -> Problem | None:
    """Why decoding must not open ``path``, checked without opening it; ``None`` if it may.

    Returns:
        ``None`` for a regular file, else a :class:`Problem` of kind ``missing`` (nothing
        there) or ``not_a_file`` (a folder, FIFO, device, broken link or link loop).
    """
    path = Path(path)
    try:
        check_audio_path(path)
    except AudioError as exc:
        kind = "not_a_file" if os.path.lexists(path) else "missing"
        # A Problem names the file itself; keep only the reason.
        return Problem(path, kind, str(exc).removeprefix(f"{display_path(path)}: "))
    return None


def find_audio_files(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Problem]]:
    """The audio files among ``paths``: files as given, folders searched recursively.

    Args:
        paths: Files and folders, e.g. from the command line.

    Returns:
        ``(files, problems)``: ``files`` in the order given, each folder's files sorted by
        path; ``problems`` names each given path that does not exist (kind ``missing``) and
        each entry that is not a regular file (kind ``not_a_file``), with a one-line reason.
    """
    files: list[Path] = []
    problems: list[Problem] = []
    seen: set[_FileKey] = set()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            _collect(iter_audio_files(path), files, problems, seen)
            continue
        problem = file_problem(path)
        if problem is not None:
            problems.append(problem)
            continue
        info = os.stat(path)
        _collect([(path, (info.st_dev, info.st_ino))], files, problems, seen)
    return files, problems


def walk_audio_files(
    folder: str | os.PathLike, *, recursive: bool = True
) -> tuple[list[Path], list[Problem]]:
    """The audio files in a folder (and, with ``recursive``, below it), sorted by path.

    Args:
        folder: The folder to search.
        recursive: Search sub-folders (linked ones too, each real folder once).

    Returns:
        ``(files, problems)`` as in :func:`find_audio_files`; a (sub-)folder that cannot be
        listed is a problem of kind ``unreadable``.
    """
    files: list[Path] = []
    problems: list[Problem] = []
    _collect(iter_audio_files(Path(folder), recursive=recursive), files, problems, set())
    return files, problems


def iter_audio_files(
    folder: str | os.PathLike, *, recursive: bool = True
) -> Iterator[tuple[Path, _FileKey] | Problem]:
    """Lazily yield ``(path, file key)`` per audio file and a :class:`Problem` per bad entry.

    For callers that stop at the first file (layout detection); others use
    :func:`walk_audio_files`. Entries are visited by name, depth first, which is the order of
    ``sorted()`` on the paths, so no list of a whole tree is ever sorted.
    """
    return _walk(Path(folder), recursive, visited=set())


def _walk(
    folder: Path, recursive: bool, visited: set[_FileKey]
) -> Iterator[tuple[Path, _FileKey] | Problem]:
    try:
        info = os.stat(folder)
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as exc:
        yield Problem(folder, "unreadable", f"cannot list folder ({os_error_reason(exc)})")
        return
    visited.add((info.st_dev, info.st_ino))
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            target = os.stat(path)  # links followed
        except OSError as exc:
            if entry.is_symlink() or is_audio_name(path):
                yield Problem(path, "not_a_file", _link_reason(path, exc))
            continue
        key = (target.st_dev, target.st_ino)
        if stat.S_ISDIR(target.st_mode):
            if recursive and key not in visited:
                yield from _walk(path, recursive, visited)
        elif is_audio_name(path):
            problem = file_problem(path)
            yield (path, key) if problem is None else problem


def _collect(
    items: Iterable[tuple[Path, _FileKey] | Problem],
    files: list[Path],
    problems: list[Problem],
    seen: set[_FileKey],
) -> None:
    """Append found files not seen before to ``files`` and problems to ``problems``."""
    for item in items:
        if isinstance(item, Problem):
            problems.append(item)
        elif item[1] not in seen:
            seen.add(item[1])
            files.append(item[0])


def _link_reason(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if isinstance(exc, FileNotFoundError) and os.path.islink(path):
        return "broken symbolic link"
    return f"cannot read ({os_error_reason(exc)})"
