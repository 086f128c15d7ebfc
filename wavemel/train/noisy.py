"""Noisy labels: down-weight or drop the unverified training clips the model disagrees with most.

FSDKaggle2018 marks each training clip ``manually_verified`` 0/1, and the unverified labels are
partly wrong. DCASE 2018 Task 2 entries (Surrey, Cochlear.ai) dropped or down-weighted the
unverified clips with the highest loss. With ``noisy_drop`` > 0, at the end of every epoch from
``noisy_after - 1`` on (before the first one when ``noisy_after`` is 1) the current model scores
every unverified training clip once, whole and in eval mode (``scoring.clip_probabilities``: the
validation machinery, so no augmentation and no mixup); the ``noisy_drop`` fraction with the
highest loss against their given label trains the next epoch with ``noisy_weight`` (0: dropped).
Verified clips, and clips of datasets that do not say, are never touched.

A chosen clip still takes its place in the batches (with weight 0 it adds nothing to the loss),
so the data order, the step count and the learning-rate schedule stay what they were. Under
mixup a blend of a dropped clip with another clip keeps the other clip's share of the weight.
Each choice is appended to ``RUN/noisy.jsonl``; the resume state keeps it (``Progress``), so a
resumed run trains with the choice the interrupted one made.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from wavemel._io import atomic_write_text, os_error_reason
from wavemel._paths import display_path
from wavemel.errors import CheckpointError, DataError, WavemelError
from wavemel.train.distributed import DistContext
from wavemel.train.loader import ClipItem, PreparedData, WindowDataset
from wavemel.train.scoring import ClipScoring, clip_probabilities
from wavemel.train.state import Progress

__all__ = [
    "NOISY_LOG",
    "NoisySettings",
    "NoisyLabels",
    "noisy_candidates",
    "clip_losses",
    "rank_noisy",
]

#: The choices of a run, one JSON line per epoch that trained with one.
NOISY_LOG = "noisy.jsonl"


@dataclass(frozen=True)
class NoisySettings:
    """The lever, as ``TrainConfig`` sets it (see its ``noisy_*`` fields).

    Attributes:
        fraction: Share of the unverified training clips chosen each epoch, in (0, 1).
        first_epoch: First (1-based) epoch that trains with a choice.
        weight: Loss weight of the chosen clips (0 drops them).
        epochs: The run's last epoch (no choice is made after it).
    """

    fraction: float
    first_epoch: int
    weight: float
    epochs: int

    @classmethod
    def from_config(cls, config: Any) -> NoisySettings | None:
        """The settings of ``config``; ``None`` when the lever is off (or the config has none)."""
        # CombineConfig has no noisy_* fields: cnn-comb's head trains on every clip.
        fraction = getattr(config, "noisy_drop", 0.0)
        if not fraction:
            return None
        return cls(fraction, config.noisy_after, config.noisy_weight, config.epochs)

    def chooses_after(self, finished: int) -> bool:
        """Whether the model after ``finished`` epochs chooses the clips of the next epoch."""
        return self.first_epoch <= finished + 1 <= self.epochs


def clip_losses(probs: np.ndarray, targets: np.ndarray, objective: Any) -> np.ndarray:
    """Each clip's loss against its given label.

    Args:
        probs: (N, C) whole-clip probabilities.
        targets: (N, C) the clips' training targets.
        objective: The run's ``loop.Objective`` (cross-entropy, or BCE for multi-label).

    Returns:
        (N,) float64 losses, the one loss definition validation reports as ``val_loss``.
    """
    return np.array([objective.clip_loss(p[None], t[None]) for p, t in zip(probs, targets)])


def rank_noisy(losses: np.ndarray, fraction: float) -> np.ndarray:
    """Positions of the ``fraction`` of ``losses`` that are highest, highest first.

    The count is ``floor(fraction * N)`` (never more than asked for); equal losses keep their
    order, so the choice depends only on the losses.
    """
    count = math.floor(fraction * len(losses) + 1e-9)
    order = np.argsort(-np.asarray(losses, dtype=np.float64), kind="stable")
    return order[:count]


def noisy_candidates(data: PreparedData, settings: NoisySettings | None) -> list[int]:
    """Positions in ``data.train`` of the clips the lever may choose (the unverified ones).

    Raises:
        DataError: The lever is on but no training clip is marked unverified, so it would
            silently do nothing.
    """
    if settings is None:
        return []
    candidates = [i for i, item in enumerate(data.train) if item.manually_verified is False]
    if not candidates:
        raise DataError(
            f"--noisy-drop {settings.fraction:g}: no training clip is marked unverified "
            "(manually_verified = 0), so none could be dropped"
        )
    return candidates


class NoisyLabels:
    """Chooses a run's noisy clips each epoch, serves their weights and logs the choices.

    Args:
        settings: The lever.
        data: The run's prepared clips.
        scoring: How clips are scored whole (the run's validation settings).
        objective: The run's ``loop.Objective``.
        log: ``RUN/noisy.jsonl`` on the rank that writes (``None`` on the others).

    Raises:
        DataError: No training clip is marked unverified, so the lever would do nothing.
    """

    def __init__(
        self,
        settings: NoisySettings,
        data: PreparedData,
        scoring: ClipScoring,
        objective: Any,
        log: Path | None = None,
    ):
        self.settings = settings
        self.data = data
        self.scoring = scoring
        self.objective = objective
        self.log = log
        self.candidates = noisy_candidates(data, settings)

    def weights(self, chosen: list[int]) -> list[float]:
        """Loss weight of every training clip: ``settings.weight`` for the chosen ones."""
        picked = set(chosen)
        return [
            self.settings.weight if i in picked else item.weight
            for i, item in enumerate(self.data.train)
        ]

    def choose(self, model: nn.Module, epoch: int, ctx: DistContext | None = None) -> list[int]:
        """Score the unverified clips with ``model`` and choose those that train ``epoch``.

        Every rank must call this (the scoring is shared out); every rank gets the same answer.

        Args:
            model: The plain (unwrapped) model; left in the mode it was in.
            epoch: The 1-based epoch that will train with the choice (logged).
            ctx: Distributed context.

        Returns:
            Positions in ``data.train`` of the chosen clips, highest loss first.
        """
        items = [self.data.train[i] for i in self.candidates]
        probs = clip_probabilities(model, self.data.store, items, self.scoring, ctx)
        losses = clip_losses(probs, np.stack([item.target for item in items]), self.objective)
        ranked = rank_noisy(losses, self.settings.fraction)
        if self.log is not None:
            clips = [self._describe(items[j], probs[j], losses[j]) for j in ranked]
            self._append(epoch, clips)
        return [self.candidates[j] for j in ranked]

    def start(self, model: nn.Module, progress: Progress, ctx: DistContext | None = None) -> None:
        """Before the first epoch of a process: resume the saved choice, or make the first one.

        A fresh run with ``noisy_after`` 1 chooses with the starting model; a resumed run
        keeps the choice its state holds (see :meth:`resume`).
        """
        if progress.epoch:
            self.resume(progress)
        elif self.settings.chooses_after(0):
            progress.noisy_clips = self.choose(model, 1, ctx)

    def update(self, model: nn.Module, progress: Progress, ctx: DistContext | None = None) -> None:
        """After an epoch (``progress.epoch`` counts it): the choice for the next epoch, if due."""
        due = self.settings.chooses_after(progress.epoch)
        progress.noisy_clips = self.choose(model, progress.epoch + 1, ctx) if due else []

    def resume(self, progress: Progress) -> None:
        """Check a resumed run's saved choice and drop the log lines of the unfinished epoch.

        Raises:
            CheckpointError: The saved choice names clips that are not unverified training clips
                of this data (the data changed since the run started).
        """
        unknown = set(progress.noisy_clips) - set(self.candidates)
        if unknown:
            raise CheckpointError(
                f"{self.log or 'resume state'}: the saved noisy-label choice names "
                f"{len(unknown)} clip(s) that are not unverified training clips of this data"
            )
        if self.log is not None and self.log.exists():
            # Epoch k+1 trains with the choice made after epoch k: later lines are unfinished.
            lines = [line for line in self.log.read_text().splitlines() if line.strip()]
            kept = [line for line in lines if json.loads(line)["epoch"] <= progress.epoch + 1]
            atomic_write_text(self.log, "".join(line + "\n" for line in kept))

    def apply(self, dataset: WindowDataset, progress: Progress) -> None:
        """Give ``dataset`` the weights of ``progress.noisy_clips`` for the coming epoch."""
        dataset.set_weights(self.weights(progress.noisy_clips))

    def _describe(self, item: ClipItem, probs: np.ndarray, loss: float) -> dict[str, Any]:
        labels = self.data.labels
        return {
            "name": display_path(item.name),
            "loss": float(loss),
            "labels": [labels[c] for c in np.flatnonzero(item.target > 0)],
            "top": labels[int(np.argmax(probs))],
        }

    def _append(self, epoch: int, clips: list[dict[str, Any]]) -> None:
        record = {
            "epoch": epoch,
            "weight": self.settings.weight,
            "unverified": len(self.candidates),
            "chosen": len(clips),
            "clips": clips,
        }
        try:
            with self.log.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise WavemelError(f"{self.log}: cannot write ({os_error_reason(exc)})") from None
