"""From a dataset root to training batches: records -> split -> clip cache -> random windows.

The loader only reads; everything random about the final input (shift, crop, pad, replicate,
mixup) happens on the device in ``wavemel.augment``. Here each training clip contributes one
window per epoch of at most ``input_samples + shift margin`` samples, read straight from the
memory-mapped ``ClipStore`` (so a long clip never has to be decoded or copied whole). For a clip
longer than the input, this window's random start and the on-device crop inside it together
are its time shift: the content stays contiguous, never rolled around a seam. The window
start is drawn from a generator seeded by (seed, epoch), so the data an epoch sees does not depend
on worker scheduling or on whether the run was resumed.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wavemel._paths import display_path
from wavemel.data.cache import ClipStore
from wavemel.data.splits import SplitSpec
from wavemel.errors import DataError, WavemelWarning
from wavemel.train.distributed import DistContext, barrier

__all__ = [
    "ClipItem",
    "PreparedData",
    "prepare_data",
    "soft_targets",
    "multi_hot_targets",
    "WindowDataset",
    "collate_windows",
    "shift_margin",
]


@dataclass(frozen=True)
class ClipItem:
    """One clip in the cache with its soft target and loss weight.

    Attributes:
        index: Row of the clip in the ``ClipStore``.
        target: (C,) float32: a distribution over the labels (several labels share the mass
            evenly), or a multi-hot vector when the run is multi-label.
        weight: Loss weight (lower for clips whose label was not manually verified).
        name: Clip file name, for messages.
        error: Why the clip could not be decoded (``None`` when it could). A validation clip
            that failed to decode stays in the set and counts as a miss, as in ``evaluate``.
        manually_verified: The record's flag (``None``: the dataset does not say); only
            ``False`` clips are candidates for ``noisy_drop``.
    """

    index: int
    target: np.ndarray
    weight: float
    name: str
    error: str | None = None
    manually_verified: bool | None = None


@dataclass
class PreparedData:
    """Everything the training loop needs from the data layer.

    Attributes:
        labels: Sorted label list; position = class index.
        store: ``ClipStore`` holding every train and validation clip at the model sample rate.
        train: Clips used for training (failed and empty clips removed).
        val: Validation clips (empty ones get the training prior, undecodable ones count as
            misses: the same rules as ``wavemel evaluate --split val``).
        excluded: ``"file: reason"`` for each training clip left out.
        multi_label: The targets are multi-hot (sigmoid outputs) rather than distributions.
    """

    labels: list[str]
    store: object
    train: list[ClipItem]
    val: list[ClipItem]
    excluded: list[str] = field(default_factory=list)
    multi_label: bool = False

    def label_prior(self) -> list[float]:
        """Class frequencies of the training clips (mean of their targets; multi-label: the
        fraction of clips carrying each label)."""
        if not self.train:
            return [1.0 / len(self.labels)] * len(self.labels)
        return np.mean([item.target for item in self.train], axis=0).astype(float).tolist()


def soft_targets(labels: tuple[str, ...], label_to_index: dict[str, int]) -> np.ndarray:
    """(C,) float32 target with each of the clip's labels getting an equal share."""
    target = np.zeros(len(label_to_index), dtype=np.float32)
    for label in labels:
        target[label_to_index[label]] += 1.0 / len(labels)
    return target


def multi_hot_targets(labels: tuple[str, ...], label_to_index: dict[str, int]) -> np.ndarray:
    """(C,) float32 target with 1 for each of the clip's labels (binary cross-entropy)."""
    target = np.zeros(len(label_to_index), dtype=np.float32)
    target[[label_to_index[label] for label in labels]] = 1.0
    return target


def shift_margin(input_samples: int) -> int:
    """Extra samples read after the input window, the room of the on-device random crop.

    A quarter of the input length keeps the read small while letting the crop move the window
    by a musically meaningful amount (0.5 s of a 2 s input) on top of the window's random start.
    """
    return input_samples // 4


def _clip_weight(record, verified_weight: float, unverified_weight: float) -> float:
    # Unknown verification (most datasets) counts as verified: only FSDKaggle2018's
    # manually_verified == 0 clips are down-weighted.
    return unverified_weight if record.manually_verified is False else verified_weight


def _shown(items: list[str], limit: int = 10) -> str:
    return "; ".join(items[:limit]) + (" ..." if len(items) > limit else "")


def _warn_left_out(excluded: list[str], val: list[ClipItem], store) -> None:
    if excluded:
        warnings.warn(
            WavemelWarning(
                f"{len(excluded)} training clip(s) left out (failed to decode or empty): "
                f"{_shown(excluded)}"
            ),
            stacklevel=3,
        )
    failed = [v.error for v in val if v.error is not None]
    if failed:
        warnings.warn(
            WavemelWarning(
                f"{len(failed)} validation clip(s) failed to decode and count as misses: "
                f"{_shown(failed)}"
            ),
            stacklevel=3,
        )
    empty = [v.name for v in val if v.error is None and store.length(v.index) == 0]
    if empty:
        warnings.warn(
            WavemelWarning(
                f"{len(empty)} validation clip(s) are empty and get the training label prior: "
                f"{_shown(empty)}"
            ),
            stacklevel=3,
        )


def prepare_data(config, ctx=None, *, progress: bool | None = None) -> PreparedData:
    """Load the dataset, split it, and cache every train and validation clip.

    Args:
        config: A ``TrainConfig`` (or any object with its data, split, sample_rate, weights and
            cache_dir fields).
        ctx: Distributed context; rank 0 builds the cache first, the others then reuse it.
        progress: Cache-building progress bar on rank 0 (``None``: only on a terminal).

    Raises:
        DataError: No labelled training or validation clips.
    """
    ctx = ctx or DistContext()
    spec = SplitSpec.from_settings(config)
    index = spec.load_index()
    # load_dataset drops listed clips whose file is absent; say so instead of training silently
    # on less data than the manifest lists.
    missing = [
        f"{display_path(p.path)}: {p.message}"
        for p in index.problems
        if p.kind in ("missing", "not_a_file")
    ]
    if missing and ctx.is_main:
        message = f"listed clip(s) not found and left out: {_shown(missing)}"
        warnings.warn(WavemelWarning(message), stacklevel=2)
    train_records, val_records = spec.split(index)
    train_records = [r for r in train_records if r.labels]
    val_records = [r for r in val_records if r.labels]
    if not train_records:
        raise DataError(f"{config.data}: no labelled training clips after the split")
    if not val_records:
        raise DataError(f"{config.data}: no labelled validation clips after the split")

    paths = [Path(r.path) for r in train_records + val_records]
    # None: the store's default ($WAVEMEL_CACHE or ~/.cache/wavemel).
    cache_dir = Path(config.cache_dir) if config.cache_dir else None
    # Rank 0 decodes; the others wait and then find a valid cache instead of racing to write one.
    store = None
    if ctx.is_main:
        store = ClipStore.build(paths, config.sample_rate, cache_dir, progress=progress)
    barrier(ctx)
    if store is None:
        store = ClipStore.build(paths, config.sample_rate, cache_dir, progress=False)

    label_to_index = index.label_to_index
    labels = list(index.labels)
    errors = store.errors
    multi_label = getattr(config, "multi_label", None)
    if multi_label is None:
        multi_label = any(len(record.labels) > 1 for record in train_records)
    targets = multi_hot_targets if multi_label else soft_targets

    def item(i: int, record) -> ClipItem:
        return ClipItem(
            index=i,
            target=targets(record.labels, label_to_index),
            weight=_clip_weight(record, config.verified_weight, config.unverified_weight),
            name=Path(record.path).name,
            error=errors.get(i),
            manually_verified=record.manually_verified,
        )

    train, excluded = [], []
    for i, record in enumerate(train_records):
        if i in errors:
            excluded.append(errors[i])  # the decoder's message names the file
        elif store.length(i) == 0:
            excluded.append(f"{record.path}: empty")
        else:
            train.append(item(i, record))
    offset = len(train_records)
    val = [item(offset + j, record) for j, record in enumerate(val_records)]
    if not train:
        raise DataError(f"{config.data}: none of the training clips could be decoded")
    if ctx.is_main:
        _warn_left_out(excluded, val, store)
    return PreparedData(
        labels=labels,
        store=store,
        train=train,
        val=val,
        excluded=excluded,
        multi_label=bool(multi_label),
    )


class WindowDataset(torch.utils.data.Dataset):
    """One random window per clip and epoch, read from the clip cache.

    Call :meth:`set_epoch` before iterating: it draws every clip's window start for that epoch
    from ``default_rng([seed, epoch])`` in the main process, so worker processes (which get a copy
    of the dataset when the iterator starts) and resumed runs read the same windows.

    Args:
        store: The ``ClipStore``.
        items: Clips to serve.
        window_samples: Longest window read per clip (input length plus shift margin).
        seed: Base seed.

    Returns (per item):
        ``(wave (L,) float32 with L <= window_samples, target (C,), weight)``.
    """

    def __init__(self, store, items: list[ClipItem], window_samples: int, seed: int = 0):
        self.store = store
        self.items = items
        self.window_samples = window_samples
        self.seed = seed
        self.lengths = np.array([store.length(it.index) for it in items], dtype=np.int64)
        self.starts = np.zeros(len(items), dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch, 0x77A1])
        slack = np.maximum(self.lengths - self.window_samples, 0)
        self.starts = np.floor(rng.random(len(self.items)) * (slack + 1)).astype(np.int64)

    def set_weights(self, weights: list[float]) -> None:
        """Serve clip ``i`` with loss weight ``weights[i]`` from now on (e.g. 0 for a noisy label).

        Worker processes copy the dataset when an epoch's iterator starts, so a change made
        between epochs reaches them.
        """
        if len(weights) != len(self.items):
            raise ValueError(f"{len(weights)} weights for {len(self.items)} clips")
        self.items = [
            item if item.weight == weight else dataclasses.replace(item, weight=float(weight))
            for item, weight in zip(self.items, weights)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        length = min(int(self.lengths[i]), self.window_samples)
        wave = self.store.read(item.index, int(self.starts[i]), length)
        return np.asarray(wave, dtype=np.float32), item.target, item.weight


def collate_windows(batch):
    """Zero-pad windows to the batch's longest one.

    Returns:
        ``waves (B, T) float32``, ``lengths (B,) int64``, ``targets (B, C) float32``,
        ``weights (B,) float32``.
    """
    lengths = torch.tensor([len(wave) for wave, _, _ in batch], dtype=torch.long)
    waves = torch.zeros(len(batch), max(int(lengths.max()), 1), dtype=torch.float32)
    for row, (wave, _, _) in enumerate(batch):
        waves[row, : len(wave)] = torch.from_numpy(wave)
    targets = torch.from_numpy(np.stack([target for _, target, _ in batch]))
    weights = torch.tensor([weight for _, _, weight in batch], dtype=torch.float32)
    return waves, lengths, targets, weights
