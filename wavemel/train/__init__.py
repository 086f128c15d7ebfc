"""Training: configs, the loop, checkpoints, resume, DDP and cnn-comb's head.

``train(TrainConfig(...))`` trains cnn-audio or cnn-spec into a run folder; ``combine(
CombineConfig(...))`` trains cnn-comb's head on two such runs. Names are imported lazily so that
``wavemel.train.checkpoint`` (used by inference) does not pull in the training loop.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "wavemel.train.config",
    "CombineConfig": "wavemel.train.config",
    "train": "wavemel.train.loop",
    "train_one_epoch": "wavemel.train.loop",
    "validate": "wavemel.train.loop",
    "fit": "wavemel.train.loop",
    "combine": "wavemel.train.combine",
    "save_checkpoint": "wavemel.train.checkpoint",
    "load_checkpoint": "wavemel.train.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
