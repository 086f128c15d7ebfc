"""wavemel: audio tagging with a raw-waveform CNN, a log-mel CNN and their combination.

Public names are imported lazily so that ``import wavemel`` (and the CLI's ``--help``) does not
pay for importing torch until a model or a tagger is actually used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AudioError": "wavemel.errors",
    "DataError": "wavemel.errors",
    "CheckpointError": "wavemel.errors",
    "WavemelError": "wavemel.errors",
    "load_audio": "wavemel.audio",
    "load_dataset": "wavemel.data",
    "ClipRecord": "wavemel.data",
    "DatasetIndex": "wavemel.data",
    "create_model": "wavemel.models",
    "list_models": "wavemel.models",
    "LogMel": "wavemel.frontend",
    "Tagger": "wavemel.infer",
    "Ensemble": "wavemel.infer",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'wavemel' has no attribute {name!r}")
