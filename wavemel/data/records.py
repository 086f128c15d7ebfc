"""The one record type every dataset adapter produces, and the index that holds them.

Adapters differ in where labels come from (CSV rows, folder names, file names), but trainer,
evaluator and inspector only ever see :class:`ClipRecord` and :class:`DatasetIndex`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wavemel._paths import display_path

__all__ = ["ClipRecord", "DatasetIndex", "Problem", "PROBLEM_KINDS"]

#: Kinds of :class:`Problem` the adapters and the inspector report.
PROBLEM_KINDS = (
    "missing",  # a metadata row names a file that is not on disk (or a whole audio folder is)
    "empty",  # a valid audio file with zero samples (the real FSDKaggle2018 test set has some)
    "unreadable",  # a file that libsndfile cannot open (or a folder that cannot be listed)
    "not_a_file",  # a FIFO, device, broken link or link loop where an audio file should be
    "unknown_label",  # a test/other-split label that no training clip has
    "unmatched",  # a file whose name does not match the label pattern
    "duplicate",  # the same file listed twice (in one split, or anywhere in a manifest)
    "conflicting_labels",  # one file listed with different labels (the first row is kept)
    "no_label",  # a training row without any label
    "bad_row",  # a metadata row that cannot be read (too few cells); it is left out
)

# Canonical order of well-known splits; any other split names follow alphabetically.
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class ClipRecord:
    """One audio clip and what is known about it.

    Attributes:
        path: The audio file.
        labels: Its labels (several for multi-label data; empty for unlabelled test clips).
        split: ``"train"`` or ``"test"`` (CSV manifests may name others).
        manually_verified: FSDKaggle2018's flag that a human checked the label; ``None`` when the
            dataset does not say.
        usage: Leaderboard part of a test clip: ``"Public"``, ``"Private"``, ``"Ignored"``
            (unscored padding), or ``None``.
        fold: Fold given by the dataset itself (e.g. a CSV ``fold`` column), else ``None``.
        group: Group that must stay within one fold (e.g. the speaker), else ``None``.
        fields: Any further metadata (file-name pattern fields, extra CSV columns).
    """

    path: Path
    labels: tuple[str, ...]
    split: str = "train"
    manually_verified: bool | None = None
    usage: str | None = None
    fold: int | None = None
    group: str | None = None
    # Excluded from the hash so records stay hashable although a dict is not.
    fields: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def label(self) -> str | None:
        """The first label, or ``None`` for an unlabelled clip."""
        return self.labels[0] if self.labels else None

    @property
    def clip_id(self) -> str:
        """The file name, which is how FSDKaggle2018 CSVs and Kaggle submissions name a clip."""
        return self.path.name


@dataclass(frozen=True)
class Problem:
    """Something wrong with one file or metadata row that did not stop the dataset from loading.

    Attributes:
        path: The file (or folder / metadata file) concerned.
        kind: One of :data:`PROBLEM_KINDS`.
        message: One line saying what is wrong.
    """

    path: Path
    kind: str
    message: str

    def to_dict(self) -> dict[str, str]:
        """JSON-able form: ``{"path", "kind", "message"}``, the path as :func:`display_path`."""
        return {"path": display_path(self.path), "kind": self.kind, "message": self.message}

    def __str__(self) -> str:
        """One printable line: ``"<path>: <message>"``."""
        return f"{display_path(self.path)}: {self.message}"


@dataclass
class DatasetIndex:
    """Every clip of a dataset, its label vocabulary and the problems found while loading it.

    Attributes:
        root: Where the dataset was loaded from.
        format: The adapter that read it (``"fsdkaggle2018"``, ``"folder"``, ...).
        labels: Sorted label vocabulary; a label's position is its class index.
        records: All clips, in a deterministic order.
        problems: Non-fatal problems (missing or empty files, unknown labels, ...).
    """

    root: Path
    format: str
    labels: list[str]
    records: list[ClipRecord]
    problems: list[Problem] = field(default_factory=list)

    def split(self, name: str) -> list[ClipRecord]:
        """Records of one split (``"train"``, ``"test"``, ...), in index order."""
        return [record for record in self.records if record.split == name]

    @property
    def splits(self) -> list[str]:
        """Split names present, ``train`` first, then ``val``, ``test``, then others."""
        names = {record.split for record in self.records}
        return sorted(names, key=lambda name: (_SPLIT_ORDER.get(name, len(_SPLIT_ORDER)), name))

    @property
    def label_to_index(self) -> dict[str, int]:
        """Class index of each label (its position in :attr:`labels`)."""
        return {label: i for i, label in enumerate(self.labels)}

    def __len__(self) -> int:
        return len(self.records)
