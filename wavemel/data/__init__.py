"""Datasets: one record type, adapters for common layouts, folds, a clip cache and an inspector."""

from __future__ import annotations

from wavemel.data.adapters import FORMATS, load_dataset
from wavemel.data.cache import ClipStore
from wavemel.data.records import ClipRecord, DatasetIndex, Problem
from wavemel.data.splits import kfold_assign, train_val_split

__all__ = [
    "FORMATS",
    "ClipRecord",
    "ClipStore",
    "DatasetIndex",
    "Problem",
    "kfold_assign",
    "load_dataset",
    "train_val_split",
]
