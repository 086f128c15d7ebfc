"""Folds: stratified, disjoint, covering, reproducible; groups kept whole; train/val modes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from wavemel.data import ClipRecord, DatasetIndex, kfold_assign, load_dataset, train_val_split
from wavemel.data.splits import SplitSpec
from wavemel.errors import DataError


def _records(class_sizes: dict[str, int], n_groups: int | None = None) -> list[ClipRecord]:
    records = []
    for label, n in class_sizes.items():
        for i in range(n):
            group = f"g{i % n_groups}" if n_groups else None
            records.append(ClipRecord(Path(f"/x/{label}_{i}.wav"), (label,), group=group))
    # Interleave classes so that input order carries no class structure.
    order = np.random.default_rng(123).permutation(len(records))
    return [records[i] for i in order]


SIZES = {"a": 23, "b": 17, "c": 5, "d": 40, "e": 1}


@pytest.mark.parametrize("n_folds", [2, 5, 7])
def test_stratified_folds(n_folds):
    records = _records(SIZES)
    folds = kfold_assign(records, n_folds, seed=3)
    assert len(folds) == len(records) and set(folds) == set(range(n_folds))
    # Each record is in exactly one fold, so the folds are disjoint and cover every record.
    members = [[i for i, f in enumerate(folds) if f == k] for k in range(n_folds)]
    assert sorted(i for m in members for i in m) == list(range(len(records)))
    for label in SIZES:
        per_fold = Counter(f for r, f in zip(records, folds) if r.label == label)
        counts = [per_fold.get(k, 0) for k in range(n_folds)]
        assert max(counts) - min(counts) <= 1, (label, counts)
    sizes = [len(m) for m in members]
    assert max(sizes) - min(sizes) <= 1


def test_folds_reproducible_and_seeded():
    records = _records(SIZES)
    assert kfold_assign(records, 5, seed=0) == kfold_assign(records, 5, seed=0)
    assert kfold_assign(records, 5, seed=0) != kfold_assign(records, 5, seed=1)
    # Fresh but equal record lists (as from two load_dataset calls) give the same folds.
    assert kfold_assign(_records(SIZES), 5, seed=0) == kfold_assign(records, 5, seed=0)


def test_unlabelled_records_form_their_own_stratum():
    records = [ClipRecord(Path(f"/x/{i}.wav"), ()) for i in range(10)]
    assert sorted(Counter(kfold_assign(records, 5)).values()) == [2] * 5


def test_groups_never_split():
    records = _records({"a": 60, "b": 45, "c": 30}, n_groups=11)
    for key in ("group", lambda r: r.group):
        folds = kfold_assign(records, 4, seed=5, group_key=key)
        group_folds: dict[str, set[int]] = {}
        for record, fold in zip(records, folds):
            group_folds.setdefault(record.group, set()).add(fold)
        assert all(len(f) == 1 for f in group_folds.values())
        assert set(folds) == set(range(4))
        sizes = Counter(folds).values()
        assert max(sizes) - min(sizes) <= 15  # 11 groups of ~12 clips in 4 folds
    assert folds == kfold_assign(records, 4, seed=5, group_key="group")


def test_one_group_per_fold_when_counts_match():
    records = _records({"a": 30, "b": 30}, n_groups=6)
    folds = kfold_assign(records, 6, group_key="group")
    assert len({(r.group, f) for r, f in zip(records, folds)}) == 6
    assert sorted(Counter(folds).values()) == [10] * 6
    with pytest.raises(DataError, match="only 6 groups for 7 folds"):
        kfold_assign(records, 7, group_key="group")
    with pytest.raises(ValueError):
        kfold_assign(records, 1)


def _index() -> DatasetIndex:
    records = _records({"a": 20, "b": 10}, n_groups=5)
    records += [ClipRecord(Path("/x/u.wav"), ())]  # unlabelled train record: never used
    records += [
        ClipRecord(Path(f"/x/t{i}.wav"), ("a",) if i % 2 else (), split="test") for i in range(6)
    ]
    return DatasetIndex(Path("/x"), "csv", ["a", "b"], records)


def test_train_val_split_modes():
    index = _index()
    train, val = train_val_split(index, folds=5, fold=2, seed=0)
    assert len(train) + len(val) == 30 and len(val) == 6
    assert not {r.path for r in train} & {r.path for r in val}
    assert all(r.labels and r.split == "train" for r in train + val)
    assert Counter(r.label for r in val) == {"a": 4, "b": 2}
    assert (train, val) == train_val_split(index, folds=5, fold=2, seed=0)

    train, val = train_val_split(index, folds=5, fold=0, group_field="group")
    assert len({r.group for r in val}) == 1
    assert not {r.group for r in train} & {r.group for r in val}

    train, val = train_val_split(index, val_split="test")
    assert len(train) == 30 and [r.clip_id for r in val] == ["t1.wav", "t3.wav", "t5.wav"]

    with pytest.raises(DataError, match="out of range"):
        train_val_split(index, folds=5, fold=5)
    with pytest.raises(DataError, match="fold value"):
        train_val_split(index, folds=None)


def test_train_val_split_with_dataset_folds():
    records = [
        ClipRecord(Path(f"/x/{i}.wav"), ("a" if i % 2 else "b",), fold=i % 3) for i in range(12)
    ]
    index = DatasetIndex(Path("/x"), "csv", ["a", "b"], records)
    train, val = train_val_split(index, folds=None, fold=1)
    assert {r.fold for r in val} == {1} and len(val) == 4 and len(train) == 8


def test_fsdd_speaker_folds(fsdd_root):
    index = load_dataset(
        fsdd_root, label_pattern="{label}_{speaker}_{take}.wav", group_field="speaker"
    )
    train, val = train_val_split(index, folds=6, fold=0, group_field="speaker")
    assert len(val) == 500 and len({r.group for r in val}) == 1
    assert not {r.group for r in train} & {r.group for r in val}
    assert set(Counter(r.label for r in val).values()) == {50}


def test_a_held_out_fold_neither_trains_nor_validates():
    index = _index()
    spec = SplitSpec(data="/x", folds=5, fold=1, test_fold=0, group_field="group", seed=0)
    train, val = spec.split(index)
    held = spec.heldout(index)
    # The three parts are the five folds: disjoint, covering, whole groups in each.
    paths = [{r.path for r in part} for part in (train, val, held)]
    assert not paths[0] & paths[1] and not paths[0] & paths[2] and not paths[1] & paths[2]
    assert sum(len(p) for p in paths) == 30
    groups = [{r.group for r in part} for part in (train, val, held)]
    assert not groups[0] & groups[1] and not groups[0] & groups[2] and not groups[1] & groups[2]
    # The held-out fold is the fold 0 that a split without test_fold would validate on.
    _, fold0 = train_val_split(index, folds=5, fold=0, group_field="group", seed=0)
    assert {r.path for r in held} == {r.path for r in fold0}
    with pytest.raises(DataError, match="cannot also validate"):
        SplitSpec(data="/x", folds=5, fold=0, test_fold=0).split(index)
    with pytest.raises(DataError, match="holds no fold out"):
        SplitSpec(data="/x", folds=5, fold=0).heldout(index)
    with pytest.raises(DataError, match="out of range"):
        SplitSpec(data="/x", folds=5, fold=0, test_fold=7).split(index)
