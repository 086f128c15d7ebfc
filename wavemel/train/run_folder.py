"""The run folder's lifecycle: one place that decides what a folder is and what may be done to it.

A run folder is what ``wavemel train`` and ``wavemel combine`` write: ``config.json``,
``metrics.jsonl`` (and ``noisy.jsonl``), ``best.*``, ``last.*``, ``state/``, ``finished.json`` and
the evaluation files, plus two files of its own: ``.wavemel-run`` (the marker that says wavemel
made the folder) and ``.lock`` (held with ``flock`` while a process trains there).

:func:`inspect_run_folder` classifies a path as one of

- ``absent``: nothing there (or an empty folder): a new run may start;
- ``foreign``: something wavemel did not write: never cleared, not even with ``--force``;
- ``incomplete``: a run folder without resume state (stopped before its first epoch ended);
- ``interrupted``: a run folder with resume state but no ``finished.json`` (``--resume`` continues);
- ``finished``: training ended (``finished.json`` written after the last epoch).

``--force`` removes only the entries wavemel writes and only after the caller has validated
everything else (settings, data, model), so a typo can never cost a user their files.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import re
import shutil
from pathlib import Path
from typing import Any

from wavemel._io import atomic_write_json, make_folder, os_error_reason, read_json
from wavemel.errors import CheckpointError, WavemelError

__all__ = [
    "MARKER",
    "RunFolder",
    "RunStatus",
    "inspect_run_folder",
    "check_not_inside",
    "config_differences",
    "read_finished",
    "saved_config",
]

MARKER = ".wavemel-run"
LOCK = ".lock"
FINISHED = "finished.json"
STATE_DIR = "state"

# Names wavemel writes into a run folder. Folders made before the marker existed count as run
# folders only when every entry matches one of these (and config.json is a wavemel config).
_OWN_NAMES = {
    MARKER,
    LOCK,
    FINISHED,
    "config.json",
    "metrics.jsonl",
    "noisy.jsonl",
    "best.json",
    "best.safetensors",
    "last.json",
    "last.safetensors",
    STATE_DIR,
}
_OWN_PATTERNS = (
    re.compile(r"evaluation[-_].+\.(json|png)"),
    re.compile(r"confusion[-_].+\.png"),
    # Temporary files of wavemel._io.atomic_write_bytes (a killed writer leaves them behind).
    re.compile(r"\..+\.tmp-\d+"),
)
# Keys every wavemel run config has; a stray config.json without them is not ours.
_CONFIG_KEYS = {"out", "epochs", "batch_size"}


def is_own_entry(name: str) -> bool:
    """Whether wavemel writes an entry of this name into a run folder."""
    return name in _OWN_NAMES or any(p.fullmatch(name) for p in _OWN_PATTERNS)


@dataclasses.dataclass(frozen=True)
class RunStatus:
    """What :func:`inspect_run_folder` found.

    Attributes:
        kind: ``absent``, ``foreign``, ``incomplete``, ``interrupted`` or ``finished``.
        path: The folder.
        foreign_entries: Entries wavemel did not write (sorted; shown in messages).
    """

    kind: str
    path: Path
    foreign_entries: tuple[str, ...] = ()

    @property
    def is_run(self) -> bool:
        return self.kind in ("incomplete", "interrupted", "finished")


def _looks_like_legacy_run(path: Path, entries: list[str]) -> bool:
    """An unmarked folder of wavemel's names only, whose config.json (if any) is a run config."""
    if "config.json" not in entries:
        return True
    try:
        config = read_json(path / "config.json", what="run config")
    except WavemelError:
        return False
    return _CONFIG_KEYS <= set(config)


def inspect_run_folder(path: str | os.PathLike) -> RunStatus:
    """Classify ``path`` (see the module docstring); reads, never writes.

    Raises:
        WavemelError: ``path`` exists but is not a folder, or cannot be listed.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return RunStatus("absent", path)
    if not path.is_dir():
        raise WavemelError(f"{path}: exists and is not a folder; choose another --out")
    try:
        entries = sorted(os.listdir(path))
    except OSError as exc:
        raise WavemelError(f"{path}: cannot list the folder ({os_error_reason(exc)})") from None
    if not entries:
        return RunStatus("absent", path)
    foreign = tuple(name for name in entries if not is_own_entry(name))
    if MARKER not in entries and (foreign or not _looks_like_legacy_run(path, entries)):
        return RunStatus("foreign", path, foreign or tuple(entries))
    if (path / FINISHED).is_file() and (path / "best.json").is_file():
        return RunStatus("finished", path, foreign)
    if (path / STATE_DIR / "state.json").is_file():
        return RunStatus("interrupted", path, foreign)
    return RunStatus("incomplete", path, foreign)


def _shown(entries: tuple[str, ...], limit: int = 3) -> str:
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return ", ".join(repr(e) for e in entries[:limit]) + more


def check_not_inside(out: str | os.PathLike, protected: dict[str, str | os.PathLike]) -> None:
    """Refuse an output folder that is, contains or lies inside one of the ``protected`` runs.

    Args:
        out: The run folder about to be written (and perhaps cleared).
        protected: Option name -> run folder or checkpoint that must survive (e.g. the branches
            of ``combine``).

    Raises:
        WavemelError: ``out`` overlaps one of them (the message names the option).
    """
    target = Path(out).expanduser().resolve()
    for option, given in protected.items():
        run = Path(given).expanduser().resolve()
        run = run if run.is_dir() or not run.suffix else run.parent
        if target == run or run in target.parents or target in run.parents:
            raise WavemelError(
                f"{out}: --out overlaps the {option} run {given}; writing there would destroy "
                "it, choose another --out"
            )


class RunFolder:
    """A run folder being trained in: checks, lock, the marker, ``--force`` and ``finished``.

    Use it in two steps, so that ``--force`` clears nothing until everything else is known good::

        run = RunFolder.claim(out, force=..., resume=...)   # checks + lock, writes nothing
        ...                                                 # load data, build the model
        run.start(config_dict)                              # clear own files, marker, config
        ...                                                 # train
        run.finish(summary)
        run.release()

    Only the process that claims a folder holds its lock; under ``torchrun`` that is rank 0.
    """

    def __init__(self, path: Path, status: RunStatus, force: bool, resume: bool) -> None:
        self.path = path
        self.status = status
        self.force = force
        self.resume = resume
        self._lock_fd: int | None = None

    @classmethod
    def check(cls, out: str | os.PathLike, *, force: bool, resume: bool) -> RunFolder:
        """Check that ``out`` may be used as asked, without writing or locking anything.

        Raises:
            WavemelError: A foreign or non-empty folder without ``--force``/``--resume``, a
                non-folder, or ``--force`` on a folder wavemel did not make.
            CheckpointError: ``--resume`` of a folder without resume state.
        """
        path = Path(out)
        status = inspect_run_folder(path)
        if status.kind == "foreign":
            raise WavemelError(
                f"{path}: folder is not empty and is not a wavemel run folder (it holds "
                f"{_shown(status.foreign_entries)}); refusing to touch it even with --force, "
                "choose another --out"
            )
        if resume:
            # A finished run resumes to a no-op (nothing left to train), as it always has.
            if status.kind not in ("interrupted", "finished"):
                reason = {
                    "absent": "no run there",
                    "incomplete": "no state/ from a finished epoch",
                }[status.kind]
                raise CheckpointError(
                    f"{path}: nothing to resume ({reason}); start a new run with --force"
                )
        elif status.kind != "absent" and not force:
            raise WavemelError(
                f"{path}: run folder exists and is not empty; pass --force to overwrite it "
                "or --resume to continue it"
            )
        return cls(path, status, force, resume)

    @classmethod
    def claim(cls, out: str | os.PathLike, *, force: bool, resume: bool) -> RunFolder:
        """:meth:`check`, then take the folder's lock if it exists (see :meth:`start`)."""
        run = cls.check(out, force=force, resume=resume)
        if run.status.kind != "absent":
            run._lock()
        return run

    def _lock(self) -> None:
        if self._lock_fd is not None:
            return
        lock_path = self.path / LOCK
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise WavemelError(f"{lock_path}: cannot create ({os_error_reason(exc)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                owner = _read_lock_owner(lock_path)
                raise WavemelError(
                    f"{self.path}: another wavemel process{owner} is using this run folder; "
                    "wait for it to end or choose another --out"
                ) from None
            raise WavemelError(f"{lock_path}: cannot lock ({os_error_reason(exc)})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def start(self, config: dict[str, Any]) -> None:
        """Create (or, with ``--force``, clear) the folder and write the marker and config.

        Call only after the settings, the data and the model have been validated. A resumed
        run keeps everything.
        """
        make_folder(self.path)
        self._lock()
        if self.resume:
            return
        if self.status.is_run:
            self._clear_own_entries()
        atomic_write_json(self.path / MARKER, {"kind": "run"})
        atomic_write_json(self.path / "config.json", config, sort_keys=True)

    def _clear_own_entries(self) -> None:
        for name in os.listdir(self.path):
            if name in (LOCK, MARKER) or not is_own_entry(name):
                continue
            entry = self.path / name
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except OSError as exc:
                raise WavemelError(f"{entry}: cannot remove ({os_error_reason(exc)})") from None

    def finish(self, summary: dict[str, Any]) -> None:
        """Write ``finished.json``: the run ended (all epochs, or an early stop)."""
        atomic_write_json(self.path / FINISHED, summary)

    def release(self) -> None:
        """Drop the lock (also dropped by the OS when the process ends)."""
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_lock_owner(lock_path: Path) -> str:
    try:
        pid = lock_path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def read_finished(path: str | os.PathLike) -> dict[str, Any] | None:
    """``finished.json`` of a run folder, or ``None`` when the run has not finished."""
    file = Path(path) / FINISHED
    if not file.is_file():
        return None
    return read_json(file, what="run summary")


def config_differences(
    path: str | os.PathLike, wanted: dict[str, Any], ignore: tuple[str, ...] = ()
) -> list[str]:
    """The settings (not ``None`` in ``wanted``) on which a run folder's config.json differs."""
    saved = saved_config(path) or {}
    return sorted(
        key
        for key, value in wanted.items()
        if key not in ignore and value is not None and saved.get(key) != value
    )


def saved_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``config.json`` of a run folder, or ``None`` when there is none."""
    file = Path(path) / "config.json"
    if not file.exists():
        return None
    return read_json(file, what="run config")
