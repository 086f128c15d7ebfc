"""Training: configs, the loop, checkpoints, resume, DDP and cnn-comb's head.

``train(TrainConfig(...))`` trains cnn-audio or cnn-spec into a run folder; ``combine(
CombineConfig(...))`` trains cnn-comb's head on two such runs. The loop's names are imported
lazily so that ``wavemel.checkpoint`` (used by inference) does not pull in the training
loop.
"""

from __future__ import annotations

import importlib
from typing import Any

# The submodule ``combine`` and the function ``combine`` share a name. Importing the submodule
# here, then binding the function, keeps ``wavemel.train.combine`` the function for good: a later
# ``import wavemel.train.combine`` finds the module in sys.modules and does not rebind it.
import wavemel.train.combine as _combine_module
from wavemel.train.config import CombineConfig, TrainConfig

combine = _combine_module.combine

_LAZY = {
    "train": "wavemel.train.loop",
    "train_one_epoch": "wavemel.train.loop",
    "validate": "wavemel.train.loop",
    "fit": "wavemel.train.loop",
    "save_checkpoint": "wavemel.checkpoint",
    "load_checkpoint": "wavemel.checkpoint",
}

__all__ = [
    "CombineConfig",
    "TrainConfig",
    "combine",
    "fit",
    "load_checkpoint",
    "save_checkpoint",
    "train",
    "train_one_epoch",
    "validate",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
