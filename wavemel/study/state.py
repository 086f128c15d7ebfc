"""``OUT/state.json``: what a study was made with and which of its runs are finished.

The state is what makes a study resumable: a second invocation with the same settings picks it
up and skips the finished runs; other settings in the same folder are refused unless ``--force``
discards the old study. Only the study's own entries (:data:`STUDY_ENTRIES`) are ever removed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wavemel._io import atomic_write_json, read_json
from wavemel.errors import DataError

__all__ = [
    "STATE_VERSION",
    "STUDY_ENTRIES",
    "StudyState",
    "open_study",
    "read_study_json",
    "write_study_json",
]

STATE_VERSION = 1
#: Files and folders a study writes into OUT; --force removes exactly these.
STUDY_ENTRIES = ("runs", "state.json", "results.json", "report.md", "figures", "cache")


def write_study_json(path: Path, payload: Any) -> None:
    """Atomic: an interrupted study never leaves a half-written state or result file."""
    atomic_write_json(path, payload, sort_keys=True, error=DataError)


def read_study_json(path: Path, what: str = "study file") -> dict[str, Any]:
    """A JSON object the study wrote (state, evaluation, baseline), one-line error if broken."""
    return read_json(path, error=DataError, what=what)


@dataclass
class StudyState:
    """The settings a study was made with, its finished runs and its invocations.

    Attributes:
        path: ``OUT/state.json``.
        settings: everything that makes finished runs reusable (data, format, preset sizes).
        runs: ``{run folder relative to OUT: {"trained": True, "train_wall_s": s}}``.
        invocations: ``[{"command", "started_at", "wall_s"}]``, one per finished invocation.
    """

    path: Path
    settings: dict
    runs: dict[str, dict] = field(default_factory=dict)
    invocations: list[dict] = field(default_factory=list)

    def save(self) -> None:
        payload = {
            "format_version": STATE_VERSION,
            "settings": self.settings,
            "runs": self.runs,
            "invocations": self.invocations,
        }
        write_study_json(self.path, payload)


def open_study(out: Path, settings: dict, force: bool) -> StudyState:
    """Pick up the study in ``out`` or start one there.

    Args:
        out: The study folder (created if missing).
        settings: This invocation's settings (JSON-normalised, so they compare with the file).
        force: Discard a previous study (or an unreadable state file) instead of refusing.

    Returns:
        The previous state when ``out`` holds a study with the same settings, else a new one.

    Raises:
        DataError: ``out`` is not a folder, holds other files but no study, holds a study made
            with other settings, or its ``state.json`` is unreadable (all without ``force``).
    """
    state_path = out / "state.json"
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if state_path.exists() or state_path.is_symlink():
        if force:
            # Not read first: --force is the way out of a corrupt state file too.
            _clear_study(out)
        else:
            previous = _read_state(state_path)
            _require_same_settings(out, previous["settings"], settings)
            return StudyState(state_path, settings, previous["runs"], previous["invocations"])
    elif out.exists() and any(out.iterdir()):
        if not force:
            raise DataError(
                f"{out}: exists, is not empty and holds no study (state.json); choose another --out"
                " or pass --force"
            )
        _clear_study(out)
    out.mkdir(parents=True, exist_ok=True)
    state = StudyState(path=state_path, settings=settings)
    state.save()
    return state


def _read_state(path: Path) -> dict[str, Any]:
    try:
        previous = read_study_json(path, what="study state")
    except DataError as exc:
        raise DataError(f"{exc}; pass --force to start over") from None
    parts = {"settings": dict, "runs": dict, "invocations": list}
    for name, kind in parts.items():
        previous.setdefault(name, kind())
        if not isinstance(previous[name], kind):
            raise DataError(f"{path}: malformed study state ({name}); pass --force to start over")
    return previous


def _require_same_settings(out: Path, old: dict, new: dict) -> None:
    changed = sorted(k for k in set(new) | set(old) if new.get(k) != old.get(k))
    if changed:
        raise DataError(
            f"{out}: holds a study made with other settings ({', '.join(changed)}); "
            "pass --force to discard it or choose another --out"
        )


def _clear_study(out: Path) -> None:
    for name in STUDY_ENTRIES:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
