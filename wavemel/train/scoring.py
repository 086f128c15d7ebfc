"""Whole-clip scoring of cached clips: the one machinery behind validation and noisy-label ranking.

Each clip is cut into input-length windows and scored by ``wavemel.infer.predict_waveforms``
(eval mode, no augmentation, mean window probabilities), exactly as ``wavemel evaluate`` scores
a file. Under torchrun every rank scores its share and all ranks receive every row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from wavemel.infer import predict_waveforms
from wavemel.train.distributed import DistContext, all_gather_objects
from wavemel.train.loader import ClipItem

__all__ = ["ClipScoring", "clip_probabilities"]

# Clips read from the cache per predict_waveforms call: bounds host memory on big sets.
_CHUNK = 256


@dataclass(frozen=True)
class ClipScoring:
    """How cached clips are scored whole (the training run's validation settings).

    Attributes:
        input_samples: Window length (training input length).
        hop_samples: Window hop (``None``: the inference default, no overlap).
        batch_size: Windows per forward pass.
        device: Where to run the model.
        amp_dtype: Autocast dtype on CUDA, or ``None``.
        empty_distribution: (C,) prediction for empty clips (default uniform).
        fill: How a clip shorter than a window is filled (the checkpoint's ``eval_fill``).
        activation: ``"softmax"`` or ``"sigmoid"`` (multi-label).
    """

    input_samples: int
    hop_samples: int | None = None
    batch_size: int = 64
    device: torch.device | str = "cpu"
    amp_dtype: torch.dtype | None = None
    empty_distribution: np.ndarray | None = None
    fill: str = "replicate"
    activation: str = "softmax"


def clip_probabilities(
    model: nn.Module,
    store,
    items: list[ClipItem],
    scoring: ClipScoring,
    ctx: DistContext | None = None,
) -> np.ndarray:
    """Whole-clip probabilities of ``items``, the same on every rank.

    Args:
        model: The plain (unwrapped) model; left in the mode it was in.
        store: ``ClipStore`` holding the clips.
        items: Clips to score (at least one).
        scoring: Window, batch, device and fill settings.
        ctx: Distributed context: each rank scores every ``world_size``-th clip.

    Returns:
        (N, C) float probabilities; a clip that failed to decode has an all-NaN row (no answer).
    """
    ctx = ctx or DistContext()
    device = torch.device(scoring.device)
    mine = [j for j in range(ctx.rank, len(items), ctx.world_size) if items[j].error is None]
    parts = []
    for begin in range(0, len(mine), _CHUNK):
        chunk = mine[begin : begin + _CHUNK]
        waves = [store.read(items[j].index) for j in chunk]
        parts.append(
            predict_waveforms(
                model,
                waves,
                input_samples=scoring.input_samples,
                hop_samples=scoring.hop_samples,
                batch_size=scoring.batch_size,
                device=device,
                empty_distribution=scoring.empty_distribution,
                fill=scoring.fill,
                # predict_waveforms picks the same autocast dtype as training on CUDA.
                amp=scoring.amp_dtype is not None,
                activation=scoring.activation,
            )
        )
    num_classes = len(items[0].target)
    local = np.concatenate(parts) if parts else np.zeros((0, num_classes))
    probs = np.full((len(items), num_classes), np.nan)
    for indices, rows in all_gather_objects((mine, local), ctx):
        probs[indices] = rows
    return probs
