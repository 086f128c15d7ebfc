"""The poster's study (``wavemel reproduce``) and the quickstart tour (``wavemel quickstart``).

Modules, top to bottom:

* :mod:`~wavemel.study.grid`: :func:`reproduce`, the grid from data to report;
* :mod:`~wavemel.study.runs`: its steps (train a branch, the head, score, baseline), resumable;
* :mod:`~wavemel.study.presets`: presets, :class:`StudyConfig`, units and scored variants;
* :mod:`~wavemel.study.state`: ``state.json`` (settings, finished runs, invocations);
* :mod:`~wavemel.study.tables`: Table 1, the zero-input rows, per-class means, observations;
* :mod:`~wavemel.study.report`: ``report.md``, one writer per section;
* :mod:`~wavemel.study.baseline`: the MFCC + logistic-regression floor;
* :mod:`~wavemel.study.quickstart`: the quickstart's data, runs and scores.

Public names are imported lazily, as in :mod:`wavemel`, so that the command line's ``--help``
does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PRESETS": "wavemel.study.presets",
    "Preset": "wavemel.study.presets",
    "StudyConfig": "wavemel.study.presets",
    "VARIANTS": "wavemel.study.presets",
    "equivalent_command": "wavemel.study.report",
    "reproduce": "wavemel.study.grid",
    "run_baseline": "wavemel.study.baseline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'wavemel.study' has no attribute {name!r}")
