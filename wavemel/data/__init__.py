"""Datasets: one record type, adapters for common layouts, folds, a clip cache and an inspector.

``ClipStore`` lives in :mod:`wavemel.data.cache` and is imported on first use, so that importing
``wavemel.data`` stays light (and works while optional pieces are absent).
"""

from __future__ import annotations

from typing import Any

from wavemel.data.adapters import FORMATS, load_dataset
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


def __getattr__(name: str) -> Any:
    # Lazy: the cache module pulls in the decoder and progress bars that most callers never need.
    if name == "ClipStore":
        from wavemel.data.cache import ClipStore

        return ClipStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
