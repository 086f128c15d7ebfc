"""Reproducible train/validation splits: stratified k-fold, optionally keeping groups together.

A :class:`SplitSpec` is the one description of a run's split (data root, layout, groups, folds,
seed, validation split). The trainer, the evaluator and the study rebuild a split only through it,
from the settings stored in a run's ``config.json``, so the validation clips of a run can always be
recomputed exactly.
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wavemel.data.adapters import load_dataset
from wavemel.data.records import ClipRecord, DatasetIndex
from wavemel.errors import DataError

__all__ = ["SPLIT_FIELDS", "SplitSpec", "heldout_records", "kfold_assign", "train_val_split"]

GroupKey = Callable[[ClipRecord], object] | str


def kfold_assign(
    records: Sequence[ClipRecord],
    n_folds: int,
    seed: int = 0,
    group_key: GroupKey | None = None,
) -> list[int]:
    """Assign each record to one of ``n_folds`` folds, stratified by its (first) label.

    Without groups, each class's records are shuffled with ``seed`` and dealt round-robin, the
    dealing continuing from fold to fold across classes: every fold then holds each class within
    one clip of the others, and fold sizes differ by at most one.

    With ``group_key``, whole groups (e.g. speakers) go to one fold. Groups are placed largest
    first (ties in seeded random order) into an empty fold while there is one, else into the fold
    where they least unbalance fold sizes and class proportions. With as many groups as folds,
    each fold gets exactly one group.

    Args:
        records: The clips to split; records without a label form their own stratum.
        n_folds: Number of folds, at least 2.
        seed: Seed of the shuffle; the same seed gives the same folds.
        group_key: ``None``, a callable ``record -> group``, or the name of a record attribute
            (``"group"``) or of a ``record.fields`` entry.

    Returns:
        The fold index (``0 .. n_folds - 1``) of each record, in input order.

    Raises:
        ValueError: ``n_folds < 2``.
        DataError: A record has no group value, or there are fewer groups than folds.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    rng = np.random.default_rng(seed)
    strata: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        strata[record.label or ""].append(i)
    if group_key is None:
        return _stratified(strata, len(records), n_folds, rng)
    return _grouped(records, strata, n_folds, rng, _group_getter(group_key))


def _stratified(strata, n_records: int, n_folds: int, rng: np.random.Generator) -> list[int]:
    folds = [0] * n_records
    next_fold = 0
    for label in sorted(strata):
        members = strata[label]
        for position in rng.permutation(len(members)):
            folds[members[position]] = next_fold
            next_fold = (next_fold + 1) % n_folds
    return folds


def _grouped(records, strata, n_folds, rng, key) -> list[int]:
    members: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        value = key(record)
        if value is None or str(value) == "":
            raise DataError(f"{record.path}: no group value to keep its group in one fold")
        members[str(value)].append(i)
    if len(members) < n_folds:
        raise DataError(f"only {len(members)} groups for {n_folds} folds; use fewer folds")

    class_totals = {label: len(idx) for label, idx in strata.items()}
    target_size = len(records) / n_folds
    fold_sizes = [0] * n_folds
    fold_classes = [defaultdict(int) for _ in range(n_folds)]
    names = sorted(members)
    order = rng.permutation(len(names))
    # Largest groups first so that small ones can even out the folds at the end.
    order = sorted(order, key=lambda j: -len(members[names[j]]))
    folds = [0] * len(records)
    for j in order:
        indices = members[names[j]]
        counts: dict[str, int] = defaultdict(int)
        for i in indices:
            counts[records[i].label or ""] += 1

        size = len(indices)

        def cost(f: int, counts=counts, size=size) -> tuple[int, float, int]:
            # Empty folds first, then: relative fold size after adding the group plus how much
            # of this group's classes the fold already holds (relative to each class's share).
            balance = (fold_sizes[f] + size) / target_size
            balance += sum(
                n * fold_classes[f][c] * n_folds / class_totals[c] for c, n in counts.items()
            ) / max(size, 1)
            return (0 if fold_sizes[f] == 0 else 1, balance, f)

        best = min(range(n_folds), key=cost)
        for i in indices:
            folds[i] = best
        fold_sizes[best] += len(indices)
        for c, n in counts.items():
            fold_classes[best][c] += n
    return folds


def _group_getter(group_key: GroupKey) -> Callable[[ClipRecord], object]:
    if callable(group_key):
        return group_key
    name = str(group_key)

    def get(record: ClipRecord) -> object:
        value = getattr(record, name, None) if name in ClipRecord.__dataclass_fields__ else None
        if value is None:
            value = record.group if record.group is not None else record.fields.get(name)
        return value

    return get


def train_val_split(
    index: DatasetIndex,
    *,
    folds: int | None = 5,
    fold: int = 0,
    seed: int = 0,
    group_field: str | None = None,
    val_split: str | None = None,
    test_fold: int | None = None,
) -> tuple[list[ClipRecord], list[ClipRecord]]:
    """The training and validation clips of one run.

    Only labelled records of the ``train`` split are ever used for training. Three modes:

    * ``val_split="test"`` (or another split name): that split's labelled records validate.
    * ``folds=K``: the labelled training records are assigned to ``K`` stratified folds
      (:func:`kfold_assign` with ``seed``; whole groups together when ``group_field`` is set,
      using ``record.group``), and fold ``fold`` validates.
    * ``folds=None``: the dataset's own ``fold`` column (``record.fold``) decides.

    With ``test_fold`` (either fold mode), that fold is held out: it neither trains nor
    validates, so it can be scored by a model whose epochs were chosen on ``fold`` (see
    :func:`heldout_records`). Groups stay whole in all three parts, as the folds keep them.

    Args:
        index: The loaded dataset.
        folds: Number of folds, or ``None`` to use ``record.fold``.
        fold: Which fold is the validation set.
        seed: Fold-assignment seed.
        group_field: Keep groups together; the group is ``record.group`` (set by
            ``load_dataset(..., group_field=...)``), else ``record.fields[group_field]``.
        val_split: Validate on this split of the dataset instead of a fold.
        test_fold: A fold held out from training and validation, or ``None``.

    Returns:
        ``(train_records, val_records)``, each in index order.

    Raises:
        DataError: No labelled training clips, an empty validation set, a bad fold number, or
            records without fold/group values.
    """
    train_pool, assigned = _assign(index, folds, fold, seed, group_field, val_split, test_fold)
    if assigned is None:
        val = [r for r in index.split(val_split) if r.labels]
        if not val:
            raise DataError(f"{index.root}: split {val_split!r} has no labelled clips to validate")
        return train_pool, val
    train = [r for r, f in zip(train_pool, assigned) if f not in (fold, test_fold)]
    val = [r for r, f in zip(train_pool, assigned) if f == fold]
    if not val or not train:
        raise DataError(f"{index.root}: fold {fold} leaves an empty training or validation set")
    return train, val


def heldout_records(
    index: DatasetIndex,
    *,
    folds: int | None = 5,
    fold: int = 0,
    seed: int = 0,
    group_field: str | None = None,
    val_split: str | None = None,
    test_fold: int | None = None,
) -> list[ClipRecord]:
    """The clips of ``test_fold``: never trained on, never used to choose an epoch.

    Args: as :func:`train_val_split`; ``test_fold`` must be set.

    Raises:
        DataError: No ``test_fold`` in the settings, or the fold is empty.
    """
    if test_fold is None:
        raise DataError(f"{index.root}: the run holds no fold out (no test_fold in its settings)")
    train_pool, assigned = _assign(index, folds, fold, seed, group_field, val_split, test_fold)
    held = [r for r, f in zip(train_pool, assigned or []) if f == test_fold]
    if not held:
        raise DataError(f"{index.root}: held-out fold {test_fold} has no labelled clips")
    return held


def _assign(index, folds, fold, seed, group_field, val_split, test_fold):
    """The labelled training pool and each record's fold (``None`` for a ``val_split``)."""
    train_pool = [r for r in index.split("train") if r.labels]
    if not train_pool:
        raise DataError(f"{index.root}: no labelled clips in the 'train' split")
    if val_split is not None:
        if test_fold is not None:
            raise DataError(f"{index.root}: test_fold and val_split exclude each other")
        return train_pool, None
    if test_fold is not None and test_fold == fold:
        raise DataError(f"{index.root}: the held-out fold {test_fold} cannot also validate")
    if folds is None:
        if any(r.fold is None for r in train_pool):
            raise DataError(f"{index.root}: folds=None needs a fold value on every training clip")
        assigned = [int(r.fold) for r in train_pool]
        if fold not in set(assigned):
            raise DataError(f"{index.root}: no training clip has fold {fold}")
    else:
        if not 0 <= fold < folds:
            raise DataError(f"fold {fold} is out of range for {folds} folds (0..{folds - 1})")
        group_key = _group_getter(group_field) if group_field else None
        assigned = kfold_assign(train_pool, folds, seed=seed, group_key=group_key)
        if test_fold is not None and not 0 <= test_fold < folds:
            raise DataError(f"test_fold {test_fold} is out of range for {folds} folds")
    return train_pool, assigned


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """Everything that decides which clips train and which validate a run.

    Attributes:
        data: Dataset root (or CSV manifest).
        format: Layout given to :func:`~wavemel.data.load_dataset` (``None`` detects it).
        label_pattern: File-name pattern of the ``pattern`` layout.
        group_field: Keep clips with the same value of this field in one fold (e.g. speaker).
        folds: Number of stratified folds, or ``None`` for the dataset's own fold column.
        fold: The validation fold.
        seed: Fold-assignment seed.
        val_split: Validate on this split of the dataset (e.g. ``"test"``) instead of a fold.
        test_fold: A fold held out from training and validation (scored as split
            ``"heldout"``), or ``None``.
    """

    data: str
    format: str | None = None
    label_pattern: str | None = None
    group_field: str | None = None
    folds: int | None = 5
    fold: int = 0
    seed: int = 0
    val_split: str | None = None
    test_fold: int | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | Any, **overrides: Any) -> SplitSpec:
        """Read the split fields of a run config (a dict or a config object), then ``overrides``.

        A field the settings lack takes the default above; a field they hold is taken as it is
        (``folds=None`` means the dataset's own fold column), except ``fold`` and ``seed`` given
        as ``None`` (a cnn-comb config before its branches filled them), which mean 0.

        Raises:
            DataError: No dataset root.
        """
        if isinstance(settings, Mapping):
            values = {k: settings[k] for k in SPLIT_FIELDS if k in settings}
        else:
            values = {k: getattr(settings, k) for k in SPLIT_FIELDS if hasattr(settings, k)}
        values.update(overrides)
        for name in ("fold", "seed"):
            if values.get(name, 0) is None:
                del values[name]
        if not values.get("data"):
            raise DataError("no dataset given (--data ROOT)")
        values["data"] = os.fspath(values["data"])
        return cls(**values)

    def with_data(self, data: str | os.PathLike | None) -> SplitSpec:
        """The same split on another root; its layout is detected again unless it is this one."""
        if data is None or os.fspath(data) == self.data:
            return self
        return dataclasses.replace(self, data=os.fspath(data), format=None)

    def load_index(self, *, check_files: bool = True) -> DatasetIndex:
        """Index the dataset with this spec's layout settings (see :func:`load_dataset`)."""
        return load_dataset(
            self.data,
            self.format,
            label_pattern=self.label_pattern,
            group_field=self.group_field,
            check_files=check_files,
        )

    def split(self, index: DatasetIndex) -> tuple[list[ClipRecord], list[ClipRecord]]:
        """``(train_records, val_records)`` of ``index`` (see :func:`train_val_split`)."""
        return train_val_split(
            index,
            folds=self.folds,
            fold=self.fold,
            seed=self.seed,
            group_field=self.group_field,
            val_split=self.val_split,
            test_fold=self.test_fold,
        )

    def heldout(self, index: DatasetIndex) -> list[ClipRecord]:
        """The held-out fold's records (see :func:`heldout_records`)."""
        return heldout_records(
            index,
            folds=self.folds,
            fold=self.fold,
            seed=self.seed,
            group_field=self.group_field,
            val_split=self.val_split,
            test_fold=self.test_fold,
        )

    @property
    def root(self) -> Path:
        return Path(self.data)


#: The fields that decide a run's split; two runs combine only when they agree on all of them.
SPLIT_FIELDS = tuple(f.name for f in dataclasses.fields(SplitSpec))
